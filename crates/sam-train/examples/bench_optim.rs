//! Benchmark: one AdamW step and one gradient clipping over the full vit_b parameter set on
//! CPU (93.7 M parameters in 313 tensors): the per-parameter loop this crate used before, ours
//! now (the fused kernel and `_foreach_norm`), and PyTorch's `AdamW(fused=True)` with
//! `clip_grad_norm_(foreach=True)`, at the same thread count.
//!
//! Each implementation runs in its own process (ours: this program with `--worker MODE`;
//! PyTorch: `benches/python/bench_optim.py`). Run by hand, on an otherwise idle machine:
//!
//! ```text
//! cargo run --release -p sam-train --example bench_optim -- --threads 2
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use clap::Parser;
use sam_model::{Sam, SamConfig};
use sam_train::{AdamW, AdamWConfig};
use tch::{nn, Device, Kind, Tensor};

/// AdamW step and gradient clipping over vit_b's parameters: the old loop, ours, PyTorch.
#[derive(Parser, Debug)]
struct Args {
    /// Intra-op threads for every implementation.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Untimed steps before measuring (the first touches every page).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 7)]
    repeats: usize,
    /// Implementations: loop (the per-parameter update and clipping this crate had),
    /// fused (AdamW::step, AdamW::clip_grad_norm), torch (the Python peer).
    #[arg(long, value_delimiter = ',', default_value = "loop,fused,torch")]
    modes: Vec<String>,
    /// Internal: run one implementation in this process and print its times as JSON.
    #[arg(long, value_name = "MODE", hide = true)]
    worker: Option<String>,
}

const LR: f64 = 1e-5;
const BETAS: (f64, f64) = (0.9, 0.999);
const EPS: f64 = 1e-8;
const WEIGHT_DECAY: f64 = 0.01;

/// The optimiser as this crate had it before the multi-tensor kernels: a dozen small
/// operations per parameter, and one host read per parameter to clip.
struct LoopAdamW {
    params: Vec<(Tensor, Tensor, Tensor, i64)>,
}

impl LoopAdamW {
    fn new(vars: &[Tensor]) -> Self {
        let params = vars
            .iter()
            .map(|v| (v.shallow_clone(), v.zeros_like(), v.zeros_like(), 0))
            .collect();
        Self { params }
    }

    fn step(&mut self) {
        let (b1, b2) = BETAS;
        tch::no_grad(|| {
            for (var, exp_avg, exp_avg_sq, step) in &mut self.params {
                let grad = var.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = grad.to_kind(exp_avg.kind());
                *step += 1;
                let _ = var.g_mul_scalar_(1.0 - LR * WEIGHT_DECAY);
                let _ = exp_avg.lerp_(&grad, 1.0 - b1);
                let _ = exp_avg_sq.g_mul_scalar_(b2);
                let _ = exp_avg_sq.addcmul_(&grad, &grad.g_mul_scalar(1.0 - b2));
                let bias1 = 1.0 - b1.powi(*step as i32);
                let bias2 = 1.0 - b2.powi(*step as i32);
                let denom = (exp_avg_sq.sqrt() / bias2.sqrt()) + EPS;
                let update = (&*exp_avg / &denom).to_kind(var.kind());
                let _ = var.g_add_(&update.g_mul_scalar(-LR / bias1));
            }
        });
    }

    fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let mut sum = 0f64;
            for (var, ..) in &self.params {
                let grad = var.grad();
                if grad.defined() {
                    sum += grad
                        .to_kind(Kind::Double)
                        .square()
                        .sum(None)
                        .double_value(&[]);
                }
            }
            let total = sum.sqrt();
            let coef = max_norm / (total + 1e-6);
            if coef < 1.0 {
                for (var, ..) in &self.params {
                    let mut grad = var.grad();
                    if grad.defined() {
                        let _ = grad.g_mul_scalar_(coef);
                    }
                }
            }
            total
        })
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Times `f` over the warm-up and timed rounds; returns the timed seconds.
fn time(
    args: &Args,
    mut f: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let mut times = Vec::new();
    for i in 0..args.warmup + args.repeats {
        let t = Instant::now();
        f()?;
        if i >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

fn worker(args: &Args, mode: &str) -> Result<(), Box<dyn std::error::Error>> {
    tch::set_num_threads(args.threads);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let _sam = Sam::new(&vs.root(), &SamConfig::vit_b())?;
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, v)| v.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    // Seeded gradients, exactly as given: d/dp sum(p * g) = g.
    for (_, var) in &named {
        (var * Tensor::randn_like(var)).sum(Kind::Float).backward();
    }
    let n_params: i64 = named.iter().map(|(_, v)| v.numel() as i64).sum();
    let (step_s, clip_s) = match mode {
        "loop" => {
            let vars: Vec<Tensor> = named.iter().map(|(_, v)| v.shallow_clone()).collect();
            let mut opt = LoopAdamW::new(&vars);
            let step = time(args, || {
                opt.step();
                Ok(())
            })?;
            let clip = time(args, || {
                opt.clip_grad_norm(1.0);
                Ok(())
            })?;
            (step, clip)
        }
        "fused" => {
            let config = AdamWConfig {
                lr: LR,
                betas: BETAS,
                eps: EPS,
                weight_decay: WEIGHT_DECAY,
            };
            let vars = named
                .iter()
                .map(|(n, v)| (n.clone(), v.shallow_clone()))
                .collect();
            let mut opt = AdamW::new(vars, config);
            let step = time(args, || Ok(opt.step()?))?;
            let clip = time(args, || {
                let _norm = opt.clip_grad_norm(1.0)?;
                Ok(())
            })?;
            (step, clip)
        }
        other => return Err(format!("unknown worker mode {other}").into()),
    };
    let out = serde_json::json!({
        "impl": mode, "tensors": named.len(), "params": n_params,
        "step_s": step_s, "clip_s": clip_s, "peak_rss_mib": peak_rss_mib(),
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

fn median(v: &serde_json::Value, key: &str) -> f64 {
    let mut t: Vec<f64> = v[key]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default();
    t.sort_by(f64::total_cmp);
    t.get(t.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the sam-train executable: jemalloc (linked in) serves every allocation, libtorch's
    // included, and keeps freed memory for reuse (see sam_cli::memory).
    sam_cli::use_linked_jemalloc!();
    sam_cli::memory::retain_freed_memory();
    let args = Args::parse();
    if let Some(mode) = &args.worker {
        return worker(&args, mode);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/python/bench_optim.py");
    let exe = std::env::current_exe()?;
    println!(
        "AdamW step and clip_grad_norm over vit_b's parameters, CPU, {} threads, {} warm-up + {} timed rounds",
        args.threads, args.warmup, args.repeats
    );
    println!("| implementation | tensors | parameters | step median ms | clip median ms | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    for mode in &args.modes {
        let counts = [
            args.threads.to_string(),
            args.warmup.to_string(),
            args.repeats.to_string(),
        ];
        let v = if mode == "torch" {
            run_json(Command::new(&python).arg(&script).args(&counts))?
        } else {
            run_json(
                Command::new(&exe)
                    .args([
                        "--worker",
                        mode,
                        "--threads",
                        &counts[0],
                        "--warmup",
                        &counts[1],
                    ])
                    .args(["--repeats", &counts[2]]),
            )?
        };
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.0} |",
            v["impl"].as_str().unwrap_or("?"),
            v["tensors"],
            v["params"],
            1e3 * median(&v, "step_s"),
            1e3 * median(&v, "clip_s"),
            v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
        );
    }
    Ok(())
}
