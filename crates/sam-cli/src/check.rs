//! `sam-augment check`: sam-data's dataset check run with an experiment config's settings, plus
//! the config's cost estimates, as one report for the console and a JSON file.

use std::path::{Path, PathBuf};

use sam_config::{ExperimentConfig, MemoryKind, WallTimeEstimate};
use sam_data::{
    CheckOptions, DataCheck, Distribution, Finding, FindingKind, Normalization, PatchConfig,
    Severity,
};

/// The dataset check's settings from a config: the patch sampler's requirements as training
/// sets them (`data.patch_shape`, `data.min_objects_per_patch` (at least 1),
/// `data.min_object_size`, the sampler's default tries), `data.normalization` and
/// `data.image_shape`. The patch mapping is sam-train's ([`PatchConfig::training`]), so that the
/// check counts the patches training can draw.
pub fn check_options(cfg: &ExperimentConfig) -> CheckOptions {
    let d = &cfg.data;
    CheckOptions {
        patch: PatchConfig::training(d.patch_shape, d.min_objects_per_patch, d.min_object_size),
        normalization: Normalization {
            lower_percentile: d.normalization.lower_percentile,
            upper_percentile: d.normalization.upper_percentile,
        },
        expected_shape: Some((d.image_shape[0] as usize, d.image_shape[1] as usize)),
        ..CheckOptions::default()
    }
}

/// The folders a config trains and validates on, resolved against `root`: `("training",
/// images, labels)` and, when `data.validation` names folders, `("validation", ...)`.
pub fn config_folders(cfg: &ExperimentConfig, root: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        }
    };
    let d = &cfg.data;
    let mut sets = vec![(
        "training".to_string(),
        abs(&d.train_images_dir),
        abs(&d.train_labels_dir),
    )];
    if let (Some(i), Some(l)) = (&d.validation.images_dir, &d.validation.labels_dir) {
        sets.push(("validation".to_string(), abs(i), abs(l)));
    }
    sets
}

/// The expected cost of a config's training run on its cluster: the validator's wall-time
/// estimate (what `sam-train validate` prints) and the analytic peak memory of a step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CostEstimate {
    /// `hardware.accelerator`.
    pub accelerator: String,
    /// `distributed.nodes`.
    pub nodes: u32,
    /// `distributed.gpus_per_node`.
    pub gpus_per_node: u32,
    /// Training processes (nodes × GPUs per node).
    pub processes: u32,
    /// Estimated hours from start to the last epoch, validation included.
    pub hours: f64,
    /// `hours` × processes: the accelerator hours the run costs.
    pub accelerator_hours: f64,
    /// Training patches each process handles.
    pub samples_per_process: u64,
    /// Seconds per patch assumed for the accelerator and backbone.
    pub seconds_per_sample: f64,
    /// Training images the estimate counts.
    pub train_images: u64,
    /// Whether they were counted in the folder (else assumed).
    pub images_counted: bool,
    /// Whether the run may not finish within the 56 h SLURM limit (it then resumes from its
    /// checkpoint after a requeue).
    pub exceeds_wall_time_limit: bool,
    /// `slurm.time_limit`.
    pub slurm_time_limit: String,
    /// Estimated peak memory of one training step of one process, in GiB.
    pub peak_memory_gib: f64,
    /// `"gpu"` (per GPU, what the CUDA caching allocator reserves) or `"cpu"` (resident set).
    pub memory_kind: String,
    /// Memory of one accelerator of the preset, in GB (0 for the CPU).
    pub accelerator_memory_gb: u32,
    /// Parameter values of the model.
    pub parameters: u64,
    /// Parameter values that are trained.
    pub trainable_parameters: u64,
    /// `training.batch_size`.
    pub batch_size: u32,
    /// `training.n_objects_per_batch`.
    pub objects_per_image: u32,
}

impl CostEstimate {
    /// The estimate of `cfg`, with the validator's wall-time estimate when there is one (else
    /// the same estimate from an assumed number of images).
    pub fn new(cfg: &ExperimentConfig, wall_time: Option<&WallTimeEstimate>) -> CostEstimate {
        let wall = wall_time
            .cloned()
            .unwrap_or_else(|| cfg.estimate_wall_time(None));
        let memory = cfg.estimate_peak_memory();
        let processes = cfg.distributed.world_size().max(1);
        CostEstimate {
            accelerator: cfg.hardware.accelerator.to_string(),
            nodes: cfg.distributed.nodes,
            gpus_per_node: cfg.distributed.gpus_per_node,
            processes,
            hours: wall.hours,
            accelerator_hours: wall.hours * f64::from(processes),
            samples_per_process: wall.samples_per_process,
            seconds_per_sample: wall.seconds_per_sample,
            train_images: wall.train_images,
            images_counted: wall.images_counted,
            exceeds_wall_time_limit: wall.exceeds_limit(),
            slurm_time_limit: cfg.slurm.time_limit.clone(),
            peak_memory_gib: memory.peak_bytes as f64 / (1u64 << 30) as f64,
            memory_kind: match memory.kind {
                MemoryKind::Gpu => "gpu",
                MemoryKind::Cpu => "cpu",
            }
            .to_string(),
            accelerator_memory_gb: cfg.hardware.accelerator.preset().memory_gb,
            parameters: memory.parameters,
            trainable_parameters: memory.trainable,
            batch_size: cfg.training.batch_size,
            objects_per_image: cfg.training.n_objects_per_batch,
        }
    }

    /// Whether the estimated peak exceeds one accelerator's memory.
    pub fn exceeds_accelerator_memory(&self) -> bool {
        self.memory_kind == "gpu"
            && self.accelerator_memory_gb > 0
            && self.peak_memory_gib * (1u64 << 30) as f64
                > f64::from(self.accelerator_memory_gb) * 1e9
    }

    /// The report's lines for the estimate.
    pub fn lines(&self) -> Vec<String> {
        let basis = if self.images_counted {
            format!("{} training images", self.train_images)
        } else {
            format!("an assumed {} training images", self.train_images)
        };
        let place = if self.memory_kind == "gpu" {
            format!(
                "per GPU ({} has {} GB)",
                self.accelerator, self.accelerator_memory_gb
            )
        } else {
            "of RAM".to_string()
        };
        vec![
            format!(
                "  cost:     {} on {} node(s) x {} {} ({} process(es)) = {} of {} time; {} \
                 patches per process at ~{:.2} s, from {basis}{}",
                duration(self.hours),
                self.nodes,
                self.gpus_per_node,
                self.accelerator,
                self.processes,
                duration(self.accelerator_hours),
                self.accelerator,
                self.samples_per_process,
                self.seconds_per_sample,
                if self.exceeds_wall_time_limit {
                    "; MORE THAN THE 56 h LIMIT"
                } else {
                    ""
                }
            ),
            format!(
                "  memory:   ~{:.1} GiB {place} at batch_size {} x {} objects (analytic; \
                 `sam-train fit` measures it)",
                self.peak_memory_gib, self.batch_size, self.objects_per_image
            ),
        ]
    }
}

/// `~2.5 h`, or `~12 min` below an hour.
fn duration(hours: f64) -> String {
    if hours < 1.0 {
        format!("~{:.0} min", (hours * 60.0).max(1.0))
    } else {
        format!("~{hours:.1} h")
    }
}

/// One checked pair of folders with its name (`training`, `validation`, or `folders`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckedSet {
    /// What the folders are for.
    pub name: String,
    /// The check.
    pub check: DataCheck,
}

/// The whole report of `sam-augment check`: the checked folders, the config's cost estimate
/// and its warnings, and the counts that decide the exit status.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckReport {
    /// The config, when one was given.
    pub config: Option<PathBuf>,
    /// Errors over all sets (exit status 1 when any).
    pub errors: usize,
    /// Warnings over all sets and the config.
    pub warnings: usize,
    /// The checked folders.
    pub sets: Vec<CheckedSet>,
    /// The cost estimate, when a config was given.
    pub estimate: Option<CostEstimate>,
    /// The config validator's warnings (`file:line:column: warning: key: message`) and the
    /// estimate's own (memory above the accelerator's).
    pub config_warnings: Vec<String>,
}

impl CheckReport {
    /// A report of these sets, with the config's path, estimate and warnings when there is a
    /// config.
    pub fn new(
        config: Option<PathBuf>,
        sets: Vec<CheckedSet>,
        estimate: Option<CostEstimate>,
        mut config_warnings: Vec<String>,
    ) -> CheckReport {
        if let Some(e) = estimate.as_ref().filter(|e| e.exceeds_accelerator_memory()) {
            config_warnings.push(format!(
                "warning: the estimated peak memory ~{:.1} GiB of a training step exceeds the {} GB of \
                 one {}: lower training.batch_size or training.n_objects_per_batch, or \
                 use training.activation_checkpointing; measure with `sam-train fit`",
                e.peak_memory_gib, e.accelerator_memory_gb, e.accelerator
            ));
        }
        CheckReport {
            config,
            errors: sets.iter().map(|s| s.check.summary.errors).sum(),
            warnings: sets.iter().map(|s| s.check.summary.warnings).sum::<usize>()
                + config_warnings.len(),
            sets,
            estimate,
            config_warnings,
        }
    }

    /// The console report: per set its numbers and its findings grouped by kind (at most
    /// `per_kind` messages each; the JSON file has them all), then the estimate.
    pub fn lines(&self, per_kind: usize) -> Vec<String> {
        let mut out = Vec::new();
        for set in &self.sets {
            out.extend(set_lines(set, per_kind));
        }
        if let Some(e) = &self.estimate {
            out.push("estimate (as `sam-train validate`):".to_string());
            out.extend(e.lines());
        }
        out.extend(self.config_warnings.iter().cloned());
        out.push(format!(
            "{} error(s), {} warning(s)",
            self.errors, self.warnings
        ));
        out
    }
}

fn fmt_dist(d: &Option<Distribution>, scale: f64, digits: usize, unit: &str) -> String {
    match d {
        None => "-".to_string(),
        Some(d) => format!(
            "median {:.digits$}{unit} (min {:.digits$}, max {:.digits$})",
            d.median * scale,
            d.min * scale,
            d.max * scale
        ),
    }
}

fn set_lines(set: &CheckedSet, per_kind: usize) -> Vec<String> {
    let c = &set.check;
    let s = &c.summary;
    let o = &c.options;
    let count_map = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = vec![
        format!(
            "{} data: {} / {}",
            set.name,
            c.images_dir.display(),
            c.labels_dir.display()
        ),
        format!(
            "  files:    {} pairs ({} images, {} label images); {}; {}",
            s.pairs,
            s.images,
            s.labels,
            if s.bit_depths.is_empty() {
                "-".to_string()
            } else {
                count_map(&s.bit_depths)
            },
            if s.shapes.is_empty() {
                "-".to_string()
            } else {
                count_map(&s.shapes)
            }
        ),
        format!(
            "  normalisation: lower bound (p{}) {}; upper bound (p{}) {}; range {} of the bit \
             depth",
            o.normalization.lower_percentile,
            fmt_dist(&s.lower_bounds, 1.0, 0, ""),
            o.normalization.upper_percentile,
            fmt_dist(&s.upper_bounds, 1.0, 0, ""),
            fmt_dist(&s.relative_ranges, 100.0, 1, "%"),
        ),
        format!(
            "  objects:  {} ({} per image); sizes {}; {} below {} px, {} in several pieces, {} \
             on the border; {} empty label image(s)",
            s.objects,
            fmt_dist(&s.objects_per_image, 1.0, 0, ""),
            fmt_dist(&s.object_sizes, 1.0, 0, " px"),
            s.small_objects,
            o.patch.min_object_size,
            s.multi_piece_objects,
            s.border_objects,
            s.empty_label_images
        ),
        format!(
            "  contrast: objects brighter than their surroundings in {} image(s){}; ring minus \
             object {}",
            s.bright_object_images,
            s.bright_object_share
                .map(|f| format!(" ({:.0}%)", 100.0 * f))
                .unwrap_or_default(),
            fmt_dist(&s.contrast, 1.0, 3, "")
        ),
        format!(
            "  patches:  {}x{} with >= {} object(s) of >= {} px: valid positions {}; {} image(s) \
             never give one",
            o.patch.height,
            o.patch.width,
            o.patch.min_objects,
            o.patch.min_object_size.max(1),
            fmt_dist(&s.valid_patch_share, 100.0, 1, "%"),
            s.images_without_valid_patch
        ),
    ];
    let mut i = 0;
    while i < c.findings.len() {
        let kind = c.findings[i].kind;
        let group: Vec<&Finding> = c.findings[i..]
            .iter()
            .take_while(|f| f.kind == kind)
            .collect();
        i += group.len();
        let severity = match group[0].severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        out.push(format!("{severity}: {} ({})", kind_name(kind), group.len()));
        for f in group.iter().take(per_kind) {
            out.push(format!("  {}", f.message));
        }
        if group.len() > per_kind {
            out.push(format!(
                "  ... and {} more (see the JSON report)",
                group.len() - per_kind
            ));
        }
    }
    out
}

/// The JSON name of a finding kind (`unpaired_image`, ...).
pub fn kind_name(kind: FindingKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{kind:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_follow_the_config_as_training_does() {
        let mut cfg = crate::tests::minimal_config();
        cfg.data.patch_shape = [256, 384];
        cfg.data.min_objects_per_patch = 0;
        cfg.data.min_object_size = 12;
        cfg.data.image_shape = [1024, 2048];
        cfg.data.normalization.upper_percentile = 99.5;
        let o = check_options(&cfg);
        assert_eq!((o.patch.height, o.patch.width), (256, 384));
        // training asks for at least one object
        assert_eq!(o.patch.min_objects, 1);
        assert_eq!(o.patch.min_object_size, 12);
        assert_eq!(o.patch.max_attempts, PatchConfig::default().max_attempts);
        assert_eq!(o.normalization.upper_percentile, 99.5);
        assert_eq!(o.expected_shape, Some((1024, 2048)));
        let sets = config_folders(&cfg, Path::new("/repo"));
        assert_eq!(sets.len(), 1);
        assert_eq!(
            sets[0].1,
            PathBuf::from("/repo/dat/augmented_training_data/images")
        );
    }

    #[test]
    fn the_estimate_is_the_validators() {
        let cfg = crate::tests::minimal_config();
        let wall = cfg.estimate_wall_time(Some(120));
        let e = CostEstimate::new(&cfg, Some(&wall));
        assert_eq!(e.hours, wall.hours);
        assert_eq!(e.train_images, 120);
        assert!(e.images_counted);
        let world = cfg.distributed.world_size().max(1);
        assert_eq!(e.accelerator_hours, wall.hours * f64::from(world));
        let mem = cfg.estimate_peak_memory();
        assert_eq!(
            e.peak_memory_gib * (1u64 << 30) as f64,
            mem.peak_bytes as f64
        );
        assert_eq!(kind_name(FindingKind::UnpairedImage), "unpaired_image");
    }

    #[test]
    fn a_step_larger_than_the_gpu_is_a_warning() {
        let mut cfg = crate::tests::minimal_config();
        cfg.hardware.accelerator = sam_config::Accelerator::A40;
        cfg.training.device = sam_config::Device::Cuda;
        let fits = CostEstimate::new(&cfg, None);
        cfg.training.batch_size = 64;
        let too_big = CostEstimate::new(&cfg, None);
        assert!(!fits.exceeds_accelerator_memory(), "{fits:?}");
        assert!(too_big.exceeds_accelerator_memory(), "{too_big:?}");
        assert_eq!(too_big.accelerator_memory_gb, 48);
        let report = CheckReport::new(None, Vec::new(), Some(too_big), Vec::new());
        assert_eq!(report.warnings, 1);
        assert!(report.config_warnings[0].contains("exceeds the 48 GB of one a40"));
        assert!(report
            .lines(10)
            .iter()
            .any(|l| l.contains("per GPU (a40 has 48 GB)")));
    }
}
