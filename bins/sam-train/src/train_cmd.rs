//! `sam-train train`, `sam-train export` and `sam-train download-model`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use clap::Args;
use indicatif::ProgressBar;
use sam_cli::Failure;
use sam_config::{find_root_for, load_config_with, ValidateOptions};
use sam_torch::{CpuBudget, LaunchEnv};
use sam_train::{
    export_bioimageio, export_model, export_torchscript, prepare_run, train, BioImageIoOptions,
    Collective, ExportOptions, PeftLayout, StopFlag, TorchScriptOptions, TrainOptions,
    TrainOutcome, TrainProgress, REQUEUE_EXIT_CODE,
};
use tracing_subscriber::fmt::MakeWriter;

/// Fine-tune SAM as an experiment config describes.
///
/// Writes runs/<experiment>/{config.yaml, checkpoints/<checkpoint_name>/{latest,best}/, logs/}
/// and exports the best model to `export_path`. SIGTERM or SIGUSR1 (SLURM's warning before
/// the time limit) finish the current step, checkpoint, leave the file
/// runs/<experiment>/stopped_for_requeue (rank 0) and exit with --stop-exit-code (42) so that
/// the job can be requeued and resumed with --resume. Distributed runs take rank, world size and
/// master address from SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST)
/// or torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
///
/// Each process uses the cores it was given, never more: SLURM_CPUS_PER_TASK in a SLURM task,
/// the available cores divided by LOCAL_WORLD_SIZE under torchrun-style variables, all
/// available cores alone. libtorch's intra-op threads take all of them; data.num_workers is
/// lowered to at most one less.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The experiment config (YAML).
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    /// Continue the run from its `latest` checkpoint.
    ///
    /// A run stopped before its first checkpoint starts again from the beginning, in the same
    /// folder.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Delete an existing run folder and start over.
    ///
    /// Only a folder this tool created as a run (it holds the file .sam-train-run) is
    /// cleared, never through a symbolic link; SLURM output files in logs/ are kept. Any
    /// other folder is refused.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the resolved distributed layout (rank, world size, master) and the cores this
    /// process would use, and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Repository root (default: $SAM_TRAINER_ROOT, else found from the working directory).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// No progress bar (log lines only), e.g. in batch jobs.
    #[arg(long)]
    pub no_progress: bool,
    /// Exit status after a stop by SIGTERM/SIGUSR1 with its checkpoint written. The SLURM
    /// batch script passes 0, so that `srun --kill-on-bad-exit` cannot take the clean stop
    /// for a failure, and requeues the job itself when it finds the stop marker.
    #[arg(long, value_name = "N", default_value_t = REQUEUE_EXIT_CODE as u8)]
    pub stop_exit_code: u8,
}

/// The file rank 0 leaves in the run folder after a stop by SIGTERM/SIGUSR1 with its
/// checkpoint written (not after a failure): the SLURM batch script requeues the job when it
/// finds it, and removes it.
pub const STOP_MARKER: &str = "stopped_for_requeue";

/// Where [`STOP_MARKER`] goes for a run folder.
pub fn stop_marker_path(run_dir: &Path) -> PathBuf {
    run_dir.join(STOP_MARKER)
}

/// Writes the stop marker atomically (temporary file, then rename): what stopped, where.
fn write_stop_marker(run_dir: &Path, iteration: u64) -> std::io::Result<PathBuf> {
    let path = stop_marker_path(run_dir);
    let tmp = run_dir.join(format!(".{STOP_MARKER}.tmp"));
    let job = std::env::var("SLURM_JOB_ID").unwrap_or_else(|_| "-".to_owned());
    std::fs::write(
        &tmp,
        format!(
            "stopped by signal after iteration {iteration}; checkpoint written\nslurm_job {job}\n"
        ),
    )?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Removes a marker left by an earlier stop: this run has not been stopped.
fn remove_stale_stop_marker(run_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(stop_marker_path(run_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Sizes this process's thread pools to its CPU budget: libtorch's intra-op pool and rayon's
/// global pool (patch sampling, targets) take `budget.cores`. Returns rayon's complaint when
/// its pool was already built.
fn apply_thread_budget(budget: &CpuBudget) -> Result<(), String> {
    let threads = budget.intra_op_threads();
    tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| format!("rayon's thread pool keeps its size: {e}"))
}

/// Export a checkpoint: for segment_anything / micro_sam (`--format sam`, the default), as
/// TorchScript modules any PyTorch user can run (`--format torchscript`), or as a bioimage.io
/// model package (`--format bioimageio`).
///
/// CHECKPOINT is one of our checkpoint folders (runs/<exp>/checkpoints/<name>/best), our
/// safetensors file, a micro_sam checkpoint or an original SAM .pth. Without --with-decoder
/// the output is a plain SAM state_dict (`sam_model_registry[...]().load_state_dict(...)`);
/// with it, micro_sam's {"model_state", "decoder_state"}. A model trained with image-encoder
/// adapters (model.peft) is written merged (adapters folded into the weights, loads as a plain
/// SAM) or, with --peft-layout micro-sam, in micro_sam's PEFT layout (load it with
/// `get_sam_model(..., peft_kwargs=...)`).
///
/// The export never destroys its input: an output that is the checkpoint (by name or through
/// a link) or lies inside the checkpoint folder is refused, and so is an existing file unless
/// --force is given (exit status 2, nothing written). The file is written under a temporary
/// name and renamed into place.
///
/// --format torchscript writes a folder of traced modules (image_encoder.pt, prompt_points.pt,
/// prompt_box.pt and, with the decoder, unetr_decoder.pt and ais.pt) and model.json, which
/// lists their input and output shapes and the preprocessing (`torch.jit.load` them; adapters
/// are merged). --format bioimageio writes a bioimage.io model package folder (rdf.yaml, the
/// automatic segmentation network as TorchScript weights, test tensors, cover, README), or that
/// package as a zip file when PATH ends in .zip (like a --format sam file: refused when it
/// exists, unless --force); it needs the decoder. Both take the percentile normalisation from the run's config.yaml above
/// a checkpoint folder (else the defaults 1 and 99.8). An output folder that holds files is
/// refused without --force (which replaces the exported files only).
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The checkpoint to export.
    #[arg(long, value_name = "CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// The file to write (torch.save format), or the folder for `torchscript` and `bioimageio`
    /// (for `bioimageio`, a path ending in .zip writes the package as a zip file).
    #[arg(long, value_name = "PATH")]
    pub output: PathBuf,
    /// What to write: `sam` (a torch.save state_dict for segment_anything / micro_sam),
    /// `torchscript` (traced modules and model.json) or `bioimageio` (a model package).
    #[arg(long, value_enum, default_value = "sam")]
    pub format: ExportFormatArg,
    /// Include the instance-segmentation decoder (micro_sam's format; `--format sam` only:
    /// the other formats include it whenever the checkpoint has it).
    #[arg(long)]
    pub with_decoder: bool,
    /// Replace FILE when it exists (without it, an existing file is refused). FILE may never
    /// be the checkpoint itself, a link to it, or lie inside the checkpoint folder.
    #[arg(long)]
    pub force: bool,
    /// How a model with image-encoder adapters is written: `merged` (a plain SAM state_dict)
    /// or `micro-sam` (micro_sam's PEFT state_dict).
    #[arg(long, value_enum, default_value = "merged")]
    pub peft_layout: PeftLayoutArg,
    /// `--format torchscript`: points per prompt that prompt_points.pt takes (traced shapes are
    /// fixed).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub points: i64,
    /// `--format bioimageio`: the package's name (default: "SAM instance segmentation
    /// (<architecture>)").
    #[arg(long, value_name = "TEXT")]
    pub name: Option<String>,
    /// `--format bioimageio`: the package's description (default: a sentence naming the
    /// architecture).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// `--format bioimageio`: an author's name (repeat for several; default "sam_trainer").
    #[arg(long = "author", value_name = "NAME")]
    pub authors: Vec<String>,
    /// `--format bioimageio`: the license, an SPDX identifier.
    #[arg(long, default_value = "CC-BY-4.0", value_name = "SPDX")]
    pub license: String,
    /// `--format bioimageio`: a grey image for the test tensors and the cover, at least the
    /// model input size (its centre is used); default: a synthetic brightfield image.
    #[arg(long, value_name = "IMAGE")]
    pub sample_image: Option<PathBuf>,
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormatArg {
    /// A torch.save state_dict for segment_anything / micro_sam.
    Sam,
    /// TorchScript modules and model.json.
    Torchscript,
    /// A bioimage.io model package.
    Bioimageio,
}

/// `--peft-layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeftLayoutArg {
    /// Adapters folded into the weights.
    Merged,
    /// micro_sam's PEFT layout.
    MicroSam,
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

/// A failure once logging is set up: logged (console and train.log), else printed.
fn logged(code: u8, msg: impl std::fmt::Display) -> Failure {
    tracing::error!("{msg}");
    if tracing::dispatcher::has_been_set() {
        Failure::reported(code)
    } else {
        Failure::message(code, msg)
    }
}

/// `sam-train train`.
/// The exit status is 0 after a finished run, `--stop-exit-code` after a stop by signal.
pub fn run_train(args: TrainArgs) -> Result<u8, Failure> {
    let env = match LaunchEnv::from_env() {
        Ok(env) => env,
        Err(e) => return Err(Failure::usage_msg(format!("launch environment: {e}"))),
    };
    let budget = match env.cpu_budget_from_env() {
        Ok(b) => b,
        Err(e) => return Err(Failure::usage_msg(format!("launch environment: {e}"))),
    };
    if args.dry_run {
        println!("{env}");
        println!("threads: {budget}");
        return Ok(0);
    }
    // Before any tensor work or rayon use: pools sized once, for the whole run.
    let pool_note = apply_thread_budget(&budget).err();
    // As `validate`, sam-eval and sam-infer: the explicit root, else the working directory's,
    // else the config's folder's.
    let root = match find_root_for(args.root.as_deref(), Some(&args.config)) {
        Ok(r) => r,
        Err(e) => return Err(Failure::usage_msg(e)),
    };
    let options = ValidateOptions {
        root: Some(root.clone()),
        ..ValidateOptions::default()
    };
    let loaded = match load_config_with(&args.config, &options) {
        Ok(l) => l,
        Err(e) => return Err(Failure::usage_msg(e)),
    };
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let mut cfg = loaded.config;
    let configured_workers = cfg.data.num_workers;
    let workers = budget.loader_workers(configured_workers as usize);
    cfg.data.num_workers = u32::try_from(workers).unwrap_or(configured_workers);
    let device = match sam_train::device_for(cfg.training.device, env.local_rank) {
        Ok(device) => device,
        Err(e) => return Err(Failure::usage_msg(e)), // no usable GPU: before anything is written
    };
    // Only rank 0 touches the run folder before training; the others wait for it in the
    // rendezvous below and then read the same checkpoint.
    let (paths, notes) = if env.rank == 0 {
        match prepare_run(&cfg, &root, args.resume, args.overwrite) {
            Ok(p) => (p.paths, p.notes),
            Err(e) if e.is_usage() => return Err(Failure::usage_msg(e)),
            Err(e) => return Err(Failure::failed_msg(e)),
        }
    } else {
        (sam_config::RunPaths::new(&root, &cfg), Vec::new())
    };
    let log_file = if env.rank == 0 {
        let path = paths.logs_dir.join("train.log");
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => Some(f),
            Err(e) => return Err(Failure::failed_msg(format!("{}: {e}", path.display()))),
        }
    } else {
        None
    };
    init_logging(log_file);
    for note in &notes {
        tracing::info!("{note}");
    }
    if env.rank == 0 {
        if let Err(e) = remove_stale_stop_marker(&paths.run_dir) {
            return Err(logged(
                1,
                format!("{}: {e}", stop_marker_path(&paths.run_dir).display()),
            ));
        }
    }
    tracing::info!(
        "threads (rank {}): {budget}: {} intra-op, {} loader worker{}{}",
        env.rank,
        budget.intra_op_threads(),
        workers,
        if workers == 1 { "" } else { "s" },
        if workers as u64 == u64::from(configured_workers) {
            String::new()
        } else {
            format!(" (data.num_workers {configured_workers} lowered to fit)")
        }
    );
    if let Some(note) = pool_note {
        tracing::warn!("{note}");
    }
    let bar = (!args.no_progress && env.rank == 0).then(|| {
        let bar = sam_cli::progress_bar(
            0,
            "{elapsed_precise} [{bar:30}] {pos}/{len} it  {msg}  ETA {eta}",
        );
        let _ = BAR.set(bar.clone());
        bar
    });
    let stop = StopFlag::new();
    if let Err(e) = stop.install_signal_handlers() {
        return Err(logged(1, e));
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
            Err(e) => return Err(logged(1, e)),
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
                    "training steps: {:.3} s per iteration, {:.1} % of it waiting for data, \
                     at most {} device read(s) per step{}",
                    s.timing.seconds_per_iteration(),
                    100.0 * s.timing.data_wait_share(),
                    s.timing.max_host_reads_per_step,
                    s.throughput
                        .map(|t| format!("; {}", t.describe()))
                        .unwrap_or_default()
                );
                if let tch::Device::Cuda(index) = device {
                    match sam_torch::cuda_memory_stats(index) {
                        Ok(m) => tracing::info!(
                            "peak device memory: {} MiB in tensors, {} MiB reserved (cuda:{index})",
                            m.peak_allocated >> 20,
                            m.peak_reserved >> 20
                        ),
                        Err(e) => tracing::warn!("peak device memory: unavailable ({e})"),
                    }
                }
            }
            Ok(0)
        }
        Ok(TrainOutcome::Interrupted(s)) => {
            // The trainer returns Interrupted here only for a stop by signal (this shell sets
            // no iteration limit), after every rank passed the checkpoint barrier.
            if env.rank == 0 {
                match write_stop_marker(&paths.run_dir, s.iterations) {
                    Ok(path) => tracing::info!("stop marker: {}", path.display()),
                    Err(e) => {
                        return Err(logged(
                            1,
                            format!(
                                "checkpointed at iteration {}, but cannot write the stop marker in {}: {e} (the job will not requeue itself: resubmit with --resume)",
                                s.iterations,
                                paths.run_dir.display()
                            ),
                        ))
                    }
                }
            }
            tracing::info!(
                "interrupted at iteration {}: resume with `sam-train train {} --resume` (exit status {})",
                s.iterations,
                args.config.display(),
                args.stop_exit_code
            );
            Ok(args.stop_exit_code)
        }
        Err(e) => Err(logged(1, e)),
    }
}

/// `sam-train export`.
pub fn run_export(args: ExportArgs) -> Result<(), Failure> {
    let sam_only = args.with_decoder || args.peft_layout != PeftLayoutArg::Merged;
    if args.format != ExportFormatArg::Sam && sam_only {
        return Err(Failure::usage_msg(
            "--with-decoder and --peft-layout apply to --format sam only (the other formats \
             include the decoder when the checkpoint has it, with adapters merged)",
        ));
    }
    let result = match args.format {
        ExportFormatArg::Sam => return run_export_sam(args),
        ExportFormatArg::Torchscript => {
            let options = TorchScriptOptions {
                replace: args.force,
                points: args.points,
            };
            export_torchscript(&args.checkpoint, &args.output, options).map(|_| ())
        }
        ExportFormatArg::Bioimageio => {
            let options = BioImageIoOptions {
                replace: args.force,
                name: args.name,
                description: args.description,
                authors: args.authors,
                license: args.license,
                sample_image: args.sample_image,
            };
            export_bioimageio(&args.checkpoint, &args.output, &options).map(|_| ())
        }
    };
    match result {
        Ok(()) => {
            println!("wrote {}", args.output.display());
            Ok(())
        }
        Err(e) if e.is_usage() => Err(Failure::usage_msg(e)),
        Err(e) => Err(Failure::failed_msg(e)),
    }
}

/// `sam-train export --format sam`.
fn run_export_sam(args: ExportArgs) -> Result<(), Failure> {
    let options = ExportOptions {
        with_decoder: args.with_decoder,
        replace: args.force,
        peft_layout: match args.peft_layout {
            PeftLayoutArg::Merged => PeftLayout::Merged,
            PeftLayoutArg::MicroSam => PeftLayout::MicroSam,
        },
    };
    match export_model(&args.checkpoint, &args.output, options) {
        Ok(()) => {
            println!("wrote {}", args.output.display());
            Ok(())
        }
        Err(e) if e.is_usage() => Err(Failure::usage_msg(e)),
        Err(e) => Err(Failure::failed_msg(e)),
    }
}

/// `sam-train download-model`.
pub fn run_download(args: DownloadArgs) -> Result<(), Failure> {
    let bar = sam_cli::progress_bar(
        0,
        "{bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} ETA {eta}",
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
            Ok(())
        }
        // A name without a known hash, an unknown name or a malformed hash: the command line
        // is wrong, not the download.
        Err(
            e @ (sam_model::CacheError::NotInRegistry { .. }
            | sam_model::CacheError::UnknownModel { .. }
            | sam_model::CacheError::BadHash(_)),
        ) => Err(Failure::usage_msg(e)),
        Err(e) => Err(Failure::failed_msg(e)),
    }
}
