//! Multi-process tests of the c10d Gloo bridge: the test binary re-runs itself as the ranks
//! (the `rank_entry` test, active only when `SAM_TORCH_TEST_WORKER` is set), on 127.0.0.1
//! with a free port, each rank under a hard deadline.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common {
    pub mod dist_worker;
}

const WORKER_VAR: &str = "SAM_TORCH_TEST_WORKER";

/// Entry point of a child rank; a no-op in a normal test run.
#[test]
fn rank_entry() {
    let Ok(mode) = std::env::var(WORKER_VAR) else {
        return;
    };
    let env = sam_torch::LaunchEnv::from_env().expect("launch variables");
    let timeout_ms: u64 = std::env::var("SAM_TORCH_TEST_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    match common::dist_worker::run(
        &env,
        &mode,
        Duration::from_millis(timeout_ms),
        Some("127.0.0.1"),
    ) {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            eprintln!("rank {} failed: {err}", env.rank);
            std::process::exit(1);
        }
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn spawn_rank(mode: &str, rank: usize, world: usize, port: u16, timeout: Duration) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "rank_entry", "--nocapture", "--test-threads=1"])
        .env(WORKER_VAR, mode)
        .env("SAM_TORCH_TEST_TIMEOUT_MS", timeout.as_millis().to_string())
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env_remove("GLOO_SOCKET_IFNAME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` until `deadline`; kills it and returns None past the deadline.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn output(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(out) = child.stdout.as_mut() {
        let _ = out.read_to_string(&mut s);
    }
    if let Some(err) = child.stderr.as_mut() {
        let _ = err.read_to_string(&mut s);
    }
    s
}

#[test]
fn two_gloo_ranks_agree_on_every_collective() {
    let port = free_port();
    let mut ranks: Vec<Child> = (0..2)
        .map(|r| spawn_rank("check", r, 2, port, Duration::from_secs(20)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    for (r, child) in ranks.iter_mut().enumerate() {
        let status = wait_until(child, deadline);
        let out = output(child);
        assert!(
            status.is_some(),
            "rank {r} hung past the deadline; output:\n{out}"
        );
        assert!(status.unwrap().success(), "rank {r} failed; output:\n{out}");
        assert!(
            out.contains("all collectives ok"),
            "rank {r} output:\n{out}"
        );
    }
}

/// Gradients averaged while the backward runs equal the averaging of before (after the
/// backward, bucket by bucket) on the same gradients, in fp32 and bf16 on the wire, with a
/// parameter only one rank has a gradient for and one no rank has; the buckets leave at arming
/// or from the hooks during the backward, before it returns.
#[test]
fn two_gloo_ranks_average_gradients_during_the_backward_as_after_it() {
    let port = free_port();
    let mut ranks: Vec<Child> = (0..2)
        .map(|r| spawn_rank("reducer", r, 2, port, Duration::from_secs(20)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    for (r, child) in ranks.iter_mut().enumerate() {
        let status = wait_until(child, deadline);
        let out = output(child);
        assert!(
            status.is_some(),
            "rank {r} hung past the deadline; output:\n{out}"
        );
        assert!(status.unwrap().success(), "rank {r} failed; output:\n{out}");
        assert!(out.contains("reducer ok"), "rank {r} output:\n{out}");
    }
}

#[test]
fn killing_a_rank_makes_the_other_fail_promptly() {
    let port = free_port();
    // A long group timeout: the survivor must notice the closed connection, not wait it out.
    let timeout = Duration::from_secs(60);
    let mut survivor = spawn_rank("victim", 0, 2, port, timeout);
    let mut victim = spawn_rank("victim", 1, 2, port, timeout);
    // Let both pass the first barrier, then kill the silent rank.
    let mut buf = [0u8; 256];
    let mut seen = String::new();
    let start = Instant::now();
    while !seen.contains("victim going silent") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "victim never reached its barrier: {seen}"
        );
        let n = victim.stdout.as_mut().unwrap().read(&mut buf).unwrap();
        assert!(n > 0, "victim exited early: {seen}{}", output(&mut victim));
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    let killed = Instant::now();
    let status = wait_until(&mut survivor, killed + Duration::from_secs(30));
    let out = output(&mut survivor);
    assert!(
        status.is_some(),
        "survivor hung after its peer was killed; output:\n{out}"
    );
    assert!(
        !status.unwrap().success(),
        "survivor exited 0; output:\n{out}"
    );
    assert!(out.contains("peer lost after"), "survivor output:\n{out}");
    assert!(killed.elapsed() < Duration::from_secs(30));
    eprintln!("survivor of a killed peer:\n{out}");
}

#[test]
fn a_silent_rank_makes_the_other_fail_after_the_timeout() {
    let port = free_port();
    let timeout = Duration::from_secs(3);
    let mut survivor = spawn_rank("victim", 0, 2, port, timeout);
    let mut victim = spawn_rank("victim", 1, 2, port, timeout);
    let start = Instant::now();
    let status = wait_until(&mut survivor, start + Duration::from_secs(60));
    let _ = victim.kill();
    let _ = victim.wait();
    let out = output(&mut survivor);
    assert!(
        status.is_some(),
        "survivor hung despite the 3 s timeout; output:\n{out}"
    );
    assert!(
        !status.unwrap().success(),
        "survivor exited 0; output:\n{out}"
    );
    assert!(out.contains("peer lost after"), "survivor output:\n{out}");
    // Lost after at least the timeout (it was a silent peer, not a closed connection) and well
    // before the deadline.
    let lost: f64 = out
        .split("peer lost after ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1.0);
    assert!(
        (2.5..30.0).contains(&lost),
        "lost after {lost} s; output:\n{out}"
    );
    eprintln!("survivor of a silent peer:\n{out}");
}

#[test]
fn single_rank_group_is_the_identity() {
    let port = free_port();
    let store =
        sam_torch::TcpStore::new("127.0.0.1", port, 1, true, Duration::from_secs(10)).unwrap();
    let pg =
        sam_torch::ProcessGroup::new_gloo_on(&store, 0, 1, Duration::from_secs(10), "127.0.0.1")
            .unwrap();
    let mut t = tch::Tensor::from_slice(&[1.0f32, 2.0]);
    pg.all_reduce_(&mut t, sam_torch::ReduceOp::Avg).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.0, 2.0]);
    store.set("k", b"v").unwrap();
    assert_eq!(store.get("k").unwrap(), b"v");
}

#[test]
fn bad_arguments_are_errors_not_aborts() {
    let port = free_port();
    let store =
        sam_torch::TcpStore::new("127.0.0.1", port, 1, true, Duration::from_secs(10)).unwrap();
    let err =
        sam_torch::ProcessGroup::new_gloo_on(&store, 3, 2, Duration::from_secs(1), "127.0.0.1")
            .unwrap_err();
    assert!(err.to_string().contains("rank 3 out of range"), "{err}");
    let pg =
        sam_torch::ProcessGroup::new_gloo_on(&store, 0, 1, Duration::from_secs(10), "127.0.0.1")
            .unwrap();
    let err = pg
        .broadcast_(&mut tch::Tensor::zeros([1], tch::kind::FLOAT_CPU), 5)
        .unwrap_err();
    assert!(err.to_string().contains("broadcast root 5"), "{err}");
    let mut ints = tch::Tensor::from_slice(&[1i64, 2]);
    let err = pg
        .all_reduce_(&mut ints, sam_torch::ReduceOp::Avg)
        .unwrap_err();
    assert!(
        err.to_string().contains("average needs a floating-point"),
        "{err}"
    );
    if !sam_torch::HAS_NCCL || !sam_torch::cuda_is_available() {
        let err =
            sam_torch::ProcessGroup::new_nccl(&store, 0, 1, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("NCCL"), "{err}");
    }
    // Nobody listens here: the client gives up after its timeout with an error.
    let dead = free_port();
    let start = Instant::now();
    let err =
        sam_torch::TcpStore::new("127.0.0.1", dead, 2, false, Duration::from_secs(2)).unwrap_err();
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(20));
}
