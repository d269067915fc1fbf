//! The tensor file formats, knowing nothing of SAM: PyTorch's `torch.save` archive (a zip with
//! a pickle and raw storages) read and written, and the recognition of safetensors files.
//!
//! Reading is hardened for untrusted files: the pickle is interpreted, never executed
//! (`pickle_read`, with nesting and size limits); the only Python globals accepted are those a
//! state_dict needs (`unpickle`); storages and strided views are bounds-checked against the
//! archive's records (`archive`, `storage`). What the entries of a file mean (which dict holds
//! SAM, which the decoder, which prefixes to strip) is `checkpoint::layout`'s business.
//!
//! - `archive`: the zip container and its records;
//! - `pickle_read`: the guarded pickle interpreter;
//! - `unpickle`: object tree → state_dicts of tensors, with the global allowlist;
//! - `storage`: torch's typed-storage names and byte order;
//! - `pickle_write`: state_dicts → a `torch.save` archive that `torch.load(weights_only=True)`
//!   accepts.

mod archive;
mod pickle_read;
mod pickle_write;
mod storage;
mod unpickle;

use std::io::Read;
use std::path::Path;

use super::error::CheckpointError;

pub(crate) use pickle_read::Object;
pub(crate) use pickle_write::TorchSave;
pub(crate) use unpickle::{check_globals, describe, is_str, TorchFile};

/// The format of a tensor file, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileFormat {
    /// A `torch.save` zip archive (torch ≥ 1.6).
    TorchZip,
    /// A safetensors file.
    Safetensors,
}

/// Recognises the format of the file at `path`; a legacy (pre-zip) `torch.save` file, an empty
/// file and anything else are errors saying what was found.
pub(crate) fn sniff(path: &Path) -> Result<FileFormat, CheckpointError> {
    let mut head = [0u8; 16];
    let n = {
        let mut file = std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        read_up_to(&mut file, &mut head).map_err(|e| CheckpointError::io(path, e))?
    };
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok(FileFormat::TorchZip)
    } else if is_safetensors(head) {
        Ok(FileFormat::Safetensors)
    } else if head.first() == Some(&0x80) {
        Err(CheckpointError::format(
            path,
            "it is in the legacy (torch < 1.6) torch.save format; re-save it in Python with \
             `torch.save(torch.load(p, weights_only=True), new_path)`",
        ))
    } else if n == 0 {
        Err(CheckpointError::format(path, "the file is empty"))
    } else {
        Err(CheckpointError::format(
            path,
            "neither a torch.save zip archive nor a safetensors file",
        ))
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn is_safetensors(head: &[u8]) -> bool {
    // An 8-byte little-endian header length, then the JSON header.
    head.len() >= 9 && head[8] == b'{' && {
        let mut len = [0u8; 8];
        len.copy_from_slice(&head[..8]);
        u64::from_le_bytes(len) < 100_000_000
    }
}
