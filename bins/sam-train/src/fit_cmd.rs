//! `sam-train fit`: the largest batch size and objects per image whose training step fits in
//! memory, measured by running real steps, each try in a child process (`sam-train fit-try`,
//! hidden) so that a try that runs out of memory cannot take the search down and each try's
//! peak is its own.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use sam_cli::Failure;
use sam_config::{find_root_for, load_config_with, ExperimentConfig, ValidateOptions};
use sam_train::fit::{
    config_setting, max_synthetic_objects, search, Dimension, FitProbe, FitReport, FitSetting,
    FitTry, Measurement, SearchLimits, Verdict,
};
use serde::{Deserialize, Serialize};

const GIB: f64 = (1u64 << 30) as f64;

/// Exit status of `fit-try` when the step ran out of memory.
const EXIT_OUT_OF_MEMORY: i32 = 3;

/// Find the largest batch size and objects per image whose training step fits in memory.
///
/// Runs real training steps of CONFIG (its model, freeze list, precision, prompting recipe and
/// gradient clipping; random weights; synthetic patches of data.patch_shape holding exactly
/// the objects asked for) on the config's device, each try in a child process, and measures
/// each try's peak: on a GPU the caching allocator's peak reservation, on the CPU the
/// process's peak resident set (VmHWM). It searches objects per image at the config's
/// batch size, then the batch size at the config's objects per image: from the config's value
/// it doubles until a try exceeds the budget or fails (halves while they do), then bisects.
/// Prints each try as it ends and a table at the end; --json writes the same as JSON.
///
/// The config's other settings are used as given. The default budget is the device's memory
/// less --margin-percent: on a GPU its total memory, on the CPU the memory available now
/// (MemAvailable in /proc/meminfo). A CPU try is stopped as soon as its resident set passes
/// the budget. Exit status 0 when the config's own setting fits, 1 when it does not, 2 for a
/// usage or config error.
#[derive(Debug, Args)]
pub struct FitArgs {
    /// The experiment config (YAML).
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    /// Memory a try may use, in GiB [default: the device's memory less --margin-percent].
    #[arg(long, value_name = "G")]
    pub budget_gib: Option<f64>,
    /// Share of the device's memory kept free when the budget is not given (CUDA context,
    /// fragmentation, other processes).
    #[arg(long, value_name = "PERCENT", default_value_t = 10.0)]
    pub margin_percent: f64,
    /// Most tries in all; the search stops there and says which answers are lower bounds.
    #[arg(long, value_name = "N", default_value_t = 12)]
    pub max_tries: usize,
    /// Largest batch size tried.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_batch_size: u32,
    /// Largest objects per image tried (also bounded by what a synthetic patch of
    /// data.patch_shape holds: one object per 4×4 pixels).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_objects: u32,
    /// What to vary, in this order (comma-separated): `objects` (at the config's batch
    /// size), `batch-size` (at the config's objects per image).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "objects,batch-size"
    )]
    pub vary: Vec<VaryArg>,
    /// Training steps per try (2 runs both start prompts, points then boxes, and the second
    /// step with the optimiser's state allocated).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub steps: usize,
    /// Seconds a try may take before it is stopped (and counted as failed).
    #[arg(long, value_name = "SECONDS", default_value_t = 1800)]
    pub try_timeout: u64,
    /// Also write the tries and the answers to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Repository root (default: $SAM_TRAINER_ROOT, else found from the working directory or
    /// the config's folder).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// A searchable setting on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VaryArg {
    /// Objects per image (training.n_objects_per_batch).
    Objects,
    /// Images per step (training.batch_size).
    BatchSize,
}

/// One try of `sam-train fit`: runs the steps and prints its measurement as JSON (internal).
#[derive(Debug, Args)]
pub struct FitTryArgs {
    /// The experiment config (YAML).
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    /// Repository root.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Images per step.
    #[arg(long, value_name = "N")]
    pub batch_size: u32,
    /// Objects per image.
    #[arg(long, value_name = "N")]
    pub objects: u32,
    /// Training steps.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub steps: usize,
}

/// What a try prints on its last line of standard output.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TryOutput {
    /// Peak bytes: CPU the resident set's high-water mark, CUDA the allocator's peak
    /// reservation.
    peak_bytes: u64,
    /// CPU: resident bytes once the model and optimiser were built, before the steps.
    baseline_bytes: Option<u64>,
    /// CUDA: the allocator's peak in live tensors.
    peak_allocated_bytes: Option<u64>,
    /// Trainable parameter values.
    trainable_parameters: i64,
    /// The last step's loss.
    loss: f64,
}

/// The JSON file of `--json`.
#[derive(Debug, Serialize)]
struct FitJson<'a> {
    config: String,
    device: String,
    budget_bytes: u64,
    budget_source: &'a str,
    report: &'a FitReport,
    /// Per try, the child's own numbers (baseline, allocated), in the order of the tries.
    details: &'a [Option<TryDetails>],
}

/// Numbers of a try besides its peak.
#[derive(Debug, Clone, Copy, Serialize)]
struct TryDetails {
    baseline_bytes: Option<u64>,
    peak_allocated_bytes: Option<u64>,
    trainable_parameters: i64,
}

fn load(config: &Path, root: Option<&Path>) -> Result<(ExperimentConfig, PathBuf), Failure> {
    let root = find_root_for(root, Some(config)).map_err(Failure::usage_msg)?;
    let options = ValidateOptions {
        root: Some(root.clone()),
        check_paths: false,
    };
    let loaded = load_config_with(config, &options).map_err(Failure::usage_msg)?;
    Ok((loaded.config, root))
}

/// Whether a libtorch error says that memory ran out.
fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("not enough memory") || m.contains("bad_alloc")
}

/// A field of /proc/<pid>/status in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(pid: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_kib_field(&text, field)
}

/// `field:   123 kB` of /proc status or meminfo text, in bytes.
fn parse_kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// `sam-train fit-try`: the child of one try.
pub fn run_fit_try(args: &FitTryArgs) -> Result<(), Failure> {
    let (cfg, _root) = load(&args.config, Some(&args.root))?;
    let device = sam_train::device_for(cfg.training.device, 0).map_err(Failure::usage_msg)?;
    let setting = FitSetting {
        batch_size: args.batch_size,
        objects: args.objects,
    };
    let fail = |e: sam_train::TrainError| {
        let text = e.to_string();
        if is_out_of_memory(&text) {
            Failure::message(EXIT_OUT_OF_MEMORY as u8, text)
        } else if e.is_usage() {
            Failure::usage_msg(text)
        } else {
            Failure::failed_msg(text)
        }
    };
    let mut probe = FitProbe::new(&cfg, setting, device).map_err(fail)?;
    let baseline_bytes = proc_status_bytes("self", "VmRSS");
    if let tch::Device::Cuda(index) = device {
        sam_torch::reset_peak_memory_stats(index).map_err(Failure::failed_msg)?;
    }
    let loss = probe.run(args.steps.max(1)).map_err(fail)?;
    let (peak_bytes, peak_allocated_bytes) = match device {
        tch::Device::Cuda(index) => {
            let m = sam_torch::cuda_memory_stats(index).map_err(Failure::failed_msg)?;
            (m.peak_reserved, Some(m.peak_allocated))
        }
        _ => (
            proc_status_bytes("self", "VmHWM")
                .ok_or_else(|| Failure::failed_msg("cannot read VmHWM of /proc/self/status"))?,
            None,
        ),
    };
    let out = TryOutput {
        peak_bytes,
        baseline_bytes: baseline_bytes.filter(|_| !device.is_cuda()),
        peak_allocated_bytes,
        trainable_parameters: probe.trainable_parameters(),
        loss,
    };
    let line = serde_json::to_string(&out).map_err(Failure::failed_msg)?;
    println!("{line}");
    Ok(())
}

/// Runs one try in a child process and measures it.
struct ChildMeasurer<'a> {
    args: &'a FitArgs,
    root: &'a Path,
    /// CPU: stop a child whose resident set passes this many bytes.
    kill_above: Option<u64>,
    details: Vec<Option<TryDetails>>,
}

impl ChildMeasurer<'_> {
    fn measure(&mut self, setting: FitSetting) -> Measurement {
        let (m, details) = self.run_child(setting);
        self.details.push(details);
        m
    }

    fn run_child(&self, setting: FitSetting) -> (Measurement, Option<TryDetails>) {
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                return (
                    Measurement::Failed {
                        reason: format!("cannot find this executable: {e}"),
                    },
                    None,
                )
            }
        };
        let spawned = Command::new(exe)
            .arg("fit-try")
            .arg(&self.args.config)
            .arg("--root")
            .arg(self.root)
            .args(["--batch-size", &setting.batch_size.to_string()])
            .args(["--objects", &setting.objects.to_string()])
            .args(["--steps", &self.args.steps.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                return (
                    Measurement::Failed {
                        reason: format!("cannot start a try: {e}"),
                    },
                    None,
                )
            }
        };
        let pid = child.id().to_string();
        let read_all = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let stdout = child.stdout.take().map(|s| read_all(Box::new(s)));
        let stderr = child.stderr.take().map(|s| read_all(Box::new(s)));
        let started = Instant::now();
        let timeout = Duration::from_secs(self.args.try_timeout.max(1));
        let mut polled_peak = 0u64;
        let mut stopped_over_budget = false;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(_) => break None,
            }
            if let Some(hwm) = proc_status_bytes(&pid, "VmHWM") {
                polled_peak = polled_peak.max(hwm);
            }
            if self.kill_above.is_some_and(|limit| polled_peak > limit) {
                stopped_over_budget = true;
            } else if started.elapsed() > timeout {
                timed_out = true;
            }
            if stopped_over_budget || timed_out {
                let _ = child.kill();
                break child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
        let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        // The resident set is the measure on the CPU only (on a GPU it is not the device's).
        let polled = (self.kill_above.is_some() && polled_peak > 0).then_some(polled_peak);
        if stopped_over_budget {
            return (Measurement::OutOfMemory { peak_bytes: polled }, None);
        }
        if timed_out {
            return (
                Measurement::Failed {
                    reason: format!("stopped after {} s (--try-timeout)", timeout.as_secs()),
                },
                None,
            );
        }
        let last_error = || {
            stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
                .trim()
                .to_owned()
        };
        match status {
            Some(s) if s.success() => {
                let parsed = stdout
                    .lines()
                    .rev()
                    .find_map(|l| serde_json::from_str::<TryOutput>(l).ok());
                match parsed {
                    Some(out) => (
                        Measurement::Ran {
                            peak_bytes: out.peak_bytes,
                        },
                        Some(TryDetails {
                            baseline_bytes: out.baseline_bytes,
                            peak_allocated_bytes: out.peak_allocated_bytes,
                            trainable_parameters: out.trainable_parameters,
                        }),
                    ),
                    None => (
                        Measurement::Failed {
                            reason: "the try printed no measurement".into(),
                        },
                        None,
                    ),
                }
            }
            Some(s) if s.code() == Some(EXIT_OUT_OF_MEMORY) => {
                (Measurement::OutOfMemory { peak_bytes: polled }, None)
            }
            Some(s) if s.code().is_none() => {
                // Killed by a signal not ours: on Linux most often the kernel's OOM killer.
                use std::os::unix::process::ExitStatusExt;
                let signal = s.signal().unwrap_or(0);
                if signal == 9 {
                    (Measurement::OutOfMemory { peak_bytes: polled }, None)
                } else {
                    (
                        Measurement::Failed {
                            reason: format!("killed by signal {signal}: {}", last_error()),
                        },
                        None,
                    )
                }
            }
            Some(s) => (
                Measurement::Failed {
                    reason: format!("exit status {}: {}", s.code().unwrap_or(-1), last_error()),
                },
                None,
            ),
            None => (
                Measurement::Failed {
                    reason: "lost the try's process".into(),
                },
                None,
            ),
        }
    }
}

/// The device a config trains on, in words, with its memory in bytes and where that number
/// comes from.
fn device_memory(device: tch::Device) -> Result<(String, u64, &'static str), Failure> {
    match device {
        tch::Device::Cuda(index) => {
            let total = sam_torch::cuda_total_memory(index).ok_or_else(|| {
                Failure::failed_msg(format!(
                    "cannot read the memory of cuda:{index} from the driver: give --budget-gib"
                ))
            })?;
            let name = sam_torch::cuda_device_name(index).unwrap_or_default();
            Ok((
                format!("cuda:{index} {name}").trim().to_owned(),
                total,
                "the GPU's total memory",
            ))
        }
        _ => {
            let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| {
                Failure::failed_msg(format!("/proc/meminfo: {e}: give --budget-gib"))
            })?;
            let available = parse_kib_field(&meminfo, "MemAvailable").ok_or_else(|| {
                Failure::failed_msg("/proc/meminfo has no MemAvailable: give --budget-gib")
            })?;
            Ok(("cpu".into(), available, "MemAvailable"))
        }
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / GIB)
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Fits => "fits",
        Verdict::Exceeds => "exceeds",
        Verdict::Failed => "failed",
    }
}

fn describe_try(t: &FitTry) -> String {
    let peak = match (&t.measurement, t.peak_bytes()) {
        (Measurement::OutOfMemory { .. }, Some(p)) => {
            format!("out of memory (at least {} GiB when it stopped)", gib(p))
        }
        (Measurement::OutOfMemory { .. }, None) => "out of memory".to_owned(),
        (Measurement::Failed { reason }, _) => format!("failed: {reason}"),
        (_, Some(p)) => format!("peak {} GiB", gib(p)),
        (_, None) => String::new(),
    };
    format!("{}: {peak}: {}", t.setting, verdict_word(t.verdict))
}

/// The table printed at the end.
fn table(report: &FitReport) -> String {
    let mut s = format!(
        "{:>3}  {:>10}  {:>7}  {:>9}  {:>8}  {:>7}\n",
        "try", "batch_size", "objects", "peak GiB", "verdict", "seconds"
    );
    for (i, t) in report.tries.iter().enumerate() {
        let peak = match (&t.measurement, t.peak_bytes()) {
            (Measurement::OutOfMemory { .. }, Some(p)) => format!(">{}", gib(p)),
            (Measurement::OutOfMemory { .. }, None) => "oom".into(),
            (_, Some(p)) => gib(p),
            (_, None) => "-".into(),
        };
        s += &format!(
            "{:>3}  {:>10}  {:>7}  {:>9}  {:>8}  {:>7.1}\n",
            i + 1,
            t.setting.batch_size,
            t.setting.objects,
            peak,
            verdict_word(t.verdict),
            t.seconds
        );
    }
    for r in &report.results {
        let at = match r.dimension {
            Dimension::Objects => format!("at batch_size {}", report.start.batch_size),
            Dimension::BatchSize => format!("at {} objects per image", report.start.objects),
        };
        let value = r
            .largest
            .map_or("none (not even 1)".into(), |v| v.to_string());
        let note = if r.unsettled {
            " (at least: --max-tries reached before the search settled)"
        } else if r.at_limit {
            " (the largest tried: raise the --max-* limit to look further)"
        } else {
            ""
        };
        s += &format!("largest {} {at}: {value}{note}\n", r.dimension);
    }
    s
}

/// `sam-train fit`. Ok(0) when the config's own setting fits, Ok(1) when it does not.
pub fn run_fit(args: &FitArgs) -> Result<u8, Failure> {
    let (cfg, root) = load(&args.config, args.root.as_deref())?;
    if args.vary.is_empty() {
        return Err(Failure::usage_msg(
            "--vary: name objects, batch-size or both",
        ));
    }
    if !(0.0..100.0).contains(&args.margin_percent) {
        return Err(Failure::usage_msg(
            "--margin-percent: a share from 0 to below 100",
        ));
    }
    let device = sam_train::device_for(cfg.training.device, 0).map_err(Failure::usage_msg)?;
    let (budget_bytes, device_name, budget_source) = match args.budget_gib {
        Some(g) if g.is_finite() && g > 0.0 => {
            let name = device_memory(device)
                .map(|(n, _, _)| n)
                .unwrap_or_else(|_| format!("{device:?}"));
            ((g * GIB) as u64, name, "--budget-gib")
        }
        Some(_) => return Err(Failure::usage_msg("--budget-gib: a positive number")),
        None => {
            let (name, total, source) = device_memory(device)?;
            let budget = (total as f64 * (1.0 - args.margin_percent / 100.0)) as u64;
            (budget, name, source)
        }
    };
    let [rows, cols] = cfg.data.patch_shape;
    let start = config_setting(&cfg);
    let limits = SearchLimits {
        budget_bytes,
        max_tries: args.max_tries.max(1),
        max_batch_size: args.max_batch_size.max(1),
        max_objects: args
            .max_objects
            .clamp(1, max_synthetic_objects(rows, cols).max(1)),
        dimensions: args
            .vary
            .iter()
            .map(|v| match v {
                VaryArg::Objects => Dimension::Objects,
                VaryArg::BatchSize => Dimension::BatchSize,
            })
            .collect(),
    };
    eprintln!(
        "fit: {} on {device_name}: budget {} GiB ({}{}); starting from the config's {start}; \
         at most {} tries",
        args.config.display(),
        gib(budget_bytes),
        budget_source,
        if args.budget_gib.is_none() {
            format!(
                " {} GiB less {} %",
                gib((budget_bytes as f64 / (1.0 - args.margin_percent / 100.0)) as u64),
                args.margin_percent
            )
        } else {
            String::new()
        },
        limits.max_tries
    );
    let mut measurer = ChildMeasurer {
        args,
        root: &root,
        kill_above: (!device.is_cuda()).then_some(budget_bytes),
        details: Vec::new(),
    };
    let max_tries = limits.max_tries;
    let started = std::cell::Cell::new(0usize);
    let report = search(
        start,
        &limits,
        |s| {
            started.set(started.get() + 1);
            eprintln!("try {}/{max_tries}: {s} ...", started.get());
            measurer.measure(s)
        },
        |t| {
            eprintln!(
                "try {}: {} ({:.1} s)",
                started.get(),
                describe_try(t),
                t.seconds
            );
        },
    );
    print!("{}", table(&report));
    if let Some(path) = &args.json {
        let json = FitJson {
            config: args.config.display().to_string(),
            device: device_name,
            budget_bytes,
            budget_source,
            report: &report,
            details: &measurer.details,
        };
        let text = serde_json::to_string_pretty(&json).map_err(Failure::failed_msg)? + "\n";
        std::fs::write(path, text)
            .map_err(|e| Failure::failed_msg(format!("cannot write {}: {e}", path.display())))?;
    }
    let fits = report
        .try_of(start)
        .is_some_and(|t| t.verdict == Verdict::Fits);
    Ok(if fits { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse_in_bytes() {
        let status = "Name:\tsam-train\nVmHWM:\t  123456 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(parse_kib_field(status, "VmHWM"), Some(123_456 * 1024));
        assert_eq!(parse_kib_field(status, "VmRSS"), Some(1024 * 1024));
        assert_eq!(parse_kib_field(status, "VmSwap"), None);
        let meminfo = "MemTotal:       16337536 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(
            parse_kib_field(meminfo, "MemAvailable"),
            Some(12_000_000 * 1024)
        );
        // A field whose name only starts like the one asked for is not it.
        assert_eq!(parse_kib_field("VmHWMx: 5 kB\n", "VmHWM"), None);
    }

    #[test]
    fn out_of_memory_messages_are_recognised() {
        assert!(is_out_of_memory(
            "model: CUDA out of memory. Tried to allocate 2.00 GiB"
        ));
        assert!(is_out_of_memory(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory"
        ));
        assert!(!is_out_of_memory("model: shape mismatch"));
    }
}
