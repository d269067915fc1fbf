//! Benchmark (run by hand, not a test): sam-eval's metrics vs elf's on a 2048×2048 pair with
//! about 1000 objects each, in one run, one thread each.
//!
//! ```text
//! cargo bench -p sam-eval --bench metrics -- [REPEATS]
//! ```
//! The pair is generated once by `benches/elf_peer.py generate` into
//! `target/bench-data/sam-eval/{gt,pred}/pair.tif`; the same script then times elf.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sam_eval::score_image;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repeats: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    let peer = root.join("crates/sam-eval/benches/elf_peer.py");
    let data = root.join("target/bench-data/sam-eval");
    if !data.join("pred/pair.tif").is_file() {
        let ok = Command::new(&python)
            .arg(&peer)
            .arg("generate")
            .arg(&data)
            .status()?
            .success();
        if !ok {
            return Err("generating the benchmark pair failed (run scripts/setup.sh)".into());
        }
    }

    // elf, one thread (numpy/BLAS pools pinned to 1).
    let out = Command::new(&python)
        .arg(&peer)
        .arg("time")
        .arg(&data)
        .arg(repeats.to_string())
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .output()?;
    if !out.status.success() {
        return Err(format!("elf peer failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let elf: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut elf_times: Vec<f64> = elf["times_s"]
        .as_array()
        .ok_or("times_s")?
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();

    // Ours: score_image is single-threaded.
    let t0 = Instant::now();
    let gt = sam_data::read_labels(data.join("gt/pair.tif"))?;
    let pred = sam_data::read_labels(data.join("pred/pair.tif"))?;
    let read_s = t0.elapsed().as_secs_f64();
    let mut ours_times = Vec::with_capacity(repeats);
    let mut scores = None;
    for _ in 0..repeats {
        let t0 = Instant::now();
        let s = score_image(gt.as_slice(), pred.as_slice())?;
        ours_times.push(t0.elapsed().as_secs_f64());
        scores = Some(s);
    }
    let s = scores.ok_or("no repeats")?;

    // Scores come as repr strings so that they parse to the exact f64 elf produced.
    let exact = |v: &serde_json::Value| v.as_str().and_then(|t| t.parse::<f64>().ok());
    let f = |k: &str| exact(&elf[k]).unwrap_or(f64::NAN);
    let elf_sa: Vec<f64> = elf["accuracies"]
        .as_array()
        .ok_or("accuracies")?
        .iter()
        .filter_map(exact)
        .collect();
    let mut max_diff = 0.0f64;
    for (i, (a, b)) in elf_sa.iter().zip(&s.sa).enumerate() {
        max_diff = max_diff.max((a - b).abs());
        if a != b {
            println!("SA[{i}] differs: elf {a:e}, ours {b:e}");
        }
    }
    for (a, b) in [
        (f("msa"), s.msa),
        (f("precision"), s.precision),
        (f("recall"), s.recall),
        (f("f1"), s.f1),
    ] {
        max_diff = max_diff.max((a - b).abs());
    }
    let identical = elf_sa == s.sa
        && f("msa") == s.msa
        && f("precision") == s.precision
        && f("recall") == s.recall
        && f("f1") == s.f1;

    let (elf_med, ours_med) = (median(&mut elf_times), median(&mut ours_times));
    println!(
        "pair: {}x{}, {} gt / {} predicted objects",
        gt.cols(),
        gt.rows(),
        s.n_true,
        s.n_pred
    );
    println!("repeats: {repeats}, one thread each");
    println!("| | median s | min s |");
    println!("|---|---|---|");
    println!(
        "| elf mean_segmentation_accuracy + matching | {elf_med:.4} | {:.4} |",
        elf_times[0]
    );
    println!(
        "| sam-eval score_image | {ours_med:.4} | {:.4} |",
        ours_times[0]
    );
    println!("speed-up (median): {:.1}x", elf_med / ours_med);
    println!(
        "reading both TIFFs: sam-data {read_s:.4} s, tifffile {:.4} s",
        elf["read_s"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "mSA {} (elf {}), SA50 {}, SA75 {}, P {} R {} F1 {}",
        s.msa,
        f("msa"),
        s.sa50,
        s.sa75,
        s.precision,
        s.recall,
        s.f1
    );
    println!("max |ours - elf| = {max_diff:e}; bit-identical: {identical}");
    Ok(())
}
