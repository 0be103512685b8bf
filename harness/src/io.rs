//! File output. Every result file is written atomically: a temporary file in the destination's
//! folder, fsync, then rename over the target. A failure leaves the target untouched and no
//! temporary behind.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The folder a file will be written into (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A file being written next to its destination; becomes visible only on [`AtomicFile::commit`].
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        let dir = parent_dir(dest);
        if !dir.is_dir() {
            anyhow::bail!(
                "cannot write {}: folder {} does not exist",
                dest.display(),
                dir.display()
            );
        }
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .with_context(|| format!("cannot write {}", dest.display()))?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    pub fn writer(&mut self) -> &mut std::fs::File {
        self.tmp.as_file_mut()
    }

    /// fsync and rename over the destination.
    pub fn commit(mut self) -> Result<()> {
        let dest = self.dest.clone();
        self.tmp
            .as_file_mut()
            .flush()
            .and_then(|_| self.tmp.as_file().sync_all())
            .with_context(|| format!("cannot write {}", dest.display()))?;
        self.tmp
            .persist(&dest)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {}", dest.display(), e.error))?;
        Ok(())
    }
}

/// Write `bytes` to `dest` atomically.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.writer()
        .write_all(bytes)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    f.commit()
}

/// Pretty JSON of `v`, written atomically with a trailing newline.
pub fn write_json<T: serde::Serialize>(dest: &Path, v: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    write_atomic(dest, s.as_bytes())
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
}

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
