//! The errors of this crate: each is a usage or config error (exit status 2).

use sam_config::Problem;

/// An error of a library that this crate does not link (sam-torch's, sam-model's): the
/// torch-side helpers of `sam-cli-torch` report through [`CliError`] too.
pub type BoxedError = Box<dyn std::error::Error + Send + Sync>;

/// What stops a command before it runs: a flag or config value that breaks a rule, a device or
/// checkpoint that cannot be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Values that break the config's rules (`sam_config`), named by their config keys.
    #[error("{}", lines(.0))]
    Config(Vec<Problem>),
    /// Values that break the config's rules, named by the flags that set them (see
    /// [`CliError::name_flags`]).
    #[error("{0}")]
    Flags(String),
    /// `--device` names no device, or one this process cannot have (sam-torch's error).
    #[error("--device: {0}")]
    Device(BoxedError),
    /// `--checkpoint` is neither a file, nor a named model, nor in the model cache.
    #[error(
        "model: checkpoint `{spec}`: not a file, not in {}, and not in the model cache: {cache}",
        final_models.display()
    )]
    Checkpoint {
        /// What was given.
        spec: String,
        /// The folder of named models searched.
        final_models: std::path::PathBuf,
        /// Why the model cache has no such model (sam-model's error).
        cache: BoxedError,
    },
    /// No `--checkpoint`, and the config's export path holds no model yet.
    #[error(
        "no checkpoint at {} (the config's export_path, written when training ends): train and \
         export the model first, or pass --checkpoint FILE|NAME",
        .0.display()
    )]
    NoExport(std::path::PathBuf),
    /// The baseline of a comparison (`--baseline`, or by default the config's
    /// `model.checkpoint`) cannot be found.
    #[error("{origin} `{spec}` cannot be found; {fix}")]
    Baseline {
        /// Where the baseline was named (`--baseline`, the config's `model.checkpoint`).
        origin: &'static str,
        /// What was given.
        spec: String,
        /// How to go on.
        fix: &'static str,
        /// Why it cannot be found ([`CliError::Checkpoint`]).
        source: Box<CliError>,
    },
    /// A grid search without validation images.
    #[error("data.validation: give images_dir and labels_dir, or a fraction, for --grid-search")]
    NoValidationImages,
}

impl CliError {
    /// [`CliError::Config`] with every problem named by the flag that sets its key (`flag_of`,
    /// e.g. [`flag_of`](crate::flag_of)), one line each: `--flag: message (the rule of key in a
    /// config)`. Other errors are returned as they are.
    pub fn name_flags(self, flag_of: impl Fn(&str) -> String) -> CliError {
        match self {
            CliError::Config(problems) => {
                let lines: Vec<String> = problems
                    .iter()
                    .map(|p| {
                        let suggestion = p
                            .suggestion
                            .as_ref()
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default();
                        format!(
                            "{}: {} (the rule of {} in a config){suggestion}",
                            flag_of(&p.key),
                            p.message,
                            p.key
                        )
                    })
                    .collect();
                CliError::Flags(lines.join("\n"))
            }
            other => other,
        }
    }
}

fn lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// `Ok` when `report` holds no errors, else [`CliError::Config`] with all of them (warnings are
/// not errors).
pub fn check_rules(report: sam_config::Report) -> Result<(), CliError> {
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(CliError::Config(report.errors))
    }
}

/// The flag that sets config key `key` by the executables' naming: its last part, with
/// dashes (`inference.ais.foreground_threshold` → `--foreground-threshold`,
/// `inference.tile_shape[0]` → `--tile-shape`).
pub fn flag_of(key: &str) -> String {
    let last = key.rsplit('.').next().unwrap_or(key);
    let last = last.split('[').next().unwrap_or(last);
    format!("--{}", last.replace('_', "-"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_named_by_key_or_by_flag() {
        let mut inf = sam_config::InferenceConfig::default();
        inf.ais.foreground_threshold = 5.0;
        inf.batch_size = 0;
        let err = check_rules(inf.validate()).unwrap_err();
        let by_key = err.to_string();
        assert!(
            by_key.contains("inference.ais.foreground_threshold: must be between 0 and 1, found 5"),
            "{by_key}"
        );
        let by_flag = err.name_flags(flag_of).to_string();
        assert!(
            by_flag.contains(
                "--foreground-threshold: must be between 0 and 1, found 5 (the rule of \
                 inference.ais.foreground_threshold in a config)"
            ),
            "{by_flag}"
        );
        assert!(
            by_flag.contains("--batch-size: must be at least 1, found 0"),
            "{by_flag}"
        );
        assert_eq!(by_flag.lines().count(), 2);
        assert!(check_rules(sam_config::InferenceConfig::default().validate()).is_ok());
    }

    #[test]
    fn flags_are_the_last_part_of_the_key() {
        assert_eq!(
            flag_of("inference.amg.min_mask_region_area"),
            "--min-mask-region-area"
        );
        assert_eq!(flag_of("inference.tile_shape[0]"), "--tile-shape");
        assert_eq!(flag_of("seed"), "--seed");
    }
}
