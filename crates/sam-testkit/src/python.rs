//! The repository's Python environment, which tests run to write reference fixtures.

use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `crates/sam-testkit`).
pub fn workspace_root() -> PathBuf {
    let kit = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    kit.join("../..")
        .canonicalize()
        .unwrap_or_else(|_| kit.join("../.."))
}

/// `.venv/bin/python` of the workspace, created by `scripts/setup.sh` with torch and the
/// reference packages.
///
/// # Panics
/// When it is missing, with the command that creates it: a test that needs a reference
/// fixture cannot do without it.
pub fn venv_python() -> PathBuf {
    let python = workspace_root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh to create the Python environment the reference \
         fixtures need",
        python.display()
    );
    python
}

/// The Python modules the fixture scripts of several crates share: the `*.py` files of this
/// crate's `python/` folder (`sam_fixtures.py`), sorted. A script imports them by a path
/// relative to its own file; its fixtures depend on them as much as on the script.
pub fn shared_python_modules() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let mut modules: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("shared fixture modules {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .collect();
    modules.sort();
    modules
}

/// A stamp of the text of `script` and of the [`shared_python_modules`]: fixtures kept beside
/// a stamp that differs were written by another version of the script or of a module it may
/// import.
///
/// # Panics
/// When a file cannot be read.
pub fn script_stamp(script: &Path) -> String {
    let hash = std::iter::once(script.to_path_buf())
        .chain(shared_python_modules())
        .fold(0u64, |h, file| {
            std::fs::read(&file)
                .unwrap_or_else(|e| panic!("fixture script {}: {e}", file.display()))
                .iter()
                .fold(h, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        });
    format!("{hash:x}")
}

/// A folder of reference fixtures that `script` writes: `script make DIR ARGS...` runs with
/// [`venv_python`] into `target/test-fixtures/<name>`, once, and again whenever the text of
/// the script or of a shared module changes (its [`script_stamp`] is kept beside the
/// fixtures). `args` gives the extra arguments from the folder.
///
/// # Panics
/// When the script fails: the tests that need its fixtures cannot run without them.
pub fn script_fixtures(
    name: &str,
    script: &Path,
    args: impl FnOnce(&Path) -> Vec<std::ffi::OsString>,
) -> PathBuf {
    let dir = workspace_root().join("target/test-fixtures").join(name);
    let stamp = script_stamp(script);
    let stamp_file = dir.join("stamp");
    if std::fs::read_to_string(&stamp_file).ok().as_deref() != Some(stamp.as_str()) {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let status = std::process::Command::new(venv_python())
            .arg(script)
            .arg("make")
            .arg(&dir)
            .args(args(&dir))
            .status()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(status.success(), "{} make failed", script.display());
        std::fs::write(&stamp_file, stamp)
            .unwrap_or_else(|e| panic!("write {}: {e}", stamp_file.display()));
    }
    dir
}
