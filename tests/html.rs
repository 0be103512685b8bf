//! `harness report`: the self-contained HTML page, checked as text and in a real browser
//! (headless Chromium: the distribution's `chromium`, or `$CHROMIUM`; without one the browser
//! half says it is skipped and why).

use crate::cli::{run, stderr, tiny_run};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A Chromium to drive, if this machine has one.
fn chromium() -> Option<PathBuf> {
    let names = [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ];
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(names.iter().map(PathBuf::from))
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Headless Chromium on `url` with `args`; its stdout (the DOM with `--dump-dom`).
fn headless(chrome: &Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.path().display()),
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(o.status.success(), "chromium: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The leaderboard's tbody rows of the page's first table, as the DOM serializes them.
fn leaderboard_rows(dom: &str) -> Vec<&str> {
    let start = dom.find("id=\"lb-0\"").expect("the leaderboard table");
    let body = &dom[start..];
    let body = &body[body.find("<tbody>").unwrap()..body.find("</tbody>").unwrap()];
    body.split("<tr").skip(1).collect()
}

/// The `data-v` of column `col` (0-based) of a serialized row.
fn cell_value(row: &str, col: usize) -> Option<f64> {
    let cell = row.split("<td").nth(col + 1)?;
    let v = cell.split("data-v=\"").nth(1)?.split('"').next()?;
    v.parse().ok()
}

/// The default experiment's page (the main job writes it beside its leaderboard) with a
/// hostile run folder added: every row and figure present, sorting by a header click ordered,
/// hostile text shown as text, a screenshot that is not blank, and the tables there with
/// scripts off.
#[test]
fn the_report_opens_sorts_and_escapes_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = tiny_run(dir.path());
    args.extend(["--seeds".into(), "2".into()]);
    let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let page = dir.path().join("report.html");
    assert!(page.is_file(), "the main job writes report.html");
    // A hostile run: a device string with a script, and a folder named like a tag.
    let runs = dir.path().join("runs");
    let first = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let res = first.join("result.json");
    let text = std::fs::read_to_string(&res).unwrap().replacen(
        "\"device\": \"",
        "\"device\": \"<script>document.title='pwned'</script>",
        1,
    );
    assert!(text.contains("pwned"), "device field rewritten");
    std::fs::write(&res, text).unwrap();
    let bad = runs.join("<script>alert(1)");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("result.json"), "{ not json").unwrap();
    let out = dir.path().join("page.html");
    let o = run(&[
        "report",
        "--results",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(&out).unwrap();
    // As text: self-contained, every hostile string escaped.
    assert!(!html.contains("<script>document") && !html.contains("<script>alert"));
    assert!(html.contains("&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;"));
    assert!(html.contains("&lt;script&gt;alert(1)"));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no network"
    );
    let Some(chrome) = chromium() else {
        eprintln!("the_report_opens_sorts_and_escapes_in_a_browser: browser half SKIPPED: no chromium on PATH (or $CHROMIUM); .ci/run installs the distribution's");
        return;
    };
    let url = format!("file://{}", out.display());
    let dom = headless(&chrome, &url, &["--dump-dom"]);
    assert!(
        dom.contains("<title>lime-bench report</title>"),
        "the hostile script did not run"
    );
    let rows = leaderboard_rows(&dom);
    let want = harness::leaderboard::rows(
        &harness::leaderboard::load_results(dir.path())
            .unwrap()
            .records,
    )
    .len();
    assert_eq!(rows.len(), want, "every leaderboard row");
    assert!(want >= 2);
    // Figures: each row's curves (inline SVG), lime's router heatmap (an image).
    assert!(
        dom.matches("aria-label=\"training loss\"").count() >= want,
        "curves"
    );
    assert!(dom.contains("alt=\"router heatmap\""), "the heatmap");
    assert!(
        dom.contains("&lt;script&gt;alert(1)"),
        "the folder, as text"
    );
    // Sorting: the page clicks the header named in the address (`#sort=table-column`); column 6
    // is the test accuracy.
    for (col, asc) in [(6, true), (4, true)] {
        let dom = headless(&chrome, &format!("{url}#sort=0-{col}"), &["--dump-dom"]);
        let v: Vec<f64> = leaderboard_rows(&dom)
            .iter()
            .filter_map(|r| cell_value(r, col))
            .collect();
        assert_eq!(v.len(), want);
        assert!(
            v.windows(2)
                .all(|w| if asc { w[0] <= w[1] } else { w[0] >= w[1] }),
            "column {col} not sorted: {v:?}"
        );
        assert!(dom.contains("aria-sort=\"ascending\""));
    }
    // A screenshot that is not blank.
    let shot = dir.path().join("shot.png");
    headless(
        &chrome,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
        ],
    );
    let (differ, total) = non_background_pixels(&shot);
    assert!(differ * 50 > total, "blank screenshot: {differ} of {total}");
    // Without scripts (headless Chromium's dump needs its own scripting, so the page is loaded
    // with its script element removed): every row is there, the filters stay hidden.
    let bare = dir.path().join("no-script.html");
    let cut = html.find("<script>").unwrap();
    let end = html[cut..].find("</script>").unwrap() + cut + "</script>".len();
    std::fs::write(&bare, format!("{}{}", &html[..cut], &html[end..])).unwrap();
    let dom = headless(
        &chrome,
        &format!("file://{}", bare.display()),
        &["--dump-dom"],
    );
    assert_eq!(leaderboard_rows(&dom).len(), want);
    assert!(dom.contains("class=\"filters\" data-table=\"lb-0\" hidden"));
    assert!(
        !dom.contains("aria-sort=\""),
        "nothing sorted without the script"
    );
}

/// Pixels of a PNG that differ from its first pixel, and all pixels.
fn non_background_pixels(path: &Path) -> (usize, usize) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = &buf[..info.buffer_size()];
    let step = info.color_type.samples();
    let bg = &px[..step];
    (
        px.chunks(step).filter(|p| p != &bg).count(),
        px.len() / step,
    )
}

/// The committed reproduction results as one page: every leaderboard row and every verdict
/// figure there, under 5 MB.
#[test]
fn the_reproduction_report_is_complete_and_small() {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/reproduction");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.html");
    let o = run(&[
        "report",
        "--results",
        results.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.len() < 5 << 20, "{} bytes", html.len());
    let loaded = harness::leaderboard::load_results(&results).unwrap();
    let rows = harness::leaderboard::rows(&loaded.records);
    assert_eq!(leaderboard_rows(&html).len(), rows.len());
    // Every figure REPRODUCTION.md shows is inlined (none left as a bare name).
    let md = harness::report::render(&harness::claims::claims(), &results).unwrap();
    let figures = md.matches("](results/reproduction/").count();
    assert!(figures > 0);
    assert!(
        html.matches("<img alt=").count() >= figures,
        "figures inlined"
    );
    assert!(html.contains("Every verdict at a glance"));
    if let Some(chrome) = chromium() {
        let dom = headless(
            &chrome,
            &format!("file://{}", out.display()),
            &["--dump-dom"],
        );
        assert_eq!(leaderboard_rows(&dom).len(), rows.len());
    }
}
