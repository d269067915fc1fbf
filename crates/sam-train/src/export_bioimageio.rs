//! Export to a bioimage.io model package (resource description format 0.5): the automatic
//! instance segmentation network (image encoder + UNETR decoder) as TorchScript weights, with
//! the training's percentile normalisation as the package's preprocessing, test tensors, a
//! cover picture and a README. bioimage.io tools (bioimageio.core, the BioImage Model Zoo,
//! deepImageJ, ilastik, ...) run it on a grey image of the model's input size.
//!
//! Files written into the output folder:
//! `rdf.yaml`, `ais.pt` (the weights), `test_input.npy` (`[1, 1, S, S]` raw grey image),
//! `test_output.npy` (`[1, 3, S, S]`: foreground probability, centre distance, boundary
//! distance, computed by this project's model), `cover.png`, `README.md`.

use std::fs;
use std::path::{Path, PathBuf};

use sam_data::{
    connected_components, normalization_bounds, synthesize, write_overlay_png, Connectivity,
    GreyImage, Normalization, Plane, SynthConfig,
};
use tch::{Kind, Tensor};

use crate::export_torchscript::{
    ais_output, check_output_dir, load_for_tracing, save_module, trace_ais, write_text,
    ExportNormalization,
};
use crate::TrainError;

/// The PyTorch version whose TorchScript the weights are (the libtorch this project links).
pub const PYTORCH_VERSION: &str = "2.11.0";

/// The description fields of a bioimage.io package and its test image.
#[derive(Debug, Clone, PartialEq)]
pub struct BioImageIoOptions {
    /// Replace the package's files in an output folder that holds files.
    pub replace: bool,
    /// `name` (default: `SAM instance segmentation (<architecture>)`).
    pub name: Option<String>,
    /// `description` (default: a sentence naming the architecture and the training).
    pub description: Option<String>,
    /// `authors` (names; default: one author "sam_trainer").
    pub authors: Vec<String>,
    /// `license`, an SPDX identifier (default "CC-BY-4.0", the BioImage Model Zoo's default
    /// for weights).
    pub license: String,
    /// A grey image for the test tensors and the cover, at least S×S pixels (its centre S×S
    /// is used); default: a synthetic brightfield image.
    pub sample_image: Option<PathBuf>,
}

impl Default for BioImageIoOptions {
    fn default() -> Self {
        Self {
            replace: false,
            name: None,
            description: None,
            authors: Vec::new(),
            license: "CC-BY-4.0".into(),
            sample_image: None,
        }
    }
}

/// Writes the bioimage.io package of `source` (a checkpoint folder or file with the
/// instance-segmentation decoder) into the folder `output`, or, when `output` ends in `.zip`,
/// as that zip file (what the BioImage Model Zoo uploads). Returns the path of `rdf.yaml`, or
/// of the zip.
///
/// # Errors
/// [`TrainError::Usage`] for an output that is refused (a folder: see
/// [`crate::export_torchscript`]; a zip: as [`crate::export_model`]'s file), a model without
/// decoder or a sample image smaller than the model input; reading, tracing or writing
/// failures otherwise.
pub fn export_bioimageio(
    source: &Path,
    output: &Path,
    options: &BioImageIoOptions,
) -> Result<PathBuf, TrainError> {
    if output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"))
    {
        crate::export::check_output(source, output, options.replace)?;
        // The package is staged in a folder next to the zip, zipped, and the zip renamed into
        // place.
        let staging = output.with_extension("zip.parts");
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| TrainError::io(&staging, e))?;
        }
        let staged = BioImageIoOptions {
            replace: false,
            ..options.clone()
        };
        let result =
            write_package(source, &staging, &staged).and_then(|_| zip_folder(&staging, output));
        let _ = fs::remove_dir_all(&staging);
        return result.map(|()| output.to_path_buf());
    }
    write_package(source, output, options)
}

/// Zips the files of `dir` (flat) into `zip_path`, through a temporary file.
fn zip_folder(dir: &Path, zip_path: &Path) -> Result<(), TrainError> {
    use std::io::Write;
    let tmp = zip_path.with_extension("zip.tmp");
    let file = fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(|e| TrainError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    for path in names {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let bytes = fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        zip.start_file(name.as_ref(), options)
            .and_then(|()| zip.write_all(&bytes).map_err(Into::into))
            .map_err(|e| TrainError::format(&tmp, e))?;
    }
    zip.finish().map_err(|e| TrainError::format(&tmp, e))?;
    fs::rename(&tmp, zip_path).map_err(|e| TrainError::io(zip_path, e))
}

/// [`export_bioimageio`] into a folder.
fn write_package(
    source: &Path,
    output: &Path,
    options: &BioImageIoOptions,
) -> Result<PathBuf, TrainError> {
    check_output_dir(source, output, options.replace)?;
    let loaded = load_for_tracing(source)?;
    let model = &loaded.model;
    if model.decoder().is_none() {
        return Err(TrainError::Usage(format!(
            "{} has no instance-segmentation decoder: a bioimage.io package holds the automatic \
             segmentation network (train with the decoder, or export --format torchscript)",
            source.display()
        )));
    }
    let side = model.sam().img_size();
    let raw = sample_image(options.sample_image.as_deref(), side as usize)?;
    let norm = &loaded.normalization;
    let grey = normalise(&raw, norm)?;
    let grey_t = Tensor::from_slice(&grey).view([1, 1, side, side]);
    // The reference output: this project's model, not the traced module.
    let (traced, expected) = tch::no_grad(|| -> Result<_, TrainError> {
        let input = model
            .sam()
            .preprocess(&(&grey_t * 255.0).expand([1, 3, side, side], false))?;
        let emb = model.sam().image_encoder.forward(&input);
        let expected = ais_output(model, &emb)?;
        Ok((trace_ais(model)?, expected))
    })?;
    let channels = expected.size()[1];

    fs::create_dir_all(output).map_err(|e| TrainError::io(output, e))?;
    save_module(&traced.module, &output.join("ais.pt"))?;
    write_npy(
        &output.join("test_input.npy"),
        &[1, 1, side as usize, side as usize],
        raw.as_slice(),
    )?;
    let out_values = Vec::<f32>::try_from(&expected.to_kind(Kind::Float).contiguous().view(-1))?;
    write_npy(
        &output.join("test_output.npy"),
        &[1, channels as usize, side as usize, side as usize],
        &out_values,
    )?;
    write_cover(&output.join("cover.png"), &raw, &out_values, side as usize)?;

    let arch = model.describe();
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| format!("SAM instance segmentation ({})", short_arch(&arch)));
    let description = options.description.clone().unwrap_or_else(|| {
        format!(
            "Automatic instance segmentation network of a Segment Anything model fine-tuned \
             with micro_sam's recipe: {arch}. Outputs foreground probability and normalised \
             centre and boundary distances; seeded watershed on them gives the instances."
        )
    });
    write_text(
        &output.join("README.md"),
        &readme(&name, &description, norm, side),
    )?;
    let rdf = rdf_yaml(output, &name, &description, options, norm, side, channels)?;
    let path = output.join("rdf.yaml");
    write_text(&path, &rdf)?;
    Ok(path)
}

/// "ViT-B" out of a model description ("ViT-B (...), ..."), else the description's first part.
fn short_arch(describe: &str) -> String {
    describe
        .split([',', '('])
        .next()
        .unwrap_or("SAM")
        .trim()
        .to_string()
}

/// The test image: the centre `side`² of `path`, or a synthetic brightfield image.
fn sample_image(path: Option<&Path>, side: usize) -> Result<GreyImage, TrainError> {
    let Some(path) = path else {
        let cfg = SynthConfig {
            size: side,
            ..SynthConfig::default()
        };
        return Ok(synthesize(&cfg, 0).image);
    };
    let image = sam_data::read_image(path).map_err(|e| TrainError::format(path, e))?;
    let (rows, cols) = (image.rows(), image.cols());
    if rows < side || cols < side {
        return Err(TrainError::Usage(format!(
            "export --sample-image {}: the image is {cols}x{rows} px, the model input {side}x{side}: \
             give an image of at least that size",
            path.display()
        )));
    }
    Ok(image.crop((rows - side) / 2, (cols - side) / 2, side, side))
}

/// Percentile normalisation as training does it (numpy's linear percentiles over the image),
/// clipped to [0, 1] when the training clipped.
fn normalise(image: &GreyImage, norm: &ExportNormalization) -> Result<Vec<f32>, TrainError> {
    let n = Normalization {
        lower_percentile: norm.lower_percentile,
        upper_percentile: norm.upper_percentile,
    };
    let (lo, hi) = normalization_bounds(image, &n).map_err(|e| TrainError::Model(e.to_string()))?;
    let scale = if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
    Ok(image
        .as_slice()
        .iter()
        .map(|&v| {
            let x = (v - lo) * scale;
            if norm.clip {
                x.clamp(0.0, 1.0)
            } else {
                x
            }
        })
        .collect())
}

/// Writes a little-endian float32 `.npy` file (format 1.0).
fn write_npy(path: &Path, shape: &[usize], values: &[f32]) -> Result<(), TrainError> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    // magic (6) + version (2) + header length (2) + header, padded to 64 bytes with '\n' last
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * values.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    let len = u16::try_from(header.len())
        .map_err(|_| TrainError::Model(format!("{}: npy header too long", path.display())))?;
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    fs::write(path, bytes).map_err(|e| TrainError::io(path, e))
}

/// The cover: the test image with the outlines of the predicted foreground's connected
/// components (left) next to the three output maps as red, green and blue (right), 2:1.
fn write_cover(path: &Path, raw: &GreyImage, out: &[f32], side: usize) -> Result<(), TrainError> {
    let plane = side * side;
    let fg: Vec<bool> = out[..plane].iter().map(|&v| v > 0.5).collect();
    let mask = Plane::from_vec(side, side, fg).map_err(|e| TrainError::Model(e.to_string()))?;
    let (labels, _) = connected_components(&mask, false, Connectivity::Four);
    let tmp = path.with_extension("overlay.png");
    write_overlay_png(&tmp, raw, &[(&labels, [255, 48, 48])])
        .map_err(|e| TrainError::format(&tmp, e))?;
    let overlay = image::open(&tmp)
        .map_err(|e| TrainError::format(&tmp, e))?
        .to_rgb8();
    let _ = fs::remove_file(&tmp);
    let mut cover = image::RgbImage::new(2 * side as u32, side as u32);
    for (x, y, p) in overlay.enumerate_pixels() {
        cover.put_pixel(x, y, *p);
    }
    let channels = out.len() / plane;
    for i in 0..plane {
        let mut rgb = [0u8; 3];
        for (c, v) in rgb.iter_mut().enumerate().take(channels.min(3)) {
            *v = (out[c * plane + i].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
        let (x, y) = ((i % side) as u32, (i / side) as u32);
        cover.put_pixel(side as u32 + x, y, image::Rgb(rgb));
    }
    cover.save(path).map_err(|e| TrainError::format(path, e))
}

/// SHA-256 of a file, hex.
fn sha256(path: &Path) -> Result<String, TrainError> {
    use sha2::{Digest, Sha256};
    let bytes = fs::read(path).map_err(|e| TrainError::io(path, e))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `rdf.yaml` (format 0.5).
fn rdf_yaml(
    dir: &Path,
    name: &str,
    description: &str,
    options: &BioImageIoOptions,
    norm: &ExportNormalization,
    side: i64,
    channels: i64,
) -> Result<String, TrainError> {
    let authors = if options.authors.is_empty() {
        vec!["sam_trainer".to_string()]
    } else {
        options.authors.clone()
    };
    let authors: String = authors
        .iter()
        .map(|a| format!("  - name: {}\n", quoted(a)))
        .collect();
    let clip = if norm.clip {
        "      - id: clip\n        kwargs:\n          min: 0.0\n          max: 1.0\n"
    } else {
        ""
    };
    let names = ["foreground", "center_distances", "boundary_distances"];
    let out_names: Vec<&str> = (0..channels as usize)
        .map(|c| names.get(c).copied().unwrap_or("channel"))
        .collect();
    let space = |id: &str| format!("      - type: space\n        id: {id}\n        size: {side}\n");
    Ok(format!(
        "format_version: 0.5.12
type: model
name: {name}
description: {description}
authors:
{authors}cite:
  - text: \"Archit et al. Segment Anything for Microscopy. Nature Methods 22 (2025)\"
    doi: 10.1038/s41592-024-02580-4
  - text: \"Kirillov et al. Segment Anything. ICCV (2023)\"
    doi: 10.48550/arXiv.2304.02643
license: {license}
documentation:
  source: README.md
  sha256: {readme_sha}
covers:
  - source: cover.png
    sha256: {cover_sha}
tags: [segment-anything, micro-sam, instance-segmentation, unetr, 2d, pytorch]
inputs:
  - id: raw
    description: grey image (any intensity range), {side}x{side} px
    axes:
      - type: batch
        size: 1
      - type: channel
        channel_names: [grey]
{y}{x}    test_tensor:
      source: test_input.npy
      sha256: {in_sha}
    data:
      type: float32
    preprocessing:
      - id: scale_range
        kwargs:
          axes: [channel, y, x]
          min_percentile: {lo}
          max_percentile: {hi}
{clip}outputs:
  - id: instance_maps
    description: foreground probability, normalised centre and boundary distances (sigmoid)
    axes:
      - type: batch
        size: 1
      - type: channel
        channel_names: [{out_names}]
{y}{x}    test_tensor:
      source: test_output.npy
      sha256: {out_sha}
    data:
      type: float32
weights:
  torchscript:
    source: ais.pt
    sha256: {weights_sha}
    pytorch_version: \"{PYTORCH_VERSION}\"
",
        name = quoted(name),
        description = quoted(description),
        license = quoted(&options.license),
        readme_sha = sha256(&dir.join("README.md"))?,
        cover_sha = sha256(&dir.join("cover.png"))?,
        in_sha = sha256(&dir.join("test_input.npy"))?,
        out_sha = sha256(&dir.join("test_output.npy"))?,
        weights_sha = sha256(&dir.join("ais.pt"))?,
        y = space("y"),
        x = space("x"),
        lo = float(norm.lower_percentile),
        hi = float(norm.upper_percentile),
        out_names = out_names.join(", "),
    ))
}

/// A float written so that YAML reads a float (`1.0`, not `1`).
fn float(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        v.to_string()
    }
}

/// The package's README.
fn readme(name: &str, description: &str, norm: &ExportNormalization, side: i64) -> String {
    format!(
        "# {name}\n\n{description}\n\n## Input\n\nOne grey image of {side}x{side} px (crop or \
         tile larger images, pad smaller ones). The package normalises it: the \
         {lo}th percentile maps to 0, the {hi}th to 1{clip}, as in training.\n\n## Output\n\n\
         Three maps at the input size, after a sigmoid: foreground probability, normalised \
         distance to the object centre, normalised distance to the object boundary \
         (micro_sam's UNETR decoder). Instances come from a seeded watershed on them \
         (micro_sam's automatic instance segmentation, `sam-infer`).\n\n## Validation\n\n\
         The test output was computed by the exporting program's own implementation of the \
         model; the package's TorchScript weights reproduce it (`bioimageio test rdf.yaml`).\n",
        lo = norm.lower_percentile,
        hi = norm.upper_percentile,
        clip = if norm.clip { ", clipped to [0, 1]" } else { "" },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sam_data::BitDepth;

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        write_npy(&p, &[1, 2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let b = fs::read(&p).unwrap();
        let len = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + len]).unwrap();
        assert!(header.contains("'shape': (1, 2, 3,)"), "{header}");
        assert_eq!(b.len(), 10 + len + 24);
        assert_eq!(
            f32::from_le_bytes([b[14 + len], b[15 + len], b[16 + len], b[17 + len]]),
            1.0
        );
    }

    #[test]
    fn short_architecture_names() {
        assert_eq!(short_arch("ViT-B (12 blocks), with decoder"), "ViT-B");
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(99.8), "99.8");
    }

    #[test]
    fn normalisation_clips_only_when_training_did() {
        let img =
            GreyImage::from_vec(1, 5, BitDepth::U16, vec![0.0, 1.0, 2.0, 3.0, 100.0]).unwrap();
        let mut n = ExportNormalization {
            lower_percentile: 0.0,
            upper_percentile: 75.0,
            clip: true,
            config: None,
        };
        assert_eq!(
            normalise(&img, &n).unwrap(),
            [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0]
        );
        n.clip = false;
        assert!((normalise(&img, &n).unwrap()[4] - 100.0 / 3.0).abs() < 1e-5);
    }
}
