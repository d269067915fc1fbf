//! Where the CUDA and NCCL headers for the bridge's NCCL part are, for `build.rs`.
//!
//! The PyTorch wheels install CUDA through `nvidia-*` packages next to `torch/` in the same
//! site-packages, in one of two layouts:
//! - CUDA 13 (`torch==2.11.0`, the PyPI wheel): one tree, `nvidia/cu13/include` (runtime,
//!   cuBLAS, cuSPARSE, cuSOLVER; `crt/` from `nvidia-cuda-crt`; `cccl/` from
//!   `nvidia-cuda-cccl`), and `nvidia/nccl/include`;
//! - CUDA 12 (`torch==2.11.0+cu126` / `+cu128` from the PyTorch index): one tree per package,
//!   `nvidia/cuda_runtime/include`, `nvidia/cublas/include`, `nvidia/cusparse/include`,
//!   `nvidia/cusolver/include`, `nvidia/nccl/include`, plus `nvidia/cuda_nvcc/include` (`crt/`,
//!   from `nvidia-cuda-nvcc-cu12`) and `nvidia/cuda_cccl/include` (from `nvidia-cuda-cccl-cu12`).
//!
//! The torch wheel pulls in everything but the `crt` and `cccl` headers; `scripts/setup.sh`
//! installs those for the CUDA build it chose.
//!
//! Pure functions over a directory tree, so that the library's tests can run them on fake
//! trees (`src/lib.rs` includes this file under `cfg(test)`).
use std::path::{Path, PathBuf};

/// The headers the NCCL part includes (directly, or through `ProcessGroupNCCL.hpp` and
/// ATen's CUDA headers), each with the package that provides it in each layout.
const NEEDED: [Needed; 7] = [
    Needed {
        header: "cuda_runtime_api.h",
        cu12: "nvidia-cuda-runtime-cu12 (a torch dependency)",
        cu13: "nvidia-cuda-runtime (a torch dependency)",
    },
    Needed {
        header: "crt/host_config.h",
        cu12: "nvidia-cuda-nvcc-cu12",
        cu13: "nvidia-cuda-crt",
    },
    Needed {
        header: "nv/target",
        cu12: "nvidia-cuda-cccl-cu12",
        cu13: "nvidia-cuda-cccl",
    },
    Needed {
        header: "cublas_v2.h",
        cu12: "nvidia-cublas-cu12 (a torch dependency)",
        cu13: "nvidia-cublas (a torch dependency)",
    },
    Needed {
        header: "cusparse.h",
        cu12: "nvidia-cusparse-cu12 (a torch dependency)",
        cu13: "nvidia-cusparse (a torch dependency)",
    },
    Needed {
        header: "cusolverDn.h",
        cu12: "nvidia-cusolver-cu12 (a torch dependency)",
        cu13: "nvidia-cusolver (a torch dependency)",
    },
    Needed {
        header: "nccl.h",
        cu12: "nvidia-nccl-cu12 (a torch dependency)",
        cu13: "nvidia-nccl-cu13 (a torch dependency)",
    },
];

struct Needed {
    header: &'static str,
    cu12: &'static str,
    cu13: &'static str,
}

/// The CUDA version a libtorch was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaVersion {
    /// e.g. 13.
    pub major: u32,
    /// e.g. 0.
    pub minor: u32,
}

impl std::fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What kind of libtorch the build links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchBuild {
    /// No `libtorch_cuda.so` next to `libtorch.so`.
    Cpu,
    /// A CUDA build; the version when `torch/version.py` or `build-version` says it.
    Cuda(Option<CudaVersion>),
}

/// Parses "13.0" or "12.6".
fn parse_version(s: &str) -> Option<CudaVersion> {
    let (major, minor) = s.trim().split_once('.')?;
    Some(CudaVersion {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

/// The CUDA version in a wheel's `torch/version.py` (`cuda: Optional[str] = '13.0'`, or
/// `cuda = '12.6'` in older wheels); `None` for CPU wheels (`= None`).
fn version_py_cuda(text: &str) -> Option<CudaVersion> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("cuda")?;
        let (lhs, value) = rest.split_once('=')?;
        // `cuda_…` names are other fields.
        if !(lhs.trim().is_empty() || lhs.trim_start().starts_with(':')) {
            return None;
        }
        let value = value.trim().trim_matches(|c| c == '\'' || c == '"');
        parse_version(value)
    })
}

/// The CUDA version in a libtorch archive's `build-version` (`2.11.0+cu126`).
fn build_version_cuda(text: &str) -> Option<CudaVersion> {
    let tag = text.trim().rsplit_once("+cu")?.1;
    if tag.len() < 3 || !tag.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (major, minor) = tag.split_at(tag.len() - 1);
    Some(CudaVersion {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

/// What the libtorch at `torch_root` (with its libraries in `lib_dir`) was built for.
pub fn torch_build(torch_root: &Path, lib_dir: &Path) -> TorchBuild {
    if !lib_dir.join("libtorch_cuda.so").exists() {
        return TorchBuild::Cpu;
    }
    let read = |name: &str| std::fs::read_to_string(torch_root.join(name)).ok();
    let version = read("version.py")
        .as_deref()
        .and_then(version_py_cuda)
        .or_else(|| {
            read("build-version")
                .as_deref()
                .and_then(build_version_cuda)
        });
    TorchBuild::Cuda(version)
}

/// The include directories of a wheel layout, under `site` (site-packages), in search order.
fn layout_dirs(site: &Path, major: u32) -> Vec<PathBuf> {
    let nvidia = site.join("nvidia");
    if major >= 13 {
        let cu = nvidia.join(format!("cu{major}")).join("include");
        vec![cu.clone(), cu.join("cccl"), nvidia.join("nccl/include")]
    } else {
        [
            "cuda_runtime",
            "cuda_nvcc",
            "cuda_cccl",
            "cublas",
            "cusparse",
            "cusolver",
            "nccl",
        ]
        .iter()
        .map(|p| nvidia.join(p).join("include"))
        .collect()
    }
}

/// The `pip install` line that adds the header packages the torch wheel does not pull in.
pub fn header_packages(cuda: CudaVersion) -> String {
    let CudaVersion { major, minor } = cuda;
    if major >= 13 {
        format!("\"nvidia-cuda-crt=={major}.{minor}.*\" \"nvidia-cuda-cccl=={major}.{minor}.*\"")
    } else {
        format!(
            "\"nvidia-cuda-nvcc-cu{major}=={major}.{minor}.*\" \"nvidia-cuda-cccl-cu{major}=={major}.{minor}.*\""
        )
    }
}

/// What to do about NCCL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NcclPlan {
    /// Compile the NCCL part with these include directories (in this order).
    Use(Vec<PathBuf>),
    /// Build without NCCL; the text, when there is one, is a warning to show.
    Skip(Option<String>),
    /// Stop the build with this message.
    Fail(String),
}

/// Decides whether the NCCL part is compiled.
///
/// - A CPU libtorch: no NCCL, quietly (nothing could run it).
/// - A CUDA libtorch: the headers must be found in `extra` (`SAM_TORCH_CUDA_INCLUDE` /
///   `SAM_TORCH_NCCL_INCLUDE`) or in the wheel layout of its CUDA major version under `site`
///   (both layouts when the version is unknown); if some are missing the build fails with
///   what is missing and how to install it, unless `opted_out` (`SAM_TORCH_NO_NCCL=1`).
pub fn plan_nccl(
    build: TorchBuild,
    site: Option<&Path>,
    extra: &[PathBuf],
    opted_out: bool,
) -> NcclPlan {
    let cuda = match build {
        TorchBuild::Cpu => return NcclPlan::Skip(None),
        TorchBuild::Cuda(_) if opted_out => {
            return NcclPlan::Skip(Some(
                "SAM_TORCH_NO_NCCL is set: building without NCCL; multi-GPU training \
                 (ProcessGroup::new_nccl) will return an error"
                    .to_owned(),
            ))
        }
        TorchBuild::Cuda(v) => v,
    };
    let majors: Vec<u32> = match cuda {
        Some(v) => vec![v.major],
        None => vec![13, 12],
    };
    let mut best: Option<(Vec<&'static str>, Vec<PathBuf>, u32)> = None;
    for &major in &majors {
        let mut dirs: Vec<PathBuf> = extra.to_vec();
        if let Some(site) = site {
            dirs.extend(layout_dirs(site, major));
        }
        let missing: Vec<&'static str> = NEEDED
            .iter()
            .filter(|n| !dirs.iter().any(|d| d.join(n.header).is_file()))
            .map(|n| n.header)
            .collect();
        if missing.is_empty() {
            let mut used: Vec<PathBuf> = Vec::new();
            for d in dirs {
                if d.is_dir() && !used.contains(&d) {
                    used.push(d);
                }
            }
            return NcclPlan::Use(used);
        }
        if best
            .as_ref()
            .is_none_or(|(m, _, _)| missing.len() < m.len())
        {
            best = Some((missing, dirs, major));
        }
    }
    let Some((missing, dirs, major)) = best else {
        return NcclPlan::Skip(None);
    };
    let version = cuda.unwrap_or(CudaVersion { major, minor: 0 });
    let lines: Vec<String> = missing
        .iter()
        .filter_map(|h| NEEDED.iter().find(|n| n.header == *h))
        .map(|n| {
            let package = if major >= 13 { n.cu13 } else { n.cu12 };
            format!("  {}: from {package}", n.header)
        })
        .collect();
    let searched: Vec<String> = dirs.iter().map(|d| format!("  {}", d.display())).collect();
    let built_for = cuda.map_or("an unknown CUDA version".to_owned(), |v| {
        format!("CUDA {v}")
    });
    NcclPlan::Fail(format!(
        "sam-torch: libtorch is a CUDA build ({built_for}) but the headers for its NCCL \
         process group are missing:\n{}\nsearched:\n{}\nfix: scripts/setup.sh{} (or \
         .venv/bin/pip install {}), or point SAM_TORCH_CUDA_INCLUDE / SAM_TORCH_NCCL_INCLUDE \
         at a CUDA toolkit's and NCCL's include directories (':'-separated lists); or set \
         SAM_TORCH_NO_NCCL=1 to build without NCCL (no multi-GPU training)",
        lines.join("\n"),
        searched.join("\n"),
        match cuda {
            Some(v) if v.major >= 13 => String::new(),
            Some(v) => format!(" --cuda {v}"),
            None => " --cuda <the CUDA version of your torch>".to_owned(),
        },
        header_packages(version),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Creates `files` (relative paths) under `root`.
    fn touch(root: &Path, files: &[&str]) {
        for f in files {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
    }

    const CU13_TREE: [&str; 7] = [
        "nvidia/cu13/include/cuda_runtime_api.h",
        "nvidia/cu13/include/crt/host_config.h",
        "nvidia/cu13/include/cccl/nv/target",
        "nvidia/cu13/include/cublas_v2.h",
        "nvidia/cu13/include/cusparse.h",
        "nvidia/cu13/include/cusolverDn.h",
        "nvidia/nccl/include/nccl.h",
    ];

    const CU12_TREE: [&str; 7] = [
        "nvidia/cuda_runtime/include/cuda_runtime_api.h",
        "nvidia/cuda_nvcc/include/crt/host_config.h",
        "nvidia/cuda_cccl/include/nv/target",
        "nvidia/cublas/include/cublas_v2.h",
        "nvidia/cusparse/include/cusparse.h",
        "nvidia/cusolver/include/cusolverDn.h",
        "nvidia/nccl/include/nccl.h",
    ];

    fn cuda(major: u32, minor: u32) -> TorchBuild {
        TorchBuild::Cuda(Some(CudaVersion { major, minor }))
    }

    /// A fake site-packages with a wheel's `torch/lib` (CUDA or CPU) and `torch/version.py`.
    fn fake_torch(site: &Path, version_py_cuda: Option<&str>) -> (PathBuf, PathBuf) {
        let root = site.join("torch");
        let lib = root.join("lib");
        touch(&lib, &["libtorch.so", "libtorch_cpu.so"]);
        let value = match version_py_cuda {
            Some(v) => {
                touch(&lib, &["libtorch_cuda.so"]);
                format!("'{v}'")
            }
            None => "None".to_owned(),
        };
        std::fs::write(
            root.join("version.py"),
            format!(
                "__version__ = '2.11.0'\ndebug = False\ncuda: Optional[str] = {value}\n\
                 git_version = 'x'\nhip: Optional[str] = None\n"
            ),
        )
        .unwrap();
        (root, lib)
    }

    #[test]
    fn cu13_wheel_layout_is_found() {
        let t = tempfile::tempdir().unwrap();
        let site = t.path();
        touch(site, &CU13_TREE);
        let (root, lib) = fake_torch(site, Some("13.0"));
        let build = torch_build(&root, &lib);
        assert_eq!(build, cuda(13, 0));
        let want = vec![
            site.join("nvidia/cu13/include"),
            site.join("nvidia/cu13/include/cccl"),
            site.join("nvidia/nccl/include"),
        ];
        assert_eq!(
            plan_nccl(build, Some(site), &[], false),
            NcclPlan::Use(want)
        );
    }

    #[test]
    fn cu12_wheel_layout_is_found_and_a_leftover_cu13_tree_is_ignored() {
        let t = tempfile::tempdir().unwrap();
        let site = t.path();
        touch(site, &CU12_TREE);
        // What a switch from the CUDA 13 wheel can leave behind.
        touch(site, &CU13_TREE);
        let (root, lib) = fake_torch(site, Some("12.6"));
        let build = torch_build(&root, &lib);
        assert_eq!(build, cuda(12, 6));
        let NcclPlan::Use(dirs) = plan_nccl(build, Some(site), &[], false) else {
            panic!("cu12 headers not found");
        };
        assert_eq!(dirs.len(), 7, "{dirs:?}");
        assert!(dirs.contains(&site.join("nvidia/cuda_nvcc/include")));
        assert!(dirs.contains(&site.join("nvidia/cuda_cccl/include")));
        assert!(
            dirs.iter().all(|d| !d.to_string_lossy().contains("cu13")),
            "{dirs:?}"
        );
    }

    #[test]
    fn cuda_build_without_crt_headers_fails_with_the_fix() {
        let t = tempfile::tempdir().unwrap();
        let site = t.path();
        let partial: Vec<&str> = CU12_TREE
            .iter()
            .copied()
            .filter(|f| !f.contains("cuda_nvcc") && !f.contains("cuda_cccl"))
            .collect();
        touch(site, &partial);
        let NcclPlan::Fail(msg) = plan_nccl(cuda(12, 8), Some(site), &[], false) else {
            panic!("a CUDA build without crt/cccl headers must fail");
        };
        for part in [
            "CUDA 12.8",
            "crt/host_config.h: from nvidia-cuda-nvcc-cu12",
            "nv/target: from nvidia-cuda-cccl-cu12",
            "scripts/setup.sh --cuda 12.8",
            "\"nvidia-cuda-nvcc-cu12==12.8.*\" \"nvidia-cuda-cccl-cu12==12.8.*\"",
            "SAM_TORCH_NO_NCCL=1",
            "nvidia/cuda_nvcc/include",
        ] {
            assert!(msg.contains(part), "missing `{part}` in:\n{msg}");
        }
        assert!(
            !msg.contains("cusparse.h"),
            "found headers listed as missing:\n{msg}"
        );
    }

    #[test]
    fn cu13_build_without_any_headers_fails_and_can_opt_out() {
        let t = tempfile::tempdir().unwrap();
        let NcclPlan::Fail(msg) = plan_nccl(cuda(13, 0), Some(t.path()), &[], false) else {
            panic!("must fail");
        };
        assert!(msg.contains("nccl.h: from nvidia-nccl-cu13"), "{msg}");
        assert!(msg.contains("\"nvidia-cuda-crt==13.0.*\""), "{msg}");
        let NcclPlan::Skip(Some(warning)) = plan_nccl(cuda(13, 0), Some(t.path()), &[], true)
        else {
            panic!("opting out must skip with a warning");
        };
        assert!(warning.contains("SAM_TORCH_NO_NCCL"), "{warning}");
    }

    #[test]
    fn cpu_libtorch_needs_no_nccl_headers() {
        let t = tempfile::tempdir().unwrap();
        let (root, lib) = fake_torch(t.path(), None);
        let build = torch_build(&root, &lib);
        assert_eq!(build, TorchBuild::Cpu);
        assert_eq!(
            plan_nccl(build, Some(t.path()), &[], false),
            NcclPlan::Skip(None)
        );
        // Even with a stray CUDA tree in site-packages.
        touch(t.path(), &CU13_TREE);
        assert_eq!(
            plan_nccl(build, Some(t.path()), &[], false),
            NcclPlan::Skip(None)
        );
    }

    #[test]
    fn explicit_directories_come_first_and_may_replace_the_wheel() {
        let t = tempfile::tempdir().unwrap();
        // A system toolkit: one include dir with everything but NCCL, NCCL elsewhere.
        touch(
            t.path(),
            &[
                "cuda/include/cuda_runtime_api.h",
                "cuda/include/crt/host_config.h",
                "cuda/include/nv/target",
                "cuda/include/cublas_v2.h",
                "cuda/include/cusparse.h",
                "cuda/include/cusolverDn.h",
                "nccl/include/nccl.h",
            ],
        );
        let extra = vec![t.path().join("cuda/include"), t.path().join("nccl/include")];
        assert_eq!(
            plan_nccl(cuda(12, 6), None, &extra, false),
            NcclPlan::Use(extra.clone())
        );
        // Explicit directories before the wheel's, which still fill in.
        let site = t.path().join("site");
        touch(&site, &CU12_TREE);
        let NcclPlan::Use(dirs) = plan_nccl(cuda(12, 6), Some(&site), &extra[1..], false) else {
            panic!("must be found");
        };
        assert_eq!(dirs[0], extra[1]);
        assert_eq!(dirs.len(), 8, "the 7 wheel directories follow: {dirs:?}");
    }

    #[test]
    fn unknown_cuda_version_tries_both_layouts() {
        let t = tempfile::tempdir().unwrap();
        touch(t.path(), &CU12_TREE);
        assert!(matches!(
            plan_nccl(TorchBuild::Cuda(None), Some(t.path()), &[], false),
            NcclPlan::Use(d) if d.len() == 7
        ));
    }

    /// `scripts/setup.sh --print-plan` of a repository copy whose stamp is `stamp`.
    fn setup_plan(stamp: Option<&str>, args: &[&str]) -> (i32, String) {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("scripts")).unwrap();
        for f in [
            "setup.sh",
            "requirements-test.txt",
            "requirements-test-nodeps.txt",
            "requirements-bench.txt",
        ] {
            std::fs::copy(
                repo.join("scripts").join(f),
                t.path().join("scripts").join(f),
            )
            .unwrap();
        }
        if let Some(stamp) = stamp {
            std::fs::create_dir_all(t.path().join(".venv")).unwrap();
            std::fs::write(t.path().join(".venv/.sam_trainer_setup"), stamp).unwrap();
        }
        let out = std::process::Command::new("bash")
            .arg(t.path().join("scripts/setup.sh"))
            .arg("--print-plan")
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        // --print-plan changes nothing: no virtual environment appears.
        assert_eq!(t.path().join(".venv").exists(), stamp.is_some());
        (out.status.code().unwrap_or(-1), text.replace('\\', ""))
    }

    /// The line of `plan` that starts with `key: `.
    fn plan_line<'a>(plan: &'a str, key: &str) -> &'a str {
        plan.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no `{key}:` line in:\n{plan}"))
    }

    #[test]
    fn setup_sh_installs_the_torch_build_and_the_headers_this_build_searches() {
        for (cuda, tag, index) in [
            ("13.0", "cu130", None),
            (
                "12.8",
                "cu128",
                Some("https://download.pytorch.org/whl/cu128"),
            ),
            (
                "12.6",
                "cu126",
                Some("https://download.pytorch.org/whl/cu126"),
            ),
        ] {
            let (code, plan) = setup_plan(None, &["--cuda", cuda]);
            assert_eq!(code, 0, "{plan}");
            let version = parse_version(cuda).unwrap();
            assert_eq!(plan_line(&plan, "cuda"), format!("{cuda} (--cuda)"));
            assert_eq!(plan_line(&plan, "torch"), format!("2.11.0+{tag}"));
            let torch = plan_line(&plan, "install torch");
            match index {
                // PyPI's wheel is the CUDA 13.0 build; its metadata has no local version.
                None => assert!(
                    torch.ends_with("pip install torch==2.11.0 torchvision==0.26.0"),
                    "{torch}"
                ),
                Some(url) => assert!(
                    torch.ends_with(&format!(
                        "pip install --index-url {url} torch==2.11.0+{tag} \
                         torchvision==0.26.0+{tag}"
                    )),
                    "{torch}"
                ),
            }
            // The header packages are the ones build.rs names when they are missing.
            let headers = plan_line(&plan, "install headers");
            assert!(
                headers.ends_with(&header_packages(version).replace('"', "")),
                "{headers} vs {}",
                header_packages(version)
            );
            let tests = plan_line(&plan, "install test packages");
            assert!(
                tests.contains(&format!(
                    "torch==2.11.0{}",
                    index.map_or(String::new(), |_| format!("+{tag}"))
                )),
                "{tests}"
            );
            assert_eq!(
                tests.contains("--extra-index-url"),
                index.is_some(),
                "{tests}"
            );
            assert!(plan_line(&plan, "stamp").starts_with(&format!("torch=2.11.0+{tag} ")));
            assert!(
                plan_line(&plan, "nvidia driver").starts_with(">= 5"),
                "{plan}"
            );
        }
    }

    #[test]
    fn setup_sh_keeps_the_installed_build_unless_told_otherwise() {
        // The first setup (or a stamp from before --cuda existed) takes PyPI's CUDA 13.0.
        for stamp in [None, Some("torch=2.11.0 tv=0.26.0 0123456789abcdef\n")] {
            let (code, plan) = setup_plan(stamp, &[]);
            assert_eq!(code, 0, "{plan}");
            assert_eq!(plan_line(&plan, "cuda"), "13.0 (default: PyPI's wheel)");
        }
        // A CUDA 12.6 setup stays one when test.sh or demo.sh run setup.sh without flags...
        let cu126 = Some("torch=2.11.0+cu126 tv=0.26.0 0123456789abcdef\n");
        let (_, plan) = setup_plan(cu126, &[]);
        assert_eq!(
            plan_line(&plan, "cuda"),
            "12.6 (kept from the last setup; --cuda changes it)"
        );
        // ...and a different choice plans the other build, under another stamp, so that the
        // real run reinstalls.
        let (_, plan) = setup_plan(cu126, &["--cuda", "13.0"]);
        assert_eq!(plan_line(&plan, "torch"), "2.11.0+cu130");
        assert!(plan_line(&plan, "stamp").starts_with("torch=2.11.0+cu130 "));
        // Anything else is a usage error.
        for bad in [&["--cuda", "11.8"][..], &["--cuda"], &["--gpu"]] {
            let (code, text) = setup_plan(None, bad);
            assert_eq!(code, 2, "{bad:?}: {text}");
            assert!(text.starts_with("error: "), "{text}");
        }
    }

    #[test]
    fn versions_are_read_from_version_py_and_build_version() {
        assert_eq!(
            version_py_cuda("debug = False\ncuda: Optional[str] = '13.0'\n"),
            Some(CudaVersion {
                major: 13,
                minor: 0
            })
        );
        assert_eq!(
            version_py_cuda("cuda = '12.6'\n"),
            Some(CudaVersion {
                major: 12,
                minor: 6
            })
        );
        assert_eq!(version_py_cuda("cuda: Optional[str] = None\n"), None);
        assert_eq!(version_py_cuda("cuda_version = '12.6'\n"), None);
        assert_eq!(
            build_version_cuda("2.11.0+cu126\n"),
            Some(CudaVersion {
                major: 12,
                minor: 6
            })
        );
        assert_eq!(
            build_version_cuda("2.11.0+cu130"),
            Some(CudaVersion {
                major: 13,
                minor: 0
            })
        );
        assert_eq!(build_version_cuda("2.11.0+cpu"), None);
        // A libtorch archive: no version.py, a build-version file.
        let t = tempfile::tempdir().unwrap();
        touch(t.path(), &["lib/libtorch_cuda.so"]);
        std::fs::write(t.path().join("build-version"), "2.11.0+cu128\n").unwrap();
        assert_eq!(torch_build(t.path(), &t.path().join("lib")), cuda(12, 8));
    }
}
