//! One rank of a multi-process Gloo check, shared by the `dist` integration test and the
//! `dist_check` example (which the SLURM harness runs under `srun`).
//!
//! Modes:
//! - `check`: TCPStore rendezvous, then all-reduce (sum, avg, max), broadcast, all-gather and
//!   barrier, each result compared with values computed by hand.
//! - `victim`: after one barrier, the last rank stops answering (sleeps) while the others start
//!   an all-reduce; the test kills it, or lets the group timeout expire. The others must fail.
use std::time::{Duration, Instant};

use sam_torch::{LaunchEnv, ProcessGroup, ReduceOp, TcpStore};
use tch::{Device, Kind, Tensor};

fn close(got: &Tensor, want: &[f32], what: &str) -> Result<(), String> {
    let got: Vec<f32> = Vec::<f32>::try_from(got.to_kind(Kind::Float).flatten(0, -1))
        .map_err(|e| format!("{what}: {e}"))?;
    if got.len() != want.len() || got.iter().zip(want).any(|(g, w)| (g - w).abs() > 1e-6) {
        return Err(format!("{what}: expected {want:?}, got {got:?}"));
    }
    Ok(())
}

/// Runs one rank; `Err` carries what went wrong (the caller exits non-zero with it).
pub fn run(
    env: &LaunchEnv,
    mode: &str,
    timeout: Duration,
    gloo_host: Option<&str>,
) -> Result<(), String> {
    let (rank, world) = (env.rank, env.world_size);
    let store = TcpStore::new(
        &env.master_addr,
        env.master_port,
        world,
        env.is_master(),
        timeout,
    )
    .map_err(|e| e.to_string())?;
    let pg = match gloo_host {
        Some(host) => ProcessGroup::new_gloo_on(&store, rank, world, timeout, host),
        None => ProcessGroup::new_gloo(&store, rank, world, timeout),
    }
    .map_err(|e| e.to_string())?;
    println!("rank {rank}/{world}: gloo group up ({env})");

    match mode {
        "check" => check(&pg, &store),
        "victim" => victim(&pg),
        other => Err(format!(
            "unknown worker mode {other:?} (expected check or victim)"
        )),
    }
}

fn check(pg: &ProcessGroup, store: &TcpStore) -> Result<(), String> {
    let (rank, world) = (pg.rank(), pg.world_size());
    let (r, w) = (rank as f32, world as f32);
    let e = |e: sam_torch::Error| e.to_string();

    // Rank r contributes [r+1, 2(r+1), 3(r+1)]: the sum over ranks is k * w(w+1)/2.
    let base = [1.0f32, 2.0, 3.0];
    let mine = |scale: f32| Tensor::from_slice(&base.map(|k| k * scale));
    let tri = w * (w + 1.0) / 2.0;
    let mut t = mine(r + 1.0);
    pg.all_reduce_(&mut t, ReduceOp::Sum).map_err(e)?;
    close(&t, &base.map(|k| k * tri), "all_reduce sum")?;

    let mut t = mine(r + 1.0);
    pg.all_reduce_(&mut t, ReduceOp::Avg).map_err(e)?;
    close(&t, &base.map(|k| k * (w + 1.0) / 2.0), "all_reduce avg")?;

    let mut t = mine(r + 1.0);
    pg.all_reduce_(&mut t, ReduceOp::Max).map_err(e)?;
    close(&t, &base.map(|k| k * w), "all_reduce max")?;

    // A 2-D f64 tensor works too (dtype and shape preserved).
    let mut t = Tensor::full([2, 2], f64::from(r), (Kind::Double, Device::Cpu));
    pg.all_reduce_(&mut t, ReduceOp::Sum).map_err(e)?;
    if t.kind() != Kind::Double || t.size() != [2, 2] {
        return Err(format!("all_reduce f64: got {:?} {:?}", t.kind(), t.size()));
    }
    close(&t, &[(tri - w); 4], "all_reduce f64 sum")?;

    // Broadcast from the last rank: everyone ends with its values.
    let root = world - 1;
    let mut t = if rank == root {
        Tensor::from_slice(&[7.0f32, -1.5])
    } else {
        Tensor::zeros([2], (Kind::Float, Device::Cpu))
    };
    pg.broadcast_(&mut t, root).map_err(e)?;
    close(&t, &[7.0, -1.5], "broadcast")?;

    // All-gather: slot q holds rank q's [10q, 10q+1].
    let gathered = pg
        .all_gather(&Tensor::from_slice(&[10.0 * r, 10.0 * r + 1.0]))
        .map_err(e)?;
    if gathered.len() != world {
        return Err(format!(
            "all_gather: expected {world} tensors, got {}",
            gathered.len()
        ));
    }
    for (q, g) in gathered.iter().enumerate() {
        let q = q as f32;
        close(
            g,
            &[10.0 * q, 10.0 * q + 1.0],
            &format!("all_gather slot {q}"),
        )?;
    }

    // Store counters and barrier: after the barrier every rank has incremented.
    store.add("arrived", 1).map_err(e)?;
    pg.barrier().map_err(e)?;
    let n = store.add("arrived", 0).map_err(e)?;
    if n != world as i64 {
        return Err(format!(
            "barrier: expected {world} arrivals, store says {n}"
        ));
    }
    pg.barrier().map_err(e)?;
    println!("rank {rank}/{world}: all collectives ok");
    Ok(())
}

fn victim(pg: &ProcessGroup) -> Result<(), String> {
    let (rank, world) = (pg.rank(), pg.world_size());
    pg.barrier().map_err(|e| e.to_string())?;
    if rank == world - 1 {
        println!("rank {rank}/{world}: victim going silent");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    println!("rank {rank}/{world}: waiting on all_reduce");
    let start = Instant::now();
    let mut t = Tensor::ones([1024], (Kind::Float, Device::Cpu));
    match pg.all_reduce_(&mut t, ReduceOp::Sum) {
        Ok(()) => Err("all_reduce with a dead peer succeeded".into()),
        Err(err) => Err(format!(
            "peer lost after {:.1} s: {err}",
            start.elapsed().as_secs_f64()
        )),
    }
}
