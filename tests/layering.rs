//! The harness's modules import one way (ARCHITECTURE.md, "Imports flow one way"): the graph of
//! `crate::module` references between `harness/src/*.rs` has no cycle. Read from the source, so
//! a new circle fails here with the path that closes it.

use std::collections::BTreeMap;

fn import_graph() -> BTreeMap<String, Vec<String>> {
    import_graph_of("src")
}

/// The import graph of the modules of one source folder (relative to harness/): its `.rs` files
/// and its folder modules.
fn import_graph_of(folder: &str) -> BTreeMap<String, Vec<String>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            sources.insert(name, std::fs::read_to_string(&path).unwrap());
        } else if path.join("mod.rs").is_file() {
            // A folder module (`fused/`) is one module: its files together.
            let mut text = String::new();
            for f in std::fs::read_dir(&path).unwrap() {
                text += &std::fs::read_to_string(f.unwrap().path()).unwrap();
            }
            sources.insert(name, text);
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

/// models/ imports one way: no circle through its modules (the variant contract and config in
/// `variant.rs`, the skeleton in `decoder.rs`, the variants' files, the registry at the top), and
/// the order ARCHITECTURE.md draws holds: the contract names no module but `ops`, the skeleton no
/// variant, and only the registry names the variants' files together.
#[test]
fn models_modules_import_one_way() {
    let g = import_graph_of("../models/src");
    assert!(g.len() >= 18, "found only {:?}", g.keys());
    assert!(
        g["lime"].contains(&"lime_family".to_string()),
        "the scan sees imports: {g:?}"
    );
    for m in g.keys() {
        if let Some(c) = cycle_from(&g, m) {
            panic!("import circle in models/src: {}", c.join(" -> "));
        }
    }
    assert_eq!(g["variant"], ["ops"], "the contract imports only ops");
    for lower in [
        "variant",
        "decoder",
        "init",
        "accounting",
        "pack",
        "ops",
        "fused",
    ] {
        for m in &g[lower] {
            assert!(
                ["fused", "ops", "variant", "decoder"].contains(&m.as_str()),
                "{lower} imports {m}, above it"
            );
        }
    }
    // The LIMe family: the shared connection and routers (`lime_family.rs`) use no variant's file.
    for m in ["lime", "lime_dynamic", "lime_ablations"] {
        assert!(
            !g["lime_family"].contains(&m.to_string()),
            "lime_family imports {m}"
        );
    }
}
