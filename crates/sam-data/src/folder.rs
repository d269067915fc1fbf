//! Offline augmentation of a whole dataset folder, with a manifest.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::augment::{augment_pair, AppliedOp, AugmentConfig};
use crate::error::{DataError, Result};
use crate::io::{pair_by_stem, read_pair, write_atomic, write_image, write_labels};
use crate::labels::object_stats;
use crate::rng::derive_seed;

/// One offline augmentation run: source images and labels (paired by stem) to output images
/// and labels plus a manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AugmentJob {
    /// Source images (never written to).
    pub source_images: PathBuf,
    /// Source labels (never written to).
    pub source_labels: PathBuf,
    /// Where images are written.
    pub output_images: PathBuf,
    /// Where labels are written.
    pub output_labels: PathBuf,
    /// The manifest file (JSON).
    pub manifest: PathBuf,
    /// Augmented copies per source image.
    pub copies: usize,
    /// Base seed; output (image i, copy c) uses a seed derived from (seed, i, c).
    pub seed: u64,
    /// Also write each source pair unchanged (as `<stem>.tif`), so the output is a complete
    /// training set.
    pub keep_originals: bool,
    /// Replace the contents of a non-empty destination instead of refusing.
    pub overwrite: bool,
    /// The operations.
    pub config: AugmentConfig,
}

/// Reports progress of long work; the library never prints.
pub trait Progress: Sync {
    /// The total number of steps is known.
    fn start(&self, _total: u64) {}
    /// One step is done.
    fn advance(&self) {}
}

/// No progress reporting.
impl Progress for () {}

/// What an augmentation run did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AugmentSummary {
    /// Source pairs read.
    pub sources: usize,
    /// Pairs written (originals included).
    pub outputs: usize,
    /// Objects in all source label images.
    pub source_objects: usize,
    /// Objects in all written label images.
    pub output_objects: usize,
    /// The manifest file.
    pub manifest: PathBuf,
}

/// One line of the manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    /// Written image.
    pub image: String,
    /// Written labels.
    pub labels: String,
    /// Source image path.
    pub source_image: String,
    /// Source labels path.
    pub source_labels: String,
    /// Index of the source pair (sorted by stem).
    pub source_index: usize,
    /// 0 for the unchanged original, 1.. for augmented copies.
    pub copy: usize,
    /// The seed this output was drawn with.
    pub seed: u64,
    /// The operations with their drawn parameters, in order.
    pub ops: Vec<AppliedOp>,
    /// Objects in the written labels.
    pub objects: usize,
}

/// The manifest written next to the outputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The job (input, output, copies, seed, configuration).
    pub job: AugmentJob,
    /// One entry per written pair, in (source, copy) order.
    pub outputs: Vec<ManifestEntry>,
}

impl AugmentJob {
    /// The folder layout `input/{images,labels}` to `output/{images,labels}` +
    /// `output/manifest.json`, with the default operations, originals kept, no overwrite.
    pub fn from_folders(
        input: impl AsRef<Path>,
        output: impl AsRef<Path>,
        copies: usize,
        seed: u64,
    ) -> Self {
        let (input, output) = (input.as_ref(), output.as_ref());
        AugmentJob {
            source_images: input.join("images"),
            source_labels: input.join("labels"),
            output_images: output.join("images"),
            output_labels: output.join("labels"),
            manifest: output.join("manifest.json"),
            copies,
            seed,
            keep_originals: true,
            overwrite: false,
            config: AugmentConfig::default(),
        }
    }
}

fn canonical(p: &Path, action: &'static str) -> Result<PathBuf> {
    p.canonicalize().map_err(|e| DataError::io(p, action, e))
}

/// The absolute, symlink-free form of a path that may not exist yet: its nearest existing
/// ancestor canonicalised, plus the rest.
fn resolve(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| DataError::io(p, "resolve", e))?
            .join(p)
    };
    let mut base = abs.as_path();
    let mut rest = Vec::new();
    while !base.exists() {
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                base = parent;
            }
            _ => break,
        }
    }
    let mut out = canonical(base, "resolve")?;
    for r in rest.iter().rev() {
        out.push(r);
    }
    Ok(out)
}

/// Checks and prepares the destination: outside the sources, empty unless `overwrite`.
fn prepare_destination(job: &AugmentJob) -> Result<()> {
    let sources = [
        canonical(&job.source_images, "open source folder")?,
        canonical(&job.source_labels, "open source folder")?,
    ];
    // decide before creating anything, so a refused output leaves no trace in the source
    let outs = [resolve(&job.output_images)?, resolve(&job.output_labels)?];
    if outs[0] == outs[1] {
        return Err(DataError::Destination {
            path: job.output_images.clone(),
            reason:
                "images and labels would be written to the same folder; give them separate folders"
                    .into(),
        });
    }
    for (out, given) in outs.iter().zip([&job.output_images, &job.output_labels]) {
        if let Some(src) = sources.iter().find(|s| out.starts_with(s)) {
            return Err(DataError::Destination {
                path: given.clone(),
                reason: format!(
                    "the output folder lies inside the source folder {}; source data is never written to, choose another output",
                    src.display()
                ),
            });
        }
    }
    for d in [&job.output_images, &job.output_labels] {
        std::fs::create_dir_all(d).map_err(|e| DataError::io(d, "create", e))?;
    }
    let mut existing = Vec::new();
    for d in &outs {
        for e in std::fs::read_dir(d).map_err(|e| DataError::io(d, "list", e))? {
            existing.push(e.map_err(|e| DataError::io(d, "list", e))?.path());
        }
    }
    if job.manifest.exists() {
        existing.push(job.manifest.clone());
    }
    if !existing.is_empty() {
        if !job.overwrite {
            return Err(DataError::Destination {
                path: job.output_images.clone(),
                reason: format!(
                    "destination is not empty ({} entries in {}, {} or {}); pass --overwrite to replace them or choose an empty folder",
                    existing.len(),
                    job.output_images.display(),
                    job.output_labels.display(),
                    job.manifest.display()
                ),
            });
        }
        for p in existing {
            if p.is_file() {
                std::fs::remove_file(&p).map_err(|e| DataError::io(&p, "remove", e))?;
            }
        }
    }
    if let Some(parent) = job.manifest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, "create", e))?;
    }
    Ok(())
}

/// Runs an augmentation job: pairs the source images and labels by stem, writes
/// `copies` augmented versions of each (and the originals when asked) as deflate TIFFs, and a
/// manifest. Images run in parallel (rayon); each output's seed comes from (seed, source
/// index, copy), so the outputs are byte-identical for the same job on any thread count.
/// Every file is written atomically.
pub fn augment_folder(job: &AugmentJob, progress: &dyn Progress) -> Result<AugmentSummary> {
    job.config.validate()?;
    let pairs = pair_by_stem(&job.source_images, &job.source_labels)?;
    prepare_destination(job)?;
    let first = usize::from(!job.keep_originals);
    let per_source = job.copies + 1 - first;
    progress.start((pairs.len() * per_source) as u64);
    let source_objects = AtomicUsize::new(0);
    let mut entries: Vec<ManifestEntry> = pairs
        .par_iter()
        .enumerate()
        .map(|(si, pair)| -> Result<Vec<ManifestEntry>> {
            let (image, labels) = read_pair(pair)?;
            source_objects.fetch_add(object_stats(&labels).len(), Ordering::Relaxed);
            (first..=job.copies)
                .into_par_iter()
                .map(|copy| {
                    let seed = derive_seed(job.seed, &[si as u64, copy as u64]);
                    let (img, lab, ops) = if copy == 0 {
                        (image.clone(), labels.clone(), Vec::new())
                    } else {
                        let a = augment_pair(&image, &labels, &job.config, seed)?;
                        (a.image, a.labels, a.ops)
                    };
                    let name = if copy == 0 {
                        pair.stem.clone()
                    } else {
                        format!("{}_aug{copy:03}", pair.stem)
                    };
                    let out_image = job.output_images.join(format!("{name}.tif"));
                    let out_labels = job.output_labels.join(format!("{name}.tif"));
                    write_image(&out_image, &img)?;
                    write_labels(&out_labels, &lab)?;
                    progress.advance();
                    Ok(ManifestEntry {
                        image: out_image.display().to_string(),
                        labels: out_labels.display().to_string(),
                        source_image: pair.image.display().to_string(),
                        source_labels: pair.labels.display().to_string(),
                        source_index: si,
                        copy,
                        seed,
                        ops,
                        objects: object_stats(&lab).len(),
                    })
                })
                .collect()
        })
        .collect::<Result<Vec<Vec<_>>>>()?
        .into_iter()
        .flatten()
        .collect();
    entries.sort_by_key(|e| (e.source_index, e.copy));
    let output_objects = entries.iter().map(|e| e.objects).sum();
    let outputs = entries.len();
    let manifest_path = job.manifest.clone();
    let manifest = Manifest {
        job: job.clone(),
        outputs: entries,
    };
    write_atomic(&manifest_path, |w| {
        serde_json::to_writer_pretty(&mut *w, &manifest).map_err(|e| DataError::Encode {
            path: manifest_path.clone(),
            format: "JSON",
            reason: e.to_string(),
        })
    })?;
    Ok(AugmentSummary {
        sources: pairs.len(),
        outputs,
        source_objects: source_objects.into_inner(),
        output_objects,
        manifest: manifest_path,
    })
}
