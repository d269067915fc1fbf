//! Compile the C++ bridge (`csrc/bridge.cpp`) against the headers of the libtorch that torch-sys
//! links (the pinned wheel), the way torch-sys compiles its own wrapper; link libtorch so that
//! CUDA is not dropped by `--as-needed`; bake in an rpath to that libtorch so that test and bench
//! binaries run without LD_LIBRARY_PATH.
//!
//! Optional parts, each detected from headers and reported as a `cfg`:
//! - Gloo (`sam_torch_gloo`): Debian's `libgloo-dev` headers (`/usr/include/gloo`), or
//!   `SAM_TORCH_GLOO_INCLUDE`. libtorch_cpu already contains the Gloo code; only headers are needed.
//! - NCCL (`sam_torch_nccl`): the CUDA and NCCL headers of the wheel's `nvidia/*` packages in the
//!   same site-packages (`nvidia/cu13/include`, its `cccl` and `crt`, `nvidia/nccl/include`), or
//!   `SAM_TORCH_CUDA_INCLUDE` / `SAM_TORCH_NCCL_INCLUDE`.
//!
//! `SAM_TORCH_NO_GLOO=1` / `SAM_TORCH_NO_NCCL=1` force a part off.
use std::env;
use std::path::{Path, PathBuf};

fn env_rerun(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn flag_set(name: &str) -> bool {
    matches!(
        env_rerun(name).as_deref(),
        Some("1") | Some("true") | Some("yes")
    )
}

fn main() {
    println!("cargo:rerun-if-changed=csrc/bridge.cpp");
    println!("cargo:rustc-check-cfg=cfg(sam_torch_gloo)");
    println!("cargo:rustc-check-cfg=cfg(sam_torch_nccl)");

    // torch-sys (links = "tch") exports the lib dir of the libtorch it links.
    let Some(lib) = env_rerun("DEP_TCH_LIBTORCH_LIB") else {
        panic!("DEP_TCH_LIBTORCH_LIB is not set: torch-sys did not report its libtorch; run scripts/setup.sh");
    };
    let lib = PathBuf::from(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");

    // Same include dirs as torch-sys: LIBTORCH_INCLUDE, else the libtorch root (lib's parent).
    let root = env_rerun("LIBTORCH_INCLUDE")
        .map(PathBuf::from)
        .or_else(|| lib.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| lib.clone());
    let abi = env_rerun("LIBTORCH_CXX11_ABI").unwrap_or_else(|| "1".to_owned());

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/bridge.cpp");

    // Gloo: headers only.
    let gloo_inc = env_rerun("SAM_TORCH_GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    if !flag_set("SAM_TORCH_NO_GLOO") && gloo_inc.join("gloo/config.h").exists() {
        build.include(&gloo_inc).define("USE_C10D_GLOO", None);
        build.define("SAM_TORCH_HAVE_GLOO", None);
        println!("cargo:rustc-cfg=sam_torch_gloo");
    } else {
        println!(
            "cargo:warning=sam-torch: Gloo headers not found under {} (install libgloo-dev); \
             ProcessGroup::new_gloo will return an error",
            gloo_inc.display()
        );
    }

    // NCCL: CUDA runtime + crt + cccl + nccl headers from the wheel's nvidia packages.
    let site = root.parent().map(Path::to_path_buf).unwrap_or_default();
    let cuda_inc = env_rerun("SAM_TORCH_CUDA_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| site.join("nvidia/cu13/include"));
    let nccl_inc = env_rerun("SAM_TORCH_NCCL_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| site.join("nvidia/nccl/include"));
    let nccl_ok = cuda_inc.join("cuda_runtime_api.h").exists()
        && cuda_inc.join("crt/host_config.h").exists()
        && cuda_inc.join("cccl").is_dir()
        && nccl_inc.join("nccl.h").exists();
    if !flag_set("SAM_TORCH_NO_NCCL") && nccl_ok {
        build
            .include(&cuda_inc)
            .include(cuda_inc.join("cccl"))
            .include(&nccl_inc)
            .define("USE_C10D_NCCL", None)
            .define("SAM_TORCH_HAVE_NCCL", None);
        println!("cargo:rustc-cfg=sam_torch_nccl");
    } else if !flag_set("SAM_TORCH_NO_NCCL") {
        println!(
            "cargo:warning=sam-torch: CUDA/NCCL headers not found under {} and {} \
             (pip install \"nvidia-cuda-crt==13.0.*\" \"nvidia-cuda-cccl==13.0.*\"); \
             building without NCCL, ProcessGroup::new_nccl will return an error",
            cuda_inc.display(),
            nccl_inc.display()
        );
    }

    build.compile("sam_torch_bridge");
}
