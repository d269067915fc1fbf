//! `sam-train train`, `sam-train export` and `sam-train download-model`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sam_config::{find_root, load_config_with, ValidateOptions};
use sam_torch::LaunchEnv;
use sam_train::{
    export_model, prepare_run, train, Collective, StopFlag, TrainOptions, TrainOutcome,
    TrainProgress, REQUEUE_EXIT_CODE,
};
use tracing_subscriber::fmt::MakeWriter;

/// Fine-tune SAM as an experiment config describes.
///
/// Writes runs/<experiment>/{config.yaml, checkpoints/<checkpoint_name>/{latest,best}/, logs/}
/// and exports the best model to `export_path`. SIGTERM or SIGUSR1 (SLURM's warning before
/// the time limit) finish the current step, checkpoint, and exit with status 42 so that the
/// job can be requeued and resumed with --resume. Distributed runs take rank, world size and
/// master address from SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST)
/// or torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The experiment config (YAML).
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    /// Continue the run from its `latest` checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Delete an existing run folder and start over.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the resolved distributed layout (rank, world size, master) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Repository root (default: $SAM_TRAINER_ROOT, else found from the working directory).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// No progress bar (log lines only), e.g. in batch jobs.
    #[arg(long)]
    pub no_progress: bool,
}

/// Export a checkpoint in the formats segment_anything and micro_sam read.
///
/// CHECKPOINT is one of our checkpoint folders (runs/<exp>/checkpoints/<name>/best), our
/// safetensors file, a micro_sam checkpoint or an original SAM .pth. Without --with-decoder
/// the output is a plain SAM state_dict (`sam_model_registry[...]().load_state_dict(...)`);
/// with it, micro_sam's {"model_state", "decoder_state"}.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The checkpoint to export.
    #[arg(long, value_name = "CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// The file to write (torch.save format).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Include the instance-segmentation decoder (micro_sam's format).
    #[arg(long)]
    pub with_decoder: bool,
}

/// Download a micro_sam model (vit_b, vit_l, vit_h, vit_t, vit_b_lm, ...) into the model cache.
///
/// The cache is $MICROSAM_CACHEDIR/models, else ~/.cache/micro_sam/models. The file's hash is
/// verified; a wrong hash leaves nothing behind. Run it once on a login node with internet;
/// compute nodes then find the model by name.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The model name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Download from this URL instead of the official one (a mirror).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Expected hash (`sha256:<hex>` or `xxh128:<hex>`), required for names micro_sam does not know.
    #[arg(long, value_name = "HASH")]
    pub hash: Option<String>,
    /// Download again even when the cached file has the right hash.
    #[arg(long)]
    pub force: bool,
}

/// The progress bar, when one is drawn: log lines print above it.
static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// Console writer that prints log lines above the progress bar.
#[derive(Clone, Copy)]
struct Console;

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BAR.get() {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for Console {
    type Writer = Console;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

/// Log lines to the console and, when given, to a file (the run's logs/train.log).
fn init_logging(file: Option<std::fs::File>) {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let base = tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(false);
    let result = match file {
        Some(f) => base.with_writer(Console.and(Mutex::new(f))).try_init(),
        None => base.with_writer(Console).try_init(),
    };
    let _ = result; // already initialised (tests): keep the first
}

struct Bar {
    bar: Option<ProgressBar>,
}

impl TrainProgress for Bar {
    fn start(&self, total: u64, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            bar.reset_eta();
        }
    }
    fn step(&self, iteration: u64, loss: f64, lr: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(iteration);
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
        }
    }
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{msg}");
    if !tracing::dispatcher::has_been_set() {
        eprintln!("error: {msg}");
    }
    ExitCode::from(code)
}

/// `sam-train train`.
pub fn run_train(args: TrainArgs) -> ExitCode {
    let env = match LaunchEnv::from_env() {
        Ok(env) => env,
        Err(e) => return fail_plain(2, format!("launch environment: {e}")),
    };
    if args.dry_run {
        println!("{env}");
        return ExitCode::SUCCESS;
    }
    let root = match find_root(args.root.as_deref()) {
        Ok(r) => r,
        Err(e) => return fail_plain(2, e),
    };
    let options = ValidateOptions {
        root: Some(root.clone()),
        ..ValidateOptions::default()
    };
    let loaded = match load_config_with(&args.config, &options) {
        Ok(l) => l,
        Err(e) => return fail_plain(2, e),
    };
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let cfg = loaded.config;
    // Only rank 0 touches the run folder before training; the others wait for it in the
    // rendezvous below and then read the same checkpoint.
    let paths = if env.rank == 0 {
        match prepare_run(&cfg, &root, args.resume, args.overwrite) {
            Ok(p) => p,
            Err(e @ (sam_train::TrainError::RunExists(_) | sam_train::TrainError::Usage(_))) => {
                return fail_plain(2, e)
            }
            Err(e) => return fail_plain(1, e),
        }
    } else {
        sam_config::RunPaths::new(&root, &cfg)
    };
    let log_file = if env.rank == 0 {
        let path = paths.logs_dir.join("train.log");
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => Some(f),
            Err(e) => return fail_plain(1, format!("{}: {e}", path.display())),
        }
    } else {
        None
    };
    init_logging(log_file);
    let bar = (!args.no_progress && env.rank == 0).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} it  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let _ = BAR.set(bar.clone());
        bar
    });
    let stop = StopFlag::new();
    if let Err(e) = stop.install_signal_handlers() {
        return fail(1, e);
    }
    let collective = if env.is_distributed() {
        let gpu = sam_torch::cuda_is_available();
        let backend = match cfg.distributed.backend {
            sam_config::Backend::Nccl => sam_torch::Backend::Nccl,
            sam_config::Backend::Gloo => sam_torch::Backend::Gloo,
            sam_config::Backend::Auto if gpu && cfg.training.device != sam_config::Device::Cpu => {
                sam_torch::Backend::Nccl
            }
            sam_config::Backend::Auto => sam_torch::Backend::Gloo,
        };
        let timeout = Duration::from_secs(60 * u64::from(cfg.distributed.timeout_minutes.max(1)));
        tracing::info!("joining {env} over {backend:?}");
        match Collective::init(&env, backend, timeout) {
            Ok(c) => Some(c),
            Err(e) => return fail(1, e),
        }
    } else {
        None
    };
    let progress = Bar { bar };
    let opts = TrainOptions {
        root,
        resume: args.resume,
        overwrite: args.overwrite,
        stop,
        progress: &progress,
        collective: collective.as_ref(),
        max_iterations_this_run: None,
    };
    match train(&cfg, &paths, &opts) {
        Ok(TrainOutcome::Finished(s)) => {
            if env.rank == 0 {
                tracing::info!(
                    "done: {} epochs, {} iterations in {:.0} s; best validation mSA {}; last box-prompted IoU {}; model: {}; run folder: {}",
                    s.epochs,
                    s.iterations,
                    s.seconds,
                    s.best_msa.map_or("n/a".into(), |m| format!("{m:.4}")),
                    s.last_validation.map_or("n/a".into(), |v| format!("{:.4}", v.box_iou)),
                    s.export_path.as_ref().map_or("-".into(), |p| p.display().to_string()),
                    s.run_dir.display()
                );
                tracing::info!(
                    "training steps: {:.3} s per iteration, {:.1} % of it waiting for data",
                    s.timing.seconds_per_iteration(),
                    100.0 * s.timing.data_wait_share()
                );
            }
            ExitCode::SUCCESS
        }
        Ok(TrainOutcome::Interrupted(s)) => {
            tracing::info!(
                "interrupted at iteration {}: resume with `sam-train train {} --resume` (exit status {REQUEUE_EXIT_CODE} requeues SLURM jobs)",
                s.iterations,
                args.config.display()
            );
            ExitCode::from(REQUEUE_EXIT_CODE as u8)
        }
        Err(e) => fail(1, e),
    }
}

fn fail_plain(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

/// `sam-train export`.
pub fn run_export(args: ExportArgs) -> ExitCode {
    match export_model(&args.checkpoint, &args.output, args.with_decoder) {
        Ok(()) => {
            println!("wrote {}", args.output.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail_plain(1, e),
    }
}

/// `sam-train download-model`.
pub fn run_download(args: DownloadArgs) -> ExitCode {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut progress = |p: sam_model::DownloadProgress| {
        if let Some(t) = p.total {
            bar.set_length(t);
        }
        bar.set_position(p.downloaded);
    };
    let options = sam_model::DownloadOptions {
        cache_dir: None,
        url: args.url.clone(),
        hash: args.hash.clone(),
        progress: Some(&mut progress),
        force: args.force,
    };
    let result = sam_model::download_model(&args.name, options);
    bar.finish_and_clear();
    match result {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail_plain(1, e),
    }
}
