//! The zip container of `torch.save` files (PyTorch's "zip file format", torch ≥ 1.6).
//!
//! Layout, as written by `torch.save` (torch/serialization.py, caffe2/serialize/inline_container.cc):
//! every record lives under one top-level folder (`<archive>/`): `data.pkl` (the pickle),
//! `byteorder` (`little` or `big`), `data/<key>` (one raw storage per key), `version`, and a few
//! bookkeeping records. Records are stored uncompressed and aligned to 64 bytes.

use crate::checkpoint::error::CheckpointError;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

/// An opened `torch.save` archive.
pub(crate) struct TorchArchive {
    path: PathBuf,
    zip: ZipArchive<BufReader<File>>,
    prefix: String,
    file_len: u64,
    /// Whether the storages are big-endian (`byteorder` record says `big`).
    pub big_endian: bool,
}

impl TorchArchive {
    /// Opens `path` and locates its `data.pkl`.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| CheckpointError::io(path, e))?
            .len();
        let zip = ZipArchive::new(BufReader::new(file)).map_err(|e| CheckpointError::Zip {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let names: Vec<String> = zip.file_names().map(str::to_string).collect();
        let prefix = names
            .iter()
            .filter_map(|n| n.strip_suffix("/data.pkl"))
            .find(|p| !p.contains('/'))
            .map(str::to_string);
        let Some(prefix) = prefix else {
            let torchscript = names
                .iter()
                .any(|n| n.ends_with("constants.pkl") || n.contains("/code/"));
            let reason = if torchscript {
                "it is a TorchScript archive (torch.jit.save), not a state_dict; in Python, save \
                 `model.state_dict()` with torch.save instead"
                    .to_string()
            } else {
                "zip archive without a `<archive>/data.pkl` record, so not written by torch.save"
                    .to_string()
            };
            return Err(CheckpointError::format(path, reason));
        };
        let mut archive = Self {
            path: path.to_path_buf(),
            zip,
            prefix,
            file_len,
            big_endian: false,
        };
        if archive.has_record("byteorder") {
            let order = archive.record("byteorder")?;
            archive.big_endian = match order.as_slice() {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(CheckpointError::entry(
                        path,
                        "byteorder",
                        format!(
                            "expected `little` or `big`, found {:?}",
                            String::from_utf8_lossy(other)
                        ),
                    ))
                }
            };
        }
        Ok(archive)
    }

    /// The archive's name for a record, e.g. `archive/data.pkl`.
    pub fn entry_name(&self, record: &str) -> String {
        format!("{}/{}", self.prefix, record)
    }

    pub(crate) fn has_record(&self, record: &str) -> bool {
        let name = self.entry_name(record);
        self.zip.file_names().any(|n| n == name)
    }

    /// Reads one record completely.
    pub fn record(&mut self, record: &str) -> Result<Vec<u8>, CheckpointError> {
        let name = self.entry_name(record);
        let zip_err = |e: zip::result::ZipError, path: &Path| CheckpointError::Zip {
            path: path.to_path_buf(),
            message: format!("record {name}: {e}"),
        };
        let mut entry = self
            .zip
            .by_name(&name)
            .map_err(|e| zip_err(e, &self.path))?;
        // The declared size is only a capacity hint; a corrupt header must not allocate more
        // than the file could hold.
        let mut data = Vec::with_capacity(entry.size().min(self.file_len) as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| CheckpointError::Zip {
                path: self.path.clone(),
                message: format!("record {name}: {e}"),
            })?;
        Ok(data)
    }
}

/// Writes a `torch.save`-compatible archive record by record.
pub(crate) struct TorchArchiveWriter<W: Write + std::io::Seek> {
    zip: ZipWriter<W>,
    prefix: &'static str,
}

impl<W: Write + std::io::Seek> TorchArchiveWriter<W> {
    /// Starts an archive whose records live under `archive/` (the folder name torch.save uses
    /// for file-like targets).
    pub fn new(inner: W) -> Self {
        Self {
            zip: ZipWriter::new(inner),
            prefix: "archive",
        }
    }

    /// Adds one uncompressed record, aligned to 64 bytes like torch.save does.
    pub fn add(&mut self, record: &str, data: &[u8]) -> Result<(), String> {
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .with_alignment(64)
            .large_file(data.len() as u64 >= u32::MAX as u64);
        self.zip
            .start_file(format!("{}/{}", self.prefix, record), options)
            .map_err(|e| e.to_string())?;
        self.zip.write_all(data).map_err(|e| e.to_string())
    }

    /// Writes the central directory and returns the inner writer.
    pub fn finish(self) -> Result<W, String> {
        self.zip.finish().map_err(|e| e.to_string())
    }
}
