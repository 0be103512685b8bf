//! `harness gen`: export a task split as JSONL or Parquet plus a manifest.
//!
//! JSONL contract, one example per line, keys in this order: `task, split, index, prompt` (text),
//! `answer` (the answer's text alone, without the end-of-sequence marker), `tokens` (prompt +
//! answer ids, the end-of-sequence id included), `prompt_len`, `targets` (list of
//! `[position, token]`: at input position `position` the model must output `token`), `meta`.
//! Parquet holds the same columns in the same order: text columns as strings, `index` and
//! `prompt_len` as int64, `tokens` as a list of int64, `targets` as a list of `[position, token]`
//! int64 lists, `meta` as its JSON text; one row group per 16,384 examples, no compression.
//! Examples are produced in parallel and written in index order, so the bytes do not depend on
//! the thread count. The data file and its manifest are written atomically; the manifest names
//! the format and the sha256 of the data file's bytes.

use crate::io::{hex, AtomicFile};
use anyhow::{Context, Result};
use clap::ValueEnum;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tasks::{Example, Split, Task};

/// The export's version, in the manifest: 2 since the answer text dropped the end-of-sequence
/// marker (`"58"`, was `"58 <eos>"`). The examples themselves (tokens, targets) did not change,
/// so `tasks::GENERATOR_VERSION` and every run id stay as they were.
pub const EXPORT_VERSION: u32 = 2;

/// File format of an export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Jsonl,
    Parquet,
}

impl Format {
    /// The format a file name implies: `.parquet` → Parquet, anything else JSONL.
    pub fn of_path(p: &Path) -> Format {
        match p.extension().and_then(|e| e.to_str()) {
            Some("parquet") => Format::Parquet,
            _ => Format::Jsonl,
        }
    }
}

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
    /// `jsonl` or `parquet` (absent in manifests written before Parquet: JSONL).
    #[serde(default)]
    pub format: Format,
    pub sha256: String,
    pub generator_version: u32,
    /// [`EXPORT_VERSION`] (absent in manifests of version 1).
    #[serde(default = "one")]
    pub export_version: u32,
    pub config: Value,
    pub config_digest: String,
    pub vocab_size: usize,
    pub max_len: usize,
    pub chance: f64,
    pub metric: tasks::Metric,
    /// Candidates rejected because they hashed to another split (see the tasks crate docs).
    pub redraws: u64,
}

fn one() -> u32 {
    1
}

/// The answer's text: its tokens rendered up to the end-of-sequence token that closes them
/// (the tokens keep it).
pub fn answer_text(task: &dyn Task, ex: &Example) -> String {
    match task.eos_id() {
        Some(eos) => task.render(tasks::until_eos(ex.answer(), eos)),
        None => task.render(ex.answer()),
    }
}

/// Render one example as its JSONL line (without the newline).
pub fn example_line(task: &dyn Task, ex: &tasks::Example) -> String {
    let line = Line {
        task: task.name(),
        split: ex.split,
        index: ex.index,
        prompt: task.render(ex.prompt()),
        answer: answer_text(task, ex),
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

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The Parquet schema of an export (the JSONL keys, in order).
const PARQUET_SCHEMA: &str = "message example {
  required binary task (STRING);
  required binary split (STRING);
  required int64 index;
  required binary prompt (STRING);
  required binary answer (STRING);
  required group tokens (LIST) { repeated group list { required int64 element; } }
  required int64 prompt_len;
  required group targets (LIST) {
    repeated group list { required group element (LIST) { repeated group list { required int64 element; } } }
  }
  required binary meta (STRING);
}";

/// Values with their definition and repetition levels: one Parquet leaf column of a chunk.
#[derive(Default)]
struct Leaf {
    values: Vec<i64>,
    def: Vec<i16>,
    rep: Vec<i16>,
}

impl Leaf {
    /// Appends one row's list of ints (`list<int64>`: levels ≤ 1).
    fn list(&mut self, xs: impl ExactSizeIterator<Item = i64>) {
        if xs.len() == 0 {
            self.def.push(0);
            self.rep.push(0);
        }
        for (i, x) in xs.enumerate() {
            self.values.push(x);
            self.def.push(1);
            self.rep.push(if i == 0 { 0 } else { 1 });
        }
    }

    /// Appends one row's list of pairs (`list<list<int64>>`: levels ≤ 2).
    fn pairs(&mut self, xs: &[(u32, u32)]) {
        if xs.is_empty() {
            self.def.push(0);
            self.rep.push(0);
        }
        for (i, &(p, t)) in xs.iter().enumerate() {
            self.values.extend([p as i64, t as i64]);
            self.def.extend([2, 2]);
            self.rep.extend([if i == 0 { 0 } else { 1 }, 2]);
        }
    }
}

/// The data of one Parquet column of a row group.
enum Column {
    Text(Vec<ByteArray>),
    Ints(Vec<i64>),
    List(Leaf),
}

/// One row group of examples as Parquet columns.
fn write_row_group<W: Write + Send>(
    w: &mut SerializedFileWriter<W>,
    task: &dyn Task,
    examples: &[Example],
) -> Result<()> {
    let text = |f: &dyn Fn(&Example) -> String| {
        Column::Text(
            examples
                .iter()
                .map(|e| ByteArray::from(f(e).as_str()))
                .collect(),
        )
    };
    let ints = |f: &dyn Fn(&Example) -> i64| Column::Ints(examples.iter().map(f).collect());
    let (mut tokens, mut targets) = (Leaf::default(), Leaf::default());
    for e in examples {
        tokens.list(e.tokens.iter().map(|&t| t as i64));
        targets.pairs(&e.targets);
    }
    // In schema order.
    let columns = [
        text(&|_| task.name().to_string()),
        text(&|e| e.split.as_str().to_string()),
        ints(&|e| e.index as i64),
        text(&|e| task.render(e.prompt())),
        text(&|e| answer_text(task, e)),
        Column::List(tokens),
        ints(&|e| e.prompt_len as i64),
        Column::List(targets),
        text(&|e| serde_json::to_string(&e.meta).expect("meta serializes")),
    ];
    let mut rg = w.next_row_group()?;
    for data in &columns {
        let mut col = rg
            .next_column()?
            .context("the Parquet schema has fewer columns than an example")?;
        match data {
            Column::Text(v) => col.typed::<ByteArrayType>().write_batch(v, None, None)?,
            Column::Ints(v) => col.typed::<Int64Type>().write_batch(v, None, None)?,
            Column::List(l) => {
                col.typed::<Int64Type>()
                    .write_batch(&l.values, Some(&l.def), Some(&l.rep))?
            }
        };
        col.close()?;
    }
    rg.close()?;
    Ok(())
}

/// Generate examples `start..start+n` of `split` and write `out` (JSONL, or Parquet for a
/// `.parquet` name) and its manifest.
pub fn export(
    task: &dyn Task,
    level: &str,
    split: Split,
    start: u64,
    n: u64,
    out: &Path,
) -> Result<Manifest> {
    export_as(task, level, split, start, n, out, Format::of_path(out))
}

/// [`export`] in `format`.
pub fn export_as(
    task: &dyn Task,
    level: &str,
    split: Split,
    start: u64,
    n: u64,
    out: &Path,
    format: Format,
) -> Result<Manifest> {
    const CHUNK: u64 = 1 << 14;
    let digest = tasks::config_digest(task);
    let mut data = AtomicFile::create(out)?;
    let cannot = || format!("cannot write {}", out.display());
    let mut redraws = 0u64;
    let sha = {
        let hashing = Hashing {
            inner: data.writer(),
            sha: Sha256::new(),
        };
        enum Sink<'a> {
            Jsonl(Hashing<&'a mut std::fs::File>),
            Parquet(SerializedFileWriter<Hashing<&'a mut std::fs::File>>),
        }
        let mut sink = match format {
            Format::Parquet => {
                let schema = Arc::new(parquet::schema::parser::parse_message_type(PARQUET_SCHEMA)?);
                let props = WriterProperties::builder()
                    .set_created_by("lime-bench harness gen".into())
                    .build();
                Sink::Parquet(SerializedFileWriter::new(hashing, schema, Arc::new(props))?)
            }
            Format::Jsonl => Sink::Jsonl(hashing),
        };
        let mut i = start;
        while i < start + n {
            let m = CHUNK.min(start + n - i);
            let examples: Vec<Example> = (i..i + m)
                .into_par_iter()
                .map(|idx| tasks::generate_with(task, &digest, split, idx))
                .collect();
            redraws += examples.iter().map(|e| e.redraws as u64).sum::<u64>();
            match &mut sink {
                Sink::Parquet(w) => write_row_group(w, task, &examples).with_context(cannot)?,
                Sink::Jsonl(w) => {
                    let lines: Vec<String> = examples
                        .par_iter()
                        .map(|ex| example_line(task, ex) + "\n")
                        .collect();
                    for l in &lines {
                        w.write_all(l.as_bytes()).with_context(cannot)?;
                    }
                }
            }
            i += m;
        }
        match sink {
            Sink::Jsonl(h) => h.sha,
            Sink::Parquet(w) => w.into_inner().with_context(cannot)?.sha,
        }
    };
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
        format,
        sha256: hex(&sha.finalize()),
        generator_version: tasks::GENERATOR_VERSION,
        export_version: EXPORT_VERSION,
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
