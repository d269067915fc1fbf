//! Writing checkpoints the Python world reads: `torch.save`-format archives (a plain SAM
//! state_dict, or micro_sam's `{"model_state", "decoder_state"}`) and safetensors files.
//!
//! The pickle is written by hand at protocol 2, exactly the opcodes `torch.save` emits for an
//! `OrderedDict` of tensors, so `torch.load(path, weights_only=True)` accepts it: only
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and `torch.<Dtype>Storage`
//! are referenced.

use super::archive::TorchArchiveWriter;
use super::error::CheckpointError;
use super::storage::storage_name;
use std::io::{BufWriter, Write};
use std::path::Path;
use tch::{Device, Tensor};

/// Key prefix of decoder tensors in our safetensors checkpoints.
pub(crate) const SAFETENSORS_DECODER_PREFIX: &str = "decoder_state.";

/// Pickle opcodes (Lib/pickletools.py).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const REDUCE: u8 = b'R';
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEMS: u8 = b'u';
    pub const STOP: u8 = b'.';
}

/// A protocol-2 pickle under construction.
struct Pickler {
    out: Vec<u8>,
}

impl Pickler {
    fn new() -> Self {
        Self {
            out: vec![op::PROTO, 2],
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(op::GLOBAL);
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    fn string(&mut self, s: &str) {
        self.out.push(op::BINUNICODE);
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if (0..=0xff).contains(&v) {
            self.out.extend_from_slice(&[op::BININT1, v as u8]);
        } else if (0..=0xffff).contains(&v) {
            self.out.push(op::BININT2);
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.out.push(op::BININT);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            // Little-endian two's complement, any length.
            self.out.extend_from_slice(&[op::LONG1, 8]);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn int_tuple(&mut self, values: &[i64]) {
        match values.len() {
            0 => self.out.push(op::EMPTY_TUPLE),
            n @ 1..=3 => {
                values.iter().for_each(|&v| self.int(v));
                self.out.push([op::TUPLE1, op::TUPLE2, op::TUPLE3][n - 1]);
            }
            _ => {
                self.out.push(op::MARK);
                values.iter().for_each(|&v| self.int(v));
                self.out.push(op::TUPLE);
            }
        }
    }

    /// `collections.OrderedDict()`.
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.extend_from_slice(&[op::EMPTY_TUPLE, op::REDUCE]);
    }

    /// `_rebuild_tensor_v2(<storage>, 0, size, stride, False, OrderedDict())` for a contiguous
    /// tensor held alone in storage `data/<key>`.
    fn tensor(&mut self, storage_type: &str, key: &str, size: &[i64]) {
        let numel: i64 = size.iter().product();
        let mut stride = vec![1i64; size.len()];
        for i in (0..size.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * size[i + 1].max(1);
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(op::MARK);
        // Persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel).
        self.out.push(op::MARK);
        self.string("storage");
        self.global("torch", storage_type);
        self.string(key);
        self.string("cpu");
        self.int(numel);
        self.out.extend_from_slice(&[op::TUPLE, op::BINPERSID]);
        self.int(0);
        self.int_tuple(size);
        self.int_tuple(&stride);
        self.out.push(op::NEWFALSE);
        self.empty_ordered_dict();
        self.out.extend_from_slice(&[op::TUPLE, op::REDUCE]);
    }

    /// An `OrderedDict` of tensors whose storages are keyed `first_key`, `first_key + 1`, ...
    fn state_dict(&mut self, entries: &[Entry], first_key: usize) {
        self.empty_ordered_dict();
        // Batches of 1000 items, like Python's pickler.
        for (b, batch) in entries.chunks(super::read::SETITEMS_BATCH).enumerate() {
            self.out.push(op::MARK);
            for (i, e) in batch.iter().enumerate() {
                let key = first_key + b * super::read::SETITEMS_BATCH + i;
                self.string(&e.name);
                self.tensor(e.storage_type, &key.to_string(), &e.size);
            }
            self.out.push(op::SETITEMS);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.push(op::STOP);
        self.out
    }
}

/// One tensor to write, checked up front so that nothing is written for a bad input.
struct Entry {
    name: String,
    storage_type: &'static str,
    size: Vec<i64>,
}

fn entries(path: &Path, tensors: &[(String, Tensor)]) -> Result<Vec<Entry>, CheckpointError> {
    let mut seen = std::collections::HashSet::new();
    tensors
        .iter()
        .map(|(name, t)| {
            if !seen.insert(name.as_str()) {
                return Err(CheckpointError::entry(path, name, "the key occurs twice"));
            }
            let storage_type = storage_name(t.kind()).ok_or_else(|| {
                CheckpointError::entry(path, name, format!("cannot save dtype {:?}", t.kind()))
            })?;
            Ok(Entry {
                name: name.clone(),
                storage_type,
                size: t.size(),
            })
        })
        .collect()
}

/// The raw little-endian bytes of a tensor, contiguous, from any device.
fn tensor_bytes(path: &Path, name: &str, t: &Tensor) -> Result<Vec<u8>, CheckpointError> {
    let torch_err = |source| CheckpointError::Torch {
        path: path.to_path_buf(),
        key: name.to_string(),
        source,
    };
    let t = t
        .detach()
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_contiguous())
        .map_err(torch_err)?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel).map_err(torch_err)?;
    if cfg!(target_endian = "big") {
        super::storage::swap_bytes(&mut data, t.kind().elt_size_in_bytes());
    }
    Ok(data)
}

/// Writes a file atomically: `write` fills a temporary file next to `path`, which is renamed
/// onto `path` only when complete. On failure nothing is left behind.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File, &Path) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".sam-checkpoint-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| CheckpointError::io(path, e))?;
    let temp_path = temp.path().to_path_buf();
    write(temp.as_file_mut(), &temp_path)?;
    temp.as_file()
        .sync_all()
        .map_err(|e| CheckpointError::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // tempfile creates 0600; a model file is meant to be shared like any other output.
        std::fs::set_permissions(&temp_path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| CheckpointError::io(path, e))?;
    }
    temp.persist(path)
        .map_err(|e| CheckpointError::io(path, e.error))?;
    Ok(())
}

/// Writes the archive: pickle, bookkeeping records, then one storage per tensor.
fn write_archive(
    path: &Path,
    file: &mut std::fs::File,
    pickle: Vec<u8>,
    tensors: &[&(String, Tensor)],
) -> Result<(), CheckpointError> {
    let zip_err = |message: String| CheckpointError::Zip {
        path: path.to_path_buf(),
        message,
    };
    let mut archive = TorchArchiveWriter::new(BufWriter::new(file));
    // Same records, same order as torch 2.x's torch.save.
    archive.add("data.pkl", &pickle).map_err(zip_err)?;
    archive.add(".format_version", b"1").map_err(zip_err)?;
    archive.add(".storage_alignment", b"64").map_err(zip_err)?;
    archive.add("byteorder", b"little").map_err(zip_err)?;
    for (i, (name, t)) in tensors.iter().enumerate() {
        let data = tensor_bytes(path, name, t)?;
        archive.add(&format!("data/{i}"), &data).map_err(zip_err)?;
    }
    archive.add("version", b"3\n").map_err(zip_err)?;
    let mut inner = archive.finish().map_err(zip_err)?;
    inner.flush().map_err(|e| CheckpointError::io(path, e))?;
    Ok(())
}

/// Writes a plain segment_anything state_dict in the `torch.save` format.
///
/// The keys are written as given (use segment_anything's names, e.g. from
/// [`named_tensors`](crate::named_tensors)); Python reads the file with
/// `torch.load(path, weights_only=True)` and `Sam.load_state_dict(sd, strict=True)` accepts it.
/// Tensors may live on any device and have any layout; they are written contiguous from the
/// CPU. The file is written atomically (temporary file, then rename).
pub fn write_sam_state_dict(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let entries = entries(path, tensors)?;
    let mut pickler = Pickler::new();
    pickler.state_dict(&entries, 0);
    let pickle = pickler.finish();
    let all: Vec<_> = tensors.iter().collect();
    write_atomically(path, |file, _| write_archive(path, file, pickle, &all))
}

/// Writes micro_sam's checkpoint with the instance-segmentation decoder:
/// `{"model_state": <SAM state_dict>, "decoder_state": <decoder state_dict>}` in the
/// `torch.save` format (what micro_sam's `export_custom_sam_model(..., with_segmentation_decoder=True)`
/// writes). `model_state` keys are segment_anything's, without a `sam.` prefix, as micro_sam
/// expects them there.
pub fn write_micro_sam_checkpoint(
    path: impl AsRef<Path>,
    model_state: &[(String, Tensor)],
    decoder_state: &[(String, Tensor)],
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let model_entries = entries(path, model_state)?;
    let decoder_entries = entries(path, decoder_state)?;
    let mut pickler = Pickler::new();
    pickler.out.extend_from_slice(&[op::EMPTY_DICT, op::MARK]);
    pickler.string("model_state");
    pickler.state_dict(&model_entries, 0);
    pickler.string("decoder_state");
    pickler.state_dict(&decoder_entries, model_entries.len());
    pickler.out.push(op::SETITEMS);
    let pickle = pickler.finish();
    let all: Vec<_> = model_state.iter().chain(decoder_state).collect();
    write_atomically(path, |file, _| write_archive(path, file, pickle, &all))
}

/// Writes our internal checkpoint format, safetensors: SAM tensors under their own keys,
/// decoder tensors under `decoder_state.<key>`. [`read_checkpoint`](crate::read_checkpoint)
/// reads it back. Written atomically.
pub fn write_safetensors_checkpoint(
    path: impl AsRef<Path>,
    model_state: &[(String, Tensor)],
    decoder_state: Option<&[(String, Tensor)]>,
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let mut named: Vec<(String, Tensor)> = Vec::new();
    let decoder = decoder_state.unwrap_or(&[]);
    let mut seen = std::collections::HashSet::new();
    let prepared = model_state.iter().map(|(k, t)| (k.clone(), t)).chain(
        decoder
            .iter()
            .map(|(k, t)| (format!("{SAFETENSORS_DECODER_PREFIX}{k}"), t)),
    );
    for (name, t) in prepared {
        if name.starts_with(SAFETENSORS_DECODER_PREFIX)
            && model_state.iter().any(|(k, _)| *k == name)
        {
            return Err(CheckpointError::entry(
                path,
                &name,
                "model key clashes with the decoder prefix",
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(CheckpointError::entry(path, &name, "the key occurs twice"));
        }
        let t = t
            .detach()
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_contiguous())
            .map_err(|source| CheckpointError::Torch {
                path: path.to_path_buf(),
                key: name.clone(),
                source,
            })?;
        named.push((name, t));
    }
    write_atomically(path, |_, temp_path| {
        Tensor::write_safetensors(&named, temp_path).map_err(|source| CheckpointError::Torch {
            path: path.to_path_buf(),
            key: String::new(),
            source,
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ints_use_the_smallest_opcode() {
        let mut p = Pickler::new();
        p.int(7);
        p.int(300);
        p.int(-2);
        p.int(1 << 40);
        let expected: Vec<u8> = [
            vec![0x80, 2],
            vec![b'K', 7],
            vec![b'M', 0x2c, 0x01],
            vec![b'J', 0xfe, 0xff, 0xff, 0xff],
            vec![0x8a, 8, 0, 0, 0, 0, 0, 1, 0, 0],
        ]
        .concat();
        assert_eq!(p.out, expected);
    }

    #[test]
    fn contiguous_strides_are_row_major() {
        let mut p = Pickler::new();
        p.tensor("FloatStorage", "0", &[2, 3, 4]);
        // The stride tuple (12, 4, 1) follows the size tuple (2, 3, 4).
        let needle = [
            b'K', 2, b'K', 3, b'K', 4, 0x87, b'K', 12, b'K', 4, b'K', 1, 0x87,
        ];
        assert!(p.out.windows(needle.len()).any(|w| w == needle));
    }
}
