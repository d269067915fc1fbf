//! A temporary repository root.

use std::path::{Path, PathBuf};

use crate::{ConfigBuilder, Error};

/// A temporary folder laid out as a repository root: `configs/` and `dat/` (the two folders by
/// which `sam_config::find_root_from` recognises a root), removed on drop.
///
/// `runs/` and `final_models/` are not created: the code under test creates them, and some
/// tests check that it did not. Create them with [`TempRepo::create_dir`] where needed.
#[derive(Debug)]
pub struct TempRepo {
    dir: tempfile::TempDir,
}

impl TempRepo {
    /// A new root in the system's temporary folder.
    pub fn new() -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("sam-testkit-")
            .tempdir()
            .map_err(Error::io(std::env::temp_dir()))?;
        let repo = Self { dir };
        repo.create_dir("configs")?;
        repo.create_dir("dat")?;
        Ok(repo)
    }

    /// The root folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `rel` below the root.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Creates the folder `rel` below the root (and its parents); returns its path.
    pub fn create_dir(&self, rel: impl AsRef<Path>) -> Result<PathBuf, Error> {
        let dir = self.join(rel);
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        Ok(dir)
    }

    /// Writes `config` to `rel` below the root (creating its folder); returns the file's path.
    pub fn write_config(
        &self,
        rel: impl AsRef<Path>,
        config: &ConfigBuilder,
    ) -> Result<PathBuf, Error> {
        let path = self.join(rel);
        config.write(&path)?;
        Ok(path)
    }

    /// Hands over the temporary folder (deleted when the returned value drops).
    pub fn into_temp_dir(self) -> tempfile::TempDir {
        self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_repo_is_a_repository_root_and_is_removed_on_drop() {
        let repo = TempRepo::new().unwrap_or_else(|e| panic!("{e}"));
        let root = repo.path().to_path_buf();
        let deep = repo
            .create_dir("scripts/slurm")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sam_config::find_root_from(&deep), Some(root.clone()));
        assert!(!repo.join("runs").exists() && !repo.join("final_models").exists());
        drop(repo);
        assert!(!root.exists());
    }
}
