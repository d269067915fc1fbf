//! The one build script of every crate whose binaries link libtorch (each crate's Cargo.toml
//! names this file as `build`): link libtorch explicitly, so that its CUDA part is not dropped
//! by `--as-needed`, and bake in an rpath to the libtorch of the pinned wheel, so that test and
//! bench binaries run without LD_LIBRARY_PATH.
//!
//! torch-sys (`links = "tch"`) reports that libtorch's lib directory as `DEP_TCH_LIBTORCH_LIB`
//! to the build scripts of the crates that depend on it directly. Where torch-sys is only an
//! optional dependency (sam-eval's `model` feature) and is off, the variable is absent and this
//! does nothing. sam-torch has a build script of its own (it also compiles the C++ bridge).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
}
