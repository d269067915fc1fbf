//! The `sam-train` executable: a thin shell over the sam_trainer crates.
//!
//! Exit codes: 0 success, 1 failure, 2 usage or config error, 42 stopped by SIGTERM/SIGUSR1
//! after checkpointing (resume with `--resume`; `train --stop-exit-code` changes it).
mod fit_cmd;
mod job_cmd;
mod train_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sam_cli::Failure;
use sam_config::{load_config_with, ConfigError, ValidateOptions};

/// Fine-tune Segment Anything on brightfield microscopy.
///
/// Every command reads one experiment config (YAML, see docs/config.md); relative paths in it
/// are relative to the repository root, found from the working directory or
/// $SAM_TRAINER_ROOT.
#[derive(Debug, Parser)]
#[command(name = "sam-train", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    // The help text is `TrainArgs`'s doc comment.
    Train(train_cmd::TrainArgs),
    /// Export a checkpoint for segment_anything / micro_sam.
    Export(train_cmd::ExportArgs),
    /// Download a micro_sam model into the model cache.
    DownloadModel(train_cmd::DownloadArgs),
    /// Check configs and list every problem in them.
    ///
    /// Reports YAML syntax errors, unknown keys (with "did you mean"), wrong types, missing
    /// keys, out-of-range and inconsistent values, accelerator presets, cluster limits and
    /// missing data folders, each as `file:line:column: key: message`. Warnings (such as a
    /// wall-time estimate above 56 h) are printed but do not fail. A valid config's line
    /// gives the estimated training time and the estimated peak memory of a training step
    /// (analytic; `sam-train fit` measures it). Exits 0 only when every config is valid, 2
    /// otherwise.
    Validate(ValidateArgs),
    /// Print the JSON Schema of the config (what `configs/schema.json` holds).
    Schema(SchemaArgs),
    // The help text is `JobResourcesArgs`'s doc comment.
    JobResources(job_cmd::JobResourcesArgs),
    // The help text is `FitArgs`'s doc comment.
    Fit(fit_cmd::FitArgs),
    /// One try of `fit` in its own process (internal).
    #[command(hide = true)]
    FitTry(fit_cmd::FitTryArgs),
}

#[derive(Debug, clap::Args)]
struct ValidateArgs {
    /// Config files to check.
    #[arg(value_name = "CONFIG", required = true)]
    configs: Vec<PathBuf>,
    /// Skip the file-system checks (data folders, checkpoint files), e.g. before the data
    /// has been written.
    #[arg(long)]
    no_path_checks: bool,
    /// Repository root for relative paths [default: $SAM_TRAINER_ROOT, else the nearest
    /// ancestor of the working directory, or of the config, holding configs/ and dat/].
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Print only errors, not warnings or the summary line.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
struct SchemaArgs {
    /// Write the schema to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    // jemalloc (linked in) serves every allocation, libtorch's included; keep freed memory
    // for reuse (see sam_cli::memory).
    sam_cli::use_linked_jemalloc!();
    sam_cli::memory::retain_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => match train_cmd::run_train(args) {
            Ok(code) => return ExitCode::from(code),
            Err(f) => Err(f),
        },
        Command::Export(args) => train_cmd::run_export(args),
        Command::DownloadModel(args) => train_cmd::run_download(args),
        Command::Validate(args) => validate(&args),
        Command::Schema(args) => schema(&args),
        Command::JobResources(args) => job_cmd::run_job_resources(&args),
        Command::Fit(args) => match fit_cmd::run_fit(&args) {
            Ok(code) => return ExitCode::from(code),
            Err(f) => Err(f),
        },
        Command::FitTry(args) => fit_cmd::run_fit_try(&args),
    };
    sam_cli::exit(result)
}

/// Every problem of every config is printed; the exit status is 2 when one is invalid.
fn validate(args: &ValidateArgs) -> Result<(), Failure> {
    let options = ValidateOptions {
        check_paths: !args.no_path_checks,
        root: args.root.clone(),
    };
    let mut all_ok = true;
    for path in &args.configs {
        match load_config_with(path, &options) {
            Ok(loaded) => {
                if !args.quiet {
                    for w in &loaded.warnings {
                        eprintln!("{w}");
                    }
                    let hours = loaded
                        .wall_time
                        .map(|e| format!("estimated training time ~{:.1} h, ", e.hours))
                        .unwrap_or_default();
                    let memory = memory_estimate(&loaded.config);
                    println!("ok: {} ({hours}{memory})", path.display());
                }
            }
            Err(e) => {
                all_ok = false;
                if !args.quiet {
                    for w in e.warnings() {
                        eprintln!("{w}");
                    }
                }
                match &e {
                    ConfigError::Invalid { .. } => eprintln!("{e}"),
                    other => eprintln!("error: {other}"),
                }
            }
        }
    }
    if all_ok {
        Ok(())
    } else {
        Err(Failure::reported(sam_cli::EXIT_USAGE))
    }
}

/// The estimated peak memory of a config's training step, in words.
fn memory_estimate(cfg: &sam_config::ExperimentConfig) -> String {
    let e = cfg.estimate_peak_memory();
    let place = match e.kind {
        sam_config::MemoryKind::Gpu => "per GPU",
        sam_config::MemoryKind::Cpu => "of RAM",
    };
    format!(
        "estimated peak memory ~{:.1} GiB {place} at batch_size {} × {} objects; measure it \
         with `sam-train fit`",
        e.peak_bytes as f64 / (1u64 << 30) as f64,
        cfg.training.batch_size,
        cfg.training.n_objects_per_batch
    )
}

fn schema(args: &SchemaArgs) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(&sam_config::json_schema())
        .map_err(|e| Failure::failed_msg(format!("cannot render the schema: {e}")))?
        + "\n";
    match &args.output {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(path) => std::fs::write(path, text)
            .map_err(|e| Failure::failed_msg(format!("cannot write {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sam-train").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn validate_takes_several_configs_and_flags() {
        let cli = parse(&[
            "validate",
            "a.yaml",
            "b.yaml",
            "--no-path-checks",
            "--root",
            "/r",
        ])
        .expect("parses");
        let Command::Validate(v) = cli.command else {
            panic!("not validate")
        };
        assert_eq!(
            v.configs,
            vec![PathBuf::from("a.yaml"), PathBuf::from("b.yaml")]
        );
        assert!(v.no_path_checks);
        assert_eq!(v.root, Some(PathBuf::from("/r")));
        assert!(!v.quiet);
    }

    #[test]
    fn validate_checks_paths_by_default_and_needs_a_config() {
        let Command::Validate(v) = parse(&["validate", "a.yaml"]).expect("parses").command else {
            panic!("not validate")
        };
        assert!(!v.no_path_checks && v.root.is_none());
        assert!(parse(&["validate"]).is_err());
        let Command::Validate(v) = parse(&["validate", "-q", "a.yaml"])
            .expect("parses")
            .command
        else {
            panic!("not validate")
        };
        assert!(v.quiet);
    }

    #[test]
    fn train_stop_exit_code_defaults_to_the_requeue_status() {
        let Command::Train(t) = parse(&["train", "c.yaml"]).expect("parses").command else {
            panic!("not train")
        };
        assert_eq!(i32::from(t.stop_exit_code), sam_train::REQUEUE_EXIT_CODE);
        let Command::Train(t) = parse(&["train", "c.yaml", "--stop-exit-code", "0"])
            .expect("parses")
            .command
        else {
            panic!("not train")
        };
        assert_eq!(t.stop_exit_code, 0);
        assert!(parse(&["train", "c.yaml", "--stop-exit-code", "256"]).is_err());
    }

    #[test]
    fn job_resources_takes_a_config_root_and_overrides() {
        let Command::JobResources(j) = parse(&[
            "job-resources",
            "c.yaml",
            "--root",
            "/r",
            "--no-path-checks",
            "--nodes",
            "1",
            "--gpus-per-node",
            "2",
            "--time",
            "01:00:00",
            "--mem",
            "8G",
            "--cpus-per-task",
            "3",
            "--signal-lead",
            "90",
            "--partition",
            "a40",
            "--no-requeue",
        ])
        .expect("parses")
        .command
        else {
            panic!("not job-resources")
        };
        assert_eq!(j.config, PathBuf::from("c.yaml"));
        assert_eq!(j.root, Some(PathBuf::from("/r")));
        assert!(j.no_path_checks && j.no_requeue && !j.requeue);
        assert_eq!(
            (j.nodes, j.gpus_per_node, j.cpus_per_task),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(j.time.as_deref(), Some("01:00:00"));
        assert_eq!(j.mem.as_deref(), Some("8G"));
        assert_eq!(j.signal_lead, Some(90));
        assert_eq!(j.partition.as_deref(), Some("a40"));
        assert!(parse(&["job-resources"]).is_err());
        assert!(parse(&["job-resources", "c.yaml", "--nodes", "two"]).is_err());
    }

    #[test]
    fn export_replaces_an_existing_file_only_with_force() {
        let Command::Export(e) = parse(&["export", "--checkpoint", "a", "--output", "b.pt"])
            .expect("parses")
            .command
        else {
            panic!("not export")
        };
        assert!(!e.force && !e.with_decoder);
        assert_eq!(
            (e.checkpoint, e.output),
            (PathBuf::from("a"), PathBuf::from("b.pt"))
        );
        let Command::Export(e) = parse(&[
            "export",
            "--checkpoint",
            "a",
            "--output",
            "b.pt",
            "--force",
            "--with-decoder",
        ])
        .expect("parses")
        .command
        else {
            panic!("not export")
        };
        assert!(e.force && e.with_decoder);
        assert!(parse(&["export", "--checkpoint", "a"]).is_err());
    }

    #[test]
    fn export_formats_parse_and_sam_only_flags_are_refused_with_others() {
        let export = |args: &[&str]| {
            let mut all = vec!["export", "--checkpoint", "a", "--output", "out"];
            all.extend_from_slice(args);
            match parse(&all).expect("parses").command {
                Command::Export(e) => e,
                _ => panic!("not export"),
            }
        };
        let e = export(&[]);
        assert_eq!(e.format, train_cmd::ExportFormatArg::Sam);
        assert_eq!((e.points, e.license.as_str()), (1, "CC-BY-4.0"));
        let e = export(&["--format", "torchscript", "--points", "3"]);
        assert_eq!(
            (e.format, e.points),
            (train_cmd::ExportFormatArg::Torchscript, 3)
        );
        let e = export(&[
            "--format",
            "bioimageio",
            "--author",
            "A",
            "--author",
            "B",
            "--license",
            "MIT",
            "--name",
            "N",
            "--sample-image",
            "s.tif",
        ]);
        assert_eq!(e.format, train_cmd::ExportFormatArg::Bioimageio);
        assert_eq!(e.authors, ["A", "B"]);
        assert_eq!((e.license.as_str(), e.name.as_deref()), ("MIT", Some("N")));
        assert_eq!(e.sample_image, Some(PathBuf::from("s.tif")));
        assert!(parse(&[
            "export",
            "--checkpoint",
            "a",
            "--output",
            "o",
            "--format",
            "onnx"
        ])
        .is_err());
        // --with-decoder and --peft-layout belong to the state_dict format: exit 2 before
        // anything is read.
        for extra in [&["--with-decoder"][..], &["--peft-layout", "micro-sam"]] {
            let mut args = vec!["--format", "torchscript"];
            args.extend_from_slice(extra);
            match train_cmd::run_export(export(&args)) {
                Err(err) => assert_eq!(err.code(), sam_cli::EXIT_USAGE),
                Ok(()) => panic!("{args:?} accepted"),
            }
        }
    }

    #[test]
    fn fit_takes_a_budget_limits_and_what_to_vary() {
        let Command::Fit(f) = parse(&["fit", "c.yaml"]).expect("parses").command else {
            panic!("not fit")
        };
        assert_eq!(f.config, PathBuf::from("c.yaml"));
        assert_eq!(f.budget_gib, None);
        assert_eq!((f.max_tries, f.steps), (12, 2));
        assert_eq!(
            f.vary,
            [fit_cmd::VaryArg::Objects, fit_cmd::VaryArg::BatchSize]
        );
        let Command::Fit(f) = parse(&[
            "fit",
            "c.yaml",
            "--budget-gib",
            "1.5",
            "--max-tries",
            "4",
            "--vary",
            "batch-size",
            "--json",
            "o.json",
        ])
        .expect("parses")
        .command
        else {
            panic!("not fit")
        };
        assert_eq!(f.budget_gib, Some(1.5));
        assert_eq!(f.max_tries, 4);
        assert_eq!(f.vary, [fit_cmd::VaryArg::BatchSize]);
        assert_eq!(f.json, Some(PathBuf::from("o.json")));
        assert!(parse(&["fit", "c.yaml", "--vary", "width"]).is_err());
        assert!(parse(&["fit"]).is_err());
    }

    #[test]
    fn schema_writes_to_a_file_or_stdout() {
        let Command::Schema(s) = parse(&["schema", "-o", "out.json"])
            .expect("parses")
            .command
        else {
            panic!("not schema")
        };
        assert_eq!(s.output, Some(PathBuf::from("out.json")));
        let Command::Schema(s) = parse(&["schema"]).expect("parses").command else {
            panic!("not schema")
        };
        assert_eq!(s.output, None);
    }
}
