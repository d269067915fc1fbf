//! The repository's Python environment, which tests run to write reference fixtures.

use std::path::PathBuf;

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

/// A folder of reference fixtures that `script` writes: `script make DIR ARGS...` runs with
/// [`venv_python`] into `target/test-fixtures/<name>`, once, and again whenever the script's
/// text changes (a stamp of its bytes is kept beside the fixtures). `args` gives the extra
/// arguments from the folder.
///
/// # Panics
/// When the script fails: the tests that need its fixtures cannot run without them.
pub fn script_fixtures(
    name: &str,
    script: &std::path::Path,
    args: impl FnOnce(&std::path::Path) -> Vec<std::ffi::OsString>,
) -> PathBuf {
    let dir = workspace_root().join("target/test-fixtures").join(name);
    let source = std::fs::read(script)
        .unwrap_or_else(|e| panic!("fixture script {}: {e}", script.display()));
    let stamp = format!(
        "{:x}",
        source
            .iter()
            .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
    );
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
