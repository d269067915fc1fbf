//! Reading and writing brightfield images and label images, and pairing them by file stem.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::encoder::{colortype, compression::Deflate, TiffEncoder};
use tiff::ColorType;

use crate::error::{DataError, Result};
use crate::image::{BitDepth, GreyImage, LabelImage};

/// An image file and its label file, matched by file stem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePair {
    /// The shared file stem (`cells_01` for `images/cells_01.tif` + `labels/cells_01.png`).
    pub stem: String,
    /// The image file.
    pub image: PathBuf,
    /// The label file.
    pub labels: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Tiff,
    Png,
}

fn format_of(path: &Path) -> Option<Format> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "tif" | "tiff" => Some(Format::Tiff),
        "png" => Some(Format::Png),
        _ => None,
    }
}

/// What the first bytes of a file say it is, when that is not what its extension says; the
/// decoders' own messages for such files ("corrupt or truncated") mislead.
fn sniff_mismatch(path: &Path) -> Option<DataError> {
    let mut head = [0u8; 8];
    let n = {
        use std::io::Read;
        let mut f = File::open(path).ok()?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        n
    };
    let head = &head[..n];
    let (found, real, fix) = if head.starts_with(b"\x89PNG") {
        ("a PNG image", Some(Format::Png), "rename it to .png")
    } else if head.starts_with(b"II*\0")
        || head.starts_with(b"MM\0*")
        || head.starts_with(b"II+\0")
        || head.starts_with(b"MM\0+")
    {
        ("a TIFF image", Some(Format::Tiff), "rename it to .tif")
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        (
            "a JPEG image",
            None,
            "save it as TIFF or PNG (JPEG is not read: its lossy compression alters intensities)",
        )
    } else if head.starts_with(b"BM") {
        ("a BMP image", None, "save it as TIFF or PNG")
    } else if head.starts_with(b"GIF8") {
        ("a GIF image", None, "save it as TIFF or PNG")
    } else if n == 0 {
        (
            "empty (0 bytes)",
            None,
            "write it again; an interrupted copy leaves such files",
        )
    } else {
        return None;
    };
    let ext = format_of(path);
    if real.is_some() && real == ext {
        return None;
    }
    Some(DataError::FormatMismatch {
        path: path.to_path_buf(),
        extension: path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default(),
        found,
        fix,
    })
}

/// The error for a file its decoder refused: a format mismatch when the content shows one,
/// else the decoder's message.
fn decode_error(path: &Path, format: &'static str, reason: String) -> DataError {
    sniff_mismatch(path).unwrap_or_else(|| DataError::Decode {
        path: path.to_path_buf(),
        format,
        reason,
    })
}

/// The full-resolution pages of a TIFF: reduced-resolution pages (thumbnails,
/// `NewSubfileType` bit 0) do not count. Leaves the decoder on the first page.
fn count_pages<R: std::io::Read + std::io::Seek>(
    path: &Path,
    dec: &mut Decoder<R>,
) -> Result<usize> {
    /// Enough to name the stack; a longer (or cyclic) chain of pages is not walked further.
    const MAX_PAGES_COUNTED: usize = 100_000;
    if !dec.more_images() {
        return Ok(1);
    }
    let err = |e: tiff::TiffError| decode_error(path, "TIFF", e.to_string());
    let mut pages = 1;
    let mut ifds = 1;
    while dec.more_images() && ifds < MAX_PAGES_COUNTED {
        dec.next_image().map_err(err)?;
        ifds += 1;
        let subfile = dec
            .find_tag_unsigned::<u32>(tiff::tags::Tag::NewSubfileType)
            .map_err(err)?
            .unwrap_or(0);
        if subfile & 1 == 0 {
            pages += 1;
        }
    }
    dec.seek_to_image(0).map_err(err)?;
    Ok(pages)
}

/// Refuses a TIFF with more than one full-resolution page (a 3-D stack or a time series),
/// which would otherwise be read as its first page (see [`count_pages`]). Leaves the decoder
/// on the first page.
fn check_single_page<R: std::io::Read + std::io::Seek>(
    path: &Path,
    dec: &mut Decoder<R>,
) -> Result<()> {
    let pages = count_pages(path, dec)?;
    if pages > 1 {
        return Err(DataError::Stack {
            path: path.to_path_buf(),
            pages,
        });
    }
    Ok(())
}

fn open(path: &Path) -> Result<BufReader<File>> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| DataError::io(path, "open", e))
}

/// Raw pixels as decoded, before conversion.
enum Raw {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    Float(&'static str),
}

struct Decoded {
    width: usize,
    height: usize,
    /// Samples per pixel (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).
    channels: usize,
    raw: Raw,
    type_name: String,
}

fn decode_tiff(path: &Path) -> Result<Decoded> {
    let err = |e: tiff::TiffError| decode_error(path, "TIFF", e.to_string());
    let mut dec = Decoder::new(open(path)?)
        .map_err(err)?
        .with_limits(Limits::unlimited());
    check_single_page(path, &mut dec)?;
    let (w, h) = dec.dimensions().map_err(err)?;
    let color = dec.colortype().map_err(err)?;
    let channels = match color {
        ColorType::Gray(_) => 1,
        ColorType::GrayA(_) => 2,
        ColorType::RGB(_) => 3,
        ColorType::RGBA(_) => 4,
        other => {
            return Err(DataError::UnsupportedPixelType {
                path: path.to_path_buf(),
                expected: "grey or RGB(A) pixels",
                found: format!("{other:?}"),
            })
        }
    };
    let result = dec.read_image().map_err(err)?;
    let raw = match result {
        DecodingResult::U8(v) => Raw::U8(v),
        DecodingResult::U16(v) => Raw::U16(v),
        DecodingResult::U32(v) => Raw::U32(v),
        DecodingResult::U64(v) => Raw::U64(v),
        DecodingResult::I8(v) => Raw::I64(v.into_iter().map(i64::from).collect()),
        DecodingResult::I16(v) => Raw::I64(v.into_iter().map(i64::from).collect()),
        DecodingResult::I32(v) => Raw::I64(v.into_iter().map(i64::from).collect()),
        DecodingResult::I64(v) => Raw::I64(v),
        DecodingResult::F32(_) => Raw::Float("32-bit float"),
        DecodingResult::F64(_) => Raw::Float("64-bit float"),
    };
    let decoded = Decoded {
        width: w as usize,
        height: h as usize,
        channels,
        type_name: format!("TIFF {color:?}"),
        raw,
    };
    check_decoded_len(path, &decoded)?;
    Ok(decoded)
}

fn check_decoded_len(path: &Path, d: &Decoded) -> Result<()> {
    let n = match &d.raw {
        Raw::U8(v) => v.len(),
        Raw::U16(v) => v.len(),
        Raw::U32(v) => v.len(),
        Raw::U64(v) => v.len(),
        Raw::I64(v) => v.len(),
        Raw::Float(_) => return Ok(()),
    };
    if n != d.width * d.height * d.channels {
        return Err(DataError::Decode {
            path: path.to_path_buf(),
            format: "TIFF",
            reason: format!(
                "expected {} samples for {}x{}x{}, decoded {n}",
                d.width * d.height * d.channels,
                d.width,
                d.height,
                d.channels
            ),
        });
    }
    Ok(())
}

fn decode_png(path: &Path) -> Result<Decoded> {
    use image::DynamicImage as D;
    let err = |e: image::ImageError| decode_error(path, "PNG", e.to_string());
    let mut reader = image::ImageReader::new(open(path)?);
    reader.set_format(image::ImageFormat::Png);
    reader.no_limits();
    let img = reader.decode().map_err(err)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let type_name = format!("PNG {:?}", img.color());
    let (channels, raw) = match img {
        D::ImageLuma8(b) => (1, Raw::U8(b.into_raw())),
        D::ImageLumaA8(b) => (2, Raw::U8(b.into_raw())),
        D::ImageRgb8(b) => (3, Raw::U8(b.into_raw())),
        D::ImageRgba8(b) => (4, Raw::U8(b.into_raw())),
        D::ImageLuma16(b) => (1, Raw::U16(b.into_raw())),
        D::ImageLumaA16(b) => (2, Raw::U16(b.into_raw())),
        D::ImageRgb16(b) => (3, Raw::U16(b.into_raw())),
        D::ImageRgba16(b) => (4, Raw::U16(b.into_raw())),
        other => (
            1,
            Raw::Float(if other.color().has_color() {
                "RGB float"
            } else {
                "float"
            }),
        ),
    };
    Ok(Decoded {
        width,
        height,
        channels,
        raw,
        type_name,
    })
}

fn decode(path: &Path) -> Result<Decoded> {
    match format_of(path) {
        Some(Format::Tiff) => decode_tiff(path),
        Some(Format::Png) => decode_png(path),
        None => Err(DataError::UnsupportedExtension {
            path: path.to_path_buf(),
            expected: "*.tif, *.tiff, *.png",
        }),
    }
}

/// ITU-R BT.601 luma, the weights PIL uses for "L".
fn to_grey<T: Copy + Into<f32>>(v: &[T], channels: usize) -> Vec<f32> {
    match channels {
        1 => v.iter().map(|&x| x.into()).collect(),
        2 => v.chunks_exact(2).map(|p| p[0].into()).collect(),
        _ => v
            .chunks_exact(channels)
            .map(|p| 0.299 * p[0].into() + 0.587 * p[1].into() + 0.114 * p[2].into())
            .collect(),
    }
}

/// Reads a brightfield image: 8- or 16-bit grey or RGB(A) TIFF or PNG.
///
/// RGB is converted to grey with the BT.601 luma weights; alpha is dropped. Intensities keep
/// their on-disk scale (see [`GreyImage`]).
pub fn read_image(path: impl AsRef<Path>) -> Result<GreyImage> {
    let path = path.as_ref();
    let d = decode(path)?;
    let (depth, data) = match &d.raw {
        Raw::U8(v) => (BitDepth::U8, to_grey(v, d.channels)),
        Raw::U16(v) => (BitDepth::U16, to_grey(v, d.channels)),
        _ => {
            return Err(DataError::UnsupportedPixelType {
                path: path.to_path_buf(),
                expected: "8- or 16-bit unsigned grey or RGB",
                found: d.type_name,
            })
        }
    };
    GreyImage::from_vec(d.height, d.width, depth, data)
}

/// Reads an instance label image: u8/u16/u32 grey TIFF or PNG (signed or 64-bit integer TIFFs
/// are accepted when every value is a valid u32 id).
///
/// Floating-point pixels, negative values, colour label images and ids above `u32::MAX` are
/// errors naming the file.
pub fn read_labels(path: impl AsRef<Path>) -> Result<LabelImage> {
    let path = path.as_ref();
    let d = decode(path)?;
    if let Raw::Float(kind) = d.raw {
        return Err(DataError::FloatLabels {
            path: path.to_path_buf(),
            found: kind.to_string(),
        });
    }
    if d.channels != 1 {
        return Err(DataError::UnsupportedPixelType {
            path: path.to_path_buf(),
            expected: "single-channel integer labels",
            found: d.type_name,
        });
    }
    let data: Vec<u32> = match d.raw {
        Raw::U8(v) => v.into_iter().map(u32::from).collect(),
        Raw::U16(v) => v.into_iter().map(u32::from).collect(),
        Raw::U32(v) => v,
        Raw::U64(v) => {
            if let Some(&value) = v.iter().find(|&&x| x > u64::from(u32::MAX)) {
                return Err(DataError::LabelOverflow {
                    path: path.to_path_buf(),
                    value,
                });
            }
            v.into_iter().map(|x| x as u32).collect()
        }
        Raw::I64(v) => {
            if let Some(i) = v.iter().position(|&x| x < 0) {
                return Err(DataError::NegativeLabel {
                    path: path.to_path_buf(),
                    value: v[i],
                    x: i % d.width.max(1),
                    y: i / d.width.max(1),
                });
            }
            if let Some(&value) = v.iter().find(|&&x| x > i64::from(u32::MAX)) {
                return Err(DataError::LabelOverflow {
                    path: path.to_path_buf(),
                    value: value as u64,
                });
            }
            v.into_iter().map(|x| x as u32).collect()
        }
        Raw::Float(_) => Vec::new(),
    };
    LabelImage::from_vec(d.height, d.width, data)
}

/// The size check of an image/label pair: `image` and `labels` are shapes (rows, cols); a
/// difference is a [`DataError::SizeMismatch`] naming both files.
pub(crate) fn check_pair_size(
    pair: &ImagePair,
    image: (usize, usize),
    labels: (usize, usize),
) -> Result<()> {
    if image == labels {
        return Ok(());
    }
    Err(DataError::SizeMismatch {
        image: pair.image.clone(),
        labels: pair.labels.clone(),
        image_width: image.1,
        image_height: image.0,
        label_width: labels.1,
        label_height: labels.0,
    })
}

/// Reads an image and its labels and checks that they have the same size.
pub fn read_pair(pair: &ImagePair) -> Result<(GreyImage, LabelImage)> {
    let image = read_image(&pair.image)?;
    let labels = read_labels(&pair.labels)?;
    check_pair_size(pair, image.shape(), labels.shape())?;
    Ok((image, labels))
}

/// The shape `(rows, cols)` (height, width) of an image or label file, from its header (no
/// pixels are decoded).
pub fn image_dimensions(path: impl AsRef<Path>) -> Result<(usize, usize)> {
    let path = path.as_ref();
    match format_of(path) {
        Some(Format::Tiff) => {
            let err = |e: tiff::TiffError| decode_error(path, "TIFF", e.to_string());
            let mut dec = Decoder::new(open(path)?).map_err(err)?;
            check_single_page(path, &mut dec)?;
            let (w, h) = dec.dimensions().map_err(err)?;
            Ok((h as usize, w as usize))
        }
        Some(Format::Png) => {
            let mut reader = image::ImageReader::new(open(path)?);
            reader.set_format(image::ImageFormat::Png);
            let (w, h) = reader
                .into_dimensions()
                .map_err(|e| decode_error(path, "PNG", e.to_string()))?;
            Ok((h as usize, w as usize))
        }
        None => Err(DataError::UnsupportedExtension {
            path: path.to_path_buf(),
            expected: "*.tif, *.tiff, *.png",
        }),
    }
}

/// How the samples of an image file are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleFormat {
    /// Unsigned integers (what microscopes and label tools write).
    Unsigned,
    /// Signed integers.
    Signed,
    /// Floating point.
    Float,
}

/// What a file's header says about its pixels, without decoding them ([`file_info`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileInfo {
    /// `"TIFF"` or `"PNG"`.
    pub format: String,
    /// Height in pixels (of the first page).
    pub rows: usize,
    /// Width in pixels (of the first page).
    pub cols: usize,
    /// Samples per pixel: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA.
    pub channels: usize,
    /// Bits per sample (8, 16, 32, ...).
    pub bits: u8,
    /// Unsigned, signed or floating-point samples.
    pub sample_format: SampleFormat,
    /// Full-resolution pages (1 for a PNG; more for a TIFF stack, which is not read).
    pub pages: usize,
}

impl FileInfo {
    /// The pixel type in words, e.g. `u16`, `i32`, `f32`, `RGB u8`.
    pub fn pixel_type(&self) -> String {
        let kind = match self.sample_format {
            SampleFormat::Unsigned => 'u',
            SampleFormat::Signed => 'i',
            SampleFormat::Float => 'f',
        };
        let colour = match self.channels {
            1 => "",
            2 => "grey+alpha ",
            3 => "RGB ",
            _ => "RGBA ",
        };
        format!("{colour}{kind}{}", self.bits)
    }
}

/// The header of an image or label file: format, size, channels, sample type and, for a TIFF,
/// the number of full-resolution pages (a multi-page file is described, not refused). No
/// pixels are decoded.
pub fn file_info(path: impl AsRef<Path>) -> Result<FileInfo> {
    let path = path.as_ref();
    match format_of(path) {
        Some(Format::Tiff) => {
            let err = |e: tiff::TiffError| decode_error(path, "TIFF", e.to_string());
            let mut dec = Decoder::new(open(path)?).map_err(err)?;
            let pages = count_pages(path, &mut dec)?;
            let (w, h) = dec.dimensions().map_err(err)?;
            let (channels, bits) = match dec.colortype().map_err(err)? {
                ColorType::Gray(b) => (1, b),
                ColorType::GrayA(b) => (2, b),
                ColorType::RGB(b) => (3, b),
                ColorType::RGBA(b) => (4, b),
                ColorType::CMYK(b) => (4, b),
                ColorType::YCbCr(b) => (3, b),
                ColorType::Palette(b) => (1, b),
            };
            let format = dec
                .find_tag(tiff::tags::Tag::SampleFormat)
                .map_err(err)?
                .and_then(|v| match v {
                    // one value per sample; they agree in the files we read
                    tiff::decoder::ifd::Value::List(values) => values.into_iter().next(),
                    one => Some(one),
                })
                .and_then(|v| v.into_u32().ok())
                .unwrap_or(1);
            Ok(FileInfo {
                format: "TIFF".into(),
                rows: h as usize,
                cols: w as usize,
                channels,
                bits,
                sample_format: match format {
                    2 => SampleFormat::Signed,
                    3 => SampleFormat::Float,
                    _ => SampleFormat::Unsigned,
                },
                pages,
            })
        }
        Some(Format::Png) => {
            use image::ImageDecoder;
            let mut reader = image::ImageReader::new(open(path)?);
            reader.set_format(image::ImageFormat::Png);
            let dec = reader
                .into_decoder()
                .map_err(|e| decode_error(path, "PNG", e.to_string()))?;
            let (w, h) = dec.dimensions();
            let colour = dec.color_type();
            let channels = usize::from(colour.channel_count());
            let bits = (colour.bytes_per_pixel() / colour.channel_count().max(1)) * 8;
            let float = matches!(colour, image::ColorType::Rgb32F | image::ColorType::Rgba32F);
            Ok(FileInfo {
                format: "PNG".into(),
                rows: h as usize,
                cols: w as usize,
                channels,
                bits,
                sample_format: if float {
                    SampleFormat::Float
                } else {
                    SampleFormat::Unsigned
                },
                pages: 1,
            })
        }
        None => Err(DataError::UnsupportedExtension {
            path: path.to_path_buf(),
            expected: "*.tif, *.tiff, *.png",
        }),
    }
}

/// Reads the window of `height` rows and `width` columns of a brightfield image whose top-left
/// corner is at (`top`, `left`), with the same pixel conversion as [`read_image`] (so the
/// result equals `read_image(path)?.crop(top, left, height, width)`).
///
/// A strip-organised TIFF (what microscopes and our writers produce, compressed or not) is
/// read strip by strip and only the strips that cross the rectangle are read and decoded;
/// tiled or planar TIFFs and PNGs are decoded whole and cropped.
pub fn read_image_region(
    path: impl AsRef<Path>,
    top: usize,
    left: usize,
    height: usize,
    width: usize,
) -> Result<GreyImage> {
    let path = path.as_ref();
    // the strip reader below works in image coordinates: x = column, y = row
    let (x, y, w, h) = (left, top, width, height);
    if format_of(path) == Some(Format::Tiff) {
        if let Some(region) = read_tiff_strips(path, x, y, w, h)? {
            return Ok(region);
        }
    }
    let image = read_image(path)?;
    check_region(path, image.cols(), image.rows(), x, y, w, h)?;
    Ok(image.crop(top, left, height, width))
}

fn check_region(
    path: &Path,
    width: usize,
    height: usize,
    x: usize,
    y: usize,
    w: usize,
    h: usize,
) -> Result<()> {
    if x + w > width || y + h > height {
        return Err(DataError::InvalidParameter {
            name: "region".into(),
            reason: format!(
                "{}: a {w}x{h} region at ({x}, {y}) does not fit into the {width}x{height} image",
                path.display()
            ),
        });
    }
    Ok(())
}

/// The strip path of [`read_image_region`]; `None` when the file is not a chunky strip TIFF.
fn read_tiff_strips(
    path: &Path,
    x: usize,
    y: usize,
    w: usize,
    h: usize,
) -> Result<Option<GreyImage>> {
    let err = |e: tiff::TiffError| decode_error(path, "TIFF", e.to_string());
    let mut dec = Decoder::new(open(path)?)
        .map_err(err)?
        .with_limits(Limits::unlimited());
    check_single_page(path, &mut dec)?;
    let (width, height) = dec.dimensions().map_err(err)?;
    let (width, height) = (width as usize, height as usize);
    check_region(path, width, height, x, y, w, h)?;
    let planar = dec
        .find_tag_unsigned::<u16>(tiff::tags::Tag::PlanarConfiguration)
        .map_err(err)?
        .unwrap_or(1);
    if dec.get_chunk_type() != tiff::decoder::ChunkType::Strip || planar != 1 {
        return Ok(None);
    }
    let channels = match dec.colortype().map_err(err)? {
        ColorType::Gray(_) => 1,
        ColorType::GrayA(_) => 2,
        ColorType::RGB(_) => 3,
        ColorType::RGBA(_) => 4,
        _ => return Ok(None), // read_image names the unsupported type
    };
    let rows_per_strip = dec.chunk_dimensions().1.max(1) as usize;
    let strips = height.div_ceil(rows_per_strip);
    let mut data = Vec::with_capacity(w * h);
    let mut depth = None;
    if h > 0 && w > 0 {
        for strip in y / rows_per_strip..=((y + h - 1) / rows_per_strip).min(strips - 1) {
            let first_row = strip * rows_per_strip;
            let decoded = dec.read_chunk(strip as u32).map_err(err)?;
            let (strip_depth, grey) = match &decoded {
                DecodingResult::U8(v) => (BitDepth::U8, strip_rows(v, channels, width)),
                DecodingResult::U16(v) => (BitDepth::U16, strip_rows(v, channels, width)),
                _ => return Ok(None),
            };
            depth = Some(strip_depth);
            let rows_here = grey.len() / width.max(1);
            let from = y.max(first_row) - first_row;
            let to = (y + h).min(first_row + rows_here) - first_row;
            for r in from..to {
                data.extend_from_slice(&grey[r * width + x..r * width + x + w]);
            }
        }
    }
    let Some(depth) = depth else {
        return Ok(None);
    };
    GreyImage::from_vec(h, w, depth, data)
        .map(Some)
        .map_err(|_| DataError::Decode {
            path: path.to_path_buf(),
            format: "TIFF",
            reason: format!("strips hold fewer rows than the {width}x{height} header says"),
        })
}

/// The grey values of a decoded strip (whole rows of `width` pixels).
fn strip_rows<T: Copy + Into<f32>>(samples: &[T], channels: usize, width: usize) -> Vec<f32> {
    let whole = samples.len() / (channels * width.max(1)) * channels * width;
    to_grey(&samples[..whole], channels)
}

/// Writes `path` atomically: the bytes go to a hidden temporary file in the same folder which is
/// renamed over `path` only once complete, so a crash never leaves a half-written file.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.partial"));
    let file = File::create(&tmp).map_err(|e| DataError::io(&tmp, "create", e))?;
    let mut w = BufWriter::new(file);
    let result =
        write(&mut w).and_then(|()| w.flush().map_err(|e| DataError::io(&tmp, "write", e)));
    drop(w);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DataError::io(path, "rename", e)
    })
}

/// Rows per TIFF strip for images we write: strips of about 256 KiB, so that a training
/// patch reads little more than its own rows ([`read_image_region`]); 64 rows of a 2048-wide
/// 16-bit image.
fn rows_per_strip(width: usize, depth: BitDepth) -> u32 {
    let row_bytes = width.max(1)
        * match depth {
            BitDepth::U8 => 1,
            BitDepth::U16 => 2,
        };
    (256 * 1024 / row_bytes).clamp(1, u32::MAX as usize) as u32
}

fn quantise_u8(data: &[f32]) -> Vec<u8> {
    data.iter()
        .map(|&v| v.round().clamp(0.0, 255.0) as u8)
        .collect()
}

fn quantise_u16(data: &[f32]) -> Vec<u16> {
    data.iter()
        .map(|&v| v.round().clamp(0.0, 65535.0) as u16)
        .collect()
}

/// Writes a grey image at its [`BitDepth`] (values rounded and clipped) as deflate-compressed
/// TIFF (`.tif`/`.tiff`) or PNG (`.png`), atomically.
pub fn write_image(path: impl AsRef<Path>, image: &GreyImage) -> Result<()> {
    let path = path.as_ref();
    let (w, h) = (image.cols() as u32, image.rows() as u32);
    match format_of(path) {
        Some(Format::Tiff) => write_atomic(path, |out| {
            let enc_err = |e: tiff::TiffError| DataError::Encode {
                path: path.to_path_buf(),
                format: "TIFF",
                reason: e.to_string(),
            };
            let mut enc = TiffEncoder::new(out).map_err(enc_err)?;
            let rows = rows_per_strip(image.cols(), image.depth);
            match image.depth {
                BitDepth::U8 => {
                    let mut img = enc
                        .new_image_with_compression::<colortype::Gray8, _>(w, h, Deflate::default())
                        .map_err(enc_err)?;
                    img.rows_per_strip(rows).map_err(enc_err)?;
                    img.write_data(&quantise_u8(image.as_slice()))
                }
                BitDepth::U16 => {
                    let mut img = enc
                        .new_image_with_compression::<colortype::Gray16, _>(
                            w,
                            h,
                            Deflate::default(),
                        )
                        .map_err(enc_err)?;
                    img.rows_per_strip(rows).map_err(enc_err)?;
                    img.write_data(&quantise_u16(image.as_slice()))
                }
            }
            .map_err(enc_err)
        }),
        Some(Format::Png) => write_atomic(path, |out| {
            let enc_err = |e: image::ImageError| DataError::Encode {
                path: path.to_path_buf(),
                format: "PNG",
                reason: e.to_string(),
            };
            let shape_err = || DataError::Shape {
                what: "PNG buffer",
                rows: image.rows(),
                cols: image.cols(),
                expected: image.cols() * image.rows(),
                found: image.as_slice().len(),
            };
            match image.depth {
                BitDepth::U8 => image::ImageBuffer::<image::Luma<u8>, _>::from_raw(
                    w,
                    h,
                    quantise_u8(image.as_slice()),
                )
                .ok_or_else(shape_err)?
                .write_to(out, image::ImageFormat::Png),
                BitDepth::U16 => image::ImageBuffer::<image::Luma<u16>, _>::from_raw(
                    w,
                    h,
                    quantise_u16(image.as_slice()),
                )
                .ok_or_else(shape_err)?
                .write_to(out, image::ImageFormat::Png),
            }
            .map_err(enc_err)
        }),
        None => Err(DataError::UnsupportedExtension {
            path: path.to_path_buf(),
            expected: "*.tif, *.tiff, *.png",
        }),
    }
}

/// Writes a label image as a deflate-compressed u32 grey TIFF (`.tif`/`.tiff`), atomically.
pub fn write_labels(path: impl AsRef<Path>, labels: &LabelImage) -> Result<()> {
    let path = path.as_ref();
    if format_of(path) != Some(Format::Tiff) {
        return Err(DataError::UnsupportedExtension {
            path: path.to_path_buf(),
            expected: "*.tif, *.tiff (u32 label TIFF)",
        });
    }
    write_atomic(path, |out| {
        let enc_err = |e: tiff::TiffError| DataError::Encode {
            path: path.to_path_buf(),
            format: "TIFF",
            reason: e.to_string(),
        };
        TiffEncoder::new(out)
            .map_err(enc_err)?
            .write_image_with_compression::<colortype::Gray32, _>(
                labels.cols() as u32,
                labels.rows() as u32,
                Deflate::default(),
                labels.as_slice(),
            )
            .map_err(enc_err)
    })
}

/// The files of one folder, as pairing sees them.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Image files (`*.tif`, `*.tiff`, `*.png`, any case; hidden files skipped) keyed and
    /// sorted by stem; of files sharing a stem, the first in name order.
    pub(crate) files: BTreeMap<String, PathBuf>,
    /// Files whose stem another file of the folder has: `(stem, kept file, this file)`.
    pub(crate) duplicates: Vec<(String, PathBuf, PathBuf)>,
    /// Visible files that are not read (other extensions), sorted.
    pub(crate) ignored: Vec<PathBuf>,
}

/// Lists a folder's files for pairing by stem (see [`Listing`]).
pub(crate) fn list_folder(dir: &Path) -> Result<Listing> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, "list", e))?;
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(entry.map_err(|e| DataError::io(dir, "list", e))?.path());
    }
    paths.sort();
    let mut listing = Listing::default();
    for path in paths {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        if format_of(&path).is_none() {
            listing.ignored.push(path);
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(name)
            .to_string();
        if let Some(first) = listing.files.get(&stem) {
            listing.duplicates.push((stem, first.clone(), path));
            continue;
        }
        listing.files.insert(stem, path);
    }
    Ok(listing)
}

/// Lists the image files (`*.tif`, `*.tiff`, `*.png`, any case; hidden files skipped) of a
/// folder, keyed and sorted by stem; two files with one stem are an error.
fn list_by_stem(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut listing = list_folder(dir)?;
    if !listing.duplicates.is_empty() {
        let (stem, first, second) = listing.duplicates.swap_remove(0);
        return Err(DataError::DuplicateStem {
            stem,
            first,
            second,
        });
    }
    Ok(listing.files)
}

/// Pairs the files of `images_dir` and `labels_dir` by stem, sorted by stem.
///
/// Errors: a missing or empty folder, two files with one stem, and files without a partner
/// (all of them listed in one error).
pub fn pair_by_stem(
    images_dir: impl AsRef<Path>,
    labels_dir: impl AsRef<Path>,
) -> Result<Vec<ImagePair>> {
    let (images_dir, labels_dir) = (images_dir.as_ref(), labels_dir.as_ref());
    let images = list_by_stem(images_dir)?;
    let labels = list_by_stem(labels_dir)?;
    if images.is_empty() {
        return Err(DataError::EmptyFolder {
            path: images_dir.to_path_buf(),
        });
    }
    if labels.is_empty() {
        return Err(DataError::EmptyFolder {
            path: labels_dir.to_path_buf(),
        });
    }
    let mut unpaired = Vec::new();
    for (stem, p) in &images {
        if !labels.contains_key(stem) {
            unpaired.push(format!("{} (no labels)", p.display()));
        }
    }
    for (stem, p) in &labels {
        if !images.contains_key(stem) {
            unpaired.push(format!("{} (no image)", p.display()));
        }
    }
    if !unpaired.is_empty() {
        return Err(DataError::Unpaired {
            images_dir: images_dir.to_path_buf(),
            labels_dir: labels_dir.to_path_buf(),
            unpaired,
        });
    }
    Ok(images
        .into_iter()
        .filter_map(|(stem, image)| {
            let labels = labels.get(&stem)?.clone();
            Some(ImagePair {
                stem,
                image,
                labels,
            })
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn grey(depth: BitDepth) -> GreyImage {
        let m = depth.max_value();
        let data = (0..35).map(|i| (i as f32 * 997.0) % (m + 1.0)).collect();
        GreyImage::from_vec(5, 7, depth, data).unwrap()
    }

    #[test]
    fn images_round_trip_in_both_formats_and_depths() {
        let dir = tempfile::tempdir().unwrap();
        for depth in [BitDepth::U8, BitDepth::U16] {
            for ext in ["tif", "png"] {
                let p = dir.path().join(format!("a_{depth:?}.{ext}"));
                let img = grey(depth);
                write_image(&p, &img).unwrap();
                let back = read_image(&p).unwrap();
                assert_eq!(back, img, "{}", p.display());
            }
        }
        // no temporary files are left behind
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().starts_with('.')),
            "{names:?}"
        );
    }

    #[test]
    fn rgb_png_is_converted_to_grey() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rgb.png");
        let buf = image::RgbImage::from_raw(2, 1, vec![100, 100, 100, 255, 0, 0]).unwrap();
        buf.save(&p).unwrap();
        let g = read_image(&p).unwrap();
        assert_eq!(g.depth, BitDepth::U8);
        assert!((g.as_slice()[0] - 100.0).abs() < 1e-3);
        assert!((g.as_slice()[1] - 0.299 * 255.0).abs() < 1e-3);
    }

    #[test]
    fn rgb16_tiff_is_converted_to_grey() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rgb16.tif");
        let f = File::create(&p).unwrap();
        TiffEncoder::new(f)
            .unwrap()
            .write_image::<colortype::RGB16>(1, 1, &[1000, 2000, 3000])
            .unwrap();
        let g = read_image(&p).unwrap();
        assert_eq!(g.depth, BitDepth::U16);
        let want = 0.299 * 1000.0 + 0.587 * 2000.0 + 0.114 * 3000.0;
        assert!((g.as_slice()[0] - want).abs() < 1e-2);
    }

    /// A 16-bit TIFF in strips of `rows` rows, uncompressed or deflate.
    fn strip_tiff(path: &Path, w: u32, h: u32, rows: u32, deflate: bool, data: &[u16]) {
        let mut enc = TiffEncoder::new(File::create(path).unwrap()).unwrap();
        if deflate {
            let mut img = enc
                .new_image_with_compression::<colortype::Gray16, _>(w, h, Deflate::default())
                .unwrap();
            img.rows_per_strip(rows).unwrap();
            img.write_data(data).unwrap();
        } else {
            let mut img = enc.new_image::<colortype::Gray16>(w, h).unwrap();
            img.rows_per_strip(rows).unwrap();
            img.write_data(data).unwrap();
        }
    }

    #[test]
    fn regions_equal_crops_of_the_whole_image() {
        let dir = tempfile::tempdir().unwrap();
        let (w, h) = (37usize, 29usize);
        let values: Vec<u16> = (0..w * h).map(|i| (i * 97 % 65521) as u16).collect();
        let mut files = Vec::new();
        for (name, rows, deflate) in [("raw3.tif", 3, false), ("zip4.tif", 4, true)] {
            let p = dir.path().join(name);
            strip_tiff(&p, w as u32, h as u32, rows, deflate, &values);
            files.push(p);
        }
        for (name, depth) in [("g8.tif", BitDepth::U8), ("g16.png", BitDepth::U16)] {
            let p = dir.path().join(name);
            let mut g = grey(depth);
            g.as_mut_slice()
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (i % 200) as f32);
            write_image(&p, &g).unwrap();
            files.push(p);
        }
        let rgb = dir.path().join("rgb16.tif");
        let rgb_values: Vec<u16> = (0..w * h * 3).map(|i| (i * 31 % 60000) as u16).collect();
        TiffEncoder::new(File::create(&rgb).unwrap())
            .unwrap()
            .write_image::<colortype::RGB16>(w as u32, h as u32, &rgb_values)
            .unwrap();
        files.push(rgb);
        for p in &files {
            let whole = read_image(p).unwrap();
            assert_eq!(image_dimensions(p).unwrap(), whole.shape());
            let (ww, wh) = (whole.cols(), whole.rows());
            let regions = [
                (0, 0, ww, wh),
                (ww / 3, wh / 4, ww / 2, wh / 2),
                (ww - 4, wh - 3, 4, 3),
                (1, 3, 1, 1),
            ];
            for (x, y, rw, rh) in regions {
                let region = read_image_region(p, y, x, rh, rw).unwrap();
                assert_eq!(
                    region,
                    whole.crop(y, x, rh, rw),
                    "{} at {x},{y}",
                    p.display()
                );
            }
            let err = read_image_region(p, 0, ww - 2, 1, 3)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("does not fit") && err.contains(&*p.to_string_lossy()),
                "{err}"
            );
        }
    }

    /// A region of a strip TIFF reads only the strips it crosses: a damaged strip elsewhere in
    /// the file does not matter (reading the whole image fails on it).
    #[test]
    fn regions_read_only_the_strips_they_cross() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("zip.tif");
        let (w, h) = (64u32, 64u32);
        let values: Vec<u16> = (0..w * h).map(|i| (i % 4000) as u16).collect();
        strip_tiff(&p, w, h, 8, true, &values);
        let mut dec = Decoder::new(File::open(&p).unwrap()).unwrap();
        let offsets = dec.get_tag_u64_vec(tiff::tags::Tag::StripOffsets).unwrap();
        let counts = dec
            .get_tag_u64_vec(tiff::tags::Tag::StripByteCounts)
            .unwrap();
        assert_eq!(offsets.len(), 8);
        let mut bytes = std::fs::read(&p).unwrap();
        let (last, n) = (offsets[7] as usize, counts[7] as usize);
        bytes[last..last + n].iter_mut().for_each(|b| *b = 0xA5);
        std::fs::write(&p, &bytes).unwrap();
        assert!(
            read_image(&p).is_err(),
            "the damaged strip must break a whole read"
        );
        let region = read_image_region(&p, 10, 3, 30, 20).unwrap();
        let values = &values;
        let want: Vec<f32> = (10..40)
            .flat_map(|y| (3..23).map(move |x| f32::from(values[y * 64 + x])))
            .collect();
        assert_eq!(region.as_slice(), want);
        let err = read_image_region(&p, 60, 0, 4, 4).unwrap_err().to_string();
        assert!(err.contains("zip.tif"), "{err}");
    }

    #[test]
    fn labels_round_trip_u32_and_read_u8_u16() {
        let dir = tempfile::tempdir().unwrap();
        let l = LabelImage::from_vec(2, 3, vec![0, 1, 70000, 4_000_000_000, 2, 0]).unwrap();
        let p = dir.path().join("l.tif");
        write_labels(&p, &l).unwrap();
        assert_eq!(read_labels(&p).unwrap(), l);
        // compressed: the TIFF carries Compression = 8 (deflate)
        let mut dec = Decoder::new(File::open(&p).unwrap()).unwrap();
        assert_eq!(dec.get_tag_u32(tiff::tags::Tag::Compression).unwrap(), 8);

        let p8 = dir.path().join("l8.png");
        image::GrayImage::from_raw(2, 1, vec![0, 7])
            .unwrap()
            .save(&p8)
            .unwrap();
        assert_eq!(read_labels(&p8).unwrap().as_slice(), vec![0, 7]);
        let p16 = dir.path().join("l16.tif");
        TiffEncoder::new(File::create(&p16).unwrap())
            .unwrap()
            .write_image::<colortype::Gray16>(2, 1, &[300, 0])
            .unwrap();
        assert_eq!(read_labels(&p16).unwrap().as_slice(), vec![300, 0]);
    }

    #[test]
    fn float_labels_are_rejected_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("float_labels.tif");
        TiffEncoder::new(File::create(&p).unwrap())
            .unwrap()
            .write_image::<colortype::Gray32Float>(2, 1, &[0.0, 1.5])
            .unwrap();
        let err = read_labels(&p).unwrap_err();
        assert!(matches!(err, DataError::FloatLabels { .. }), "{err}");
        assert!(err.to_string().contains("float_labels.tif"), "{err}");
    }

    #[test]
    fn negative_labels_are_rejected_with_the_pixel() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("neg.tif");
        TiffEncoder::new(File::create(&p).unwrap())
            .unwrap()
            .write_image::<colortype::GrayI16>(3, 2, &[0, 1, 2, 3, -4, 0])
            .unwrap();
        let err = read_labels(&p).unwrap_err();
        match &err {
            DataError::NegativeLabel { value, x, y, .. } => {
                assert_eq!((*value, *x, *y), (-4, 1, 1))
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains("neg.tif"));
        // signed but non-negative is fine
        TiffEncoder::new(File::create(&p).unwrap())
            .unwrap()
            .write_image::<colortype::GrayI16>(2, 1, &[0, 5])
            .unwrap();
        assert_eq!(read_labels(&p).unwrap().as_slice(), vec![0, 5]);
    }

    #[test]
    fn truncated_and_corrupt_files_are_decode_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let big = GreyImage::from_vec(64, 64, BitDepth::U16, (0..4096).map(|i| i as f32).collect())
            .unwrap();
        for ext in ["tif", "png"] {
            let p = dir.path().join(format!("cut.{ext}"));
            write_image(&p, &big).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
            let err = read_image(&p).unwrap_err();
            assert!(matches!(err, DataError::Decode { .. }), "{ext}: {err}");
            assert!(err.to_string().contains(&format!("cut.{ext}")), "{err}");
            let p = dir.path().join(format!("junk.{ext}"));
            std::fs::write(&p, b"this is not an image at all").unwrap();
            let err = read_labels(&p).unwrap_err();
            assert!(matches!(err, DataError::Decode { .. }), "{ext}: {err}");
            assert!(err.to_string().contains(&format!("junk.{ext}")), "{err}");
        }
    }

    #[test]
    fn size_mismatch_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.tif");
        let lab = dir.path().join("a_l.tif");
        write_image(&img, &grey(BitDepth::U8)).unwrap();
        write_labels(&lab, &LabelImage::zeros(6, 7)).unwrap();
        let pair = ImagePair {
            stem: "a".into(),
            image: img,
            labels: lab,
        };
        let err = read_pair(&pair).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::SizeMismatch { .. }));
        assert!(
            msg.contains("a.tif")
                && msg.contains("a_l.tif")
                && msg.contains("7x6")
                && msg.contains("7x5"),
            "{msg}"
        );
    }

    #[test]
    fn pairing_by_stem_and_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (im, la) = (dir.path().join("images"), dir.path().join("labels"));
        std::fs::create_dir_all(&im).unwrap();
        std::fs::create_dir_all(&la).unwrap();
        let err = pair_by_stem(&im, &la).unwrap_err();
        assert!(matches!(err, DataError::EmptyFolder { .. }), "{err}");
        for s in ["b", "a"] {
            std::fs::write(im.join(format!("{s}.tif")), b"x").unwrap();
            std::fs::write(la.join(format!("{s}.png")), b"x").unwrap();
        }
        std::fs::write(im.join("notes.txt"), b"x").unwrap();
        std::fs::write(im.join(".hidden.tif"), b"x").unwrap();
        let pairs = pair_by_stem(&im, &la).unwrap();
        assert_eq!(
            pairs.iter().map(|p| p.stem.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(pairs[0].labels, la.join("a.png"));

        std::fs::write(im.join("c.tif"), b"x").unwrap();
        std::fs::write(la.join("d.tif"), b"x").unwrap();
        let msg = pair_by_stem(&im, &la).unwrap_err().to_string();
        assert!(
            msg.contains("c.tif (no labels)") && msg.contains("d.tif (no image)"),
            "{msg}"
        );

        std::fs::write(la.join("c.tif"), b"x").unwrap();
        std::fs::write(im.join("d.png"), b"x").unwrap();
        std::fs::write(im.join("a.png"), b"x").unwrap();
        let err = pair_by_stem(&im, &la).unwrap_err();
        assert!(matches!(err, DataError::DuplicateStem { .. }), "{err}");
    }

    #[test]
    fn file_info_reads_headers_and_counts_pages() {
        let dir = tempfile::tempdir().unwrap();
        let p8 = dir.path().join("l8.png");
        image::GrayImage::from_raw(3, 2, vec![0; 6])
            .unwrap()
            .save(&p8)
            .unwrap();
        let i = file_info(&p8).unwrap();
        assert_eq!((i.rows, i.cols, i.pages), (2, 3, 1));
        assert_eq!(
            (i.format.as_str(), i.pixel_type()),
            ("PNG", "u8".to_string())
        );
        let rgb = dir.path().join("rgb16.tif");
        TiffEncoder::new(File::create(&rgb).unwrap())
            .unwrap()
            .write_image::<colortype::RGB16>(1, 1, &[1, 2, 3])
            .unwrap();
        assert_eq!(file_info(&rgb).unwrap().pixel_type(), "RGB u16");
        let f = dir.path().join("f.tif");
        TiffEncoder::new(File::create(&f).unwrap())
            .unwrap()
            .write_image::<colortype::Gray32Float>(2, 1, &[0.0, 1.5])
            .unwrap();
        assert_eq!(file_info(&f).unwrap().pixel_type(), "f32");
        let i16 = dir.path().join("i16.tif");
        TiffEncoder::new(File::create(&i16).unwrap())
            .unwrap()
            .write_image::<colortype::GrayI16>(2, 1, &[0, 1])
            .unwrap();
        assert_eq!(file_info(&i16).unwrap().pixel_type(), "i16");
        // a stack of three pages is described, not refused
        let stack = dir.path().join("stack.tif");
        let mut enc = TiffEncoder::new(File::create(&stack).unwrap()).unwrap();
        for _ in 0..3 {
            enc.write_image::<colortype::Gray16>(4, 5, &[7; 20])
                .unwrap();
        }
        drop(enc);
        let i = file_info(&stack).unwrap();
        assert_eq!(
            (i.rows, i.cols, i.pages, i.pixel_type()),
            (5, 4, 3, "u16".into())
        );
        assert!(matches!(
            read_image(&stack).unwrap_err(),
            DataError::Stack { pages: 3, .. }
        ));
    }

    #[test]
    fn writers_reject_unknown_extensions() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_labels(dir.path().join("x.png"), &LabelImage::zeros(1, 1)).unwrap_err();
        assert!(matches!(err, DataError::UnsupportedExtension { .. }));
        let err = write_image(dir.path().join("x.jpg"), &grey(BitDepth::U8)).unwrap_err();
        assert!(matches!(err, DataError::UnsupportedExtension { .. }));
    }
}
