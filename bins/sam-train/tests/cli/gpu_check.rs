//! `scripts/gpu_check.sh --rehearse`: every step of the GPU check run on the CPU with tiny
//! sizes, so that the script and the programs it drives keep working before a GPU runs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::BIN;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// target/debug, where `cargo test --workspace` leaves every executable and example.
fn bin_dir() -> PathBuf {
    let dir = Path::new(BIN).parent().unwrap().to_path_buf();
    for exe in [
        "sam-augment",
        "sam-infer",
        "examples/gpu_check",
        "examples/device_check",
    ] {
        assert!(
            dir.join(exe).is_file(),
            "{} is missing: the rehearsal needs the whole workspace built \
             (cargo test --workspace, or cargo build --workspace --examples)",
            dir.join(exe).display()
        );
    }
    dir
}

fn gpu_check(args: &[&Path]) -> std::process::Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/gpu_check.sh"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_rehearsal_runs_every_step_and_writes_both_reports() {
    let out = tempfile::tempdir().unwrap();
    let report = out.path().join("report");
    let bin = bin_dir();
    let run = gpu_check(&[&report, Path::new("--bin"), &bin, Path::new("--rehearse")]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let logs = || {
        std::fs::read_dir(report.join("logs"))
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(15).collect();
                        format!("--- {}\n{}", e.path().display(), tail.join("\n"))
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    assert!(
        run.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        logs()
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["rehearsal"], true);
    assert_eq!(json["ok"], true);
    let steps: Vec<(&str, &str)> = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    let names: Vec<&str> = steps.iter().map(|s| s.0).collect();
    assert_eq!(
        names,
        [
            "preflight",
            "cuda_nccl",
            "parity",
            "encoder",
            "data",
            "train_tiny",
            "train_a100",
            "train_a40",
            "memory",
            "ais",
            "resume"
        ]
    );
    assert!(steps.iter().all(|s| s.1 == "ok"), "{steps:?}");
    // The step results carry the numbers the GPU run is for.
    let result = |name: &str| {
        json["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["result"].as_str())
            .unwrap()
            .to_string()
    };
    assert!(
        result("train_a100").contains("s per iteration"),
        "{}",
        result("train_a100")
    );
    // One fit try per memory option, each with its peak and verdict.
    let memory = result("memory");
    for name in [
        "vit_b_full",
        "vit_b_ac_all",
        "vit_b_lora_last2",
        "vit_b_native",
        "vit_l_ac_all",
        "vit_h_ac_all",
    ] {
        assert!(memory.contains(&format!("{name} ")), "{name}: {memory}");
        let fit: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(report.join(format!("memory_{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            fit["report"]["tries"].as_array().unwrap().len(),
            1,
            "{name}"
        );
    }
    assert!(memory.contains("fits"), "{memory}");
    assert!(
        result("resume").contains("exit 42 on both ranks"),
        "{}",
        result("resume")
    );
    let parity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("parity.json")).unwrap())
            .unwrap();
    assert_eq!(parity["ok"], true);
    assert_eq!(parity["cases"].as_array().unwrap().len(), 4);
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("| resume | ok |"), "{md}");

    // A rerun of chosen steps: the others are reported as skipped, data runs for training.
    let rerun = out.path().join("rerun");
    let only = gpu_check(&[
        &rerun,
        Path::new("--bin"),
        &bin,
        Path::new("--rehearse"),
        Path::new("--only"),
        Path::new("train_tiny"),
    ]);
    assert!(
        only.status.success(),
        "{}",
        String::from_utf8_lossy(&only.stdout)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rerun.join("report.json")).unwrap()).unwrap();
    let ran: Vec<&str> = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "ok")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(ran, ["data", "train_tiny"]);
    let bad = gpu_check(&[
        &out.path().join("r2"),
        Path::new("--only"),
        Path::new("trian"),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown step 'trian'"));

    // A report folder is never overwritten.
    let again = gpu_check(&[&report, Path::new("--rehearse")]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

#[test]
fn missing_executables_are_named_before_any_step() {
    let out = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let run = gpu_check(&[&out.path().join("r"), Path::new("--bin"), empty.path()]);
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("no executable 'sam-train'"), "{err}");
    assert!(!out.path().join("r/report.json").exists());
}
