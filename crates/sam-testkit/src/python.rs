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
