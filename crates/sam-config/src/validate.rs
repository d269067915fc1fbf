//! Semantic validation: ranges, consistency between sections, accelerator presets, cluster
//! limits, the wall-time estimate and (optionally) the file system.

use std::path::{Component, Path, PathBuf};

use crate::cluster::{
    parse_slurm_memory_gb, parse_slurm_time, Accelerator, Backend, MAX_GPUS_PER_NODE,
    MAX_MEMORY_GB, MAX_NODES, MAX_WALL_TIME_SECONDS,
};
use crate::diagnostics::{did_you_mean, Problem};
use crate::estimate::WallTimeEstimate;
use crate::evaluation::{GridRange, InferenceConfig, InferenceMode};
use crate::experiment::{AugmentationConfig, ExperimentConfig, NormalizationConfig, RangeOp};
use crate::model::{Backbone, CheckpointSource, PeftBlocks, PeftMethod};
use crate::paths::find_root;
use crate::training::{ActivationCheckpointing, Device, Precision, SchedulerKind};

/// The top-level state-dict prefixes that `model.freeze` may start with.
pub const FREEZE_ROOTS: [&str; 4] = ["image_encoder", "prompt_encoder", "mask_decoder", "decoder"];

/// How [`ExperimentConfig::protected_folders`] names the config file's own folder.
const CONFIG_FILE_FOLDER: &str = "the folder of this config file";

/// Image file extensions counted in data folders.
const IMAGE_EXTENSIONS: [&str; 5] = ["tif", "tiff", "png", "jpg", "jpeg"];

/// What [`ExperimentConfig::validate`] checks besides the values themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateOptions {
    /// Check that data folders and checkpoint files exist (missing training or validation
    /// folders and checkpoint files are errors; missing augmentation sources and test folders
    /// are warnings). Turn off to validate a config before its data exists.
    pub check_paths: bool,
    /// Repository root for relative paths; `None`: found as described in `RunPaths`.
    pub root: Option<PathBuf>,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        Self {
            check_paths: true,
            root: None,
        }
    }
}

impl ValidateOptions {
    /// Options that skip every file-system check.
    pub fn without_path_checks() -> Self {
        Self {
            check_paths: false,
            root: None,
        }
    }
}

/// Everything validation found. A config is usable when `errors` is empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Problems that make the config unusable.
    pub errors: Vec<Problem>,
    /// Problems worth a look that do not stop a run.
    pub warnings: Vec<Problem>,
    /// The wall-time estimate of the run.
    pub wall_time: Option<WallTimeEstimate>,
}

impl Report {
    /// True when there are no errors.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

struct Checker {
    report: Report,
}

impl Checker {
    fn err(&mut self, key: &str, msg: impl Into<String>) {
        self.report.errors.push(Problem::new(key, msg));
    }

    fn err_hint(&mut self, key: &str, msg: impl Into<String>, hint: Option<String>) {
        self.report
            .errors
            .push(Problem::new(key, msg).suggest(hint));
    }

    fn warn(&mut self, key: &str, msg: impl Into<String>) {
        self.report.warnings.push(Problem::new(key, msg));
    }

    fn at_least<T: PartialOrd + std::fmt::Display>(&mut self, key: &str, v: T, min: T) {
        if v < min {
            self.err(key, format!("must be at least {min}, found {v}"));
        }
    }

    fn at_most<T: PartialOrd + std::fmt::Display>(&mut self, key: &str, v: T, max: T, why: &str) {
        if v > max {
            self.err(key, format!("must be at most {max}{why}, found {v}"));
        }
    }

    /// `low <= v <= high` (inclusive), finite.
    fn within(&mut self, key: &str, v: f64, low: f64, high: f64) {
        if !(v.is_finite() && v >= low && v <= high) {
            self.err(key, format!("must be between {low} and {high}, found {v}"));
        }
    }

    fn positive(&mut self, key: &str, v: f64) {
        if !(v.is_finite() && v > 0.0) {
            self.err(key, format!("must be greater than 0, found {v}"));
        }
    }

    fn non_negative(&mut self, key: &str, v: f64) {
        if !(v.is_finite() && v >= 0.0) {
            self.err(key, format!("must be 0 or more, found {v}"));
        }
    }

    fn name(&mut self, key: &str, v: &str) {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if v.is_empty() {
            self.err(key, "must not be empty");
        } else if v.starts_with('.') || !v.chars().all(ok_char) {
            self.err(
                key,
                format!(
                    "`{v}` must use only letters, digits, `_`, `-` and `.` and not start with `.`"
                ),
            );
        }
    }

    fn range_op(&mut self, key: &str, op: &RangeOp, low: f64, high: f64) {
        self.within(&format!("{key}.probability"), op.probability, 0.0, 1.0);
        let [a, b] = op.range;
        let rk = format!("{key}.range");
        if !(a.is_finite() && b.is_finite() && a >= low && b <= high) {
            self.err(
                &rk,
                format!("values must lie in [{low}, {high}], found [{a}, {b}]"),
            );
        } else if a > b {
            self.err(
                &rk,
                format!("must be [low, high] with low <= high, found [{a}, {b}]"),
            );
        }
    }

    fn grid(&mut self, key: &str, g: &GridRange, low: f64, high: f64) {
        if !(g.step.is_finite() && g.step > 0.0) {
            self.err(
                &format!("{key}.step"),
                format!("must be greater than 0, found {}", g.step),
            );
        }
        if g.start > g.stop {
            self.err(
                &format!("{key}.stop"),
                format!("must be at least start ({}), found {}", g.start, g.stop),
            );
        }
        for (k, v) in [("start", g.start), ("stop", g.stop)] {
            self.within(&format!("{key}.{k}"), v, low, high);
        }
    }
}

fn count_images(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    let n = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.path()
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
        })
        .count();
    Some(n as u64)
}

/// `p` with `.` dropped and `..` applied to the component before it (no file-system access).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// `p` with symlinks resolved in its longest existing ancestor (the rest kept as written).
fn through_links(p: &Path) -> PathBuf {
    let mut tail = Vec::new();
    let mut head = p;
    loop {
        if let Ok(real) = std::fs::canonicalize(head) {
            return tail.iter().rev().fold(real, |acc, c| acc.join(c));
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                head = parent;
            }
            _ => return p.to_path_buf(),
        }
    }
}

fn normalise(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

impl ExperimentConfig {
    /// Check every value and every relation between values; collect every problem with its
    /// dotted key. Never fails early, never prints.
    pub fn validate(&self, options: &ValidateOptions) -> Report {
        self.validate_in(options, None)
    }

    /// [`Self::validate`] for a config read from a file in `config_dir` (a folder the run's
    /// output must stay clear of).
    pub(crate) fn validate_in(
        &self,
        options: &ValidateOptions,
        config_dir: Option<&Path>,
    ) -> Report {
        let mut c = Checker {
            report: Report::default(),
        };
        self.check_top(&mut c);
        self.check_output_dir(&mut c, options, config_dir);
        self.check_data(&mut c);
        self.check_augmentation(&mut c);
        self.check_model(&mut c);
        self.check_training(&mut c);
        self.check_cluster(&mut c);
        self.check_evaluation(&mut c);
        self.check_inference(&mut c);
        let counted = if options.check_paths {
            self.check_paths(&mut c, options)
        } else {
            None
        };
        self.check_wall_time(&mut c, counted);
        c.report
    }

    fn check_top(&self, c: &mut Checker) {
        c.name("experiment_name", &self.experiment_name);
        c.name("checkpoint_name", &self.checkpoint_name);
        if self.output_base_dir.as_os_str().is_empty() {
            c.err("output_base_dir", "must not be empty (normally `runs`)");
        }
        let e = &self.export_path;
        let key = "export_path";
        let first = e.components().next();
        if e.is_absolute() || first != Some(Component::Normal("final_models".as_ref())) {
            c.err(
                key,
                format!(
                    "must lie under `final_models/` (relative to the repository root), found `{}`",
                    e.display()
                ),
            );
        } else if e.components().any(|x| matches!(x, Component::ParentDir)) {
            c.err(
                key,
                format!("must not contain `..`, found `{}`", e.display()),
            );
        }
        let file = e.file_name().and_then(|f| f.to_str()).unwrap_or_default();
        if !self.experiment_name.is_empty() && !file.contains(&self.experiment_name) {
            c.err(
                key,
                format!(
                    "file name `{file}` must contain the experiment name `{}`",
                    self.experiment_name
                ),
            );
        }
        if !matches!(e.extension().and_then(|x| x.to_str()), Some("pt" | "pth")) {
            c.err(
                key,
                format!("must end in `.pt` or `.pth`, found `{}`", e.display()),
            );
        }
    }

    /// The folders a run folder must never overlap: `--overwrite` deletes run folders, so
    /// `output_base_dir` may not be, contain or lie inside a data, model or config folder.
    /// Compared lexically (`..` resolved) against the root, and through symlinks when the
    /// file system is checked.
    fn protected_folders(&self, config_dir: Option<&Path>) -> Vec<(String, PathBuf)> {
        let d = &self.data;
        let a = &self.augmentation;
        let e = &self.evaluation;
        let mut out: Vec<(String, PathBuf)> = vec![
            ("data.train_images_dir".into(), d.train_images_dir.clone()),
            ("data.train_labels_dir".into(), d.train_labels_dir.clone()),
            (
                "augmentation.source_images_dir".into(),
                a.source_images_dir.clone(),
            ),
            (
                "augmentation.source_labels_dir".into(),
                a.source_labels_dir.clone(),
            ),
            (
                "augmentation.output_images_dir".into(),
                a.output_images_dir.clone(),
            ),
            (
                "augmentation.output_labels_dir".into(),
                a.output_labels_dir.clone(),
            ),
            (
                "evaluation.test_images_dir".into(),
                e.test_images_dir.clone(),
            ),
            (
                "evaluation.test_labels_dir".into(),
                e.test_labels_dir.clone(),
            ),
        ];
        for (k, p) in [
            ("data.validation.images_dir", &d.validation.images_dir),
            ("data.validation.labels_dir", &d.validation.labels_dir),
        ] {
            if let Some(p) = p {
                out.push((k.into(), p.clone()));
            }
        }
        if let CheckpointSource::Path(p) = self.model.checkpoint_source() {
            if let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
                out.push((
                    "the folder of model.checkpoint".into(),
                    parent.to_path_buf(),
                ));
            }
        }
        if let Some(parent) = self.export_path.parent() {
            out.push(("the folder of export_path".into(), parent.to_path_buf()));
        }
        out.push(("the repository's data folder".into(), PathBuf::from("dat")));
        out.push((
            "the repository's config folder".into(),
            PathBuf::from("configs"),
        ));
        out.retain(|(_, p)| !p.as_os_str().is_empty());
        if let Some(dir) = config_dir {
            out.push((CONFIG_FILE_FOLDER.into(), dir.to_path_buf()));
        }
        out
    }

    fn check_output_dir(
        &self,
        c: &mut Checker,
        options: &ValidateOptions,
        config_dir: Option<&Path>,
    ) {
        if self.output_base_dir.as_os_str().is_empty() {
            return; // reported by check_top
        }
        // Without a known root, relative paths are compared among themselves.
        let known_root = options
            .root
            .clone()
            .or_else(|| options.check_paths.then(|| find_root(None).ok()).flatten());
        let root = known_root
            .clone()
            .unwrap_or_else(|| PathBuf::from("/<repository root>"));
        let resolve = |p: &Path| -> PathBuf {
            let joined = lexical(&root.join(p));
            if options.check_paths {
                through_links(&joined)
            } else {
                joined
            }
        };
        let out = resolve(&self.output_base_dir);
        let run_dir = out.join(&self.experiment_name);
        let shown = self.output_base_dir.display();
        for (what, folder) in self.protected_folders(config_dir) {
            let full = resolve(&folder);
            let config_file = what == CONFIG_FILE_FOLDER;
            // A config beside the repository's folders, or the copy a run saved of itself
            // (`runs/<experiment>/config.yaml`, read again by sam-eval), is not at risk.
            if config_file && (full == resolve(Path::new("")) || full == run_dir) {
                continue;
            }
            let relation = if out == full {
                "is"
            } else if full.starts_with(&out) {
                "contains"
            } else if out.starts_with(&full) && !config_file {
                "lies inside"
            } else {
                continue;
            };
            let what = if what.contains(' ') {
                format!("{what} `{}`", folder.display())
            } else {
                format!("`{}` ({what})", folder.display())
            };
            let resolved = if known_root.is_some() || self.output_base_dir.is_absolute() {
                format!(" ({})", out.display())
            } else {
                String::new()
            };
            c.err(
                "output_base_dir",
                format!(
                    "`{shown}`{resolved} {relation} {what}: run folders are written and, with \
                     --overwrite, deleted there; use a folder of its own such as `runs`"
                ),
            );
            return;
        }
    }

    fn check_data(&self, c: &mut Checker) {
        let d = &self.data;
        for (k, p) in [
            ("data.train_images_dir", &d.train_images_dir),
            ("data.train_labels_dir", &d.train_labels_dir),
        ] {
            if p.as_os_str().is_empty() {
                c.err(k, "must not be empty");
            }
        }
        if d.train_images_dir == d.train_labels_dir {
            c.err(
                "data.train_labels_dir",
                "must differ from `data.train_images_dir`",
            );
        }
        let v = &d.validation;
        match (&v.images_dir, &v.labels_dir, v.fraction) {
            (Some(_), None, _) => c.err(
                "data.validation.labels_dir",
                "must be set when `data.validation.images_dir` is set",
            ),
            (None, Some(_), _) => c.err(
                "data.validation.images_dir",
                "must be set when `data.validation.labels_dir` is set",
            ),
            (Some(_), Some(_), Some(f)) => c.err(
                "data.validation.fraction",
                format!("must be null when validation folders are given, found {f}"),
            ),
            (None, None, None) => c.err(
                "data.validation.fraction",
                "must be set (e.g. 0.1) when no validation folders are given",
            ),
            (None, None, Some(f)) => {
                if !(f > 0.0 && f < 1.0) {
                    c.err(
                        "data.validation.fraction",
                        format!("must be between 0 and 1 (exclusive), found {f}"),
                    );
                } else if f > 0.5 {
                    c.warn(
                        "data.validation.fraction",
                        format!("holds out {f} of the training images: more than half"),
                    );
                }
            }
            (Some(i), Some(l), None) => {
                if i == l {
                    c.err(
                        "data.validation.labels_dir",
                        "must differ from `images_dir`",
                    );
                }
                if *i == d.train_images_dir {
                    c.warn(
                        "data.validation.images_dir",
                        "is the training image folder: validation would not be held out",
                    );
                }
            }
        }
        for (i, side) in ["height", "width"].iter().enumerate() {
            c.at_least(&format!("data.image_shape[{i}]"), d.image_shape[i], 1);
            c.at_least(&format!("data.patch_shape[{i}]"), d.patch_shape[i], 1);
            if d.patch_shape[i] > d.image_shape[i] {
                c.err(
                    &format!("data.patch_shape[{i}]"),
                    format!(
                        "patch {side} {} is larger than the image {side} {} (`data.image_shape`)",
                        d.patch_shape[i], d.image_shape[i]
                    ),
                );
            }
        }
        if d.min_objects_per_patch == 0 {
            // The training step prompts objects of every patch: a background patch gives it
            // nothing to prompt (micro_sam's MinInstanceSampler also requires one).
            c.err(
                "data.min_objects_per_patch",
                "must be at least 1, found 0: every training patch is prompted with its objects, \
                 so a patch without objects cannot be trained on (images without objects are \
                 skipped with a warning)",
            );
        }
        if let Some(n) = d.samples_per_epoch {
            c.at_least("data.samples_per_epoch", n, 1);
        }
        d.normalization.check(c);
        c.at_least("data.prefetch_batches", d.prefetch_batches, 1);
        let preset = self.hardware.accelerator.preset();
        if d.num_workers > preset.max_num_workers {
            c.err(
                "data.num_workers",
                format!(
                    "must be at most {} on {} ({}), found {}",
                    preset.max_num_workers, self.hardware.accelerator, preset.reason, d.num_workers
                ),
            );
        }
    }

    fn check_augmentation(&self, c: &mut Checker) {
        self.augmentation.check(c);
    }

    fn check_model(&self, c: &mut Checker) {
        let m = &self.model;
        match m.checkpoint_source() {
            CheckpointSource::ModelName(name) => {
                let family = &name[..5.min(name.len())];
                if family != m.backbone.as_str() {
                    c.err(
                        "model.checkpoint",
                        format!(
                            "micro_sam model `{name}` is a {family} model but model.backbone is {}",
                            m.backbone
                        ),
                    );
                }
            }
            CheckpointSource::Path(p) => {
                if p.as_os_str().is_empty() {
                    c.err(
                        "model.checkpoint",
                        "must not be empty (null for random weights)",
                    );
                } else if !matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("pth" | "pt" | "safetensors")
                ) {
                    let hint = did_you_mean(
                        &p.to_string_lossy(),
                        [
                            "vit_t", "vit_b", "vit_l", "vit_h", "vit_t_lm", "vit_b_lm", "vit_l_lm",
                        ],
                    );
                    c.err_hint(
                        "model.checkpoint",
                        format!(
                            "`{}` is neither a micro_sam model name (vit_b, vit_b_lm, …) nor a \
                             .pth/.pt/.safetensors file",
                            p.display()
                        ),
                        hint,
                    );
                }
            }
            CheckpointSource::Random => {
                if m.architecture.is_none() {
                    c.warn(
                        "model.checkpoint",
                        "is null: the full-size model starts from random weights",
                    );
                }
            }
        }
        let mut seen = Vec::new();
        for (i, f) in m.freeze.iter().enumerate() {
            let key = format!("model.freeze[{i}]");
            let root = f.split('.').next().unwrap_or_default();
            if !FREEZE_ROOTS.contains(&root) {
                c.err_hint(
                    &key,
                    format!(
                        "`{f}` must start with one of {}",
                        FREEZE_ROOTS.map(|r| format!("`{r}`")).join(", ")
                    ),
                    did_you_mean(root, FREEZE_ROOTS),
                );
            } else if root == "decoder" && !m.with_segmentation_decoder {
                c.err(
                    &key,
                    "freezes the segmentation decoder, but with_segmentation_decoder is false",
                );
            }
            if seen.contains(&f) {
                c.warn(&key, format!("`{f}` is listed twice"));
            }
            seen.push(f);
        }
        let sam_parts = ["image_encoder", "prompt_encoder", "mask_decoder"];
        let all_sam = sam_parts.iter().all(|p| m.freeze.iter().any(|f| f == p));
        let decoder_trains =
            m.with_segmentation_decoder && !m.freeze.iter().any(|f| f == "decoder");
        if all_sam && !decoder_trains {
            c.err(
                "model.freeze",
                "freezes every part of the model: nothing is left to train",
            );
        }
        if m.encoder_input == crate::EncoderInput::Native && m.backbone == Backbone::VitT {
            c.err(
                "model.encoder_input",
                "native applies to ViT encoders only; vit_t (TinyViT, MobileSAM) runs at its \
                 1024 px input: use 1024 or a vit_b/vit_l/vit_h backbone",
            );
        }
        self.check_architecture(c);
        self.check_peft(c);
    }

    fn check_peft(&self, c: &mut Checker) {
        let m = &self.model;
        let Some(p) = m.active_peft() else { return };
        if m.backbone == Backbone::VitT {
            c.err(
                "model.peft",
                "needs a ViT backbone (vit_b, vit_l, vit_h): micro_sam has no PEFT for vit_t",
            );
            return;
        }
        let depth = m.resolved_architecture().encoder_depth;
        match (p.method, p.rank) {
            (PeftMethod::Lora | PeftMethod::Fact, None | Some(0)) => c.err(
                "model.peft.rank",
                format!("{:?} needs a rank ≥ 1 (e.g. rank: 4)", p.method).to_lowercase(),
            ),
            (PeftMethod::Ssf, Some(_)) => c.warn("model.peft.rank", "is ignored by ssf"),
            _ => {}
        }
        if !(p.alpha.is_finite() && p.alpha > 0.0) {
            c.err("model.peft.alpha", format!("must be > 0, got {}", p.alpha));
        } else if p.alpha != 1.0 && p.method != PeftMethod::Lora {
            c.warn(
                "model.peft.alpha",
                format!("is ignored by {:?}", p.method).to_lowercase(),
            );
        }
        match &p.blocks {
            PeftBlocks::List(l) if l.is_empty() => {
                c.err("model.peft.blocks", "lists no block (use `all` or indexes)")
            }
            PeftBlocks::Last { last } if *last == 0 || *last > depth => c.err(
                "model.peft.blocks",
                format!("last: {last} must be between 1 and the encoder depth {depth}"),
            ),
            PeftBlocks::List(l) => {
                if let Some(b) = l.iter().find(|&&b| b >= depth) {
                    c.err(
                        "model.peft.blocks",
                        format!("block {b} does not exist: the encoder has blocks 0..{depth}"),
                    );
                }
            }
            _ => {}
        }
        if m.freeze
            .iter()
            .any(|f| f == "image_encoder" || f.starts_with("image_encoder."))
        {
            c.err(
                "model.freeze",
                "freezes image-encoder weights, but model.peft already freezes the whole image \
                 encoder and trains its adapters: remove the image_encoder entries",
            );
        }
    }

    fn check_architecture(&self, c: &mut Checker) {
        let m = &self.model;
        let Some(o) = &m.architecture else { return };
        let k = "model.architecture";
        if m.backbone == Backbone::VitT {
            let vit_only = [
                ("encoder_embed_dim", o.encoder_embed_dim.is_some()),
                ("encoder_depth", o.encoder_depth.is_some()),
                ("encoder_num_heads", o.encoder_num_heads.is_some()),
                (
                    "encoder_global_attn_indexes",
                    o.encoder_global_attn_indexes.is_some(),
                ),
                ("window_size", o.window_size.is_some()),
                ("patch_size", o.patch_size.is_some()),
                ("image_size", o.image_size.is_some()),
                ("prompt_embed_dim", o.prompt_embed_dim.is_some()),
            ];
            for (field, set) in vit_only {
                if set {
                    c.err(
                        &format!("{k}.{field}"),
                        "applies to ViT encoders only; vit_t (TinyViT, MobileSAM) has a fixed \
                         1024 px input and 256-wide prompt encoder, and takes only \
                         decoder_features",
                    );
                }
            }
            if let Some(v) = o.decoder_features {
                c.at_least(&format!("{k}.decoder_features"), v, 1);
            }
            return;
        }
        let a = m.resolved_architecture();
        c.at_least(&format!("{k}.patch_size"), a.patch_size, 1);
        c.at_least(&format!("{k}.encoder_depth"), a.encoder_depth, 1);
        c.at_least(&format!("{k}.encoder_num_heads"), a.encoder_num_heads, 1);
        c.at_least(&format!("{k}.window_size"), a.window_size, 1);
        c.at_least(&format!("{k}.prompt_embed_dim"), a.prompt_embed_dim, 1);
        c.at_least(&format!("{k}.decoder_features"), a.decoder_features, 1);
        c.at_least(&format!("{k}.encoder_embed_dim"), a.encoder_embed_dim, 1);
        if a.patch_size > 0 && a.image_size % a.patch_size != 0 {
            c.err(
                &format!("{k}.image_size"),
                format!(
                    "must be a multiple of patch_size ({}), found {}",
                    a.patch_size, a.image_size
                ),
            );
        }
        if a.encoder_num_heads > 0 && a.encoder_embed_dim % a.encoder_num_heads != 0 {
            c.err(
                &format!("{k}.encoder_num_heads"),
                format!(
                    "must divide encoder_embed_dim ({}), found {}",
                    a.encoder_embed_dim, a.encoder_num_heads
                ),
            );
        }
        let idx = &a.encoder_global_attn_indexes;
        for (i, &g) in idx.iter().enumerate() {
            let key = format!("{k}.encoder_global_attn_indexes[{i}]");
            if g >= a.encoder_depth {
                c.err(
                    &key,
                    format!(
                        "block {g} does not exist: encoder_depth is {}",
                        a.encoder_depth
                    ),
                );
            }
            if i > 0 && g <= idx[i - 1] {
                c.err(&key, "indexes must be strictly increasing");
            }
        }
        if !matches!(m.checkpoint_source(), CheckpointSource::Random) {
            c.warn(
                k,
                "overrides the architecture while a checkpoint is given: its weights must have \
                 this architecture (use `model.checkpoint: null` for random weights)",
            );
        }
    }

    fn check_training(&self, c: &mut Checker) {
        let t = &self.training;
        let k = "training";
        c.at_least("training.batch_size", t.batch_size, 1);
        c.at_least("training.gradient_accumulation", t.gradient_accumulation, 1);
        if t.activation_checkpointing != ActivationCheckpointing::None
            && self.model.backbone == Backbone::VitT
        {
            c.err(
                "training.activation_checkpointing",
                format!(
                    "`{}` applies to ViT encoders only (vit_b, vit_l, vit_h); vit_t (TinyViT) \
                     needs `none`",
                    t.activation_checkpointing
                ),
            );
        }
        c.at_least("training.n_objects_per_batch", t.n_objects_per_batch, 1);
        c.at_least("training.n_sub_iteration", t.n_sub_iteration, 1);
        c.within("training.mask_prob", t.mask_prob, 0.0, 1.0);
        c.within(
            "training.box_distortion_factor",
            t.box_distortion_factor,
            0.0,
            0.5,
        );
        // `iterations` overrides `epochs` (which has a default), so both being set is normal.
        if t.epochs.is_none() && t.iterations.is_none() {
            c.err("training.epochs", "set `epochs` or `iterations`");
        }
        if let Some(e) = t.epochs {
            c.at_least("training.epochs", e, 1);
        }
        if let Some(i) = t.iterations {
            c.at_least("training.iterations", i, 1);
        }
        c.positive("training.lr", t.lr);
        if t.lr.is_finite() && t.lr > 1e-3 {
            c.warn(
                "training.lr",
                format!("{} is far above micro_sam's 1e-5", t.lr),
            );
        }
        c.non_negative("training.weight_decay", t.weight_decay);
        for (i, b) in t.betas.iter().enumerate() {
            if !(b.is_finite() && *b >= 0.0 && *b < 1.0) {
                c.err(
                    &format!("{k}.betas[{i}]"),
                    format!("must be in [0, 1), found {b}"),
                );
            }
        }
        c.positive("training.eps", t.eps);
        let s = &t.scheduler;
        if s.kind == SchedulerKind::ReduceOnPlateau && !(s.factor > 0.0 && s.factor < 1.0) {
            c.err(
                "training.scheduler.factor",
                format!("must be between 0 and 1 (exclusive), found {}", s.factor),
            );
        }
        c.non_negative("training.scheduler.min_lr", s.min_lr);
        if s.min_lr.is_finite() && s.min_lr >= t.lr && s.kind != SchedulerKind::Constant {
            c.err(
                "training.scheduler.min_lr",
                format!("must be below training.lr ({}), found {}", t.lr, s.min_lr),
            );
        }
        if let Some(it) = t.iterations {
            if s.warmup_iterations >= it && s.warmup_iterations > 0 {
                c.err(
                    "training.scheduler.warmup_iterations",
                    format!(
                        "must be below training.iterations ({it}), found {}",
                        s.warmup_iterations
                    ),
                );
            }
        }
        if let Some(p) = t.early_stopping_patience {
            c.at_least("training.early_stopping_patience", p, 1);
            if s.kind == SchedulerKind::ReduceOnPlateau && p > 0 && p <= s.patience {
                c.warn(
                    "training.early_stopping_patience",
                    format!(
                        "{p} is not above scheduler.patience ({}): training stops before the \
                         learning rate ever drops",
                        s.patience
                    ),
                );
            }
        }
        let acc = self.hardware.accelerator;
        if !self.hardware.supports(t.precision) {
            c.err(
                "training.precision",
                format!(
                    "{} needs a GPU; hardware.accelerator is {acc}: use fp32 or bf16",
                    t.precision
                ),
            );
        }
        if t.device == Device::Cpu && !matches!(t.precision, Precision::Fp32 | Precision::Bf16) {
            c.err(
                "training.precision",
                format!(
                    "{} needs a GPU; training.device is cpu: use fp32 or bf16",
                    t.precision
                ),
            );
        }
        if t.device == Device::Cuda && acc == Accelerator::Cpu {
            c.err("training.device", "is cuda but hardware.accelerator is cpu");
        }
        if let Some(g) = t.grad_clip_norm {
            c.positive("training.grad_clip_norm", g);
        }
        c.at_least("training.max_nonfinite_steps", t.max_nonfinite_steps, 1);
        c.non_negative("training.focal_loss_weight", t.focal_loss_weight);
        c.at_least("training.log_every_iterations", t.log_every_iterations, 1);
        c.at_least(
            "training.checkpoint_every_iterations",
            t.checkpoint_every_iterations,
            1,
        );
        if let Some(e) = t.save_every_kth_epoch {
            c.at_least("training.save_every_kth_epoch", e, 1);
        }
        c.at_least("training.validate_every_epochs", t.validate_every_epochs, 1);

        let preset = acc.preset();
        let max = preset.max_batch(self.model.backbone);
        if acc != Accelerator::Cpu && self.model.architecture.is_none() && t.batch_size > max {
            c.err(
                "training.batch_size",
                format!(
                    "must be at most {max} for {} on {acc} ({}), found {}",
                    self.model.backbone, preset.reason, t.batch_size
                ),
            );
        }
    }

    fn check_cluster(&self, c: &mut Checker) {
        let d = &self.distributed;
        let acc = self.hardware.accelerator;
        c.at_least("distributed.nodes", d.nodes, 1);
        c.at_most(
            "distributed.nodes",
            d.nodes,
            MAX_NODES,
            " (nodes per job on the cluster)",
        );
        c.at_least("distributed.gpus_per_node", d.gpus_per_node, 1);
        c.at_most(
            "distributed.gpus_per_node",
            d.gpus_per_node,
            MAX_GPUS_PER_NODE,
            " (GPUs per node on the cluster)",
        );
        if d.backend == Backend::Nccl
            && (acc == Accelerator::Cpu || self.training.device == Device::Cpu)
        {
            c.err(
                "distributed.backend",
                "nccl needs GPUs; use gloo or auto on CPU",
            );
        }
        if d.backend == Backend::Gloo && acc != Accelerator::Cpu && d.world_size() > 1 {
            c.warn(
                "distributed.backend",
                "gloo between GPUs goes through host memory: slow",
            );
        }
        c.at_least("distributed.master_port", d.master_port, 1024);
        c.at_least("distributed.timeout_minutes", d.timeout_minutes, 1);

        let s = &self.slurm;
        let limit = match parse_slurm_time(&s.time_limit) {
            Ok(secs) => {
                if secs > MAX_WALL_TIME_SECONDS {
                    c.err(
                        "slurm.time_limit",
                        format!(
                            "must be at most 56:00:00 (the cluster's limit), found {}",
                            s.time_limit
                        ),
                    );
                }
                if secs == 0 {
                    c.err("slurm.time_limit", "must be longer than 0");
                }
                Some(secs)
            }
            Err(e) => {
                c.err("slurm.time_limit", e);
                None
            }
        };
        if let Some(l) = limit {
            if u64::from(s.signal_lead_seconds) >= l {
                c.err(
                    "slurm.signal_lead_seconds",
                    format!(
                        "must be shorter than the time limit ({l} s), found {}",
                        s.signal_lead_seconds
                    ),
                );
            }
        }
        if s.signal_lead_seconds < 60 {
            c.warn(
                "slurm.signal_lead_seconds",
                format!(
                    "{} s may be too short to finish a step and write a checkpoint",
                    s.signal_lead_seconds
                ),
            );
        }
        c.at_least("slurm.cpus_per_task", s.cpus_per_task, 1);
        if s.cpus_per_task < self.data.num_workers + 1 {
            c.warn(
                "slurm.cpus_per_task",
                format!(
                    "{} cores for {} loader workers and the training thread: the GPU may wait \
                     for data",
                    s.cpus_per_task, self.data.num_workers
                ),
            );
        }
        match parse_slurm_memory_gb(&s.memory) {
            Ok(gb) if gb > MAX_MEMORY_GB as f64 => c.err(
                "slurm.memory",
                format!(
                    "must be at most {MAX_MEMORY_GB}G per node, found {}",
                    s.memory
                ),
            ),
            Ok(_) => {}
            Err(e) => c.err("slurm.memory", e),
        }
        if let (Some(p), Some(want)) = (&s.partition, acc.preset().partition) {
            let other = [Accelerator::A100, Accelerator::A40]
                .into_iter()
                .find(|a| a.preset().partition == Some(p.as_str()) && *a != acc);
            if let Some(other) = other {
                c.err(
                    "slurm.partition",
                    format!(
                        "`{p}` is the {other} partition but hardware.accelerator is {acc} \
                         (its partition is `{want}`)"
                    ),
                );
            }
        }
        for (k, v) in [
            ("slurm.partition", &s.partition),
            ("slurm.job_name", &s.job_name),
        ] {
            if v.as_deref().is_some_and(str::is_empty) {
                c.err(k, "must not be empty (null for the default)");
            }
        }
    }

    fn check_evaluation(&self, c: &mut Checker) {
        let e = &self.evaluation;
        let g = &e.grid_search;
        let k = "evaluation.grid_search";
        c.grid(
            &format!("{k}.center_distance_threshold"),
            &g.center_distance_threshold,
            0.0,
            1.0,
        );
        c.grid(
            &format!("{k}.boundary_distance_threshold"),
            &g.boundary_distance_threshold,
            0.0,
            1.0,
        );
        c.grid(
            &format!("{k}.distance_smoothing"),
            &g.distance_smoothing,
            0.0,
            100.0,
        );
        c.grid(
            &format!("{k}.pred_iou_thresh"),
            &g.pred_iou_thresh,
            0.0,
            1.0,
        );
        c.grid(
            &format!("{k}.stability_score_thresh"),
            &g.stability_score_thresh,
            0.0,
            1.0,
        );
        c.grid(&format!("{k}.nms_threshold"), &g.nms_threshold, 0.0, 1.0);
        if g.min_size.is_empty() {
            c.err(&format!("{k}.min_size"), "must list at least one value");
        }
        if g.intersection_over_min.is_empty() {
            c.err(
                &format!("{k}.intersection_over_min"),
                "must list at least one value (true, false or both)",
            );
        }
        c.at_least(
            "evaluation.iterative_prompting.n_iterations",
            e.iterative_prompting.n_iterations,
            1,
        );
        if e.test_images_dir == e.test_labels_dir {
            c.err(
                "evaluation.test_labels_dir",
                "must differ from `evaluation.test_images_dir`",
            );
        }
    }

    fn check_inference(&self, c: &mut Checker) {
        let i = &self.inference;
        for (mode, name) in [(InferenceMode::Ais, "ais"), (InferenceMode::Apg, "apg")] {
            if i.mode == mode && !self.model.with_segmentation_decoder {
                c.err(
                    "inference.mode",
                    format!(
                        "{name} needs the segmentation decoder, but \
                         model.with_segmentation_decoder is false"
                    ),
                );
            }
        }
        if let Some(tile) = i.tile_shape {
            let input = self.model.resolved_architecture().image_size;
            for (ax, &side) in tile.iter().enumerate() {
                let full = u64::from(side) + 2 * u64::from(i.halo[ax]);
                if side > 0 && full > u64::from(input) {
                    c.warn(
                        &format!("inference.tile_shape[{ax}]"),
                        format!(
                            "tile {} + 2 × halo {} = {full} exceeds the model input {input}: \
                             tiles are downscaled",
                            side, i.halo[ax]
                        ),
                    );
                }
            }
        }
        i.check(c);
    }

    /// File-system checks; returns the number of training images when counted.
    fn check_paths(&self, c: &mut Checker, options: &ValidateOptions) -> Option<u64> {
        let root = match find_root(options.root.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                c.err("", format!("cannot check paths: {e}"));
                return None;
            }
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                root.join(p)
            }
        };
        let require = |c: &mut Checker, key: &str, p: &Path, error: bool| {
            let full = resolve(p);
            if full.is_dir() {
                return true;
            }
            let msg = format!("folder `{}` does not exist", full.display());
            if error {
                c.err(key, msg);
            } else {
                c.warn(key, msg);
            }
            false
        };
        let d = &self.data;
        let mut counted = None;
        if require(c, "data.train_images_dir", &d.train_images_dir, true) {
            let n = count_images(&resolve(&d.train_images_dir));
            if n == Some(0) {
                c.err(
                    "data.train_images_dir",
                    format!(
                        "folder `{}` holds no images",
                        resolve(&d.train_images_dir).display()
                    ),
                );
            }
            counted = n;
        }
        require(c, "data.train_labels_dir", &d.train_labels_dir, true);
        if let (Some(i), Some(l)) = (&d.validation.images_dir, &d.validation.labels_dir) {
            require(c, "data.validation.images_dir", i, true);
            require(c, "data.validation.labels_dir", l, true);
        }
        let a = &self.augmentation;
        require(
            c,
            "augmentation.source_images_dir",
            &a.source_images_dir,
            false,
        );
        require(
            c,
            "augmentation.source_labels_dir",
            &a.source_labels_dir,
            false,
        );
        let e = &self.evaluation;
        require(c, "evaluation.test_images_dir", &e.test_images_dir, false);
        require(c, "evaluation.test_labels_dir", &e.test_labels_dir, false);
        if let CheckpointSource::Path(p) = self.model.checkpoint_source() {
            let full = resolve(&p);
            if !full.is_file() {
                c.err(
                    "model.checkpoint",
                    format!("file `{}` does not exist", full.display()),
                );
            }
        }
        counted
    }

    fn check_wall_time(&self, c: &mut Checker, counted: Option<u64>) {
        let est = self.estimate_wall_time(counted);
        let basis = if est.images_counted {
            format!("{} training images", est.train_images)
        } else {
            format!("an assumed {} training images", est.train_images)
        };
        if est.exceeds_limit() {
            c.warn(
                "training",
                format!(
                    "ESTIMATED WALL TIME ~{:.0} h EXCEEDS THE 56 h SLURM LIMIT ({} patches per \
                     process at ~{:.2} s on {}, from {basis}): the job will be stopped and must \
                     resume from its checkpoint; reduce epochs/iterations or add GPUs",
                    est.hours,
                    est.samples_per_process,
                    est.seconds_per_sample,
                    self.hardware.accelerator
                ),
            );
        } else if let Ok(limit) = parse_slurm_time(&self.slurm.time_limit) {
            if self.hardware.accelerator != Accelerator::Cpu && est.hours * 3600.0 > limit as f64 {
                c.warn(
                    "slurm.time_limit",
                    format!(
                        "the run is estimated at ~{:.1} h, longer than {}: it will requeue and \
                         resume from its checkpoint",
                        est.hours, self.slurm.time_limit
                    ),
                );
            }
        }
        c.report.wall_time = Some(est);
    }
}

/// The checks of one section, for tools whose flags override that section of a config (or
/// stand in for it): the flags' values go through the same rules as the config's. Keys are
/// dotted as in a full config (`inference.ais.foreground_threshold`).
macro_rules! section_validate {
    ($ty:ty, $what:literal) => {
        impl $ty {
            #[doc = concat!("Check the ", $what, " section alone, with the rules ")]
            #[doc = "[`ExperimentConfig::validate`] applies to it."]
            pub fn validate(&self) -> Report {
                let mut c = Checker {
                    report: Report::default(),
                };
                self.check(&mut c);
                c.report
            }
        }
    };
}

section_validate!(InferenceConfig, "`inference`");
section_validate!(AugmentationConfig, "`augmentation`");
section_validate!(NormalizationConfig, "`data.normalization`");

impl NormalizationConfig {
    fn check(&self, c: &mut Checker) {
        let (lo, hi) = (self.lower_percentile, self.upper_percentile);
        c.within("data.normalization.lower_percentile", lo, 0.0, 100.0);
        c.within("data.normalization.upper_percentile", hi, 0.0, 100.0);
        if lo >= hi {
            c.err(
                "data.normalization.upper_percentile",
                format!("must be greater than lower_percentile ({lo}), found {hi}"),
            );
        }
    }
}

impl AugmentationConfig {
    fn check(&self, c: &mut Checker) {
        let a = self;
        if a.copies_per_image == 0 && !a.include_original {
            c.err(
                "augmentation.copies_per_image",
                "is 0 and include_original is false: augmentation would write nothing",
            );
        }
        for (out_key, out, src) in [
            (
                "augmentation.output_images_dir",
                &a.output_images_dir,
                &a.source_images_dir,
            ),
            (
                "augmentation.output_labels_dir",
                &a.output_labels_dir,
                &a.source_labels_dir,
            ),
        ] {
            if normalise(out) == normalise(src) {
                c.err(
                    out_key,
                    "must differ from the source folder: raw data is never written to",
                );
            }
        }
        let ops = &a.operations;
        let k = "augmentation.operations";
        for (name, op) in [
            ("flip_horizontal", &ops.flip_horizontal),
            ("flip_vertical", &ops.flip_vertical),
            ("rotate90", &ops.rotate90),
        ] {
            c.within(&format!("{k}.{name}.probability"), op.probability, 0.0, 1.0);
        }
        let inf = f64::INFINITY;
        c.range_op(&format!("{k}.rotation"), &ops.rotation, -180.0, 180.0);
        c.range_op(&format!("{k}.scale"), &ops.scale, 0.1, 10.0);
        c.range_op(&format!("{k}.brightness"), &ops.brightness, -1.0, 1.0);
        c.range_op(&format!("{k}.contrast"), &ops.contrast, 0.01, 100.0);
        c.range_op(&format!("{k}.gamma"), &ops.gamma, 0.01, 100.0);
        c.range_op(
            &format!("{k}.gaussian_noise"),
            &ops.gaussian_noise,
            0.0,
            1.0,
        );
        c.range_op(&format!("{k}.gaussian_blur"), &ops.gaussian_blur, 0.0, inf);
        let e = &ops.elastic;
        c.within(&format!("{k}.elastic.probability"), e.probability, 0.0, 1.0);
        c.non_negative(&format!("{k}.elastic.alpha"), e.alpha);
        c.positive(&format!("{k}.elastic.sigma"), e.sigma);
    }
}

impl InferenceConfig {
    fn check(&self, c: &mut Checker) {
        let i = self;
        if let Some(tile) = i.tile_shape {
            for (ax, &side) in tile.iter().enumerate() {
                c.at_least(&format!("inference.tile_shape[{ax}]"), side, 1);
            }
        }
        c.at_least("inference.batch_size", i.batch_size, 1);
        let a = &i.ais;
        let k = "inference.ais";
        c.within(
            &format!("{k}.center_distance_threshold"),
            a.center_distance_threshold,
            0.0,
            1.0,
        );
        c.within(
            &format!("{k}.boundary_distance_threshold"),
            a.boundary_distance_threshold,
            0.0,
            1.0,
        );
        c.within(
            &format!("{k}.foreground_threshold"),
            a.foreground_threshold,
            0.0,
            1.0,
        );
        c.non_negative(&format!("{k}.foreground_smoothing"), a.foreground_smoothing);
        c.non_negative(&format!("{k}.distance_smoothing"), a.distance_smoothing);
        let m = &i.amg;
        let k = "inference.amg";
        c.at_least(&format!("{k}.points_per_side"), m.points_per_side, 1);
        c.at_least(&format!("{k}.points_per_batch"), m.points_per_batch, 1);
        c.within(&format!("{k}.pred_iou_thresh"), m.pred_iou_thresh, 0.0, 1.0);
        c.within(
            &format!("{k}.stability_score_thresh"),
            m.stability_score_thresh,
            0.0,
            1.0,
        );
        c.non_negative(
            &format!("{k}.stability_score_offset"),
            m.stability_score_offset,
        );
        c.within(&format!("{k}.box_nms_thresh"), m.box_nms_thresh, 0.0, 1.0);
        c.within(&format!("{k}.crop_nms_thresh"), m.crop_nms_thresh, 0.0, 1.0);
        if m.crop_n_layers != 0 {
            c.err(
                &format!("{k}.crop_n_layers"),
                format!(
                    "must be 0 (image crops are not implemented: large images are tiled, see \
                     inference.tile_shape), found {}",
                    m.crop_n_layers
                ),
            );
        }
        let p = &i.apg;
        let k = "inference.apg";
        for (name, v) in [
            ("center_distance_threshold", p.center_distance_threshold),
            ("boundary_distance_threshold", p.boundary_distance_threshold),
            ("foreground_threshold", p.foreground_threshold),
            ("nms_threshold", p.nms_threshold),
        ] {
            c.within(&format!("{k}.{name}"), v, 0.0, 1.0);
        }
        c.at_least(&format!("{k}.batch_size"), p.batch_size, 1);
        if !p.mask_threshold.is_finite() {
            c.err(
                &format!("{k}.mask_threshold"),
                format!(
                    "must be a finite logit (0.0 is the model's), found {}",
                    p.mask_threshold
                ),
            );
        }
    }
}
