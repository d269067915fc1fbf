//! Benchmark of the data path, run by hand (see docs/benchmarks/data.md and
//! scripts/bench/data_bench.sh, which runs the Python peers on the same data):
//!
//! ```text
//! cargo run --release -p sam-data --example bench_data -- OUT_DIR [N_AUG] [N_AUG_NO_ELASTIC]
//! ```
//!
//! 1. augmentation of 2048x2048 16-bit images, in memory, all operations at p = 0.5
//!    (the default `AugmentConfig`), with and without the elastic operation;
//! 2. AIS targets of a 512x512 patch with ~110 touching objects (written to
//!    `OUT_DIR/ais_patch_labels.tif` for the torch_em peer).
//!
//! Source images are written to `OUT_DIR/source/{images,labels}` for the albumentations peer.
use std::time::Instant;

use rayon::prelude::*;
use sam_data::{
    ais_targets, augment_pair, synthesize, write_image, write_labels, AugmentConfig, SynthConfig,
};

/// CPU seconds used by this process so far (user + system), from /proc (Linux only).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Large tensors and images: keep freed memory for reuse (see sam_cli::memory).
    sam_cli::memory::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let out = std::path::PathBuf::from(
        args.get(1)
            .map(String::as_str)
            .unwrap_or("target/bench-data"),
    );
    let n_aug: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(24);
    let n_fast: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(96);
    std::fs::create_dir_all(out.join("source/images"))?;
    std::fs::create_dir_all(out.join("source/labels"))?;
    println!("threads: {}", rayon::current_num_threads());

    let t = Instant::now();
    let sources: Vec<_> = (0..4)
        .into_par_iter()
        .map(|i| synthesize(&SynthConfig::default(), i))
        .collect();
    println!(
        "synth: 4 images 2048x2048 in {:.3} s",
        t.elapsed().as_secs_f64()
    );
    for (i, s) in sources.iter().enumerate() {
        write_image(out.join(format!("source/images/src_{i}.tif")), &s.image)?;
        write_labels(out.join(format!("source/labels/src_{i}.tif")), &s.labels)?;
    }
    let t = Instant::now();
    let small: Vec<_> = (0..8)
        .into_par_iter()
        .map(|i| {
            synthesize(
                &SynthConfig {
                    size: 512,
                    ..SynthConfig::default()
                },
                i,
            )
        })
        .collect();
    println!(
        "synth: 8 images 512x512 in {:.3} s ({} objects in the first)",
        t.elapsed().as_secs_f64(),
        small[0].labels.max_id()
    );

    if std::env::var_os("BENCH_PER_OP").is_some() {
        use sam_data::{apply_ops, AppliedOp as O};
        let s = &sources[0];
        for op in [
            O::Hflip,
            O::Rot90 { k: 1 },
            O::Rotate { degrees: 10.0 },
            O::Elastic {
                magnitude: 4.0,
                sigma: 50.0,
                field_seed: 1,
            },
            O::Gamma { gamma: 1.1 },
            O::Blur { sigma: 1.0 },
            O::Illumination {
                strength: 0.1,
                angle_degrees: 30.0,
            },
            O::Noise {
                std: 0.01,
                noise_seed: 1,
            },
        ] {
            let (t, c) = (Instant::now(), cpu_seconds());
            for _ in 0..10 {
                std::hint::black_box(apply_ops(
                    &s.image,
                    &s.labels,
                    std::slice::from_ref(&op),
                    25,
                )?);
            }
            println!(
                "  {op:?}: {:.1} ms wall, {:.1} ms cpu",
                t.elapsed().as_secs_f64() * 1e3 / 10.0,
                (cpu_seconds() - c) * 1e3 / 10.0
            );
        }
        let (t, c) = (Instant::now(), cpu_seconds());
        for _ in 0..10 {
            std::hint::black_box(apply_ops(&s.image, &s.labels, &[], 25)?);
        }
        println!(
            "  identity: {:.1} ms wall, {:.1} ms cpu",
            t.elapsed().as_secs_f64() * 1e3 / 10.0,
            (cpu_seconds() - c) * 1e3 / 10.0
        );
        let t = Instant::now();
        for _ in 0..3 {
            std::hint::black_box(sam_data::split_fragments(&s.labels, 25));
        }
        println!(
            "  split_fragments: {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3 / 3.0
        );
        let t = Instant::now();
        for _ in 0..3 {
            std::hint::black_box(s.image.clone());
            std::hint::black_box(s.labels.clone());
        }
        println!(
            "  clone image+labels: {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3 / 3.0
        );
        if std::env::var_os("BENCH_ONLY_OPS").is_some() {
            return Ok(());
        }
    }

    for (name, cfg, n) in [
        (
            "all ops p=0.5 (with elastic)",
            AugmentConfig::default(),
            n_aug,
        ),
        (
            "all ops p=0.5, no elastic",
            AugmentConfig {
                elastic: sam_data::ElasticOp {
                    p: 0.0,
                    ..AugmentConfig::default().elastic
                },
                ..AugmentConfig::default()
            },
            n_fast,
        ),
    ] {
        // one warm-up output, then n outputs in parallel over outputs
        augment_pair(&sources[0].image, &sources[0].labels, &cfg, 999)?;
        let t = Instant::now();
        let objects: usize = (0..n)
            .into_par_iter()
            .map(|k| {
                let s = &sources[k % sources.len()];
                augment_pair(&s.image, &s.labels, &cfg, k as u64)
                    .map(|a| a.labels.max_id() as usize)
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .sum();
        let secs = t.elapsed().as_secs_f64();
        println!("augment 2048x2048, {name}: {n} images in {secs:.2} s = {:.2} images/s (max id sum {objects})", n as f64 / secs);
    }

    // AIS targets: a 512x512 patch with ~110 touching objects
    let patch = synthesize(
        &SynthConfig {
            size: 512,
            ..SynthConfig::default()
        },
        3,
    );
    let n_obj = sam_data::prepare_instances(&patch.labels, 25).max_id();
    write_labels(out.join("ais_patch_labels.tif"), &patch.labels)?;
    let _ = ais_targets(&patch.labels, 25);
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let r = ais_targets(&patch.labels, 25);
        times.push(t.elapsed().as_secs_f64());
        std::hint::black_box(r);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "ais_targets 512x512, {n_obj} objects: median {:.3} ms, min {:.3} ms (200 runs)",
        times[100] * 1e3,
        times[0] * 1e3
    );
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let mut t1 = Vec::new();
    pool.install(|| {
        for _ in 0..100 {
            let t = Instant::now();
            std::hint::black_box(ais_targets(&patch.labels, 25));
            t1.push(t.elapsed().as_secs_f64());
        }
    });
    t1.sort_by(f64::total_cmp);
    println!(
        "ais_targets 512x512, 1 thread: median {:.3} ms",
        t1[50] * 1e3
    );
    Ok(())
}
