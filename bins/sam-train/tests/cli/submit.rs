//! Issue 15, items 4 and 6, through the executable and the submit script: `job-resources`
//! prints a config's SLURM resources for the shell, `scripts/submit_training_a100.sh --dry-run`
//! takes them from the config with flags overriding, a stop by signal (and only that) leaves the
//! marker the batch script requeues on, and each process sizes its threads to its cores.
//!
//! The real SLURM run (two nodes, USR1, requeue without RequeueExit) is
//! `scripts/slurm/test_submit_training.sh`: it needs root and apt.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{repo_with_config, BIN};
use sam_testkit::{ConfigBuilder, TempRepo};

/// The repository (for its configs and scripts).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sam-train job-resources` on a repository config, as `KEY -> value` (values unquoted by a
/// real shell, so that the test sees what the script sees).
fn resources(config: &str, extra: &[&str]) -> HashMap<String, String> {
    let script = format!(
        "set -e; out=$(\"$0\" job-resources --root \"$1\" --no-path-checks \"$1/{config}\" {}); eval \"$out\"; \
         for k in ${{!SAM_JOB_@}}; do printf '%s=%s\\0' \"$k\" \"${{!k}}\"; done",
        extra.join(" ")
    );
    let out = run(Command::new("bash").args(["-c", &script, BIN]).arg(repo()));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "job-resources failed:\n{stderr}");
    stdout
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.trim_start_matches("SAM_JOB_").to_owned(), v.to_owned())
        })
        .collect()
}

fn assert_resources(got: &HashMap<String, String>, want: &[(&str, &str)]) {
    for (k, v) in want {
        assert_eq!(
            got.get(*k).map(String::as_str),
            Some(*v),
            "SAM_JOB_{k}: expected {v:?}, got {:?}; all: {got:#?}",
            got.get(*k)
        );
    }
}

#[test]
fn job_resources_reads_the_demo_and_a100_configs() {
    let demo = resources("configs/demo_cpu.yaml", &[]);
    assert_resources(
        &demo,
        &[
            ("EXPERIMENT", "demo_cpu"),
            ("NAME", "sam-demo_cpu"),
            // accelerator cpu, no partition in the config: the cluster's default partition
            ("PARTITION", ""),
            ("TIME", "01:00:00"),
            ("CPUS_PER_TASK", "3"),
            ("NODES", "1"),
            ("TASKS_PER_NODE", "1"),
            ("GPUS_PER_NODE", "0"),
            ("REQUEUE", "1"),
        ],
    );
    assert_eq!(demo.len(), 16, "{demo:#?}");
    let run_dir = Path::new(&demo["RUN_DIR"]);
    assert!(run_dir.ends_with("runs/demo_cpu"), "{run_dir:?}");
    assert_eq!(
        Path::new(&demo["STOP_MARKER"]),
        run_dir.join("stopped_for_requeue")
    );

    let a100 = resources("configs/full_sam_vit_b_a100.yaml", &[]);
    assert_resources(
        &a100,
        &[
            ("EXPERIMENT", "full_sam_vit_b_a100"),
            ("PARTITION", "a100"),
            ("TIME", "56:00:00"),
            ("CPUS_PER_TASK", "9"),
            ("MEM", "500G"),
            ("SIGNAL_LEAD", "600"),
            ("REQUEUE", "1"),
            ("NODES", "2"),
            ("TASKS_PER_NODE", "4"),
            ("GPUS_PER_NODE", "4"),
        ],
    );
    let over = resources(
        "configs/full_sam_vit_b_a100.yaml",
        &[
            "--nodes",
            "1",
            "--gpus-per-node",
            "2",
            "--mem",
            "64G",
            "--no-requeue",
        ],
    );
    assert_resources(
        &over,
        &[
            ("NODES", "1"),
            ("TASKS_PER_NODE", "2"),
            ("GPUS_PER_NODE", "2"),
            ("MEM", "64G"),
            ("REQUEUE", "0"),
            ("CPUS_PER_TASK", "9"),
        ],
    );
}

#[test]
fn job_resources_refuses_bad_configs_and_overrides_with_status_2() {
    let a100 = repo().join("configs/full_sam_vit_b_a100.yaml");
    let out = run(Command::new(BIN)
        .args([
            "job-resources",
            "--no-path-checks",
            "--time",
            "57:00:00",
            "--root",
        ])
        .arg(repo())
        .arg(&a100));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stdout.is_empty(), "nothing to eval on failure: {stdout}");
    assert!(
        stderr.contains("--time: slurm.time_limit: must be at most 56:00:00"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    ConfigBuilder::named("e")
        .checkpoint_name("c")
        .set("slurm.memmory", "8G")
        .write(&bad)
        .unwrap();
    let out = run(Command::new(BIN)
        .args(["job-resources", "--no-path-checks", "--root"])
        .arg(dir.path())
        .arg(&bad));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.yaml:6:3: slurm.memmory: unknown key"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `memory`"), "{stderr}");
}

#[test]
fn job_resources_output_survives_eval_with_odd_paths() {
    // A root with a space, a quote and a dollar sign: every value must reach the shell as is.
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("lab's $HOME data");
    for d in ["configs", "dat"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let config = root.join("configs/c.yaml");
    ConfigBuilder::named("e1")
        .checkpoint_name("c")
        .set("slurm.job_name", "my job; rm -rf x")
        .write(&config)
        .unwrap();
    let out = run(Command::new("bash")
        .args([
            "-c",
            "out=$(\"$0\" job-resources --no-path-checks --root \"$1\" \"$2\") && eval \"$out\" && \
             printf '%s\\n%s\\n' \"$SAM_JOB_RUN_DIR\" \"$SAM_JOB_NAME\"",
            BIN,
        ])
        .arg(&root)
        .arg(&config));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [root.join("runs/e1").to_str().unwrap(), "my job; rm -rf x"]
    );
}

/// `scripts/submit_training_a100.sh --dry-run` with this build of sam-train.
fn dry_run(args: &[&str]) -> Output {
    run(Command::new(repo().join("scripts/submit_training_a100.sh"))
        .env("SAM_TRAIN_BIN", BIN)
        .args(["--dry-run", "--no-path-checks"])
        .args(args))
}

/// The sbatch line of a dry run, as its words, and the batch script.
fn sbatch_of(out: &Output) -> (Vec<String>, String) {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "dry run failed:\n{stdout}\n{stderr}");
    let (first, script) = stdout.split_once('\n').unwrap();
    (
        first.split_whitespace().map(str::to_owned).collect(),
        script.to_owned(),
    )
}

fn assert_words(words: &[String], present: &[&str], absent: &[&str]) {
    for p in present {
        assert!(words.iter().any(|w| w == p), "{p} missing from {words:?}");
    }
    for a in absent {
        assert!(
            !words.iter().any(|w| w.starts_with(a)),
            "{a} should not be in {words:?}"
        );
    }
}

#[test]
fn submit_dry_run_takes_the_resources_from_the_config() {
    let (words, script) = sbatch_of(&dry_run(&["--config", "configs/full_sam_vit_b_a100.yaml"]));
    assert_eq!(words[0], "sbatch");
    assert_words(
        &words,
        &[
            "--job-name=sam-full_sam_vit_b_a100",
            "--partition=a100",
            "--nodes=2",
            "--ntasks-per-node=4",
            "--gpus-per-node=4",
            "--cpus-per-task=9",
            "--mem=500G",
            "--time=56:00:00",
            "--signal=USR1@600",
            "--requeue",
            "--open-mode=append",
        ],
        &["--no-requeue"],
    );
    // The requeue does not depend on slurm.conf: a clean stop exits 0 and the script requeues.
    assert!(script.contains("--stop-exit-code 0"), "{script}");
    assert!(
        script.contains("scontrol requeue \"$SLURM_JOB_ID\""),
        "{script}"
    );
    assert!(script.contains("stopped_for_requeue"), "{script}");
    assert!(script.contains("SLURM_RESTART_COUNT"), "{script}");

    // The demo: one node, one task, its 3 CPUs and 1 h, no GPUs, the default partition.
    let (words, _) = sbatch_of(&dry_run(&["--config", "configs/demo_cpu.yaml"]));
    assert_words(
        &words,
        &[
            "--nodes=1",
            "--ntasks-per-node=1",
            "--cpus-per-task=3",
            "--time=01:00:00",
        ],
        &["--gpus-per-node", "--partition"],
    );
}

#[test]
fn submit_flags_override_the_config() {
    let (words, script) = sbatch_of(&dry_run(&[
        "--config",
        "configs/full_sam_vit_b_a100.yaml",
        "--nodes",
        "1",
        "--gpus-per-node",
        "2",
        "--cpus-per-task",
        "5",
        "--mem",
        "64G",
        "--time",
        "12:00:00",
        "--signal-lead",
        "300",
        "--no-requeue",
        "--resume",
        "--",
        "--account=lab",
    ]));
    assert_words(
        &words,
        &[
            "--nodes=1",
            "--ntasks-per-node=2",
            "--gpus-per-node=2",
            "--cpus-per-task=5",
            "--mem=64G",
            "--time=12:00:00",
            "--signal=USR1@300",
            "--no-requeue",
            "--account=lab",
        ],
        &["--nodes=2", "--mem=500G", "--requeue", "--cpus-per-task=9"],
    );
    assert!(
        script.contains("if [ 1 = 1 ] ||"),
        "--resume is passed on: {script}"
    );
    // --cpu: no GPUs requested, tasks as configured.
    let (words, _) = sbatch_of(&dry_run(&[
        "--config",
        "configs/full_sam_vit_b_a100.yaml",
        "--cpu",
    ]));
    assert_words(&words, &["--ntasks-per-node=4"], &["--gpus-per-node"]);
}

#[test]
fn submit_refuses_invalid_overrides_before_sbatch() {
    for (flags, expect) in [
        (&["--time", "57:00:00"][..], "--time: slurm.time_limit"),
        (
            &["--gpus-per-node", "8"][..],
            "--gpus-per-node: distributed.gpus_per_node",
        ),
        (&["--mem", "700G"][..], "--mem: slurm.memory"),
        (&["--a40"][..], "--partition: slurm.partition"),
    ] {
        let mut args = vec!["--config", "configs/full_sam_vit_b_a100.yaml"];
        args.extend_from_slice(flags);
        let out = dry_run(&args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stdout.is_empty(), "{flags:?}: no sbatch line: {stdout}");
        assert!(stderr.contains(expect), "{flags:?}: {stderr}");
        assert!(stderr.contains("nothing submitted"), "{stderr}");
    }
    let out = dry_run(&["--config", "configs/no_such.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let out = dry_run(&["--config", "configs/demo_cpu.yaml", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

// --- The stop marker and the thread budget, through `sam-train train` ---------------------

/// A repository-like folder with data and a tiny CPU config of `epochs` epochs of 2 iterations
/// that asks for 4 loader workers.
fn setup(epochs: u32) -> (TempRepo, PathBuf) {
    let config = ConfigBuilder::named("s")
        .tiny_cpu_training()
        .checkpoint_name("ck")
        .seed(5)
        .set("data.samples_per_epoch", 2)
        .set("data.num_workers", 4)
        .batch_size(1)
        .set("training.n_sub_iteration", 1)
        .epochs(epochs.into())
        .set("distributed.timeout_minutes", 1)
        .set("slurm.cpus_per_task", 5);
    repo_with_config("s", &config)
}

/// An srun task of a 1-task SLURM job with `cpus` CPUs per task: a deterministic CPU budget.
const SLURM_ONE_TASK: [(&str, &str); 6] = [
    ("SLURM_PROCID", "0"),
    ("SLURM_NTASKS", "1"),
    ("SLURM_LOCALID", "0"),
    ("SLURM_STEP_ID", "0"),
    ("SLURM_JOB_NODELIST", "localhost"),
    ("SLURM_JOB_ID", "4242"),
];

fn train_cmd(root: &Path, config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["train", "--no-progress", "--root"])
        .arg(root)
        .arg(config)
        .args(extra);
    for v in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "GROUP_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_LOCALID",
        "SLURM_STEP_ID",
        "SLURM_JOB_ID",
        "SLURM_JOBID",
        "SLURM_JOB_NODELIST",
        "SLURM_NODELIST",
        "SLURM_CPUS_PER_TASK",
        "SLURM_CPUS_ON_NODE",
        "SLURM_NTASKS_PER_NODE",
        "SLURM_STEP_TASKS_PER_NODE",
        "SLURM_TASKS_PER_NODE",
        "SLURM_NODEID",
    ] {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Waits until the run's log, past its first `from` bytes, contains `needle`.
fn wait_for_log(root: &Path, from: usize, needle: &str, child: &mut Child) {
    let log = root.join("runs/s/logs/train.log");
    let started = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|s| s.get(from..).unwrap_or("").contains(needle))
    {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("sam-train ended ({status}) before logging {needle:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no {needle:?} in {} after 300 s",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_len(root: &Path) -> usize {
    std::fs::metadata(root.join("runs/s/logs/train.log")).map_or(0, |m| m.len() as usize)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Issue 15: rank 0 leaves the stop marker after a stop by SIGUSR1 and exits with
/// `--stop-exit-code` (42 by default, 0 from the batch script); a run that starts removes a
/// marker left by an earlier stop.
#[test]
fn a_stop_by_signal_leaves_the_marker_and_exits_with_the_stop_exit_code() {
    let (dir, config) = setup(200);
    let root = dir.path();
    let marker = root.join("runs/s/stopped_for_requeue");
    for (extra, code) in [
        (&[][..], 42),
        (&["--stop-exit-code", "0", "--resume"][..], 0),
    ] {
        let from = log_len(root);
        let mut child = train_cmd(root, &config, extra, &SLURM_ONE_TASK)
            .spawn()
            .unwrap();
        wait_for_log(root, from, "iteration ", &mut child);
        if code == 0 {
            assert!(
                !marker.exists(),
                "the marker of the first stop is removed at start"
            );
        }
        signal(&child, "USR1");
        let out = child.wait_with_output().unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains("stop requested: checkpointed"), "{stderr}");
        let content = std::fs::read_to_string(&marker).unwrap();
        assert!(content.contains("slurm_job 4242"), "{content}");
    }
}

/// Issue 15: neither a finished run nor a failed one leaves the marker.
#[test]
fn no_marker_without_a_stop_by_signal() {
    let (dir, config) = setup(1);
    let root = dir.path();
    let marker = root.join("runs/s/stopped_for_requeue");
    let out = run(&mut train_cmd(root, &config, &[], &SLURM_ONE_TASK));
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(!marker.exists(), "a finished run leaves no marker");

    // Rank 0 of two fails in training when its peer dies: no marker either.
    let (dir, config) = setup(200);
    let root = dir.path();
    let marker = root.join("runs/s/stopped_for_requeue");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let rank = |r: &'static str| {
        [
            ("RANK", r),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", r),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", port.as_str()),
        ]
    };
    let mut r0 = train_cmd(root, &config, &[], &rank("0")).spawn().unwrap();
    let mut r1 = train_cmd(root, &config, &[], &rank("1")).spawn().unwrap();
    wait_for_log(root, 0, "iteration 2/", &mut r0);
    r1.kill().unwrap();
    let _ = r1.wait();
    let out = r0.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!marker.exists(), "a failed run leaves no marker:\n{stderr}");
}

/// Issue 18: the training log reports throughput: the model FLOPs of a step at the start, then
/// at each log line and in the summary images/s, s/step and achieved TFLOP/s (on the CPU
/// without a share of a GPU peak).
#[test]
fn issue_18_the_training_log_reports_throughput() {
    let (dir, config) = setup(1);
    let root = dir.path();
    let out = run(&mut train_cmd(root, &config, &[], &SLURM_ONE_TASK));
    assert!(out.status.success(), "{}", text(&out).1);
    let log = std::fs::read_to_string(root.join("runs/s/logs/train.log")).unwrap();
    assert!(
        log.contains("model FLOPs: ") && log.contains(" TFLOP per step in each process (no GPU)"),
        "{log}"
    );
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("iteration ") && l.contains("loss "))
        .collect();
    assert!(!lines.is_empty(), "{log}");
    for line in lines.iter().chain(
        log.lines()
            .filter(|l| l.contains("training steps: "))
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert!(
            line.contains(" images/s, ") && line.contains(" s/step, ") && line.contains(" TFLOP/s"),
            "{line}"
        );
        assert!(!line.contains("peak"), "no GPU peak on the CPU: {line}");
    }
}

/// Issue 15 item 6: the thread budget follows the launch: SLURM_CPUS_PER_TASK in an srun task,
/// available cores / LOCAL_WORLD_SIZE under torchrun-style variables; the loader workers of
/// `data.num_workers` are lowered to fit, and the numbers are logged.
#[test]
fn threads_fit_the_cores_of_the_rank() {
    let (dir, config) = setup(1);
    let root = dir.path();
    let mut slurm = SLURM_ONE_TASK.to_vec();
    slurm.push(("SLURM_CPUS_PER_TASK", "1"));
    let out = run(&mut train_cmd(root, &config, &["--dry-run"], &slurm));
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(
        stdout.contains("threads: 1 core for this process (SLURM_CPUS_PER_TASK=1)"),
        "{stdout}"
    );
    let available = std::thread::available_parallelism().unwrap().get();
    let torchrun = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
    ];
    let out = run(&mut train_cmd(root, &config, &["--dry-run"], &torchrun));
    let (stdout, _) = text(&out);
    let share = (available / 2).max(1);
    assert!(
        stdout.contains(&format!(
            "threads: {share} core{} for this process ({available} available / 2 processes on this node)",
            if share == 1 { "" } else { "s" }
        )),
        "{stdout}"
    );
    // A real run logs what it chose: 1 core, so 1 loader worker instead of 4.
    let out = run(&mut train_cmd(root, &config, &[], &slurm));
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "threads (rank 0): 1 core for this process (SLURM_CPUS_PER_TASK=1): 1 intra-op, \
             1 loader worker (data.num_workers 4 lowered to fit)"
        ),
        "{stderr}"
    );
}
