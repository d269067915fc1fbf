//! Reading label images (u8/u16/u32/u64 and signed or float TIFF with integral values, 8/16-bit
//! PNG) into a u32 buffer.
//!
//! TODO(sam-data): switch to sam-data's label reader once it lands; this module only exists so
//! that label evaluation works on its own until then.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::error::EvalError;

/// Label file extensions, in the order they are looked for.
pub(crate) const LABEL_EXTENSIONS: [&str; 3] = ["tif", "tiff", "png"];

/// A label image: row-major u32 ids, 0 = background.
#[derive(Debug, Clone)]
pub(crate) struct Labels {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u32>,
}

impl Labels {
    /// An all-background image.
    pub fn empty(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            data: vec![0; width as usize * height as usize],
        }
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> EvalError {
    EvalError::BadLabel {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Whether `path` has one of the label extensions (case-insensitive).
pub(crate) fn is_label_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| LABEL_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The file in `dir` with stem `stem` and a label extension, if any.
pub(crate) fn find_by_stem(dir: &Path, stem: &str) -> Option<PathBuf> {
    LABEL_EXTENSIONS
        .iter()
        .flat_map(|e| [e.to_string(), e.to_ascii_uppercase()])
        .map(|e| dir.join(format!("{stem}.{e}")))
        .find(|p| p.is_file())
}

/// Reads a label image. Errors name the file and say what was expected and found.
pub(crate) fn read_labels(path: &Path) -> Result<Labels, EvalError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "tif" | "tiff" => read_tiff(path),
        "png" => read_png(path),
        other => Err(bad(
            path,
            format!("expected a .tif, .tiff or .png file, found extension {other:?}"),
        )),
    }
}

fn read_tiff(path: &Path) -> Result<Labels, EvalError> {
    use tiff::decoder::{Decoder, DecodingResult, Limits};
    use tiff::ColorType;

    let file = File::open(path).map_err(|source| EvalError::Io {
        action: "cannot open",
        path: path.to_path_buf(),
        source,
    })?;
    let tiff_err = |e: tiff::TiffError| bad(path, format!("invalid TIFF: {e}"));
    let mut decoder = Decoder::new(BufReader::new(file))
        .map_err(tiff_err)?
        .with_limits(Limits::unlimited());
    let (width, height) = decoder.dimensions().map_err(tiff_err)?;
    match decoder.colortype().map_err(tiff_err)? {
        ColorType::Gray(_) => {}
        other => {
            return Err(bad(
                path,
                format!("expected a single-channel (grey) label image, found {other:?}"),
            ))
        }
    }
    let data = match decoder.read_image().map_err(tiff_err)? {
        DecodingResult::U8(v) => v.into_iter().map(u32::from).collect(),
        DecodingResult::U16(v) => v.into_iter().map(u32::from).collect(),
        DecodingResult::U32(v) => v,
        DecodingResult::U64(v) => convert(path, width, &v, |x| u32::try_from(x).ok())?,
        DecodingResult::I8(v) => convert(path, width, &v, |x| u32::try_from(x).ok())?,
        DecodingResult::I16(v) => convert(path, width, &v, |x| u32::try_from(x).ok())?,
        DecodingResult::I32(v) => convert(path, width, &v, |x| u32::try_from(x).ok())?,
        DecodingResult::I64(v) => convert(path, width, &v, |x| u32::try_from(x).ok())?,
        DecodingResult::F32(v) => convert(path, width, &v, |x| float_id(f64::from(x)))?,
        DecodingResult::F64(v) => convert(path, width, &v, float_id)?,
    };
    check_len(path, width, height, data)
}

/// A float pixel as a label id: integral and within u32.
fn float_id(x: f64) -> Option<u32> {
    (x.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&x)).then_some(x as u32)
}

/// Converts every pixel with `to_id`, failing at the first pixel that is not a valid id.
fn convert<T: Copy + std::fmt::Display>(
    path: &Path,
    width: u32,
    values: &[T],
    to_id: impl Fn(T) -> Option<u32>,
) -> Result<Vec<u32>, EvalError> {
    let mut out = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        match to_id(v) {
            Some(id) => out.push(id),
            None => {
                let w = width.max(1) as usize;
                return Err(bad(
                    path,
                    format!(
                        "expected non-negative integer label ids up to {}, found {v} at pixel \
                         (x {}, y {})",
                        u32::MAX,
                        i % w,
                        i / w
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn check_len(path: &Path, width: u32, height: u32, data: Vec<u32>) -> Result<Labels, EvalError> {
    let expected = width as usize * height as usize;
    if data.len() != expected {
        return Err(bad(
            path,
            format!(
                "expected {expected} pixels for {width}×{height}, decoded {} values \
                 (multi-channel or planar data?)",
                data.len()
            ),
        ));
    }
    Ok(Labels {
        width,
        height,
        data,
    })
}

fn read_png(path: &Path) -> Result<Labels, EvalError> {
    use image::DynamicImage;
    let img = image::ImageReader::open(path)
        .map_err(|source| EvalError::Io {
            action: "cannot open",
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| EvalError::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            source,
        })?
        .decode()
        .map_err(|e| bad(path, format!("invalid PNG: {e}")))?;
    let (width, height) = (img.width(), img.height());
    let data = match img {
        DynamicImage::ImageLuma8(b) => b.into_raw().into_iter().map(u32::from).collect(),
        DynamicImage::ImageLuma16(b) => b.into_raw().into_iter().map(u32::from).collect(),
        other => {
            return Err(bad(
                path,
                format!(
                    "expected a single-channel 8- or 16-bit label PNG, found {:?}",
                    other.color()
                ),
            ))
        }
    };
    check_len(path, width, height, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_ids() {
        assert_eq!(float_id(3.0), Some(3));
        assert_eq!(float_id(0.0), Some(0));
        assert_eq!(float_id(2.5), None);
        assert_eq!(float_id(-1.0), None);
        assert_eq!(float_id(f64::NAN), None);
        assert_eq!(float_id(1e12), None);
    }
}
