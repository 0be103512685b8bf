//! `harness gen`: export a task split as JSONL plus a manifest.
//!
//! JSONL contract, one example per line, keys in this order: `task, split, index, prompt` (text),
//! `answer` (text), `tokens` (prompt + answer ids), `prompt_len`, `targets` (list of
//! `[position, token]`: at input position `position` the model must output `token`), `meta`.
//! Lines are produced in parallel and written in index order, so the bytes do not depend on the
//! thread count. The data file and its manifest are written atomically.

use crate::io::{hex, AtomicFile};
use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use tasks::{Split, Task};

/// One JSONL line (field order is the file format).
#[derive(Serialize)]
struct Line<'a> {
    task: &'a str,
    split: Split,
    index: u64,
    prompt: String,
    answer: String,
    tokens: &'a [u32],
    prompt_len: usize,
    targets: &'a [(u32, u32)],
    meta: &'a Map<String, Value>,
}

/// Manifest written next to the data (`F.manifest.json`). Contains no wall-clock fields, so the
/// same config gives the same manifest bytes anywhere.
#[derive(Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub task: String,
    pub level: String,
    pub split: Split,
    pub n: u64,
    pub start: u64,
    pub file: String,
    pub sha256: String,
    pub generator_version: u32,
    pub config: Value,
    pub config_digest: String,
    pub vocab_size: usize,
    pub max_len: usize,
    pub chance: f64,
    pub metric: tasks::Metric,
    /// Candidates rejected because they hashed to another split (see the tasks crate docs).
    pub redraws: u64,
}

/// Render one example as its JSONL line (without the newline).
pub fn example_line(task: &dyn Task, ex: &tasks::Example) -> String {
    let line = Line {
        task: task.name(),
        split: ex.split,
        index: ex.index,
        prompt: task.render(ex.prompt()),
        answer: task.render(ex.answer()),
        tokens: &ex.tokens,
        prompt_len: ex.prompt_len,
        targets: &ex.targets,
        meta: &ex.meta,
    };
    serde_json::to_string(&line).expect("examples serialize")
}

/// Path of the manifest that belongs to data file `out`: `F.jsonl` → `F.manifest.json`.
pub fn manifest_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.manifest.json"))
}

/// Generate examples `start..start+n` of `split` and write `out` and its manifest.
pub fn export(
    task: &dyn Task,
    level: &str,
    split: Split,
    start: u64,
    n: u64,
    out: &Path,
) -> Result<Manifest> {
    const CHUNK: u64 = 1 << 14;
    let digest = tasks::config_digest(task);
    let mut data = AtomicFile::create(out)?;
    let mut sha = Sha256::new();
    let mut redraws = 0u64;
    let mut i = start;
    while i < start + n {
        let m = CHUNK.min(start + n - i);
        let lines: Vec<(String, u32)> = (i..i + m)
            .into_par_iter()
            .map(|idx| {
                let ex = tasks::generate_with(task, &digest, split, idx);
                let mut s = example_line(task, &ex);
                s.push('\n');
                (s, ex.redraws)
            })
            .collect();
        let w = data.writer();
        for (s, r) in &lines {
            sha.update(s.as_bytes());
            w.write_all(s.as_bytes())
                .with_context(|| format!("cannot write {}", out.display()))?;
            redraws += *r as u64;
        }
        i += m;
    }
    let manifest = Manifest {
        task: task.name().to_string(),
        level: level.to_string(),
        split,
        n,
        start,
        file: out
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: hex(&sha.finalize()),
        generator_version: tasks::GENERATOR_VERSION,
        config: task.config(),
        config_digest: hex(&digest),
        vocab_size: task.vocab_size(),
        max_len: task.max_len(),
        chance: task.chance(),
        metric: task.metric(),
        redraws,
    };
    let mpath = manifest_path(out);
    let mut mfile = AtomicFile::create(&mpath)?;
    let mut text = serde_json::to_string_pretty(&manifest)?;
    text.push('\n');
    mfile
        .writer()
        .write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", mpath.display()))?;
    // Data first, then the manifest that vouches for it.
    data.commit()?;
    mfile.commit()?;
    Ok(manifest)
}
