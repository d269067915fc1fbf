//! `sam-train job-resources`: the SLURM resources of a validated config, as shell assignments
//! for `scripts/submit_training_a100.sh`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use sam_cli::Failure;
use sam_config::{
    find_root_for, load_config_with, Accelerator, ConfigError, Device, ExperimentConfig, RunPaths,
    ValidateOptions,
};

use crate::train_cmd::stop_marker_path;

/// Validate a config and print the SLURM resources of its job as shell assignments
///
/// Prints one `SAM_JOB_<KEY>=<value>` line per resource, quoted for the shell, for
/// `eval "$(sam-train job-resources CONFIG)"` (what `scripts/submit_training_a100.sh` does):
///
///   SAM_JOB_EXPERIMENT      experiment_name
///   SAM_JOB_NAME            slurm.job_name, else sam-<experiment_name>
///   SAM_JOB_PARTITION       slurm.partition, else the accelerator's (a100, a40; empty for cpu:
///                           the cluster's default partition)
///   SAM_JOB_ACCOUNT         slurm.account (empty: the user's default)
///   SAM_JOB_QOS             slurm.qos (empty: the partition's default)
///   SAM_JOB_TIME            slurm.time_limit
///   SAM_JOB_CPUS_PER_TASK   slurm.cpus_per_task
///   SAM_JOB_MEM             slurm.memory (per node)
///   SAM_JOB_SIGNAL_LEAD     slurm.signal_lead_seconds (USR1 that long before the limit)
///   SAM_JOB_REQUEUE         1 or 0 (slurm.requeue)
///   SAM_JOB_NODES           distributed.nodes
///   SAM_JOB_TASKS_PER_NODE  distributed.gpus_per_node (one training process per GPU)
///   SAM_JOB_GPUS_PER_NODE   distributed.gpus_per_node, or 0 for a CPU run
///                           (hardware.accelerator or training.device cpu)
///   SAM_JOB_RUN_DIR         the run folder, runs/<experiment>
///   SAM_JOB_LOGS_DIR        its logs/ folder
///   SAM_JOB_STOP_MARKER     the file rank 0 leaves after a stop by SIGUSR1/SIGTERM
///
/// The flags override the config's values; the result is checked by the same rules as the
/// config (wall time at most 56:00:00, 1-2 nodes, 1-4 GPUs per node, memory at most 600G, ...).
/// Exits 0 when the config and the overrides are valid, 2 otherwise (problems on stderr).
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct JobResourcesArgs {
    /// The experiment config (YAML).
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    /// Repository root for relative paths [default: $SAM_TRAINER_ROOT, else found from the
    /// working directory].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Skip the file-system checks (data folders, checkpoint files), e.g. for a dry run on a
    /// machine without the data.
    #[arg(long)]
    pub no_path_checks: bool,
    /// Override `slurm.partition`.
    #[arg(long, value_name = "NAME", help_heading = "Overrides")]
    pub partition: Option<String>,
    /// Override `distributed.nodes`.
    #[arg(long, value_name = "N", help_heading = "Overrides")]
    pub nodes: Option<u32>,
    /// Override `distributed.gpus_per_node` (training processes per node).
    #[arg(long, value_name = "N", help_heading = "Overrides")]
    pub gpus_per_node: Option<u32>,
    /// Override `slurm.cpus_per_task`.
    #[arg(long, value_name = "N", help_heading = "Overrides")]
    pub cpus_per_task: Option<u32>,
    /// Override `slurm.memory` (per node, e.g. 256G).
    #[arg(long, value_name = "SIZE", help_heading = "Overrides")]
    pub mem: Option<String>,
    /// Override `slurm.time_limit` (HH:MM:SS or D-HH:MM:SS).
    #[arg(long, value_name = "TIME", help_heading = "Overrides")]
    pub time: Option<String>,
    /// Override `slurm.signal_lead_seconds`.
    #[arg(long, value_name = "SECONDS", help_heading = "Overrides")]
    pub signal_lead: Option<u32>,
    /// Override `slurm.requeue` with true.
    #[arg(long, conflicts_with = "no_requeue", help_heading = "Overrides")]
    pub requeue: bool,
    /// Override `slurm.requeue` with false.
    #[arg(long, help_heading = "Overrides")]
    pub no_requeue: bool,
}

/// `sam-train job-resources`.
pub fn run_job_resources(args: &JobResourcesArgs) -> Result<(), Failure> {
    match job_resources(args) {
        Ok(text) => {
            print!("{text}");
            Ok(())
        }
        Err(message) => {
            eprintln!("{message}");
            Err(Failure::reported(sam_cli::EXIT_USAGE))
        }
    }
}

/// The assignments for `args`, or every problem found (a usage or config error).
fn job_resources(args: &JobResourcesArgs) -> Result<String, String> {
    let root = find_root_for(args.root.as_deref(), Some(&args.config))
        .map_err(|e| format!("error: {e}"))?;
    let options = ValidateOptions {
        check_paths: !args.no_path_checks,
        root: Some(root.clone()),
    };
    let loaded = load_config_with(&args.config, &options).map_err(|e| match &e {
        ConfigError::Invalid { .. } => {
            let mut text = String::new();
            for w in e.warnings() {
                let _ = writeln!(text, "{w}");
            }
            let _ = write!(text, "{e}");
            text
        }
        other => format!("error: {other}"),
    })?;
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let mut cfg = loaded.config;
    let overridden = apply_overrides(&mut cfg, args);
    check_overrides(&cfg, &overridden, &args.config)?;
    render(&cfg, &root)
}

/// A command-line flag and the config key it overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Override {
    flag: &'static str,
    key: &'static str,
}

fn apply_overrides(cfg: &mut ExperimentConfig, args: &JobResourcesArgs) -> Vec<Override> {
    let mut applied = Vec::new();
    let mut set = |flag, key| applied.push(Override { flag, key });
    if let Some(p) = &args.partition {
        cfg.slurm.partition = Some(p.clone());
        set("--partition", "slurm.partition");
    }
    if let Some(n) = args.nodes {
        cfg.distributed.nodes = n;
        set("--nodes", "distributed.nodes");
    }
    if let Some(n) = args.gpus_per_node {
        cfg.distributed.gpus_per_node = n;
        set("--gpus-per-node", "distributed.gpus_per_node");
    }
    if let Some(n) = args.cpus_per_task {
        cfg.slurm.cpus_per_task = n;
        set("--cpus-per-task", "slurm.cpus_per_task");
    }
    if let Some(m) = &args.mem {
        cfg.slurm.memory = m.clone();
        set("--mem", "slurm.memory");
    }
    if let Some(t) = &args.time {
        cfg.slurm.time_limit = t.clone();
        set("--time", "slurm.time_limit");
    }
    if let Some(s) = args.signal_lead {
        cfg.slurm.signal_lead_seconds = s;
        set("--signal-lead", "slurm.signal_lead_seconds");
    }
    if args.requeue || args.no_requeue {
        cfg.slurm.requeue = args.requeue;
        set(
            if args.requeue {
                "--requeue"
            } else {
                "--no-requeue"
            },
            "slurm.requeue",
        );
    }
    applied
}

/// Checks the overridden config by the config's own rules; reports the problems that concern
/// an overridden key, named by its flag.
fn check_overrides(
    cfg: &ExperimentConfig,
    overridden: &[Override],
    config: &Path,
) -> Result<(), String> {
    if overridden.is_empty() {
        return Ok(());
    }
    let report = cfg.validate(&ValidateOptions::without_path_checks());
    let flag_of = |key: &str| overridden.iter().find(|o| o.key == key).map(|o| o.flag);
    for w in &report.warnings {
        if let Some(flag) = flag_of(&w.key) {
            eprintln!("warning: {flag}: {w}");
        }
    }
    // The file itself was valid, so any error comes from an override; one the flags do not
    // name (e.g. a rule between two keys) is still reported.
    let errors: Vec<String> = report
        .errors
        .iter()
        .map(|e| match flag_of(&e.key) {
            Some(flag) => format!("error: {flag}: {e}"),
            None => format!(
                "error: {}: {e} (with the overrides {})",
                config.display(),
                overridden
                    .iter()
                    .map(|o| o.flag)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// Whether the run trains on CPUs only (no GPUs to request).
fn is_cpu_run(cfg: &ExperimentConfig) -> bool {
    cfg.hardware.accelerator == Accelerator::Cpu || cfg.training.device == Device::Cpu
}

fn render(cfg: &ExperimentConfig, root: &Path) -> Result<String, String> {
    let paths = RunPaths::new(root, cfg);
    let path = |p: &Path| {
        p.to_str().map(str::to_owned).ok_or_else(|| {
            format!(
                "error: {} is not valid UTF-8: the job script cannot name it; choose \
                 output_base_dir and experiment_name in plain characters",
                p.display()
            )
        })
    };
    let s = &cfg.slurm;
    let d = &cfg.distributed;
    let partition = s
        .partition
        .clone()
        .or_else(|| {
            cfg.hardware
                .accelerator
                .preset()
                .partition
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let gpus = if is_cpu_run(cfg) { 0 } else { d.gpus_per_node };
    let lines: [(&str, String); 16] = [
        ("EXPERIMENT", cfg.experiment_name.clone()),
        (
            "NAME",
            s.job_name
                .clone()
                .unwrap_or_else(|| format!("sam-{}", cfg.experiment_name)),
        ),
        ("PARTITION", partition),
        ("ACCOUNT", s.account.clone().unwrap_or_default()),
        ("QOS", s.qos.clone().unwrap_or_default()),
        ("TIME", s.time_limit.clone()),
        ("CPUS_PER_TASK", s.cpus_per_task.to_string()),
        ("MEM", s.memory.clone()),
        ("SIGNAL_LEAD", s.signal_lead_seconds.to_string()),
        ("REQUEUE", u8::from(s.requeue).to_string()),
        ("NODES", d.nodes.to_string()),
        ("TASKS_PER_NODE", d.gpus_per_node.to_string()),
        ("GPUS_PER_NODE", gpus.to_string()),
        ("RUN_DIR", path(&paths.run_dir)?),
        ("LOGS_DIR", path(&paths.logs_dir)?),
        ("STOP_MARKER", path(&stop_marker_path(&paths.run_dir))?),
    ];
    let mut out = String::new();
    for (key, value) in lines {
        let _ = writeln!(out, "SAM_JOB_{key}={}", shell_quote(&value));
    }
    Ok(out)
}

/// `value` as one shell word: bare when it holds only safe characters, else single-quoted
/// (a `'` inside becomes `'\''`). The empty string is `''`.
fn shell_quote(value: &str) -> String {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"-_./:,+@%".contains(&b);
    if !value.is_empty() && value.bytes().all(safe) {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("56:00:00"), "56:00:00");
        assert_eq!(shell_quote("/repo/runs/exp_1"), "/repo/runs/exp_1");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_quote("x\ny"), "'x\ny'");
    }

    fn config() -> ExperimentConfig {
        let yaml = "experiment_name: e\noutput_base_dir: runs\ncheckpoint_name: c\n\
                    export_path: final_models/e.pt\n";
        sam_config::parse_config(yaml, None, &ValidateOptions::without_path_checks())
            .unwrap()
            .config
    }

    fn args(flags: &[&str]) -> JobResourcesArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: JobResourcesArgs,
        }
        Wrap::try_parse_from(["x", "c.yaml"].iter().chain(flags))
            .unwrap()
            .a
    }

    #[test]
    fn overrides_replace_config_values_and_are_checked_by_the_config_rules() {
        let mut cfg = config();
        let a = args(&["--time", "57:00:00", "--nodes", "1", "--no-requeue"]);
        let applied = apply_overrides(&mut cfg, &a);
        assert_eq!(cfg.slurm.time_limit, "57:00:00");
        assert_eq!(cfg.distributed.nodes, 1);
        assert!(!cfg.slurm.requeue);
        assert_eq!(applied.len(), 3);
        let err = check_overrides(&cfg, &applied, Path::new("c.yaml")).unwrap_err();
        assert!(
            err.starts_with("error: --time: slurm.time_limit: must be at most 56:00:00"),
            "{err}"
        );
        let mut cfg = config();
        let applied = apply_overrides(&mut cfg, &args(&["--gpus-per-node", "5"]));
        let err = check_overrides(&cfg, &applied, Path::new("c.yaml")).unwrap_err();
        assert!(
            err.contains("--gpus-per-node: distributed.gpus_per_node"),
            "{err}"
        );
        let mut cfg = config();
        let applied = apply_overrides(&mut cfg, &args(&["--mem", "lots"]));
        assert!(check_overrides(&cfg, &applied, Path::new("c.yaml"))
            .unwrap_err()
            .contains("--mem: slurm.memory"));
    }

    #[test]
    fn requeue_flags_exclude_each_other() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: JobResourcesArgs,
        }
        assert!(Wrap::try_parse_from(["x", "c.yaml", "--requeue", "--no-requeue"]).is_err());
        assert!(args(&["--requeue"]).requeue);
    }

    #[test]
    fn render_prints_every_key_once() {
        let cfg = config();
        let text = render(&cfg, Path::new("/r")).unwrap();
        let keys: Vec<&str> = text.lines().map(|l| l.split_once('=').unwrap().0).collect();
        assert_eq!(keys.len(), 16);
        assert!(text.contains("SAM_JOB_PARTITION=a100\n"), "{text}");
        assert!(text.contains("SAM_JOB_RUN_DIR=/r/runs/e\n"), "{text}");
        assert!(text.contains("SAM_JOB_STOP_MARKER=/r/runs/e/"), "{text}");
        assert!(text.contains("SAM_JOB_ACCOUNT=''\n"), "{text}");
    }
}
