//! Synthetic datasets on disk.

use std::path::{Path, PathBuf};

use sam_data::{synthesize, write_image, write_labels, SynthConfig};

use crate::Error;

/// One synthetic image of a split: its file name, side length and seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthImage {
    /// File name in the split's `images/` folder; the extension picks the format (`.tif`,
    /// `.png`). The label image is `<stem>.tif` in `labels/`.
    pub file_name: String,
    /// Side length in pixels (the images are square).
    pub size: usize,
    /// Seed of [`sam_data::synthesize`].
    pub seed: u64,
}

impl SynthImage {
    /// An image `file_name` of `size` × `size` pixels from `seed`.
    pub fn new(file_name: impl Into<String>, size: usize, seed: u64) -> Self {
        Self {
            file_name: file_name.into(),
            size,
            seed,
        }
    }
}

/// A synthetic dataset: for each split, images in `<root>/<split>/images` and label images in
/// `<root>/<split>/labels`, drawn by [`sam_data::synthesize`]. Nothing is written before
/// [`SynthDataset::write`].
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// use sam_testkit::{SynthDataset, SynthImage};
///
/// let data = SynthDataset::new(dir.path().join("dat"))
///     .synth_config(sam_data::SynthConfig { cells_per_512: 300.0, ..Default::default() })
///     .split("train", 2, 64, 1) // img0.tif (seed 1), img1.tif (seed 2)
///     .split_of("test", [SynthImage::new("t1.tif", 80, 1), SynthImage::new("t2.png", 96, 2)]);
/// data.write()?;
/// assert!(data.labels_dir("test").join("t2.tif").is_file());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct SynthDataset {
    root: PathBuf,
    synth: SynthConfig,
    labels: bool,
    splits: Vec<(String, Vec<SynthImage>)>,
}

impl SynthDataset {
    /// An empty dataset below `root`, with [`SynthConfig::default`] and label images.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            synth: SynthConfig::default(),
            labels: true,
            splits: Vec::new(),
        }
    }

    /// Draws every image with `config`; its `size` is replaced by each image's own.
    pub fn synth_config(mut self, config: SynthConfig) -> Self {
        self.synth = config;
        self
    }

    /// Writes images only, no `labels/` folders (input for inference).
    pub fn without_labels(mut self) -> Self {
        self.labels = false;
        self
    }

    /// Adds split `name` with `n` images `img0.tif`, `img1.tif`, … of `size` px, image `i`
    /// drawn with seed `first_seed + i`.
    pub fn split(self, name: &str, n: usize, size: usize, first_seed: u64) -> Self {
        let images =
            (0..n).map(|i| SynthImage::new(format!("img{i}.tif"), size, first_seed + i as u64));
        self.split_of(name, images)
    }

    /// Adds split `name` with the given images.
    pub fn split_of(mut self, name: &str, images: impl IntoIterator<Item = SynthImage>) -> Self {
        self.splits
            .push((name.to_owned(), images.into_iter().collect()));
        self
    }

    /// The dataset's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<split>/images`.
    pub fn images_dir(&self, split: &str) -> PathBuf {
        self.root.join(split).join("images")
    }

    /// `<root>/<split>/labels`.
    pub fn labels_dir(&self, split: &str) -> PathBuf {
        self.root.join(split).join("labels")
    }

    /// Draws and writes every image (and label image) of every split, creating the folders.
    pub fn write(&self) -> Result<(), Error> {
        for (split, images) in &self.splits {
            let image_dir = self.images_dir(split);
            std::fs::create_dir_all(&image_dir).map_err(Error::io(&image_dir))?;
            let label_dir = self.labels.then(|| self.labels_dir(split));
            if let Some(dir) = &label_dir {
                std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
            }
            for image in images {
                let sample = synthesize(
                    &SynthConfig {
                        size: image.size,
                        ..self.synth.clone()
                    },
                    image.seed,
                );
                let path = image_dir.join(&image.file_name);
                write_image(&path, &sample.image).map_err(|source| Error::Data {
                    path: path.clone(),
                    source,
                })?;
                if let Some(dir) = &label_dir {
                    let path = dir.join(Path::new(&image.file_name).with_extension("tif"));
                    write_labels(&path, &sample.labels).map_err(|source| Error::Data {
                        path: path.clone(),
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_each_split_with_its_sizes_and_seeds() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = SynthDataset::new(dir.path())
            .split("train", 2, 64, 5)
            .split_of("test", [SynthImage::new("a.png", 48, 9)]);
        data.write().unwrap_or_else(|e| panic!("{e}"));
        let read = |p: PathBuf| sam_data::read_labels(&p).unwrap_or_else(|e| panic!("{e}"));
        for (i, seed) in [(0, 5), (1, 6)] {
            let name = format!("img{i}.tif");
            let expected = synthesize(
                &SynthConfig {
                    size: 64,
                    ..Default::default()
                },
                seed,
            );
            assert_eq!(read(data.labels_dir("train").join(&name)), expected.labels);
            assert!(data.images_dir("train").join(&name).is_file());
        }
        assert!(data.images_dir("test").join("a.png").is_file());
        let expected = synthesize(
            &SynthConfig {
                size: 48,
                ..Default::default()
            },
            9,
        );
        assert_eq!(read(data.labels_dir("test").join("a.tif")), expected.labels);
    }

    #[test]
    fn without_labels_writes_images_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = SynthDataset::new(dir.path())
            .without_labels()
            .split("input", 1, 32, 0);
        data.write().unwrap_or_else(|e| panic!("{e}"));
        assert!(data.images_dir("input").join("img0.tif").is_file());
        assert!(!data.labels_dir("input").exists());
    }
}
