//! Loader benchmark, run by hand (`scripts/bench/loader_bench.sh` runs it and docs/benchmarks.md
//! records the numbers):
//!
//! ```text
//! cargo run --release -p sam-data --example bench_loader -- OUT_DIR [N_IMAGES] [SAMPLES]
//! ```
//!
//! Writes `N_IMAGES` (default 16) synthetic 2048x2048 16-bit images with labels twice, as
//! uncompressed TIFFs (`OUT_DIR/raw`) and as deflate TIFFs (`OUT_DIR/zip`, what our writers
//! produce), both in strips of 64 rows, then measures on one thread (one loader worker):
//!
//! - `sample`: whole training samples as the trainer draws them ([`Dataset::sample`]: the label
//!   image read to choose a 512x512 patch, only the patch's strips of the image, normalisation
//!   with cached bounds, labels prepared, AIS targets);
//! - `image patch` vs `whole image`: the image read alone, a random 512x512 region
//!   ([`read_image_region`]) against the whole image ([`read_image`]);
//!
//! each with a warm page cache and a cold one (every file of the dataset dropped from the page
//! cache before each read with `dd iflag=nocache`, outside the timed region).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rand::Rng;
use sam_data::{
    pair_by_stem, read_image, read_image_region, synthesize, write_image, write_labels, BitDepth,
    Dataset, ImagePair, PatchConfig, SampleConfig, SynthConfig,
};
use tiff::encoder::{colortype, TiffEncoder};

const SIZE: usize = 2048;
const PATCH: usize = 512;

fn write_raw_u16(path: &Path, data: &[u16]) -> Result<(), Box<dyn std::error::Error>> {
    let mut enc = TiffEncoder::new(std::fs::File::create(path)?)?;
    let mut img = enc.new_image::<colortype::Gray16>(SIZE as u32, SIZE as u32)?;
    img.rows_per_strip(64)?;
    img.write_data(data)?;
    Ok(())
}

fn write_raw_u32(path: &Path, data: &[u32]) -> Result<(), Box<dyn std::error::Error>> {
    let mut enc = TiffEncoder::new(std::fs::File::create(path)?)?;
    let mut img = enc.new_image::<colortype::Gray32>(SIZE as u32, SIZE as u32)?;
    img.rows_per_strip(32)?;
    img.write_data(data)?;
    Ok(())
}

fn make(out: &Path, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    for kind in ["raw", "zip"] {
        std::fs::create_dir_all(out.join(kind).join("images"))?;
        std::fs::create_dir_all(out.join(kind).join("labels"))?;
    }
    for i in 0..n {
        let name = format!("img{i:03}.tif");
        if out.join("zip/labels").join(&name).exists() {
            continue;
        }
        let s = synthesize(
            &SynthConfig {
                size: SIZE,
                depth: BitDepth::U16,
                ..SynthConfig::default()
            },
            100 + i as u64,
        );
        let pixels: Vec<u16> = s
            .image
            .as_slice()
            .iter()
            .map(|&v| v.round().clamp(0.0, 65535.0) as u16)
            .collect();
        write_raw_u16(&out.join("raw/images").join(&name), &pixels)?;
        write_raw_u32(&out.join("raw/labels").join(&name), s.labels.as_slice())?;
        write_image(out.join("zip/images").join(&name), &s.image)?;
        write_labels(out.join("zip/labels").join(&name), &s.labels)?;
    }
    Ok(())
}

/// Drops every file of the dataset from the page cache.
fn evict(pairs: &[ImagePair]) {
    for p in pairs {
        for f in [&p.image, &p.labels] {
            let _ = Command::new("dd")
                .arg(format!("if={}", f.display()))
                .args(["iflag=nocache", "count=0", "status=none"])
                .status();
        }
    }
}

/// Reads per second over `n` timed reads; `prepare` runs untimed before each.
fn rate(n: usize, mut prepare: impl FnMut(), mut read: impl FnMut()) -> f64 {
    let mut seconds = 0.0;
    for _ in 0..n {
        prepare();
        let t = Instant::now();
        read();
        seconds += t.elapsed().as_secs_f64();
    }
    n as f64 / seconds
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = PathBuf::from(args.get(1).map_or("target/bench-loader", String::as_str));
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let samples: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(24);
    make(&out, n)?;
    let cfg = SampleConfig {
        patch: PatchConfig {
            height: PATCH,
            width: PATCH,
            ..PatchConfig::default()
        },
        ..SampleConfig::default()
    };
    println!("2048x2048 16-bit, {n} images, 512x512 patches, 1 thread, {samples} reads per cell");
    println!(
        "{:<6} {:<6} {:>13} {:>20} {:>20} {:>16}",
        "files",
        "cache",
        "samples/s",
        "image patch reads/s",
        "whole image reads/s",
        "bounds s/image"
    );
    for kind in ["raw", "zip"] {
        let pairs = pair_by_stem(out.join(kind).join("images"), out.join(kind).join("labels"))?;
        let ds = Dataset::open(&pairs)?;
        let t = Instant::now();
        ds.compute_bounds(&cfg.normalization, |_| true)?;
        let bounds = t.elapsed().as_secs_f64() / n as f64;
        for cold in [false, true] {
            let prepare = || {
                if cold {
                    evict(&pairs);
                }
            };
            let mut rng = sam_data::derive_seed(7, &[u64::from(cold)]);
            let mut next = || {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                rng
            };
            let sample = rate(samples, prepare, || {
                let mut r = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(next());
                ds.sample(&cfg, &mut r).expect("sample");
            });
            let mut r = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
            let patch = rate(samples, prepare, || {
                let p = &pairs[r.gen_range(0..n)];
                let (top, left) = (r.gen_range(0..=SIZE - PATCH), r.gen_range(0..=SIZE - PATCH));
                read_image_region(&p.image, top, left, PATCH, PATCH).expect("region");
            });
            let whole = rate(samples, prepare, || {
                read_image(&pairs[r.gen_range(0..n)].image).expect("image");
            });
            println!(
                "{:<6} {:<6} {:>13.1} {:>20.1} {:>20.1} {:>16.3}",
                kind,
                if cold { "cold" } else { "warm" },
                sample,
                patch,
                whole,
                bounds
            );
        }
    }
    Ok(())
}
