//! `harness analyze`: the matrix entropy against closed forms, the probe on separable data, and
//! a trained run's value entropy against a recomputation from its weights with composed ops.

use harness::analyze::{analyze_run, matrix_entropy, probe, standardize, sym_eigenvalues};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
#[allow(clippy::needless_range_loop)]
fn jacobi_eigenvalues_keep_the_invariants_and_solve_2x2() {
    // [[2, 1], [1, 2]] has eigenvalues 1 and 3.
    let mut e = sym_eigenvalues(vec![vec![2.0, 1.0], vec![1.0, 2.0]]);
    e.sort_by(f64::total_cmp);
    assert!(
        (e[0] - 1.0).abs() < 1e-12 && (e[1] - 3.0).abs() < 1e-12,
        "{e:?}"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let n = 9;
    let mut a = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let v: f64 = rng.gen_range(-1.0..1.0);
            a[i][j] = v;
            a[j][i] = v;
        }
    }
    let e = sym_eigenvalues(a.clone());
    let trace: f64 = (0..n).map(|i| a[i][i]).sum();
    let frob: f64 = a.iter().flatten().map(|x| x * x).sum();
    assert!((e.iter().sum::<f64>() - trace).abs() < 1e-10);
    assert!((e.iter().map(|x| x * x).sum::<f64>() - frob).abs() < 1e-10);
}

/// Rank 1 → 0; k orthogonal rows of equal norm → log k (for α = ½: log(k·k^-½)/½ = log k),
/// whichever of X Xᵀ and Xᵀ X is the smaller.
#[test]
fn matrix_entropy_matches_closed_forms() {
    let rank1: Vec<Vec<f64>> = (1..=5)
        .map(|i| vec![i as f64, 2.0 * i as f64, -(i as f64)])
        .collect();
    // Rounding leaves eigenvalues ~1e-16 of the trace, which order ½ lifts to ~1e-8.
    assert!(
        matrix_entropy(&rank1).abs() < 1e-6,
        "{}",
        matrix_entropy(&rank1)
    );
    for k in [2usize, 3, 5] {
        let rows: Vec<Vec<f64>> = (0..k)
            .map(|i| (0..8).map(|j| if j == i { 3.0 } else { 0.0 }).collect())
            .collect();
        assert!(
            (matrix_entropy(&rows) - (k as f64).ln()).abs() < 1e-10,
            "k = {k}"
        );
        // More rows than features (the Xᵀ X path): the k directions twice each.
        let tall: Vec<Vec<f64>> = (0..2 * k)
            .map(|i| (0..k).map(|j| if j == i % k { 1.0 } else { 0.0 }).collect())
            .collect();
        assert!(
            (matrix_entropy(&tall) - (k as f64).ln()).abs() < 1e-10,
            "tall k = {k}"
        );
    }
    // Standardisation: every feature has mean 0 and unit (unbiased) std over all rows.
    let mut seqs = vec![
        vec![vec![1.0, 10.0], vec![2.0, 30.0]],
        vec![vec![3.0, 20.0], vec![6.0, 40.0]],
    ];
    standardize(&mut seqs);
    for c in 0..2 {
        let v: Vec<f64> = seqs.iter().flatten().map(|r| r[c]).collect();
        let m = v.iter().sum::<f64>() / 4.0;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 3.0;
        assert!(m.abs() < 1e-12 && (var.sqrt() - 1.0).abs() < 1e-4, "{v:?}");
    }
}

#[test]
fn a_probe_separates_linearly_separable_classes() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let centers = [
        [4.0, 0.0, 0.0],
        [0.0, 4.0, 0.0],
        [0.0, 0.0, 4.0],
        [-4.0, -4.0, 0.0],
    ];
    let mut draw = |n: usize| -> Vec<(Vec<f64>, u32)> {
        (0..n)
            .map(|i| {
                let c = i % 4;
                let x = centers[c]
                    .iter()
                    .map(|v| v + rng.gen_range(-1.0..1.0))
                    .collect();
                (x, 10 + c as u32)
            })
            .collect()
    };
    let (train, test) = (draw(200), draw(200));
    assert_eq!(probe(&train, &test), 1.0);
    // Labels independent of the features: near chance, not 100%.
    let shuffled: Vec<(Vec<f64>, u32)> = test
        .iter()
        .enumerate()
        .map(|(i, (x, _))| (x.clone(), 10 + (i * 7 % 4) as u32))
        .collect();
    assert!(probe(&train, &shuffled) < 0.6);
}

/// A tiny `model` run on MQAR trained to its end in `dir` (`layers` layers): its spec and folder.
fn tiny_run(
    model: &str,
    layers: usize,
    dir: &std::path::Path,
) -> (harness::spec::RunSpec, std::path::PathBuf) {
    let args = crate::cli::three_tiny_steps(
        "mqar",
        &[model.to_string()],
        &["vocab_size=32", "seq_len=16", "num_kv_pairs=2"],
        layers,
        dir,
    );
    let spec = harness::spec::resolve(&args).unwrap().remove(0);
    crate::cli::train_to_done(&spec, dir);
    let run = dir.join("runs").join(spec.id());
    (spec, run)
}

/// `harness analyze RUN --n N --probe-n P`, then the analysis.json it wrote.
fn analyze_cli(run: &std::path::Path, n: usize, probe_n: usize) -> harness::analyze::Analysis {
    let (n, probe_n) = (n.to_string(), probe_n.to_string());
    let o = crate::cli::run(&[
        "analyze",
        run.to_str().unwrap(),
        "--n",
        &n,
        "--probe-n",
        &probe_n,
    ]);
    assert!(o.status.success(), "{}", crate::cli::stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(run.join("analysis/analysis.json")).unwrap())
        .unwrap()
}

/// A trained tiny llama: `harness analyze` writes analysis.json with one entry per layer, and
/// its layer-0 value entropy equals the entropy of values recomputed from the saved weights with
/// composed ops (embedding row → RMSNorm with the saved gain → v_proj).
#[test]
fn a_trained_runs_value_entropy_matches_a_composed_recomputation() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, run) = tiny_run("llama", 2, dir.path());
    let spec = &spec;
    let an = analyze_cli(&run, 8, 16);
    assert_eq!(an.value_entropy.len(), 2);
    assert_eq!(an.hidden_entropy.len(), 3);
    assert_eq!(an.probe_acc.len(), 3);
    for f in ["value-entropy.svg", "hidden-entropy.svg", "probe-acc.svg"] {
        assert!(run.join("analysis").join(f).is_file(), "{f}");
    }
    let again = analyze_run(&run, 8, 16, &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        again,
        analyze_run(&run, 8, 16, &candle_core::Device::Cpu).unwrap(),
        "analysis is deterministic"
    );
    assert!(again
        .value_entropy
        .iter()
        .zip(&an.value_entropy)
        .all(|(a, b)| (a - b).abs() < 1e-12));

    // Composed recomputation of layer 0's values.
    let w = candle_core::safetensors::load(run.join("best.safetensors"), &candle_core::Device::Cpu)
        .unwrap();
    let get = |n: &str| -> Vec<Vec<f64>> {
        let t = w[n].to_dtype(candle_core::DType::F64).unwrap();
        match t.dims().len() {
            1 => vec![t.to_vec1::<f64>().unwrap()],
            _ => t.to_vec2::<f64>().unwrap(),
        }
    };
    let (emb, gain, wv) = (
        get("embed_tokens.weight"),
        get("layers.0.attn_norm.weight")[0].clone(),
        get("layers.0.attn.v_proj.weight"),
    );
    let task = harness::train::task_from_spec(spec).unwrap();
    let mut seqs: Vec<Vec<Vec<f64>>> =
        tasks::generate_range(task.as_ref(), tasks::Split::Test, 0, 8)
            .iter()
            .map(|ex| {
                ex.tokens[..ex.tokens.len().min(spec.seq_len)]
                    .iter()
                    .map(|&t| {
                        let x = &emb[t as usize];
                        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
                        let r = 1.0 / (ms + spec.model_config.norm_eps).sqrt();
                        let h: Vec<f64> = x.iter().zip(&gain).map(|(v, g)| v * r * g).collect();
                        wv.iter()
                            .map(|row| row.iter().zip(&h).map(|(a, b)| a * b).sum())
                            .collect()
                    })
                    .collect()
            })
            .collect();
    standardize(&mut seqs);
    let h: Vec<f64> = seqs.iter().map(|s| matrix_entropy(s)).collect();
    let mean = h.iter().sum::<f64>() / h.len() as f64;
    assert!(
        (mean - an.value_entropy[0]).abs() < 1e-4,
        "composed {mean} vs analyze {}",
        an.value_entropy[0]
    );
}

/// DenseFormer's static DWA weights: the mixing heatmap has a row per block, each the shares of
/// |α| over the embedding and the block outputs so far (summing to 1), and its figure is drawn.
#[test]
fn a_denseformer_run_gets_its_mixing_heatmap() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = tiny_run("denseformer", 3, dir.path());
    let an = analyze_run(&run, 4, 8, &candle_core::Device::Cpu).unwrap();
    assert!(an.router_heatmap.is_empty());
    assert_eq!(an.mixing_heatmap.len(), 3);
    assert_eq!(an.mixing_rows, ["B0", "B1", "B2"]);
    assert_eq!(an.mixing_sources, ["emb", "B0", "B1", "B2"]);
    for (i, row) in an.mixing_heatmap.iter().enumerate() {
        assert_eq!(row.len(), i + 2);
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
    // Near its init (α_ii = 1, else 0) after three steps: each block keeps mostly itself.
    assert!(
        an.mixing_heatmap.iter().all(|r| r[r.len() - 1] > 0.5),
        "{:?}",
        an.mixing_heatmap
    );
    assert_eq!(analyze_cli(&run, 4, 8), an);
    assert!(run.join("analysis/mixing-heatmap.svg").is_file());
}

/// MUDDFormer's per-token weights: `analyze` averages the recorded |weights| over the analysed
/// tokens into one row per reader (q, k, v, r into each block, then the final norm's input),
/// each the shares over the embedding and the block outputs so far; three steps from its init
/// (all weight on the newest state), each row still puts most of it there.
#[test]
fn a_muddformer_run_gets_its_per_token_mixing_heatmap() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = tiny_run("muddformer", 3, dir.path());
    let an = analyze_cli(&run, 4, 8);
    assert!(an.router_heatmap.is_empty());
    let rows = [
        "B1.q", "B1.k", "B1.v", "B1.r", "B2.q", "B2.k", "B2.v", "B2.r", "out",
    ];
    assert_eq!(an.mixing_rows, rows);
    assert_eq!(an.mixing_sources, ["emb", "B0", "B1", "B2"]);
    for (r, row) in rows.iter().zip(&an.mixing_heatmap) {
        let newest = if r.starts_with("B1") {
            1
        } else if r.starts_with("B2") {
            2
        } else {
            3
        };
        assert_eq!(row.len(), newest + 1, "{r}");
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{r}: {row:?}");
        assert!(row[newest] > 0.5, "{r}: {row:?}");
    }
    assert!(run.join("analysis/mixing-heatmap.svg").is_file());
}

/// DCA, LAuReL and Canon get a mixing heatmap through the same path: DCA's q/k/v/out GRN weights
/// over the embedding and block outputs (at three steps from b = 1, w ≈ 0 every source still
/// holds a near-equal share), LAuReL's α, β per block (near ½ each), Canon's taps per
/// convolution (each row the shares of t-3 … t).
#[test]
fn dca_laurel_and_canon_runs_get_their_mixing_heatmaps() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = tiny_run("dca", 2, dir.path());
    let an = analyze_cli(&run, 4, 8);
    assert_eq!(
        an.mixing_rows,
        ["B0.q", "B0.k", "B0.v", "B1.q", "B1.k", "B1.v", "out"]
    );
    assert_eq!(an.mixing_sources, ["emb", "B0", "B1"]);
    for (r, row) in an.mixing_rows.iter().zip(&an.mixing_heatmap) {
        let n = row.len() as f64;
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{r}: {row:?}");
        assert!(
            row.iter().all(|&x| (x - 1.0 / n).abs() < 0.1),
            "{r}: {row:?}"
        );
    }
    assert!(run.join("analysis/mixing-heatmap.svg").is_file());

    let (_, run) = tiny_run("laurel", 2, dir.path());
    let an = analyze_cli(&run, 4, 8);
    assert_eq!(an.mixing_rows, ["B0", "B1"]);
    assert_eq!(an.mixing_sources, ["f", "x+UDx"]);
    for row in &an.mixing_heatmap {
        assert!(
            (row[0] - 0.5).abs() < 0.05 && (row[1] - 0.5).abs() < 0.05,
            "{row:?}"
        );
    }

    let (_, run) = tiny_run("canon", 2, dir.path());
    let an = analyze_cli(&run, 4, 8);
    assert_eq!(an.mixing_rows.len(), 2 * 7);
    assert_eq!(an.mixing_rows[..3], ["A0", "B0.q", "B0.k"]);
    assert_eq!(an.mixing_sources, ["t-3", "t-2", "t-1", "t"]);
    for (r, row) in an.mixing_rows.iter().zip(&an.mixing_heatmap) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{r}: {row:?}");
    }
}

/// Once a run is analysed, `harness leaderboard` adds its value entropy (mean over layers, mean
/// over the row's analysed runs) in every format; an analysis.json of another run makes the
/// folder unreadable, named under the table, instead of lending its numbers.
#[test]
fn the_leaderboard_shows_the_value_entropy_of_analysed_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = tiny_run("llama", 2, dir.path());
    let results = dir.path().to_str().unwrap();
    let board = |format: &str| {
        let o = crate::cli::run(&["leaderboard", "--results", results, "--format", format]);
        assert!(o.status.success(), "{}", crate::cli::stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(!board("md").contains("value entropy"));
    assert!(!board("json").contains("value_entropy"));
    let an = analyze_cli(&run, 4, 8);
    let h = an.value_entropy.iter().sum::<f64>() / an.value_entropy.len() as f64;
    assert!(h > 0.0);
    let md = board("md");
    assert!(md.contains("value entropy (nats, analysed runs)"), "{md}");
    assert!(md.contains(&format!("{h:.2} (1 of 1)")), "{md}");
    let csv = board("csv");
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",value_entropy,analysed"),
        "{csv}"
    );
    assert!(
        csv.lines().nth(1).unwrap().ends_with(&format!(",{h:.6},1")),
        "{csv}"
    );
    let json: serde_json::Value = serde_json::from_str(&board("json")).unwrap();
    assert_eq!(json[0]["value_entropy"].as_f64(), Some(h));
    assert_eq!(json[0]["analysed"].as_u64(), Some(1));

    let path = run.join("analysis/analysis.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(&an.run, "mqar-kv2-llama-s9-000000000000"),
    )
    .unwrap();
    let md = board("md");
    assert!(md.contains("1 run folder(s) could not be read"), "{md}");
    assert!(
        md.contains("is run mqar-kv2-llama-s9-000000000000's analysis, not this run's"),
        "{md}"
    );
}

/// Bad input: a folder without weights is a one-line error naming what is missing.
#[test]
fn analyze_without_weights_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = crate::cli::run(&["analyze", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let err = crate::cli::stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
