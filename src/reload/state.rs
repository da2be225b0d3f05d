//! The last good snapshot, kept on disk so a restart can serve with policy
//! even when the snapshot source is down.
//!
//! Written atomically: a temporary file in the same directory, flushed to
//! disk, then renamed over the old one (and the directory synced), so a
//! crash leaves either the old snapshot or the new one, never half of one.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

const FILE: &str = "snapshot.json";

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir(PathBuf);

impl StateDir {
    pub fn new(dir: PathBuf) -> Self {
        Self(dir)
    }

    pub fn path(&self) -> PathBuf {
        self.0.join(FILE)
    }

    /// Replaces the stored snapshot. Blocking: call off the async workers.
    pub fn save(&self, bytes: &[u8]) -> io::Result<()> {
        std::fs::create_dir_all(&self.0)?;
        // Unique per call, so two writers never share a temporary file.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .0
            .join(format!(".{FILE}.tmp-{}-{seq}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.path())?;
            sync_dir(&self.0)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// The stored snapshot, if there is one. Blocking.
    pub fn load(&self, max_bytes: usize) -> io::Result<Option<Vec<u8>>> {
        match read_capped(&self.path(), max_bytes) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Reads a whole file, refusing files over `max_bytes`.
pub fn read_capped(path: &Path, max_bytes: usize) -> io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > max_bytes as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is {len} bytes, over the {max_bytes}-byte limit",
                path.display()
            ),
        ));
    }
    std::fs::read(path)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    // Makes the rename durable. Directories cannot be opened for sync on
    // every platform; where that fails the rename is still atomic.
    match std::fs::File::open(dir) {
        Ok(d) => d.sync_all().or(Ok(())),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_and_loads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let state = StateDir::new(dir.join("nested"));
        assert_eq!(state.load(1024).unwrap(), None);
        state.save(b"{\"version\":1}").unwrap();
        state.save(b"{\"version\":2}").unwrap();
        assert_eq!(
            state.load(1024).unwrap().as_deref(),
            Some(&b"{\"version\":2}"[..])
        );
        assert!(state.load(3).is_err(), "size cap applies");
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("nested"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from(FILE)]);
    }
}
