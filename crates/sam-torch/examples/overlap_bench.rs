//! How long a training step waits on the gradient all-reduce after its backward: the averaging
//! of before (after the backward: flags, then per 25M-element bucket concatenate, all-reduce,
//! divide, copy back) against [`sam_torch::GradReducer`] (buckets sent during the backward),
//! on a vit_b-sized parameter set. One rank per process, torchrun-style variables (see
//! `bench/overlap.sh`, which starts two ranks over Gloo on loopback).
//!
//! The model is a stand-in with the image encoder's shape: `--blocks` transformer-like blocks
//! of width `--width` (an attention projection `qkv` [w, 3w] and `proj` [w, w], an MLP
//! [w, 4w] + [4w, w] with biases; 7.1 M parameters per block at w = 768, 85 M for 12) over
//! `--tokens` tokens, and 2 M parameters of "heads" that read a detached copy of its output, as
//! the trainer's step does: heads' backward, then the encoder's backward from the summed
//! gradient. Steps alternate between the two algorithms after one warm-up step of each.
//!
//! ```text
//! RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29600 \
//!   target/release/examples/overlap_bench [--blocks 12] [--width 768] [--tokens 256] \
//!   [--iters 5] [--wire fp32|bf16] [--threads 1]
//! ```
//! Rank 0 prints one line per algorithm: `<algorithm> params=.. wire=.. wait_median_s=..
//! step_median_s=..`, where wait is from the end of the backward to averaged gradients.
// `+=` on a Tensor is an in-place op; the forward builds new autograd nodes instead.
#![allow(clippy::assign_op_pattern)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use sam_torch::{GradReducer, LaunchEnv, ProcessGroup, TcpStore, WireDtype};
use tch::{Device, Kind, Tensor};

#[allow(dead_code)]
#[path = "../tests/common/dist_worker.rs"]
mod dist_worker;

/// The trainer's bucket size (sam-train's `GRADIENT_BUCKET_BYTES`, DDP's default).
const BUCKET_BYTES: usize = 25 * 1024 * 1024;
/// The bucket size of the averaging of before, in elements.
const OLD_BUCKET_ELEMENTS: i64 = 25 * 1024 * 1024;

struct Args {
    blocks: usize,
    width: i64,
    tokens: i64,
    iters: usize,
    wire: WireDtype,
    threads: i32,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        blocks: 12,
        width: 768,
        tokens: 256,
        iters: 5,
        wire: WireDtype::Fp32,
        threads: 1,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || value.parse::<i64>().ok().filter(|&n| n > 0);
        match flag.as_str() {
            "--blocks" => a.blocks = num().ok_or("--blocks: a positive number")? as usize,
            "--width" => a.width = num().ok_or("--width: a positive number")?,
            "--tokens" => a.tokens = num().ok_or("--tokens: a positive number")?,
            "--iters" => a.iters = num().ok_or("--iters: a positive number")? as usize,
            "--threads" => a.threads = num().ok_or("--threads: a positive number")? as i32,
            "--wire" => {
                a.wire = match value.as_str() {
                    "fp32" => WireDtype::Fp32,
                    "bf16" => WireDtype::Bf16,
                    _ => return Err("--wire: fp32 or bf16".into()),
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

struct Model {
    blocks: Vec<[Tensor; 6]>,
    heads: [Tensor; 2],
}

impl Model {
    fn new(blocks: usize, w: i64) -> Self {
        tch::manual_seed(3);
        let p = |shape: &[i64]| {
            let fan_in = shape[0] as f64;
            (Tensor::randn(shape, (Kind::Float, Device::Cpu)) / fan_in.sqrt())
                .set_requires_grad(true)
        };
        Self {
            blocks: (0..blocks)
                .map(|_| {
                    [
                        p(&[w, 3 * w]),
                        p(&[w, w]),
                        p(&[w, 4 * w]),
                        p(&[4 * w]),
                        p(&[4 * w, w]),
                        p(&[w]),
                    ]
                })
                .collect(),
            heads: [p(&[w, 2048]), p(&[2048, 256])],
        }
    }

    fn params(&self) -> Vec<Tensor> {
        self.blocks
            .iter()
            .flatten()
            .chain(&self.heads)
            .map(Tensor::shallow_clone)
            .collect()
    }

    /// Forward, heads' backward, `before(root)`, encoder's backward.
    fn step(&self, x: &Tensor, before: impl FnOnce(&Tensor)) {
        let w = x.size()[1];
        let mut h = x.shallow_clone();
        for [qkv, proj, w1, b1, w2, b2] in &self.blocks {
            let a = h.matmul(qkv).narrow(1, 0, w).matmul(proj);
            h = h + a;
            let m = (h.matmul(w1) + b1).gelu("none").matmul(w2) + b2;
            h = h + m;
        }
        let heads = h.detach().set_requires_grad(true);
        let out = heads
            .matmul(&self.heads[0])
            .gelu("none")
            .matmul(&self.heads[1]);
        out.pow_tensor_scalar(2).mean(Kind::Float).backward();
        before(&h);
        (&h * heads.grad()).sum(Kind::Float).backward();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(args: &Args) -> Result<(), String> {
    let env = LaunchEnv::from_env().map_err(|e| e.to_string())?;
    tch::set_num_threads(args.threads);
    let timeout = Duration::from_secs(300);
    let store = TcpStore::new(
        &env.master_addr,
        env.master_port,
        env.world_size,
        env.is_master(),
        timeout,
    )
    .map_err(|e| e.to_string())?;
    let pg = ProcessGroup::new_gloo(&store, env.rank, env.world_size, timeout)
        .map_err(|e| e.to_string())?;
    let model = Model::new(args.blocks, args.width);
    let params = model.params();
    let numel: i64 = params.iter().map(|p| p.numel() as i64).sum();
    let reducer =
        GradReducer::new(&pg, &params, BUCKET_BYTES, args.wire).map_err(|e| e.to_string())?;
    tch::manual_seed(11 + env.rank as i64);
    let x = Tensor::randn([args.tokens, args.width], (Kind::Float, Device::Cpu));
    let zero = || -> Result<(), String> {
        for p in &params {
            sam_torch::clear_grad(p).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let (mut old_wait, mut old_step, mut new_wait, mut new_step) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..=args.iters {
        pg.barrier().map_err(|e| e.to_string())?;
        zero()?;
        let start = Instant::now();
        model.step(&x, |_| {});
        let backward_end = Instant::now();
        dist_worker::reference_average(&pg, &params, OLD_BUCKET_ELEMENTS)?;
        if i > 0 {
            old_wait.push(backward_end.elapsed().as_secs_f64());
            old_step.push(start.elapsed().as_secs_f64());
        }

        pg.barrier().map_err(|e| e.to_string())?;
        zero()?;
        let start = Instant::now();
        let mut armed = Ok(());
        model.step(&x, |root| armed = reducer.arm(Some(root)));
        armed.map_err(|e| e.to_string())?;
        let backward_end = Instant::now();
        reducer.finish().map_err(|e| e.to_string())?;
        if i > 0 {
            new_wait.push(backward_end.elapsed().as_secs_f64());
            new_step.push(start.elapsed().as_secs_f64());
        }
    }
    if env.rank == 0 {
        let buckets = reducer.report().map_err(|e| e.to_string())?;
        for (name, wait, step) in [
            ("after_backward", &mut old_wait, &mut old_step),
            ("overlapped", &mut new_wait, &mut new_step),
        ] {
            println!(
                "{name} params={numel} wire={:?} buckets={} threads={} wait_median_s={:.4} \
                 step_median_s={:.4} waits_s={:?}",
                if name == "overlapped" {
                    args.wire
                } else {
                    WireDtype::Fp32
                },
                if name == "overlapped" {
                    buckets.len()
                } else {
                    (numel as usize).div_ceil(OLD_BUCKET_ELEMENTS as usize)
                },
                args.threads,
                median(wait),
                median(step),
                wait.iter()
                    .map(|w| (w * 1e4).round() / 1e4)
                    .collect::<Vec<_>>()
            );
        }
        let sent: Vec<_> = buckets.iter().map(|b| b.launch).collect();
        println!("overlapped buckets sent at {sent:?}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "overlap_bench: {e}\nusage: overlap_bench [--blocks 12] [--width 768] \
                 [--tokens 256] [--iters 5] [--wire fp32|bf16] [--threads 1]"
            );
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlap_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
