//! GPU paths of the bridge, for a GPU machine (see ../shared DEVICE.md): CUDA device selection,
//! the device of a local rank (`select_device`, the driver probe, the message when
//! `CUDA_VISIBLE_DEVICES` hides the GPUs), bf16 autocast on CUDA, TF32 switches,
//! caching-allocator statistics, and an NCCL process group at world size 1 (init + all-reduce +
//! broadcast + barrier, and the gradient reducer: buckets sent from autograd's CUDA thread,
//! ordered by streams). Prints one `name: result` line per check; exit status 1 if any fails.
//!
//! ```text
//! target/debug/examples/gpu_check [--port P (29650)]
//! target/debug/examples/gpu_check --rehearse [--port P]   # CPU stand-ins: Gloo, CPU autocast
//! ```
//!
//! `--rehearse` is what `scripts/gpu_check.sh --rehearse` runs on a machine without a GPU: the
//! process group at world size 1 over Gloo and bf16 autocast on the CPU, so that the script and
//! this program are exercised by the test suite.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sam_torch::{
    BucketLaunch, CudaStatus, DeviceRequest, GradReducer, ProcessGroup, ReduceOp, TcpStore, Tf32,
    WireDtype,
};
use tch::{Device, Kind, Tensor};

type Check = Result<String, String>;

fn main() -> ExitCode {
    let port = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => 29650,
        // The child of `device_select`: what `cuda` says when no GPU is visible.
        [flag] if flag == "--no-gpu-message" => {
            return match sam_torch::select_device(DeviceRequest::Cuda, 0) {
                Ok(c) => {
                    println!("unexpectedly got {c}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    println!("{e}");
                    ExitCode::SUCCESS
                }
            };
        }
        rest => {
            let (rehearsal, port) = match rest {
                [r] if r == "--rehearse" => (true, "29650"),
                [flag, p] if flag == "--port" => (false, p.as_str()),
                [r, flag, p] if r == "--rehearse" && flag == "--port" => (true, p.as_str()),
                _ => {
                    eprintln!("usage: gpu_check [--rehearse] [--port P (29650)]");
                    return ExitCode::from(2);
                }
            };
            let Ok(port) = port.parse() else {
                eprintln!("error: --port needs a number, got {port:?}");
                return ExitCode::from(2);
            };
            if rehearsal {
                return rehearse(port);
            }
            port
        }
    };
    let mut failed = false;
    let mut report = |name: &str, r: Check| match r {
        Ok(msg) => println!("{name}: ok {msg}"),
        Err(msg) => {
            failed = true;
            println!("{name}: FAIL {msg}");
        }
    };
    let cuda_ok = cuda();
    let have_cuda = cuda_ok.is_ok();
    report("cuda", cuda_ok);
    if !have_cuda {
        // Every other check allocates on the GPU.
        return ExitCode::FAILURE;
    }
    report("device_select", device_select());
    report("autocast_bf16_cuda", autocast_cuda());
    report("tf32", tf32());
    report("memory_stats", memory());
    report("nccl_world1", nccl(port));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The CPU stand-ins of the checks: the same report lines, exit status 1 if one fails.
fn rehearse(port: u16) -> ExitCode {
    println!(
        "cuda: skipped (rehearsal on CPU; libtorch sees CUDA: {})",
        sam_torch::cuda_is_available()
    );
    let mut failed = false;
    for (name, result) in [
        ("autocast_bf16_cpu", autocast_on(Device::Cpu)),
        ("gloo_world1", gloo(port)),
    ] {
        match result {
            Ok(msg) => println!("{name}: ok {msg}"),
            Err(msg) => {
                failed = true;
                println!("{name}: FAIL {msg}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn gloo(port: u16) -> Check {
    let t0 = Instant::now();
    let timeout = Duration::from_secs(60);
    let store = TcpStore::new("127.0.0.1", port, 1, true, timeout).map_err(s)?;
    let pg = ProcessGroup::new_gloo_on(&store, 0, 1, timeout, "127.0.0.1").map_err(s)?;
    let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    pg.all_reduce_(&mut t, ReduceOp::Sum).map_err(s)?;
    pg.broadcast_(&mut t, 0).map_err(s)?;
    pg.barrier().map_err(s)?;
    let got = Vec::<f32>::try_from(&t).map_err(s)?;
    if got != [1.0, 2.0, 3.0] {
        return Err(format!("world-1 all_reduce changed the tensor: {got:?}"));
    }
    let init = t0.elapsed().as_secs_f64();
    let reducer = reducer_world1(&pg, Device::Cpu)?;
    Ok(format!("init + 3 collectives {init:.2} s; {reducer}"))
}

/// The gradient reducer at world size 1 on `device`: a small "encoder" whose output feeds
/// detached "heads", as the trainer's step; the buckets must leave at arming and during the
/// encoder's backward, and the means (world 1: the gradients themselves) must come back, exact
/// in fp32, within bf16 rounding in bf16.
fn reducer_world1(pg: &ProcessGroup, device: Device) -> Check {
    tch::manual_seed(5);
    let p = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, device)).set_requires_grad(true);
    let encoder: Vec<Tensor> = (0..4).map(|_| p(&[64, 64])).collect();
    let head = p(&[64, 8]);
    let mut params: Vec<Tensor> = encoder.iter().map(Tensor::shallow_clone).collect();
    params.push(head.shallow_clone());
    let x = Tensor::randn([16, 64], (Kind::Float, device));
    let step = |before: &dyn Fn(&Tensor) -> Result<(), String>| -> Result<Vec<Tensor>, String> {
        for q in &params {
            sam_torch::clear_grad(q).map_err(s)?;
        }
        let mut h = x.shallow_clone();
        for w in &encoder {
            h = h.matmul(w).tanh();
        }
        let heads = h.detach().set_requires_grad(true);
        heads
            .matmul(&head)
            .pow_tensor_scalar(2)
            .sum(Kind::Float)
            .backward();
        before(&h)?;
        (&h * heads.grad()).sum(Kind::Float).backward();
        Ok(params.iter().map(|q| q.grad().copy()).collect())
    };
    let want = step(&|_| Ok(()))?;
    let mut sent = Vec::new();
    for wire in [WireDtype::Fp32, WireDtype::Bf16] {
        // One 64x64 matrix per bucket: the encoder's four leave one by one.
        let bytes = match wire {
            WireDtype::Fp32 => 64 * 64 * 4,
            WireDtype::Bf16 => 64 * 64 * 2,
        };
        let reducer = GradReducer::new(pg, &params, bytes, wire).map_err(s)?;
        step(&|root| reducer.arm(Some(root)).map_err(s))?;
        let report = reducer.report().map_err(s)?;
        reducer.finish().map_err(s)?;
        let launches: Vec<BucketLaunch> = report.iter().map(|b| b.launch).collect();
        let in_backward = launches
            .iter()
            .filter(|l| **l == BucketLaunch::InBackward)
            .count();
        if launches.first() != Some(&BucketLaunch::AtArm) || in_backward != 4 {
            return Err(format!("{wire:?}: buckets sent at {launches:?}"));
        }
        for (i, (q, w)) in params.iter().zip(&want).enumerate() {
            let err = (q.grad() - w).abs().max().double_value(&[]);
            let tol = match wire {
                WireDtype::Fp32 => 0.0,
                WireDtype::Bf16 => w.abs().max().double_value(&[]) / 256.0,
            };
            if err > tol {
                return Err(format!(
                    "{wire:?}: parameter {i} off by {err} (tolerance {tol})"
                ));
            }
        }
        sent.push(format!("{wire:?} {} buckets", launches.len()));
    }
    Ok(format!("gradient reducer ok ({})", sent.join(", ")))
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn cuda() -> Check {
    if !sam_torch::cuda_is_available() {
        return Err("CUDA not available".into());
    }
    let n = sam_torch::cuda_device_count();
    sam_torch::set_cuda_device(n - 1).map_err(s)?;
    let cur = sam_torch::current_cuda_device().map_err(s)?;
    sam_torch::set_cuda_device(0).map_err(s)?;
    if cur != n - 1 {
        return Err(format!("set_cuda_device({}) left device {cur}", n - 1));
    }
    Ok(format!(
        "{n} device(s), nccl built: {}",
        sam_torch::HAS_NCCL
    ))
}

/// `cuda` for local ranks 0..4 is GPU `rank % count`; the driver probe answers on a GPU
/// machine; with `CUDA_VISIBLE_DEVICES=-1` a child process gets the no-GPU message, which
/// blames CUDA_VISIBLE_DEVICES (the driver is there).
fn device_select() -> Check {
    let n = sam_torch::cuda_device_count();
    for rank in 0..4 {
        let c = sam_torch::select_device(DeviceRequest::Cuda, rank).map_err(s)?;
        if c.device != Device::Cuda(rank % n) {
            return Err(format!("local rank {rank} of {n} GPUs got {c}"));
        }
    }
    let auto = sam_torch::select_device(DeviceRequest::Auto, 0).map_err(s)?;
    if auto.device != Device::Cuda(0) {
        return Err(format!("auto chose {auto}"));
    }
    let status = CudaStatus::current().probe_driver();
    if status.torch_cuda.is_none()
        || status.driver_cuda.is_none()
        || status.driver_version.is_none()
    {
        return Err(format!("incomplete status: {status}"));
    }
    let exe = std::env::current_exe().map_err(s)?;
    let out = std::process::Command::new(exe)
        .arg("--no-gpu-message")
        .env("CUDA_VISIBLE_DEVICES", "-1")
        .output()
        .map_err(s)?;
    let msg = String::from_utf8_lossy(&out.stdout);
    let driver = status.driver_version.as_deref().unwrap_or_default();
    if !out.status.success()
        || !msg.contains("CUDA_VISIBLE_DEVICES=\"-1\" hides every GPU")
        || !msg.contains(driver)
    {
        return Err(format!("no-GPU message: {msg}"));
    }
    Ok(format!("ranks 0..3 -> cuda:r%{n}; {status}"))
}

fn autocast_cuda() -> Check {
    autocast_on(Device::Cuda(0))
}

/// Inside bf16 autocast a matmul is bf16 and close to the f32 one; outside it stays f32.
fn autocast_on(device: Device) -> Check {
    let a = Tensor::randn([256, 256], (Kind::Float, device));
    let y = sam_torch::autocast(device, Kind::BFloat16, || a.matmul(&a)).map_err(s)?;
    let z = a.matmul(&a);
    if y.kind() != Kind::BFloat16 || z.kind() != Kind::Float {
        return Err(format!("inside {:?}, outside {:?}", y.kind(), z.kind()));
    }
    let err = (y.to_kind(Kind::Float) - &z).abs().max().double_value(&[]);
    let scale = z.abs().max().double_value(&[]);
    if err > 0.02 * scale {
        return Err(format!("bf16 result off by {err} (max |z| {scale})"));
    }
    Ok(format!(
        "inside bf16, outside f32, max err {err:.3} of {scale:.1}"
    ))
}

fn tf32() -> Check {
    let before = sam_torch::tf32().map_err(s)?;
    let on = Tf32 {
        cublas: true,
        cudnn: true,
    };
    sam_torch::set_tf32(on).map_err(s)?;
    let got = sam_torch::tf32().map_err(s)?;
    sam_torch::set_tf32(before).map_err(s)?;
    if got != on {
        return Err(format!("set {on:?}, read {got:?}"));
    }
    Ok(format!("round trip ok (default {before:?})"))
}

fn memory() -> Check {
    sam_torch::cuda_synchronize(0).map_err(s)?;
    sam_torch::reset_peak_memory_stats(0).map_err(s)?;
    let before = sam_torch::cuda_memory_stats(0).map_err(s)?;
    let big = Tensor::zeros([64, 1024, 1024], (Kind::Float, Device::Cuda(0))); // 256 MiB
    let during = sam_torch::cuda_memory_stats(0).map_err(s)?;
    drop(big);
    let after = sam_torch::cuda_memory_stats(0).map_err(s)?;
    let mib = 1u64 << 20;
    if during.allocated < before.allocated + 256 * mib || after.peak_allocated < during.allocated {
        return Err(format!(
            "before {before:?}, during {during:?}, after {after:?}"
        ));
    }
    Ok(format!(
        "allocated {} -> {} -> {} MiB, peak {} MiB",
        before.allocated / mib,
        during.allocated / mib,
        after.allocated / mib,
        after.peak_allocated / mib
    ))
}

fn nccl(port: u16) -> Check {
    let t0 = Instant::now();
    let timeout = Duration::from_secs(60);
    sam_torch::set_cuda_device(0).map_err(s)?;
    let store = TcpStore::new("127.0.0.1", port, 1, true, timeout).map_err(s)?;
    let pg = ProcessGroup::new_nccl(&store, 0, 1, timeout).map_err(s)?;
    let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).to_device(Device::Cuda(0));
    pg.all_reduce_(&mut t, ReduceOp::Sum).map_err(s)?;
    pg.all_reduce_(&mut t, ReduceOp::Avg).map_err(s)?;
    pg.broadcast_(&mut t, 0).map_err(s)?;
    pg.barrier().map_err(s)?;
    let got = Vec::<f32>::try_from(t.to_device(Device::Cpu)).map_err(s)?;
    if got != [1.0, 2.0, 3.0] {
        return Err(format!("world-1 all_reduce changed the tensor: {got:?}"));
    }
    let init_and_ops = t0.elapsed().as_secs_f64();
    let reducer = reducer_world1(&pg, Device::Cuda(0))?;
    // Bandwidth of a vit_b-sized bucket at world size 1 (a local no-op copy bound).
    let mut bucket = Tensor::ones([90_000_000], (Kind::Float, Device::Cuda(0)));
    pg.all_reduce_(&mut bucket, ReduceOp::Sum).map_err(s)?;
    sam_torch::cuda_synchronize(0).map_err(s)?;
    let t1 = Instant::now();
    pg.all_reduce_(&mut bucket, ReduceOp::Sum).map_err(s)?;
    sam_torch::cuda_synchronize(0).map_err(s)?;
    let dt = t1.elapsed().as_secs_f64();
    Ok(format!(
        "init + 4 collectives {init_and_ops:.2} s; 360 MB all_reduce {:.2} ms; {reducer}",
        dt * 1e3
    ))
}
