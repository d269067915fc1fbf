//! Compile the C++ bridge (`csrc/bridge.cpp`) against the headers of the libtorch that torch-sys
//! links (the pinned wheel), the way torch-sys compiles its own wrapper; link libtorch so that
//! CUDA is not dropped by `--as-needed`; bake in an rpath to that libtorch so that test and bench
//! binaries run without LD_LIBRARY_PATH.
//!
//! Optional parts, each detected from headers and reported as a `cfg`:
//! - Gloo (`sam_torch_gloo`): Debian's `libgloo-dev` headers (`/usr/include/gloo`), or
//!   `SAM_TORCH_GLOO_INCLUDE`. libtorch_cpu already contains the Gloo code; only headers are needed.
//! - NCCL (`sam_torch_nccl`): the CUDA and NCCL headers of the wheel's `nvidia/*` packages in the
//!   same site-packages, in the CUDA 13 or the CUDA 12 layout (see `build/cuda_headers.rs`),
//!   after the directories in `SAM_TORCH_CUDA_INCLUDE` / `SAM_TORCH_NCCL_INCLUDE`
//!   (':'-separated). A CUDA libtorch without them fails the build: a binary without NCCL
//!   cannot train on more than one GPU, and would only say so on the cluster.
//!
//! `SAM_TORCH_NO_GLOO=1` / `SAM_TORCH_NO_NCCL=1` force a part off.
use std::env;
use std::path::{Path, PathBuf};

#[path = "build/cuda_headers.rs"]
mod cuda_headers;

use cuda_headers::{plan_nccl, torch_build, NcclPlan};

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

    // NCCL: the CUDA and NCCL headers of the wheel's nvidia packages (or explicit dirs).
    let site = root.parent().map(Path::to_path_buf);
    let mut extra: Vec<PathBuf> = Vec::new();
    for name in ["SAM_TORCH_CUDA_INCLUDE", "SAM_TORCH_NCCL_INCLUDE"] {
        if let Some(v) = env_rerun(name) {
            extra.extend(env::split_paths(&v));
        }
    }
    // Installing the header packages (or another torch) must rebuild the bridge.
    for watched in [root.join("version.py"), lib.join("libtorch_cuda.so")] {
        if watched.exists() {
            println!("cargo:rerun-if-changed={}", watched.display());
        }
    }
    if let Some(nvidia) = site
        .as_ref()
        .map(|s| s.join("nvidia"))
        .filter(|d| d.is_dir())
    {
        println!("cargo:rerun-if-changed={}", nvidia.display());
    }
    match plan_nccl(
        torch_build(&root, &lib),
        site.as_deref(),
        &extra,
        flag_set("SAM_TORCH_NO_NCCL"),
    ) {
        NcclPlan::Use(dirs) => {
            for d in &dirs {
                build.include(d);
            }
            build
                .define("USE_C10D_NCCL", None)
                .define("SAM_TORCH_HAVE_NCCL", None);
            println!("cargo:rustc-cfg=sam_torch_nccl");
        }
        NcclPlan::Skip(warning) => {
            if let Some(w) = warning {
                println!("cargo:warning=sam-torch: {w}");
            }
        }
        NcclPlan::Fail(message) => {
            // Cargo prints a failed build script's stderr; a panic would bury the message in
            // a backtrace.
            eprintln!("{message}");
            std::process::exit(1);
        }
    }

    build.compile("sam_torch_bridge");
}
