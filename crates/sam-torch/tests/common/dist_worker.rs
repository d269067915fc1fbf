//! One rank of a multi-process Gloo check, shared by the `dist` integration test and the
//! `dist_check` example (which the SLURM harness runs under `srun`).
//!
//! Modes:
//! - `check`: TCPStore rendezvous, then all-reduce (sum, avg, max), broadcast, all-gather and
//!   barrier, each result compared with values computed by hand.
//! - `victim`: after one barrier, the last rank stops answering (sleeps) while the others start
//!   an all-reduce; the test kills it, or lets the group timeout expire. The others must fail.
//! - `reducer`: a toy step (an "encoder" whose output feeds detached "heads", as the trainer's
//!   step does) averaged by [`sam_torch::GradReducer`] in fp32 and bf16, compared with
//!   [`reference_average`] on the same gradients; also checks when each bucket was sent.
use std::time::{Duration, Instant};

use sam_torch::{
    BucketLaunch, GradReducer, LaunchEnv, ProcessGroup, ReduceOp, TcpStore, WireDtype,
};
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
        "reducer" => reducer(&pg),
        other => Err(format!(
            "unknown worker mode {other:?} (expected check, victim or reducer)"
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

/// The gradient averaging the trainer used before [`GradReducer`], kept as the reference: after
/// the whole backward, an all-reduce (max) of "has a gradient" flags, a zero gradient defined
/// where a rank had none, then bucket after bucket of at most `bucket_elements`: concatenate,
/// all-reduce (sum), divide by the world size, copy back.
pub fn reference_average(
    pg: &ProcessGroup,
    params: &[Tensor],
    bucket_elements: i64,
) -> Result<(), String> {
    let e = |e: sam_torch::Error| e.to_string();
    let defined: Vec<f32> = params
        .iter()
        .map(|v| f32::from(u8::from(v.grad().defined())))
        .collect();
    let mut flags = Tensor::from_slice(&defined);
    pg.all_reduce_(&mut flags, ReduceOp::Max).map_err(e)?;
    let flags = Vec::<f32>::try_from(flags).map_err(|e| e.to_string())?;
    for (var, (&local, &any)) in params.iter().zip(defined.iter().zip(&flags)) {
        if any > 0.0 && local == 0.0 {
            (var.sum(Kind::Float) * 0.0).backward();
        }
    }
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params
        .iter()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .collect();
    let world = pg.world_size() as f64;
    let mut start = 0;
    while start < grads.len() {
        let mut end = start;
        let mut numel = 0i64;
        while end < grads.len()
            && (end == start || numel + grads[end].numel() as i64 <= bucket_elements)
        {
            numel += grads[end].numel() as i64;
            end += 1;
        }
        let flat: Vec<Tensor> = grads[start..end]
            .iter()
            .map(|g| g.to_kind(Kind::Float).flatten(0, -1))
            .collect();
        let mut bucket = Tensor::cat(&flat, 0);
        pg.all_reduce_(&mut bucket, ReduceOp::Sum).map_err(e)?;
        let bucket = bucket / world;
        let mut offset = 0i64;
        for g in &grads[start..end] {
            let n = g.numel() as i64;
            let mut g = g.shallow_clone();
            g.copy_(&bucket.narrow(0, offset, n).view_as(&g).to_kind(g.kind()));
            offset += n;
        }
        start = end;
    }
    Ok(())
}

/// The toy model of the `reducer` mode: an "encoder" of `layers` tanh layers, whose output
/// feeds detached "heads", a parameter only rank 0 uses and one nobody uses.
struct Toy {
    encoder: Vec<Tensor>,
    head: Tensor,
    rank0_only: Tensor,
    unused: Tensor,
}

impl Toy {
    fn new(layers: usize, width: i64) -> Self {
        // The same weights on every rank.
        tch::manual_seed(7);
        let p = |shape: &[i64]| {
            (Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.5).set_requires_grad(true)
        };
        let mut encoder = Vec::new();
        for _ in 0..layers {
            encoder.push(p(&[width, width]));
            encoder.push(p(&[width]));
        }
        Self {
            encoder,
            head: p(&[width, 3]),
            rank0_only: p(&[width]),
            unused: p(&[5]),
        }
    }

    /// Every parameter, in a fixed order (as the trainer's name order).
    fn params(&self) -> Vec<Tensor> {
        let mut v: Vec<Tensor> = self.encoder.iter().map(Tensor::shallow_clone).collect();
        v.extend([&self.head, &self.rank0_only, &self.unused].map(Tensor::shallow_clone));
        v
    }

    fn zero_grad(&self) -> Result<(), String> {
        for p in self.params() {
            sam_torch::clear_grad(&p).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// One step as the trainer runs it: the heads' backward into a detached copy of the
    /// encoder's output, then `before_encoder(root)`, then the encoder's backward.
    fn step(
        &self,
        rank: usize,
        before_encoder: impl FnOnce(&Tensor) -> Result<(), String>,
    ) -> Result<(), String> {
        tch::manual_seed(100 + rank as i64);
        let width = self.head.size()[0];
        let x = Tensor::randn([6, width], (Kind::Float, Device::Cpu));
        let mut h = x;
        for layer in self.encoder.chunks(2) {
            h = (h.matmul(&layer[0]) + &layer[1]).tanh();
        }
        let heads = h.detach().set_requires_grad(true);
        let loss = heads
            .matmul(&self.head)
            .pow_tensor_scalar(2)
            .sum(Kind::Float);
        let loss = if rank == 0 {
            loss + (&heads * &self.rank0_only).sum(Kind::Float)
        } else {
            loss
        };
        loss.backward();
        before_encoder(&h)?;
        (&h * heads.grad()).sum(Kind::Float).backward();
        Ok(())
    }
}

/// The parameters' gradients as f32 vectors (`None`: no gradient).
fn grads_of(params: &[Tensor]) -> Result<Vec<Option<Vec<f32>>>, String> {
    params
        .iter()
        .map(|p| {
            let g = p.grad();
            if !g.defined() {
                return Ok(None);
            }
            Vec::<f32>::try_from(g.to_kind(Kind::Float).flatten(0, -1))
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .collect()
}

fn reducer(pg: &ProcessGroup) -> Result<(), String> {
    let (rank, world) = (pg.rank(), pg.world_size());
    let e = |e: sam_torch::Error| e.to_string();
    let width = 16i64;
    let toy = Toy::new(4, width);
    let params = toy.params();
    // One encoder matrix per bucket: several buckets, sent one by one.
    let bucket_bytes = (width * width * 4) as usize;
    for wire in [WireDtype::Fp32, WireDtype::Bf16] {
        // The reference: today's gradients, then the algorithm of before.
        toy.zero_grad()?;
        toy.step(rank, |_| Ok(()))?;
        let local = grads_of(&params)?;
        reference_average(pg, &params, (bucket_bytes / 4) as i64)?;
        let want = grads_of(&params)?;
        // Bounds for bf16: the sum over ranks of |gradient| (0 where a rank has none).
        let abs_sum: Vec<Vec<f32>> = local
            .iter()
            .zip(&params)
            .map(|(g, p)| {
                let mut t = match g {
                    Some(g) => Tensor::from_slice(g).abs(),
                    None => Tensor::zeros([p.numel() as i64], (Kind::Float, Device::Cpu)),
                };
                pg.all_reduce_(&mut t, ReduceOp::Sum).map_err(e)?;
                Vec::<f32>::try_from(t).map_err(|e| e.to_string())
            })
            .collect::<Result<_, String>>()?;

        let reducer = GradReducer::new(pg, &params, bucket_bytes, wire).map_err(e)?;
        // Two steps: the first lays the buckets out, the second reuses them.
        for step in 0..2 {
            toy.zero_grad()?;
            toy.step(rank, |root| reducer.arm(Some(root)).map_err(e))?;
            let report = reducer.report().map_err(e)?;
            reducer.finish().map_err(e)?;
            let got = grads_of(&params)?;
            compare(
                &got,
                &want,
                &abs_sum,
                wire,
                world as f32,
                &format!("{wire:?} step {step}"),
            )?;
            same_on_every_rank(pg, &got, &format!("{wire:?} step {step}"))?;
            // When the buckets left: the heads' (and the unused parameter's) at arming, the
            // encoder's during its backward, none after it; all before finish() was called.
            let launches: Vec<BucketLaunch> = report.iter().map(|b| b.launch).collect();
            let encoder_buckets = launches
                .iter()
                .filter(|l| **l == BucketLaunch::InBackward)
                .count();
            if launches
                .iter()
                .any(|l| !matches!(l, BucketLaunch::AtArm | BucketLaunch::InBackward))
                || encoder_buckets < 4
                || launches.first() != Some(&BucketLaunch::AtArm)
            {
                return Err(format!(
                    "{wire:?} step {step}: buckets sent at {launches:?} (sizes {:?}); expected \
                     the heads' at arming, then each encoder matrix's during the backward",
                    report.iter().map(|b| b.parameters).collect::<Vec<_>>()
                ));
            }
            println!("rank {rank}: {wire:?} step {step}: buckets sent at {launches:?}");
        }
        // A step whose backward is not announced: everything leaves at finish, same result.
        toy.zero_grad()?;
        toy.step(rank, |_| Ok(()))?;
        reducer.finish().map_err(e)?;
        compare(
            &grads_of(&params)?,
            &want,
            &abs_sum,
            wire,
            world as f32,
            &format!("{wire:?} unarmed"),
        )?;
        let late = reducer.report().map_err(e)?;
        if late.iter().any(|b| b.launch != BucketLaunch::AtFinish) {
            return Err(format!("{wire:?} unarmed: buckets sent at {late:?}"));
        }
    }
    println!("rank {rank}/{world}: reducer ok");
    Ok(())
}

/// `got` equals the reference `want` (fp32: up to the float32 summation order, exactly with two
/// ranks, whose sum has one order; bf16: within the
/// rounding of each gradient and of the sum, each at most 2^-8 relative, so 2^-7 of the sum of
/// |gradient| over ranks, over the world size), and has gradients exactly where `want` has.
fn compare(
    got: &[Option<Vec<f32>>],
    want: &[Option<Vec<f32>>],
    abs_sum: &[Vec<f32>],
    wire: WireDtype,
    world: f32,
    what: &str,
) -> Result<(), String> {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        match (g, w) {
            (None, None) => {}
            (Some(g), Some(w)) => {
                for (k, (a, b)) in g.iter().zip(w).enumerate() {
                    let tol = match wire {
                        // Two ranks sum in one order: the same bits as the reference.
                        WireDtype::Fp32 if world == 2.0 => 0.0,
                        WireDtype::Fp32 => 1e-6 * b.abs().max(1e-6),
                        WireDtype::Bf16 => abs_sum[i][k] / 128.0 / world * 1.01 + 1e-30,
                    };
                    if (a - b).abs() > tol || !a.is_finite() {
                        return Err(format!(
                            "{what}: parameter {i} element {k}: expected {b}, got {a} (tolerance {tol})"
                        ));
                    }
                }
            }
            _ => {
                return Err(format!(
                    "{what}: parameter {i}: gradient defined {} where the reference has {}",
                    g.is_some(),
                    w.is_some()
                ))
            }
        }
    }
    Ok(())
}

/// Every rank holds the same bits: rank 0's gradients broadcast and compared exactly.
fn same_on_every_rank(
    pg: &ProcessGroup,
    got: &[Option<Vec<f32>>],
    what: &str,
) -> Result<(), String> {
    let flat: Vec<f32> = got.iter().flatten().flatten().copied().collect();
    let mut t = Tensor::from_slice(&flat);
    pg.broadcast_(&mut t, 0).map_err(|e| e.to_string())?;
    let zero = Vec::<f32>::try_from(t).map_err(|e| e.to_string())?;
    if zero
        .iter()
        .zip(&flat)
        .any(|(a, b)| a.to_bits() != b.to_bits())
    {
        return Err(format!("{what}: averaged gradients differ from rank 0's"));
    }
    Ok(())
}
