//! The `sam-train` executable end to end, as separate processes: distributed training on CPU
//! over Gloo (two processes over a global batch end where one process over the same batch ends,
//! and a rank that dies makes its peer fail instead of hanging), a run killed with SIGKILL at
//! any moment resuming to the uninterrupted run's weights, and the refusals of `train` and
//! `export` with their exit status.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{repo_with_config, BIN};
use sam_testkit::{ConfigBuilder, TempRepo};
use sam_train::{CheckpointStore, Slot};
use tch::Tensor;

/// The config of [`setup`].
fn config(batch_size: u32, epochs: u32, decoder: bool) -> ConfigBuilder {
    ConfigBuilder::named("d")
        .tiny_cpu_training()
        .checkpoint_name("ck")
        .seed(5)
        .set("data.num_workers", 1)
        .with_decoder(decoder)
        .batch_size(batch_size.into())
        // One prompting round: the corrective points of later rounds are drawn from thresholded
        // masks, so a logit within rounding noise of 0 can move a point and make two exact runs
        // diverge for reasons that have nothing to do with data parallelism.
        .set("training.n_sub_iteration", 1)
        .epochs(epochs.into())
        // Adam's update of a parameter whose true gradient is 0 (attention key biases) is
        // lr * noise / (|noise| + eps): with a small eps, summation-order noise alone moves it by
        // ~lr. A large eps keeps such parameters still and leaves the real updates at ~lr.
        .set("training.eps", 1.0e-3)
        .set("distributed.timeout_minutes", 1)
}

/// A repository-like folder with data and a config whose per-process batch is `batch_size`.
fn setup(batch_size: u32, epochs: u32, decoder: bool) -> (TempRepo, PathBuf) {
    repo_with_config("d", &config(batch_size, epochs, decoder))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `sam-train train` as `rank` of `world` (torchrun-style variables), or alone.
fn spawn(root: &Path, config: &Path, rank_world_port: Option<(usize, usize, u16)>) -> Child {
    spawn_with(root, config, rank_world_port, &[])
}

/// [`spawn`] with extra environment variables.
fn spawn_with(
    root: &Path,
    config: &Path,
    rank_world_port: Option<(usize, usize, u16)>,
    env: &[(&str, &str)],
) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.envs(env.iter().copied());
    cmd.args(["train", "--no-progress", "--root"])
        .arg(root)
        .arg(config)
        .env_remove("SLURM_PROCID")
        .env_remove("SLURM_NTASKS")
        .env_remove("SLURM_JOB_NODELIST")
        .env_remove("SLURM_STEP_ID")
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match rank_world_port {
        Some((rank, world, port)) => {
            cmd.env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string());
        }
        None => {
            cmd.env_remove("RANK").env_remove("WORLD_SIZE");
        }
    }
    cmd.spawn().unwrap()
}

fn finish(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn latest_model(root: &Path) -> Vec<(String, Tensor)> {
    let mut m = CheckpointStore::new(root.join("runs/d/checkpoints/ck"))
        .load(Slot::Latest)
        .unwrap()
        .model;
    m.sort_by(|a, b| a.0.cmp(&b.0));
    m
}

/// The largest element difference and the tensor it is in.
fn max_difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, String) {
    assert_eq!(a.len(), b.len());
    let mut worst = (0.0f64, String::new());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let d = (ta - tb).abs().max().double_value(&[]);
        if d > worst.0 {
            worst = (d, na.clone());
        }
    }
    worst
}

#[test]
fn two_processes_end_with_the_weights_of_one_process_over_the_same_global_batch() {
    // Without the UNETR decoder: its BatchNorm layers normalise with each process's own batch
    // statistics (as PyTorch DDP without SyncBatchNorm does), which a single process over the
    // whole batch cannot reproduce. SAM itself has only LayerNorm.
    // One process, batch 2 per step.
    let (one, one_cfg) = setup(2, 2, false);
    finish(spawn(one.path(), &one_cfg, None), "single-process run");
    // Two processes, batch 1 each: the same global batch of 2.
    let (two, two_cfg) = setup(1, 2, false);
    let port = free_port();
    let r0 = spawn(two.path(), &two_cfg, Some((0, 2, port)));
    let r1 = spawn(two.path(), &two_cfg, Some((1, 2, port)));
    finish(r0, "rank 0");
    finish(r1, "rank 1");

    let worst = max_difference(&latest_model(one.path()), &latest_model(two.path()));
    assert!(
        worst.0 <= 1e-5,
        "2-process weights differ from 1-process weights by {} (in {})",
        worst.0,
        worst.1
    );
    // The comparison can tell runs apart: one process over half the batch ends elsewhere.
    let (half, half_cfg) = setup(1, 2, false);
    finish(spawn(half.path(), &half_cfg, None), "half-batch run");
    let other = max_difference(&latest_model(one.path()), &latest_model(half.path()));
    assert!(
        other.0 > 1e-3,
        "a different batch changed the weights by only {}",
        other.0
    );
    // Both runs did train: 4 iterations each, logged by rank 0 only.
    let log = std::fs::read_to_string(two.path().join("runs/d/logs/train.log")).unwrap();
    assert!(log.contains("2 process(es)"), "{log}");
    assert_eq!(log.matches("iteration 4/4").count(), 1, "{log}");
    // A step waits for the device once in one process (its loss and the gradients'
    // finiteness), and twice more with several (the agreement on finiteness, the gradient
    // flags), plus once in the first step (the gradient buckets' layout from rank 0): whatever
    // the objects, rounds and parameters.
    let reads = |log: &str| -> u64 {
        let at = log.find("at most ").expect("the step summary line");
        log[at + 8..]
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a number of device reads")
    };
    let single = std::fs::read_to_string(one.path().join("runs/d/logs/train.log")).unwrap();
    assert_eq!(reads(&single), 1, "{single}");
    assert!((1..=4).contains(&reads(&log)), "{log}");
}

/// Issue 19: two processes of two micro-batches of 1 per optimiser step, every encoder block
/// recomputed in the backward, end with the weights of one process over batches of 4 without
/// either, and average their gradients once per optimiser step (only the last micro-batch arms
/// the reducer): a step reads from the device as often as without accumulation, where an
/// all-reduce per micro-batch would add a read of its gradient flags. The buckets of the
/// recomputed blocks' gradients are sent as their recomputed backward fills them (a bucket
/// sent before its gradients were final would fail the run).
#[test]
fn two_processes_with_gradient_accumulation_match_one_process_over_the_whole_batch() {
    let (one, one_cfg) = setup(4, 2, false);
    finish(spawn(one.path(), &one_cfg, None), "single-process run");
    let (two, two_cfg) = repo_with_config(
        "d",
        &config(1, 2, false)
            .set("training.gradient_accumulation", 2)
            .set("training.activation_checkpointing", "all"),
    );
    let port = free_port();
    let r0 = spawn(two.path(), &two_cfg, Some((0, 2, port)));
    let r1 = spawn(two.path(), &two_cfg, Some((1, 2, port)));
    finish(r0, "rank 0");
    finish(r1, "rank 1");
    let worst = max_difference(&latest_model(one.path()), &latest_model(two.path()));
    assert!(
        worst.0 <= 1e-5,
        "2 processes × 2 micro-batches differ from 1 process × 4 by {} (in {})",
        worst.0,
        worst.1
    );
    let log = std::fs::read_to_string(two.path().join("runs/d/logs/train.log")).unwrap();
    assert!(
        log.contains("global batch 4 (2 micro-batches of 1 per process and step)"),
        "{log}"
    );
    // samples_per_epoch 4 over a global batch of 4: one optimiser step per epoch.
    assert_eq!(log.matches("iteration 2/2").count(), 1, "{log}");
    let at = log.find("at most ").expect("the step summary line");
    let reads: u64 = log[at + 8..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number of device reads");
    assert!((1..=4).contains(&reads), "{log}");
}

#[test]
fn a_dead_rank_makes_its_peer_exit_with_an_error_in_bounded_time() {
    let (dir, cfg) = setup(1, 50, true);
    let port = free_port();
    let r0 = spawn(dir.path(), &cfg, Some((0, 2, port)));
    let mut r1 = spawn(dir.path(), &cfg, Some((1, 2, port)));
    // Wait until training runs (rank 0 has logged an iteration), then kill rank 1.
    let log = dir.path().join("runs/d/logs/train.log");
    let started = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|s| s.contains("iteration 2/")) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    r1.kill().unwrap();
    let _ = r1.wait();
    let killed_at = Instant::now();
    let out = r0.wait_with_output().unwrap();
    let waited = killed_at.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "rank 0 succeeded without its peer: {stderr}"
    );
    assert!(
        waited < Duration::from_secs(90),
        "rank 0 took {waited:?} to notice"
    );
    assert!(stderr.contains("distributed"), "{stderr}");
}

/// Runs both ranks of a 2-process job with `faults` (see `SAM_TRAIN_INJECT_FAULTS`) and
/// returns each rank's exit success and stderr.
fn run_pair_with_faults(root: &Path, config: &Path, faults: &str) -> [(bool, String); 2] {
    let port = free_port();
    let env = [("SAM_TRAIN_INJECT_FAULTS", faults)];
    let children = [
        spawn_with(root, config, Some((0, 2, port)), &env),
        spawn_with(root, config, Some((1, 2, port)), &env),
    ];
    children.map(|c| {
        let out = c.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
}

/// The end-of-run line in which a rank states its decisions, without the rank.
fn decisions(stderr: &str, rank: usize) -> String {
    let marker = format!("rank {rank} of 2 finished: ");
    let line = stderr
        .lines()
        .find(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no `{marker}` line in:\n{stderr}"));
    line[line.find(&marker).unwrap() + marker.len()..].to_string()
}

/// Issue 15: validation is scored once for the job and every rank decides (learning rate,
/// best checkpoint, early stop) from the same numbers: a rank whose own validation scores are
/// forced far off (and whose BatchNorm statistics differ anyway, decoder on) ends with the
/// same decisions as its peer.
#[test]
fn a_rank_whose_validation_differs_does_not_split_the_decisions() {
    let (dir, cfg) = setup(1, 4, true);
    let [(ok0, err0), (ok1, err1)] =
        run_pair_with_faults(dir.path(), &cfg, "rank=1;validation_offset=0.4");
    assert!(ok0 && ok1, "rank 0:\n{err0}\nrank 1:\n{err1}");
    assert_eq!(decisions(&err0, 0), decisions(&err1, 1));
    assert!(decisions(&err0, 0).contains("4 epochs"), "{err0}");
}

/// Issue 15: a non-finite loss on one rank skips that step on every rank (no rank exits
/// alone, no rank applies it), and too many in a row stop every rank together with the last
/// good checkpoint kept.
#[test]
fn a_non_finite_step_on_one_rank_is_skipped_or_stops_on_both() {
    let (dir, cfg) = setup(1, 3, true);
    let [(ok0, err0), (ok1, err1)] =
        run_pair_with_faults(dir.path(), &cfg, "rank=1;nonfinite_at=1");
    assert!(ok0 && ok1, "rank 0:\n{err0}\nrank 1:\n{err1}");
    assert!(
        err0.contains("iteration 2: non-finite loss or gradients (on another rank), step skipped"),
        "{err0}"
    );
    assert!(
        err1.contains("iteration 2: non-finite loss or gradients (on this rank), step skipped"),
        "{err1}"
    );
    assert_eq!(decisions(&err0, 0), decisions(&err1, 1));

    // Five in a row (the default training.max_nonfinite_steps) from the third step on: both
    // ranks stop with the same error, and `latest` is the state after the second step.
    let (dir, cfg) = setup(1, 5, true);
    let started = Instant::now();
    let [(ok0, err0), (ok1, err1)] =
        run_pair_with_faults(dir.path(), &cfg, "rank=1;nonfinite_at=2,3,4,5,6");
    assert!(started.elapsed() < Duration::from_secs(240));
    assert!(!ok0 && !ok1, "rank 0:\n{err0}\nrank 1:\n{err1}");
    for err in [&err0, &err1] {
        assert!(
            err.contains("not finite for 5 consecutive steps (from iteration 3"),
            "{err}"
        );
    }
    let state = CheckpointStore::new(dir.path().join("runs/d/checkpoints/ck"))
        .load(Slot::Latest)
        .unwrap()
        .state;
    assert_eq!(state.iteration, 2);
}

/// Issue 15: `training.device: cuda` on a machine where libtorch sees no GPU is a usage error
/// (exit 2) before anything is written, that names the NVIDIA driver, CUDA_VISIBLE_DEVICES,
/// `nvidia-smi` and the libtorch build. `CUDA_VISIBLE_DEVICES=-1` hides every GPU, so this
/// holds on GPU machines too.
#[test]
fn cuda_without_a_usable_gpu_exits_2_before_writing_anything() {
    let (dir, config) = repo_with_config(
        "d",
        &config(2, 1, false)
            .set("training.device", "cuda")
            .set("hardware.accelerator", "a100"),
    );
    let out = Command::new(BIN)
        .args(["train", "--no-progress", "--root"])
        .arg(dir.path())
        .arg(&config)
        .env_remove("SLURM_PROCID")
        .env_remove("SLURM_NTASKS")
        .env_remove("SLURM_JOB_NODELIST")
        .env_remove("SLURM_STEP_ID")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env("CUDA_VISIBLE_DEVICES", "-1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for part in [
        "training.device: `cuda` needs a GPU, but libtorch sees none",
        "NVIDIA driver",
        "CUDA_VISIBLE_DEVICES=\"-1\"",
        "`nvidia-smi`",
        "libtorch: ",
    ] {
        assert!(stderr.contains(part), "missing `{part}` in:\n{stderr}");
    }
    assert!(
        stderr.contains("libtorch: built for CUDA") || stderr.contains("libtorch: CPU-only"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !dir.path().join("runs").exists(),
        "the run folder was created"
    );
    assert!(!dir.path().join("final_models").exists());
}

/// A repository-like folder for the resume test: the demo's recipe (decoder on, one global
/// batch of 2, ReduceLROnPlateau) on a tiny model and 64 px images, 8 epochs of 4 iterations,
/// `latest` every 3 iterations. Three prompting rounds with mask input make the run sensitive
/// to the smallest difference; patience 0 and lr 2e-3 decay the learning rate to values that
/// JSON round-trips only when parsed exactly.
fn setup_resume() -> (TempRepo, PathBuf) {
    let config = ConfigBuilder::named("k")
        .tiny_cpu_training()
        .checkpoint_name("ck")
        .seed(9)
        .set("data.samples_per_epoch", 8)
        .with_decoder(true)
        .set("model.architecture.image_size", 64)
        .set("model.architecture.patch_size", 8)
        .set("model.architecture.decoder_features", 8)
        .set("training.n_objects_per_batch", 8)
        .set("training.mask_prob", 0.5)
        .set("training.tensorboard_images_every", 3)
        .epochs(8)
        .set("training.lr", 2.0e-3)
        .set("training.scheduler.kind", "reduce_on_plateau")
        .set("training.scheduler.factor", 0.9)
        .set("training.scheduler.patience", 0)
        .set_yaml("training.early_stopping_patience", "null")
        .set("training.checkpoint_every_iterations", 3);
    repo_with_config("k", &config)
}

/// Starts `sam-train train CONFIG ARGS` alone, with extra environment variables.
fn spawn_train(root: &Path, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(BIN)
        .args(["train", "--no-progress", "--root"])
        .arg(root)
        .arg(config)
        .args(args)
        .env_remove("SLURM_PROCID")
        .env_remove("SLURM_NTASKS")
        .env_remove("SLURM_JOB_NODELIST")
        .env_remove("SLURM_STEP_ID")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SAM_TRAIN_INJECT_FAULTS")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts a run with `start`, waits until its log holds `text` once more than before, then
/// sends it `signal` (`KILL`: killed wherever it is; `TERM`: a stop request) and waits for it
/// to end. Returns its exit status and process id.
fn interrupt_when_logged(
    log: &Path,
    text: &str,
    signal: &str,
    start: impl FnOnce() -> Child,
) -> (std::process::ExitStatus, u32) {
    let seen = count(log, text);
    let mut child = start();
    let pid = child.id();
    let started = Instant::now();
    while count(log, text) <= seen {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the run ended ({status}) before logging `{text}`:\n{log}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "`{text}` never logged"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid} failed");
    (child.wait().unwrap(), pid)
}

fn count(log: &Path, text: &str) -> usize {
    std::fs::read_to_string(log).map_or(0, |s| s.matches(text).count())
}

/// The number of TensorBoard event files of run `k` and the (tag, step) of every value in
/// them, sorted; each must occur once.
fn tensorboard_keys(root: &Path) -> (usize, Vec<(String, i64)>) {
    let files = sam_train::tensorboard::event_files(&root.join("runs/k/logs/tensorboard")).unwrap();
    let mut keys = Vec::new();
    for f in &files {
        for e in sam_train::tensorboard::read_events(f).unwrap() {
            keys.extend(e.values().map(|v| (v.tag.clone(), e.step)));
        }
    }
    keys.sort();
    let mut unique = keys.clone();
    unique.dedup();
    assert_eq!(
        keys,
        unique,
        "a (tag, step) is logged twice in {}",
        root.display()
    );
    assert!(!keys.is_empty());
    (files.len(), keys)
}

/// `metrics.csv` without its `seconds` column.
fn metrics_without_time(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("runs/k/logs/metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let seconds = header.iter().position(|c| *c == "seconds").unwrap();
    lines
        .map(|l| {
            let mut cells: Vec<&str> = l.split(',').collect();
            cells.remove(seconds);
            cells.join(",")
        })
        .collect()
}

/// Issue 16, harm 3: a run stopped by SIGTERM once and killed with SIGKILL three times —
/// during its steps, half-way through writing a checkpoint, and just after an epoch's
/// validation — and resumed each time ends with the uninterrupted run's weights (decoder
/// included), best checkpoint, learning rate, scheduler state and metrics.
#[test]
fn a_run_stopped_and_killed_resumes_to_the_uninterrupted_weights() {
    let (whole, whole_cfg) = setup_resume();
    finish(
        spawn_train(whole.path(), &whole_cfg, &[], &[]),
        "uninterrupted run",
    );

    let (dir, cfg) = setup_resume();
    let root = dir.path();
    let log = root.join("runs/k/logs/train.log");
    let ck = root.join("runs/k/checkpoints/ck");
    let resume = || spawn_train(root, &cfg, &["--resume"], &[]);
    // 0. SIGTERM during epoch 2: the step ends, `latest` is written, exit 42.
    let (status, _) = interrupt_when_logged(&log, "iteration 5/32", "TERM", || {
        spawn_train(root, &cfg, &[], &[])
    });
    assert_eq!(
        status.code(),
        Some(42),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    // 1. SIGKILL during the steps of epoch 3 (`latest` written after iteration 9, or being
    //    written).
    interrupt_when_logged(&log, "iteration 10/32", "KILL", resume);
    // 2. SIGKILL half-way through writing `latest` after iteration 15: the model file written,
    //    the rest not. The next resume must start from the epoch-3 checkpoint (iteration 12).
    let (_, pid) = interrupt_when_logged(
        &log,
        "fault injection: pausing the write of latest",
        "KILL",
        || {
            spawn_train(
                root,
                &cfg,
                &["--resume"],
                &[("SAM_TRAIN_INJECT_FAULTS", "pause_checkpoint_write_at=15")],
            )
        },
    );
    let stale = ck.join(format!(".latest.tmp-{pid}"));
    assert!(
        stale.join("model.safetensors").is_file() && !stale.join("state.json").exists(),
        "no half-written checkpoint in {}",
        stale.display()
    );
    // 3. SIGKILL just after the validation of epoch 6 (best and latest being written).
    interrupt_when_logged(&log, "epoch 6/8:", "KILL", resume);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("resumed from").count(), 3, "{text}");
    assert!(
        text.contains("at epoch 3, iteration 12"),
        "the resume after the kill during the write did not start from the last complete \
         checkpoint:\n{text}"
    );
    assert!(
        text.contains(&format!("removed {}", stale.display())),
        "the half-written checkpoint was not cleaned up:\n{text}"
    );
    assert!(!stale.exists());
    finish(resume(), "last resume");

    let slot = |r: &Path, s: Slot| {
        let c = CheckpointStore::new(r.join("runs/k/checkpoints/ck"))
            .load(s)
            .unwrap();
        let mut m = c.model;
        m.sort_by(|a, b| a.0.cmp(&b.0));
        (m, c.state)
    };
    for s in [Slot::Latest, Slot::Best] {
        let (want, want_state) = slot(whole.path(), s);
        let (got, got_state) = slot(root, s);
        assert!(want.iter().any(|(k, _)| k.starts_with("decoder.")));
        let worst = max_difference(&want, &got);
        eprintln!(
            "{s:?}: largest difference to the uninterrupted run {:e}",
            worst.0
        );
        assert!(
            worst.0 <= 1e-6,
            "{s:?}: the resumed run differs from the uninterrupted one by {} (in {})",
            worst.0,
            worst.1
        );
        let strip = |st: &sam_train::TrainState| format!("{st:?}");
        assert_eq!(
            strip(&got_state),
            strip(&want_state),
            "{s:?}: training state differs"
        );
    }
    assert_eq!(
        metrics_without_time(root),
        metrics_without_time(whole.path())
    );
    // TensorBoard: the five processes' event files hold every (tag, step) of the uninterrupted
    // run, each once (the steps a killed process logged after its last checkpoint were
    // removed when the next one resumed).
    let (files, keys) = tensorboard_keys(root);
    assert_eq!(files, 5);
    assert_eq!(keys, tensorboard_keys(whole.path()).1);
    // Every .tmp folder is gone; the exported model exists.
    let names: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    assert!(root.join("final_models/k.pt").is_file());
}

/// Issue 16: the refusals of `train --overwrite` and `export` exit 2, name the path and the
/// fix, and change nothing.
#[test]
fn refusals_exit_2_and_change_nothing() {
    let (dir, cfg) = setup(2, 1, false);
    let root = dir.path();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("RANK")
            .env_remove("WORLD_SIZE")
            .env_remove("SLURM_PROCID")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A folder that is not a run where the run folder would be.
    let run_dir = root.join("runs/d");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::write(run_dir.join("precious.tif"), "data").unwrap();
    let root_s = root.to_str().unwrap();
    let cfg_s = cfg.to_str().unwrap();
    for flag in ["--overwrite", "--resume"] {
        let (code, err) = run(&["train", "--no-progress", "--root", root_s, cfg_s, flag]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("is not a run folder of sam-train") && err.contains("runs/d"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(run_dir.join("precious.tif")).unwrap(),
        "data"
    );
    // Export onto its own input, also with --force, and onto an existing file.
    let models = root.join("final_models");
    std::fs::create_dir_all(&models).unwrap();
    let input = models.join("m.pt");
    let other = models.join("other.pt");
    std::fs::write(&input, "input").unwrap();
    std::fs::write(&other, "other").unwrap();
    let (i, o) = (input.to_str().unwrap(), other.to_str().unwrap());
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["export", "--checkpoint", i, "--output", i];
        args.extend_from_slice(extra);
        let (code, err) = run(&args);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("is the checkpoint being exported"), "{err}");
    }
    let (code, err) = run(&["export", "--checkpoint", i, "--output", o]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("exists: pass --force to replace it"), "{err}");
    assert_eq!(std::fs::read_to_string(&input).unwrap(), "input");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "other");
}
