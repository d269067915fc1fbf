//! Benchmark: vit_b image-encoder forward, ours against segment_anything, same thread count.
//!
//! Each measurement runs in its own process (ours: this program with `--worker MODE`; Python:
//! `benches/python/bench_encoder.py`) so that peak RSS is per measurement. Run by hand:
//!
//! ```text
//! cargo run --release -p sam-model --example bench_encoder -- --threads 2
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use clap::Parser;
use sam_model::{Sam, SamConfig};
use tch::{nn, Device, Kind, Tensor};

/// vit_b image-encoder forward time and peak memory, ours vs segment_anything.
#[derive(Parser, Debug)]
struct Args {
    /// Intra-op threads for both implementations.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Input side in pixels.
    #[arg(long, default_value_t = 1024)]
    size: i64,
    /// Untimed forwards before measuring.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed forwards.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Modes to run: fp32, bf16-autocast, bf16-convert (ours only: the VarStore converted to bf16).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fp32,bf16-autocast,bf16-convert"
    )]
    modes: Vec<String>,
    /// Skip the Python peer.
    #[arg(long)]
    no_python: bool,
    /// Internal: run one measurement of ours in this process and print it as JSON.
    #[arg(long, value_name = "MODE", hide = true)]
    worker: Option<String>,
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn worker(args: &Args, mode: &str) -> Result<(), Box<dyn std::error::Error>> {
    tch::set_num_threads(args.threads);
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let sam = Sam::new(&vs.root(), &SamConfig::vit_b())?;
    let mut x = Tensor::randn([1, 3, args.size, args.size], (Kind::Float, Device::Cpu));
    if mode == "bf16-convert" {
        vs.bfloat16();
        x = x.to_kind(Kind::BFloat16);
    }
    let mut times = Vec::new();
    let _guard = tch::no_grad_guard();
    for i in 0..args.warmup + args.repeats {
        let t = Instant::now();
        let y = if mode == "bf16-autocast" {
            let _amp = sam_torch::AutocastGuard::new(Device::Cpu, Kind::BFloat16)?;
            sam.image_encoder.forward(&x)
        } else {
            sam.image_encoder.forward(&x)
        };
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(y.size(), [1, 256, args.size / 16, args.size / 16]);
        if i >= args.warmup {
            times.push(dt);
        }
    }
    let out = serde_json::json!({
        "impl": "sam-model", "mode": mode, "times_s": times, "peak_rss_mib": peak_rss_mib(),
    });
    println!("{out}");
    Ok(())
}

fn run_json(cmd: &mut Command) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let stdout = String::from_utf8(out.stdout)?;
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("no JSON line")?;
    Ok(serde_json::from_str(line)?)
}

fn median(v: &serde_json::Value) -> f64 {
    let mut t: Vec<f64> = v["times_s"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default();
    t.sort_by(f64::total_cmp);
    t.get(t.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // jemalloc (linked in) serves every allocation, libtorch's included; keep freed memory
    // for reuse (see sam_cli::memory).
    sam_cli::use_linked_jemalloc!();
    sam_cli::memory::retain_freed_memory();
    let args = Args::parse();
    if let Some(mode) = &args.worker {
        return worker(&args, mode);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/python/bench_encoder.py");
    let exe = std::env::current_exe()?;
    println!(
        "vit_b image encoder, {0}x{0}, CPU, {1} threads, {2} warm-up + {3} timed forwards",
        args.size, args.threads, args.warmup, args.repeats
    );
    println!("| mode | implementation | median s | all s | peak RSS MiB | ours / python |");
    println!("|---|---|---|---|---|---|");
    for mode in &args.modes {
        let ours = run_json(
            Command::new(&exe)
                .args(["--worker", mode, "--threads", &args.threads.to_string()])
                .args([
                    "--size",
                    &args.size.to_string(),
                    "--warmup",
                    &args.warmup.to_string(),
                ])
                .args(["--repeats", &args.repeats.to_string()]),
        )?;
        let py = if args.no_python || mode == "bf16-convert" {
            None
        } else {
            Some(run_json(
                Command::new(&python).arg(&script).arg(mode).args([
                    args.threads.to_string(),
                    args.size.to_string(),
                    args.warmup.to_string(),
                    args.repeats.to_string(),
                ]),
            )?)
        };
        let ratio = py.as_ref().map_or("–".to_string(), |p| {
            format!("{:.2}", median(&ours) / median(p))
        });
        for (v, r) in [(Some(&ours), ratio.as_str()), (py.as_ref(), "")] {
            if let Some(v) = v {
                println!(
                    "| {mode} | {} | {:.2} | {} | {:.0} | {r} |",
                    v["impl"].as_str().unwrap_or("?"),
                    median(v),
                    v["times_s"],
                    v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
                );
            }
        }
    }
    Ok(())
}
