//! With the `model` feature (torch-sys is then a dependency): link libtorch so that CUDA is not
//! dropped by `--as-needed`, and bake in an rpath to the libtorch of the pinned wheel, so that
//! test binaries run without LD_LIBRARY_PATH. Without the feature this does nothing.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
}
