//! A temporary directory for test files.

use std::path::PathBuf;

/// A fresh directory under the system temp dir, removed when dropped
/// (`tempfile` owns its lifecycle). `.0` is its path, which is what most
/// tests want to join onto.
#[derive(Debug)]
pub struct TempDir(
    pub PathBuf,
    #[expect(dead_code, reason = "held for its Drop, which removes the directory")]
    tempfile::TempDir,
);

impl TempDir {
    /// Panics if the directory cannot be created: a test cannot go on
    /// without it.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-test-")
            .tempdir()
            .expect("create temp dir");
        Self(dir.path().to_owned(), dir)
    }

    /// Where `name` would go in the directory (the file need not exist).
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `contents` to `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}
