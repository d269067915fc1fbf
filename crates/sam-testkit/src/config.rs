//! Experiment configs for tests.

use std::path::Path;

use sam_config::{parse_config, ConfigError, ExperimentConfig, ValidateOptions};
use serde_yaml::{Mapping, Value};

use crate::Error;

/// An experiment config under construction, rendered as YAML by [`ConfigBuilder::yaml`].
///
/// [`ConfigBuilder::new`] is the minimal config that `sam_config` accepts: the four required
/// keys, one line each, in this order (tests that check diagnostic line numbers count on it):
///
/// ```yaml
/// experiment_name: exp
/// output_base_dir: runs
/// checkpoint_name: ckpt
/// export_path: final_models/exp.pt
/// ```
///
/// Typed setters cover the fields tests vary most; [`ConfigBuilder::set`] sets any other by its
/// dotted key (`"training.lr"`), creating the sections on the way. A key keeps its place when
/// set again; new keys go after the existing ones of their section. Invalid values are kept as
/// given, so that tests of the validator can build broken configs too.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigBuilder {
    root: Mapping,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigBuilder {
    /// The minimal valid config (experiment `exp`, checkpoint `ckpt`).
    pub fn new() -> Self {
        Self::named("exp").checkpoint_name("ckpt")
    }

    /// The minimal valid config of experiment `name`: output in `runs`, checkpoint `ckpt`,
    /// export to `final_models/<name>.pt`.
    pub fn named(name: &str) -> Self {
        Self {
            root: Mapping::new(),
        }
        .experiment_name(name)
        .output_base_dir("runs")
        .checkpoint_name("ckpt")
        .export_path(&format!("final_models/{name}.pt"))
    }

    /// `experiment_name` (the export path is left as it is).
    pub fn experiment_name(self, name: &str) -> Self {
        self.set("experiment_name", name)
    }

    /// `output_base_dir`.
    pub fn output_base_dir(self, dir: &str) -> Self {
        self.set("output_base_dir", dir)
    }

    /// `checkpoint_name`.
    pub fn checkpoint_name(self, name: &str) -> Self {
        self.set("checkpoint_name", name)
    }

    /// `export_path`.
    pub fn export_path(self, path: &str) -> Self {
        self.set("export_path", path)
    }

    /// `seed`.
    pub fn seed(self, seed: u64) -> Self {
        self.set("seed", seed)
    }

    /// `data.train_images_dir` and `data.train_labels_dir`.
    pub fn train_dirs(self, images: &str, labels: &str) -> Self {
        self.set("data.train_images_dir", images)
            .set("data.train_labels_dir", labels)
    }

    /// `data.validation`: the given folders, no fraction split off the training data.
    pub fn validation_dirs(self, images: &str, labels: &str) -> Self {
        self.set("data.validation.images_dir", images)
            .set("data.validation.labels_dir", labels)
            .set("data.validation.fraction", Value::Null)
    }

    /// `evaluation.test_images_dir` and `evaluation.test_labels_dir`.
    pub fn test_dirs(self, images: &str, labels: &str) -> Self {
        self.set("evaluation.test_images_dir", images)
            .set("evaluation.test_labels_dir", labels)
    }

    /// `model.with_segmentation_decoder`.
    pub fn with_decoder(self, decoder: bool) -> Self {
        self.set("model.with_segmentation_decoder", decoder)
    }

    /// `training.epochs`.
    pub fn epochs(self, epochs: u64) -> Self {
        self.set("training.epochs", epochs)
    }

    /// `training.batch_size`.
    pub fn batch_size(self, batch_size: u64) -> Self {
        self.set("training.batch_size", batch_size)
    }

    /// A run that trains in seconds on the CPU: the data of a
    /// [`SynthDataset`](crate::SynthDataset) written to `data/` with splits `train` and `val`
    /// (96 px images, 64 px patches, 4 samples per epoch, 2 loader workers), a ViT-B-shaped
    /// model of 2 blocks of width 32 on 128 px inputs without a pretrained checkpoint or
    /// decoder, batches of 2 with 3 objects and 3 prompting rounds, lr 1e-3 in fp32, logging
    /// every iteration, Gloo, a one-hour SLURM limit.
    pub fn tiny_cpu_training(self) -> Self {
        self.train_dirs("data/train/images", "data/train/labels")
            .validation_dirs("data/val/images", "data/val/labels")
            .set("data.image_shape", vec![96, 96])
            .set("data.patch_shape", vec![64, 64])
            .set("data.min_object_size", 10)
            .set("data.min_objects_per_patch", 1)
            .set("data.samples_per_epoch", 4)
            .set("data.num_workers", 2)
            .set("data.prefetch_batches", 2)
            .set("model.backbone", "vit_b")
            .set("model.checkpoint", Value::Null)
            .with_decoder(false)
            .set("model.architecture.image_size", 128)
            .set("model.architecture.patch_size", 16)
            .set("model.architecture.encoder_embed_dim", 32)
            .set("model.architecture.encoder_depth", 2)
            .set("model.architecture.encoder_num_heads", 2)
            .set("model.architecture.encoder_global_attn_indexes", vec![1])
            .set("model.architecture.window_size", 4)
            .set("model.architecture.prompt_embed_dim", 32)
            .batch_size(2)
            .set("training.n_objects_per_batch", 3)
            .set("training.n_sub_iteration", 3)
            .set("training.lr", 1.0e-3)
            .set("training.precision", "fp32")
            .set("training.device", "cpu")
            .set("training.log_every_iterations", 1)
            .set("hardware.accelerator", "cpu")
            .set("distributed.backend", "gloo")
            .set("slurm.time_limit", "01:00:00")
    }

    /// Sets the dotted `key` (`"training.lr"`, `"data.validation.fraction"`) to `value`,
    /// creating the sections on the way (a section that held a scalar becomes a mapping).
    ///
    /// # Panics
    /// If `key` is empty or has an empty part: a mistake in the test, not in data.
    #[track_caller]
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            panic!("config key `{key}` has an empty part");
        }
        let (last, sections) = parts.split_last().unwrap_or_else(|| unreachable!());
        let mut map = &mut self.root;
        for section in sections {
            let slot = map
                .entry(Value::from(*section))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if !slot.is_mapping() {
                *slot = Value::Mapping(Mapping::new());
            }
            map = match slot {
                Value::Mapping(m) => m,
                _ => unreachable!("made a mapping above"),
            };
        }
        map.insert(Value::from(*last), value.into());
        self
    }

    /// Sets the dotted `key` to a value written in YAML (`"[512, 512]"`,
    /// `"{start: 0.4, stop: 0.6, step: 0.2}"`, `"null"`).
    ///
    /// # Panics
    /// If `yaml` is not YAML: a mistake in the test, not in data.
    #[track_caller]
    pub fn set_yaml(self, key: &str, yaml: &str) -> Self {
        match serde_yaml::from_str::<Value>(yaml) {
            Ok(value) => self.set(key, value),
            Err(e) => panic!("value of `{key}` is not YAML ({e}): {yaml}"),
        }
    }

    /// Removes the dotted `key`, if present (its section stays, possibly empty).
    pub fn remove(mut self, key: &str) -> Self {
        let parts: Vec<&str> = key.split('.').collect();
        let Some((last, sections)) = parts.split_last() else {
            return self;
        };
        let mut map = &mut self.root;
        for section in sections {
            match map.get_mut(*section) {
                Some(Value::Mapping(m)) => map = m,
                _ => return self,
            }
        }
        map.remove(*last);
        self
    }

    /// The config as YAML text.
    pub fn yaml(&self) -> String {
        // A mapping of strings, numbers, booleans, null and lists always serializes.
        serde_yaml::to_string(&self.root).unwrap_or_else(|e| unreachable!("config YAML: {e}"))
    }

    /// Writes the YAML text to `path`, creating its folder.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        std::fs::write(path, self.yaml()).map_err(Error::io(path))
    }

    /// The config as `sam_config` loads it, without checking that its folders exist.
    pub fn parse(&self) -> Result<ExperimentConfig, ConfigError> {
        parse_config(&self.yaml(), None, &ValidateOptions::without_path_checks()).map(|l| l.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(config: &ConfigBuilder) -> ExperimentConfig {
        config
            .parse()
            .unwrap_or_else(|e| panic!("{}\nis invalid:\n{e}", config.yaml()))
    }

    #[test]
    fn the_default_config_is_the_four_required_keys_and_valid() {
        let config = ConfigBuilder::new();
        assert_eq!(
            config.yaml(),
            "experiment_name: exp\noutput_base_dir: runs\ncheckpoint_name: ckpt\n\
             export_path: final_models/exp.pt\n"
        );
        let cfg = parsed(&config);
        assert_eq!(cfg.experiment_name, "exp");
        assert_eq!(cfg.checkpoint_name, "ckpt");
    }

    #[test]
    fn the_tiny_cpu_training_preset_is_valid_and_settable() {
        let config = ConfigBuilder::named("t")
            .tiny_cpu_training()
            .seed(3)
            .epochs(2)
            .with_decoder(true)
            .set("training.lr", 2.0e-3)
            .set("slurm.time_limit", "02:00:00");
        let cfg = parsed(&config);
        assert_eq!(cfg.export_path, Path::new("final_models/t.pt"));
        assert_eq!(cfg.seed, 3);
        assert_eq!(cfg.training.epochs, Some(2));
        assert_eq!(cfg.training.lr, 2.0e-3);
        assert!(cfg.model.with_segmentation_decoder);
        assert_eq!(cfg.data.patch_shape, [64, 64]);
        // Setting a key again keeps its line.
        let lines: Vec<String> = config.yaml().lines().map(String::from).collect();
        assert_eq!(lines[4], "data:");
        assert!(
            lines.iter().any(|l| l == "  time_limit: 02:00:00"),
            "{lines:?}"
        );
    }

    #[test]
    fn set_yaml_remove_and_broken_values() {
        let config = ConfigBuilder::new()
            .set_yaml("inference.tile_shape", "[512, 512]")
            .set("training.batch_size", "many")
            .remove("checkpoint_name")
            .remove("no.such.key");
        let yaml = config.yaml();
        assert!(!yaml.contains("checkpoint_name"), "{yaml}");
        let err = config
            .parse()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("training.batch_size"), "{err}");
        assert!(err.contains("checkpoint_name"), "{err}");
        assert!(!err.contains("tile_shape"), "{err}");
    }

    #[test]
    fn write_creates_the_folder() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("configs/exp.yaml");
        ConfigBuilder::new()
            .write(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text, ConfigBuilder::new().yaml());
    }
}
