//! The harness's modules import one way (ARCHITECTURE.md, "Imports flow one way"): the graph of
//! `crate::module` references between `harness/src/*.rs` has no cycle. Read from the source, so
//! a new circle fails here with the path that closes it.

use std::collections::BTreeMap;

fn import_graph() -> BTreeMap<String, Vec<String>> {
    import_graph_of("src")
}

/// The import graph of the `.rs` files of one source folder (relative to harness/).
fn import_graph_of(folder: &str) -> BTreeMap<String, Vec<String>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            sources.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    let modules: Vec<String> = sources.keys().cloned().collect();
    sources
        .iter()
        .map(|(m, text)| {
            let code: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            let deps = modules
                .iter()
                .filter(|d| *d != m && code.contains(&format!("crate::{d}")))
                .cloned()
                .collect();
            (m.clone(), deps)
        })
        .collect()
}

/// A cycle through `start`, if any, as the list of modules along it.
fn cycle_from(g: &BTreeMap<String, Vec<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        start: &str,
        seen: &mut Vec<String>,
    ) -> bool {
        let last = path.last().unwrap().clone();
        for next in &g[&last] {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if !seen.contains(next) {
                seen.push(next.clone());
                path.push(next.clone());
                if walk(g, path, start, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(g, &mut path, start, &mut Vec::new()).then_some(path)
}

#[test]
fn harness_modules_import_one_way() {
    let g = import_graph();
    assert!(g.len() >= 15, "found only {:?}", g.keys());
    assert!(
        g["job"].contains(&"train".to_string()),
        "the scan sees imports: {g:?}"
    );
    for m in g.keys() {
        if let Some(c) = cycle_from(&g, m) {
            panic!("import circle in harness/src: {}", c.join(" -> "));
        }
    }
}

/// The LIMe family imports one way: the shared connection, routers and counts
/// (`lime_family.rs`) use no variant's file, and no circle runs through the family's files. (The
/// rest of models/ still has type-level circles — the skeleton, `Config` and `VariantDef` name
/// each other — which this test does not yet forbid.)
#[test]
fn the_lime_family_imports_one_way() {
    let g = import_graph_of("../models/src");
    let family = ["lime", "lime_family", "lime_dynamic", "lime_ablations"];
    assert!(g["lime"].contains(&"lime_family".to_string()), "{g:?}");
    for m in ["lime", "lime_dynamic", "lime_ablations"] {
        assert!(
            !g["lime_family"].contains(&m.to_string()),
            "lime_family imports {m}"
        );
    }
    let sub: BTreeMap<String, Vec<String>> = family
        .iter()
        .map(|m| {
            let deps = g[*m]
                .iter()
                .filter(|d| family.contains(&d.as_str()))
                .cloned()
                .collect();
            (m.to_string(), deps)
        })
        .collect();
    for m in family {
        if let Some(c) = cycle_from(&sub, m) {
            panic!("import circle in the LIMe family: {}", c.join(" -> "));
        }
    }
}
