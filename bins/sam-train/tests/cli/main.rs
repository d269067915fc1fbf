//! Integration tests of the `sam-train` executable, one test binary (libtorch is linked once):
//! distributed training, kills and resumes, refusals ([`dist`]) and the SLURM submit script,
//! the stop marker and the thread budget ([`submit`]).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use sam_data::{synthesize, write_image, write_labels, SynthConfig};

mod dist;
mod submit;

/// The executable under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sam-train");

/// `n` synthetic 96 px images with labels in `root/data/<split>/{images,labels}`.
fn write_synth(root: &Path, split: &str, n: usize, seed: u64) {
    let images = root.join("data").join(split).join("images");
    let labels = root.join("data").join(split).join("labels");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&labels).unwrap();
    for i in 0..n {
        let s = synthesize(
            &SynthConfig {
                size: 96,
                ..SynthConfig::default()
            },
            seed + i as u64,
        );
        write_image(images.join(format!("img{i}.tif")), &s.image).unwrap();
        write_labels(labels.join(format!("img{i}.tif")), &s.labels).unwrap();
    }
}

/// A repository-like temp folder: 3 training images (`data/train`), 2 validation images
/// (`data/val`) and `yaml` written to `<name>.yaml`. Returns the folder and the config path.
pub(crate) fn repo_with_config(name: &str, yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    write_synth(dir.path(), "train", 3, 1);
    write_synth(dir.path(), "val", 2, 100);
    let config = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&config, yaml).unwrap();
    (dir, config)
}
