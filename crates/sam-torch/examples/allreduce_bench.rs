//! All-reduce bandwidth of the c10d bridge over Gloo: one rank per process, launched with
//! torchrun-style variables (see `bench/allreduce.sh`, which runs it beside the Python peer
//! `bench/allreduce_torch.py` in the same run).
//!
//! ```text
//! RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29600 \
//!   target/release/examples/allreduce_bench [--numel N (90000000)] [--iters K (5)]
//! ```
//! Rank 0 prints one line: `ours numel=.. bytes=.. median_s=.. algbw_gbs=.. busbw_gbs=..`.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sam_torch::{LaunchEnv, ProcessGroup, ReduceOp, TcpStore};
use tch::{Device, Kind, Tensor};

fn main() -> ExitCode {
    let mut numel: i64 = 90_000_000;
    let mut iters: usize = 5;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next();
        match (a.as_str(), v.and_then(|v| v.parse::<i64>().ok())) {
            ("--numel", Some(n)) if n > 0 => numel = n,
            ("--iters", Some(n)) if n > 0 => iters = n as usize,
            _ => {
                eprintln!("usage: allreduce_bench [--numel N (90000000)] [--iters K (5)]");
                return ExitCode::from(2);
            }
        }
    }
    match run(numel, iters) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(numel: i64, iters: usize) -> Result<(), Box<dyn std::error::Error>> {
    let env = LaunchEnv::from_env()?;
    let timeout = Duration::from_secs(300);
    let store = TcpStore::new(
        &env.master_addr,
        env.master_port,
        env.world_size,
        env.is_master(),
        timeout,
    )?;
    let pg = ProcessGroup::new_gloo(&store, env.rank, env.world_size, timeout)?;
    let mut t = Tensor::ones([numel], (Kind::Float, Device::Cpu));
    // Warm-up: connections, buffers.
    pg.all_reduce_(&mut t, ReduceOp::Sum)?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        pg.barrier()?;
        let start = Instant::now();
        pg.all_reduce_(&mut t, ReduceOp::Sum)?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let bytes = numel as f64 * 4.0;
    let w = env.world_size as f64;
    if env.is_master() {
        println!(
            "ours numel={numel} bytes={bytes:.0} iters={iters} median_s={median:.4} algbw_gbs={:.3} busbw_gbs={:.3}",
            bytes / median / 1e9,
            bytes * 2.0 * (w - 1.0) / w / median / 1e9
        );
    }
    Ok(())
}
