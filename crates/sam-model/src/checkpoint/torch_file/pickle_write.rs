//! Writing `torch.save` archives of state_dicts that `torch.load(path, weights_only=True)`
//! accepts: a state_dict alone, or a dict of named state_dicts.
//!
//! The pickle is written by hand at protocol 2, exactly the opcodes `torch.save` emits for an
//! `OrderedDict` of tensors: only `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`
//! and `torch.<Dtype>Storage` are referenced. Nothing here knows what the keys mean.

use super::archive::TorchArchiveWriter;
use super::storage::storage_name;
use crate::checkpoint::error::CheckpointError;
use std::io::{BufWriter, Write};
use std::path::Path;
use tch::{Device, Tensor};

/// Items per SETITEMS batch, as Python's pickler (`pickle._BATCHSIZE`) writes them.
const SETITEMS_BATCH: usize = 1000;

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
        for (b, batch) in entries.chunks(SETITEMS_BATCH).enumerate() {
            self.out.push(op::MARK);
            for (i, e) in batch.iter().enumerate() {
                let key = first_key + b * SETITEMS_BATCH + i;
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

/// Writes the archive: pickle, bookkeeping records, then one storage per tensor.
fn write_archive(
    path: &Path,
    file: &mut std::fs::File,
    pickle: Vec<u8>,
    tensors: &[&(String, Tensor)],
    records: &[(String, Vec<u8>)],
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
    // Records of our own: torch.load reads the records it knows by name and ignores others.
    for (name, data) in records {
        archive.add(name, data).map_err(zip_err)?;
    }
    archive.add("version", b"3\n").map_err(zip_err)?;
    let mut inner = archive.finish().map_err(zip_err)?;
    inner.flush().map_err(|e| CheckpointError::io(path, e))?;
    Ok(())
}

/// A `torch.save` archive of state_dicts, checked and pickled, ready to be written: every
/// key and dtype is checked when it is prepared, so a bad input fails before any file exists.
pub(crate) struct TorchSave<'t> {
    pickle: Vec<u8>,
    tensors: Vec<&'t (String, Tensor)>,
    records: Vec<(String, Vec<u8>)>,
}

impl<'t> TorchSave<'t> {
    /// `tensors` as one state_dict (an `OrderedDict`); `path` names the target in errors.
    pub(crate) fn state_dict(
        path: &Path,
        tensors: &'t [(String, Tensor)],
    ) -> Result<Self, CheckpointError> {
        let entries = entries(path, tensors)?;
        let mut pickler = Pickler::new();
        pickler.state_dict(&entries, 0);
        Ok(Self {
            pickle: pickler.finish(),
            tensors: tensors.iter().collect(),
            records: Vec::new(),
        })
    }

    /// A dict `{name: state_dict, ...}`, in the given order; `path` names the target in
    /// errors.
    pub(crate) fn state_dicts(
        path: &Path,
        dicts: &[(&str, &'t [(String, Tensor)])],
    ) -> Result<Self, CheckpointError> {
        let entries = dicts
            .iter()
            .map(|(_, tensors)| entries(path, tensors))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pickler = Pickler::new();
        pickler.out.extend_from_slice(&[op::EMPTY_DICT, op::MARK]);
        let mut first_key = 0;
        for ((name, _), entries) in dicts.iter().zip(&entries) {
            pickler.string(name);
            pickler.state_dict(entries, first_key);
            first_key += entries.len();
        }
        pickler.out.push(op::SETITEMS);
        Ok(Self {
            pickle: pickler.finish(),
            tensors: dicts.iter().flat_map(|(_, t)| t.iter()).collect(),
            records: Vec::new(),
        })
    }

    /// Adds a record of our own to the archive (`archive/<name>`), which torch.load ignores.
    pub(crate) fn with_record(mut self, name: &str, data: Vec<u8>) -> Self {
        self.records.push((name.to_owned(), data));
        self
    }

    /// Writes the archive into the open `file`; `path` names the target in errors.
    pub(crate) fn write(
        self,
        path: &Path,
        file: &mut std::fs::File,
    ) -> Result<(), CheckpointError> {
        write_archive(path, file, self.pickle, &self.tensors, &self.records)
    }
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
