//! `sam-train fit` end to end on the tiny CPU config (each try a child process measured by its
//! peak resident set), and the memory estimate that `sam-train validate` prints.

use std::process::{Command, Output};

use serde_json::Value;

use crate::{repo_with_config, BIN};
use sam_testkit::ConfigBuilder;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fit_measures_each_try_and_stops_at_the_budget() {
    let builder = ConfigBuilder::named("fit").tiny_cpu_training();
    let (repo, config) = repo_with_config("fit", &builder);
    let json = repo.join("fit.json");
    // A generous budget: batch sizes 2 (the config's) and 4 both fit; 4 is the limit asked for.
    let out = Command::new(BIN)
        .arg("fit")
        .arg(&config)
        .arg("--root")
        .arg(repo.path())
        .args([
            "--budget-gib",
            "64",
            "--vary",
            "batch-size",
            "--max-batch-size",
            "4",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "fit failed:\n{stdout}\n{stderr}");
    // Progress per try on stderr, the table and the answer on stdout.
    assert!(
        stderr.contains("try 1: batch_size 2 × 3 objects: peak "),
        "{stderr}"
    );
    assert!(
        stderr.contains("try 2: batch_size 4 × 3 objects: peak "),
        "{stderr}"
    );
    assert!(
        stdout.contains("largest batch size at 3 objects per image: 4 (the largest tried"),
        "{stdout}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["budget_bytes"], Value::from(64u64 << 30));
    assert_eq!(report["device"], "cpu");
    let tries = report["report"]["tries"].as_array().unwrap();
    assert_eq!(tries.len(), 2, "{report:#}");
    let mut peaks = Vec::new();
    for (t, batch) in tries.iter().zip([2, 4]) {
        assert_eq!(t["setting"]["batch_size"], batch);
        assert_eq!(t["setting"]["objects"], 3);
        assert_eq!(t["verdict"], "fits");
        assert_eq!(t["measurement"]["outcome"], "ran");
        peaks.push(t["measurement"]["peak_bytes"].as_u64().unwrap());
    }
    // Each peak is its own process's: libtorch's runtime at least (> 100 MiB), far below the
    // budget, and above the resident set the try had before its steps.
    let details = report["details"].as_array().unwrap();
    for (peak, d) in peaks.iter().zip(details) {
        assert!((100 << 20..4 << 30).contains(peak), "{peak}");
        let baseline = d["baseline_bytes"].as_u64().unwrap();
        assert!(baseline < *peak, "{baseline} vs {peak}");
        assert!(d["trainable_parameters"].as_i64().unwrap() > 10_000);
    }
    // The estimate `validate` prints is calibrated on such measurements (docs/fit.md): within
    // 25 % of the measured peak of the config's own setting.
    let estimate = builder.parse().unwrap().estimate_peak_memory().peak_bytes as f64;
    let ratio = estimate / peaks[0] as f64;
    assert!(
        (0.75..1.25).contains(&ratio),
        "estimate {estimate} vs measured {}",
        peaks[0]
    );
    assert_eq!(report["report"]["results"][0]["largest"], 4);
    assert_eq!(report["report"]["results"][0]["at_limit"], true);

    // 50 MiB is less than libtorch alone: every try passes the budget and is stopped; the
    // search shrinks from the config's batch size to 1 and finds nothing. Exit status 1.
    let out = Command::new(BIN)
        .arg("fit")
        .arg(&config)
        .arg("--root")
        .arg(repo.path())
        .args(["--budget-gib", "0.05", "--vary", "batch-size"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("try 1: batch_size 2 × 3 objects: out of memory (at least "),
        "{stderr}"
    );
    assert!(
        stderr.contains("try 2: batch_size 1 × 3 objects: out of memory"),
        "{stderr}"
    );
    assert!(
        stdout.contains("largest batch size at 3 objects per image: none"),
        "{stdout}"
    );
}

#[test]
fn validate_prints_the_estimated_peak_memory() {
    let builder = ConfigBuilder::named("est").tiny_cpu_training();
    let (repo, config) = repo_with_config("est", &builder);
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&config)
        .arg("--root")
        .arg(repo.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let e = builder.parse().unwrap().estimate_peak_memory();
    let want = format!(
        "estimated peak memory ~{:.1} GiB of RAM at batch_size 2 × 3 objects",
        e.peak_bytes as f64 / (1u64 << 30) as f64
    );
    assert!(stdout.contains(&want), "{stdout}");
    assert!(stdout.contains("estimated training time ~"), "{stdout}");
}
