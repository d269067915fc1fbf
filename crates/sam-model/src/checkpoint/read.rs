//! Reading checkpoints: `torch.save` archives (plain SAM / MobileSAM state_dicts, micro_sam and
//! torch_em training checkpoints, decoder-only files) and our safetensors checkpoints.

use super::archive::TorchArchive;
use super::error::CheckpointError;
use super::pickle_read;
use super::storage::{storage_kind, swap_bytes};
use candle_core::pickle::Object;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// What kind of checkpoint a file held.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointKind {
    /// A plain segment_anything state_dict with a ViT image encoder (the original
    /// `sam_vit_{b,l,h}_*.pth` files, and what [`write_sam_state_dict`](crate::write_sam_state_dict) writes).
    SamStateDict,
    /// A plain MobileSAM state_dict (TinyViT image encoder, keys `image_encoder.layers.*`).
    MobileSam,
    /// A micro_sam / torch_em checkpoint: a dict with `model_state` (and optionally
    /// `decoder_state` and training state).
    MicroSam {
        /// The prefix stripped from the `model_state` keys: `sam.`, `module.sam.`, `module.`
        /// or empty.
        prefix: String,
    },
    /// A state_dict of the instance-segmentation decoder alone (micro_sam's `*_decoder` files).
    DecoderOnly,
    /// A safetensors checkpoint written by [`write_safetensors_checkpoint`](crate::write_safetensors_checkpoint).
    Safetensors,
}

/// The weights read from a checkpoint file.
#[derive(Debug)]
pub struct TorchCheckpoint {
    /// The file read.
    pub path: PathBuf,
    /// What kind of file it was.
    pub kind: CheckpointKind,
    /// SAM weights with segment_anything's keys (`image_encoder.*`, `prompt_encoder.*`,
    /// `mask_decoder.*`), prefixes such as `sam.` or `module.sam.` stripped, in file order.
    /// Empty for a decoder-only file.
    pub model_state: Vec<(String, Tensor)>,
    /// The instance-segmentation (UNETR) decoder weights with micro_sam's keys, if present.
    pub decoder_state: Option<Vec<(String, Tensor)>>,
    /// Things skipped while reading (e.g. the optimiser state of a training checkpoint).
    pub warnings: Vec<String>,
}

/// Entries of micro_sam / torch_em training checkpoints that hold training state, not weights
/// (torch_em `DefaultTrainer.save_checkpoint`). They are skipped with a warning.
const TRAINING_STATE_ENTRIES: &[&str] = &[
    "optimizer_state",
    "scheduler_state",
    "scaler_state",
    "iteration",
    "epoch",
    "best_epoch",
    "best_metric",
    "current_metric",
    "init",
    "train_time",
    "timestamp",
    "config",
];

/// Key prefixes of the SAM model's three parts.
const SAM_PARTS: &[&str] = &["image_encoder.", "prompt_encoder.", "mask_decoder."];

/// Reads a checkpoint file: a `torch.save` archive or a safetensors file.
///
/// Accepted `torch.save` contents: a plain SAM or MobileSAM state_dict; a micro_sam / torch_em
/// dict with `model_state` (keys prefixed `sam.`, `module.sam.` or `module.`, stripped here),
/// optional `decoder_state` and training state (skipped with a warning); a decoder-only
/// state_dict. The pickle is interpreted without running any code, and only the globals a
/// state_dict needs are accepted in the weights (tensor rebuild functions, storage types,
/// `OrderedDict`): anything else is a [`CheckpointError::ForbiddenGlobal`].
///
/// Tensors come back on the CPU in the file's dtype (fp32, fp16, bf16, int64, ...), contiguous.
pub fn read_checkpoint(path: impl AsRef<Path>) -> Result<TorchCheckpoint, CheckpointError> {
    let ckpt = read_any(path.as_ref())?;
    check_finite(&ckpt)?;
    Ok(ckpt)
}

/// Refuses floating-point weights with NaN or infinite values, naming the first such tensor.
fn check_finite(ckpt: &TorchCheckpoint) -> Result<(), CheckpointError> {
    let model = ckpt.model_state.iter().map(|(k, t)| (k.clone(), t));
    let decoder = ckpt
        .decoder_state
        .iter()
        .flatten()
        .map(|(k, t)| (format!("decoder_state/{k}"), t));
    for (key, t) in model.chain(decoder) {
        if !t.is_floating_point() || t.numel() == 0 {
            continue;
        }
        let torch = |source| CheckpointError::Torch {
            path: ckpt.path.clone(),
            key: key.clone(),
            source,
        };
        let finite = t.f_isfinite().map_err(torch)?;
        let all = finite.f_all().map_err(torch)?;
        if !bool::try_from(&all).map_err(torch)? {
            let count = finite
                .f_logical_not()
                .and_then(|n| n.f_sum(tch::Kind::Int64))
                .and_then(|n| i64::try_from(&n))
                .map_err(torch)?;
            return Err(CheckpointError::NonFinite {
                path: ckpt.path.clone(),
                key,
                count,
                total: t.numel() as i64,
            });
        }
    }
    Ok(())
}

fn read_any(path: &Path) -> Result<TorchCheckpoint, CheckpointError> {
    let mut head = [0u8; 16];
    let n = {
        let mut file = std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        read_up_to(&mut file, &mut head).map_err(|e| CheckpointError::io(path, e))?
    };
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        read_torch_zip(path)
    } else if is_safetensors(head) {
        read_safetensors(path)
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

fn read_safetensors(path: &Path) -> Result<TorchCheckpoint, CheckpointError> {
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| CheckpointError::format(path, format!("bad safetensors file: {e}")))?;
    let mut model_state = Vec::new();
    let mut decoder_state = Vec::new();
    for (name, tensor) in tensors {
        match name.strip_prefix(super::write::SAFETENSORS_DECODER_PREFIX) {
            Some(key) => decoder_state.push((key.to_string(), tensor)),
            None => model_state.push((name, tensor)),
        }
    }
    crate::state_dict::sort_state_dict(&mut model_state);
    crate::state_dict::sort_state_dict(&mut decoder_state);
    Ok(TorchCheckpoint {
        path: path.to_path_buf(),
        kind: CheckpointKind::Safetensors,
        model_state,
        decoder_state: (!decoder_state.is_empty()).then_some(decoder_state),
        warnings: Vec::new(),
    })
}

fn read_torch_zip(path: &Path) -> Result<TorchCheckpoint, CheckpointError> {
    let mut archive = TorchArchive::open(path)?;
    let pickle = archive.record("data.pkl")?;
    let root = pickle_read::parse(&pickle).map_err(|e| CheckpointError::Pickle {
        path: path.to_path_buf(),
        entry: archive.entry_name("data.pkl"),
        offset: e.offset,
        message: e.message,
    })?;
    let mut loader = Loader {
        path,
        archive,
        storages: HashMap::new(),
    };
    loader.interpret(root)
}

/// Turns the unpickled object tree into tensors, reading storages from the archive.
struct Loader<'a> {
    path: &'a Path,
    archive: TorchArchive,
    /// Storages already read, by key: tensors that are views of one storage share it.
    storages: HashMap<String, Tensor>,
}

impl Loader<'_> {
    fn interpret(&mut self, root: Object) -> Result<TorchCheckpoint, CheckpointError> {
        let path = self.path;
        let items = match root {
            Object::Dict(items) => items,
            other => {
                check_globals(path, &other, "<file>")?;
                return Err(CheckpointError::format(
                    path,
                    format!(
                        "it holds {} instead of a state_dict (a dict of tensors)",
                        describe(&other)
                    ),
                ));
            }
        };
        let is_training = items.iter().any(|(k, _)| is_str(k, "model_state"));
        if is_training {
            self.interpret_training(items)
        } else {
            self.interpret_plain(items)
        }
    }

    /// A micro_sam / torch_em dict with `model_state`.
    fn interpret_training(
        &mut self,
        items: Vec<(Object, Object)>,
    ) -> Result<TorchCheckpoint, CheckpointError> {
        let path = self.path;
        let mut warnings = Vec::new();
        let mut model_state = None;
        let mut decoder_state = None;
        for (key, value) in items {
            let key = match key {
                Object::Unicode(key) => key,
                other => {
                    return Err(CheckpointError::format(
                        path,
                        format!("a top-level key is {}, expected a string", describe(&other)),
                    ))
                }
            };
            match key.as_str() {
                "model_state" => {
                    check_globals(path, &value, "model_state")?;
                    model_state = Some(self.state_dict(value, "model_state")?);
                }
                "decoder_state" => {
                    check_globals(path, &value, "decoder_state")?;
                    decoder_state = Some(self.state_dict(value, "decoder_state")?);
                }
                known if TRAINING_STATE_ENTRIES.contains(&known) => {
                    warnings.push(format!("skipped `{known}` (training state, not weights)"));
                }
                other => {
                    // Unknown entries are skipped too, but only if harmless.
                    check_globals(path, &value, other)?;
                    warnings.push(format!(
                        "skipped unknown entry `{other}` ({}); only model_state and \
                         decoder_state are read",
                        describe(&value)
                    ));
                }
            }
        }
        let model_state = model_state.unwrap_or_default();
        let (model_state, prefix) = strip_model_prefix(model_state);
        Ok(TorchCheckpoint {
            path: path.to_path_buf(),
            kind: CheckpointKind::MicroSam { prefix },
            model_state,
            decoder_state,
            warnings,
        })
    }

    /// A plain state_dict: SAM, MobileSAM, or a decoder alone.
    fn interpret_plain(
        &mut self,
        items: Vec<(Object, Object)>,
    ) -> Result<TorchCheckpoint, CheckpointError> {
        let path = self.path;
        let dict = Object::Dict(items);
        check_globals(path, &dict, "")?;
        let mut tensors = self.state_dict(dict, "")?;
        let mut warnings = Vec::new();
        if !tensors.is_empty() && tensors.iter().all(|(k, _)| k.starts_with("module.")) {
            for (k, _) in tensors.iter_mut() {
                k.drain(.."module.".len());
            }
            warnings.push(
                "stripped the `module.` prefix (a DistributedDataParallel state_dict)".into(),
            );
        }
        let is_sam = tensors
            .iter()
            .any(|(k, _)| SAM_PARTS.iter().any(|p| k.starts_with(p)));
        let (kind, model_state, decoder_state) = if !is_sam {
            (CheckpointKind::DecoderOnly, Vec::new(), Some(tensors))
        } else if tensors
            .iter()
            .any(|(k, _)| k.starts_with("image_encoder.layers."))
        {
            (CheckpointKind::MobileSam, tensors, None)
        } else {
            (CheckpointKind::SamStateDict, tensors, None)
        };
        Ok(TorchCheckpoint {
            path: path.to_path_buf(),
            kind,
            model_state,
            decoder_state,
            warnings,
        })
    }

    /// Reads a dict of tensors. `where_` names the dict for errors (empty for the file itself).
    fn state_dict(
        &mut self,
        obj: Object,
        where_: &str,
    ) -> Result<Vec<(String, Tensor)>, CheckpointError> {
        let path = self.path;
        let located = |k: &str| {
            if where_.is_empty() {
                k.to_string()
            } else {
                format!("{where_}/{k}")
            }
        };
        let items = match obj {
            Object::Dict(items) => items,
            other => {
                return Err(CheckpointError::entry(
                    path,
                    if where_.is_empty() { "<file>" } else { where_ },
                    format!(
                        "expected a state_dict (a dict of tensors), found {}",
                        describe(&other)
                    ),
                ))
            }
        };
        // torch's state_dict() attaches per-module version info as `_metadata` (BUILD appends
        // it after the items).
        let items = file_order(
            items
                .into_iter()
                .filter(|(k, _)| !is_str(k, "_metadata"))
                .collect(),
        );
        let mut tensors = Vec::with_capacity(items.len());
        for (key, value) in items {
            let key = match key {
                Object::Unicode(key) => key,
                other => {
                    return Err(CheckpointError::entry(
                        path,
                        &located("?"),
                        format!(
                            "state_dict keys must be strings, found {}",
                            describe(&other)
                        ),
                    ))
                }
            };
            let tensor = self.tensor(value, &located(&key))?;
            tensors.push((key, tensor));
        }
        Ok(tensors)
    }

    /// Rebuilds one tensor from `_rebuild_tensor_v2` / `_rebuild_parameter`.
    fn tensor(&mut self, obj: Object, key: &str) -> Result<Tensor, CheckpointError> {
        let path = self.path;
        let (callable, args) = match obj {
            Object::Reduce { callable, args } => (*callable, *args),
            other => {
                return Err(CheckpointError::entry(
                    path,
                    key,
                    format!("expected a tensor, found {}", describe(&other)),
                ))
            }
        };
        let (module, name) = match &callable {
            Object::Class {
                module_name,
                class_name,
            } => (module_name.as_str(), class_name.as_str()),
            other => {
                return Err(CheckpointError::entry(
                    path,
                    key,
                    format!("expected a tensor, found a call of {}", describe(other)),
                ))
            }
        };
        let mut args = match args {
            Object::Tuple(args) => args,
            other => {
                return Err(CheckpointError::entry(
                    path,
                    key,
                    format!(
                        "{module}.{name} arguments: expected a tuple, found {}",
                        describe(&other)
                    ),
                ))
            }
        };
        match (module, name) {
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                if args.is_empty() {
                    return Err(CheckpointError::entry(
                        path,
                        key,
                        format!("{name} without arguments"),
                    ));
                }
                let data = args.swap_remove(0);
                self.tensor(data, key)
            }
            ("torch._utils", "_rebuild_tensor_v2") => self.rebuild_tensor_v2(args, key),
            _ => Err(CheckpointError::entry(
                path,
                key,
                format!("expected a tensor, found a call of `{module}.{name}`"),
            )),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`
    /// (torch/_utils.py).
    fn rebuild_tensor_v2(
        &mut self,
        args: Vec<Object>,
        key: &str,
    ) -> Result<Tensor, CheckpointError> {
        let path = self.path;
        let bad =
            |what: &str| CheckpointError::entry(path, key, format!("_rebuild_tensor_v2: {what}"));
        if args.len() < 4 {
            return Err(bad(&format!(
                "expected at least 4 arguments, found {}",
                args.len()
            )));
        }
        let offset = as_i64(&args[1]).ok_or_else(|| bad("storage offset is not an integer"))?;
        let size = int_tuple(&args[2]).ok_or_else(|| bad("size is not a tuple of integers"))?;
        let stride = int_tuple(&args[3]).ok_or_else(|| bad("stride is not a tuple of integers"))?;
        if size.len() != stride.len() {
            return Err(bad(&format!(
                "size {size:?} and stride {stride:?} differ in length"
            )));
        }
        // Persistent id: ('storage', <storage type>, key, location, numel).
        let pid = match &args[0] {
            Object::PersistentLoad(pid) => match pid.as_ref() {
                Object::Tuple(t) => t,
                other => return Err(bad(&format!("storage id is {}", describe(other)))),
            },
            other => {
                return Err(bad(&format!(
                    "expected a storage, found {}",
                    describe(other)
                )))
            }
        };
        if pid.len() != 5 || !is_str(&pid[0], "storage") {
            return Err(bad(
                "storage id is not ('storage', type, key, location, numel)",
            ));
        }
        let kind = match &pid[1] {
            Object::Class {
                module_name,
                class_name,
            } if module_name == "torch" => storage_kind(class_name)
                .ok_or_else(|| bad(&format!("unsupported storage type torch.{class_name}")))?,
            other => return Err(bad(&format!("storage type is {}", describe(other)))),
        };
        let storage_key = match &pid[2] {
            Object::Unicode(s) => s.clone(),
            other => return Err(bad(&format!("storage key is {}", describe(other)))),
        };
        let numel = as_i64(&pid[4]).ok_or_else(|| bad("storage size is not an integer"))?;
        let storage = self.storage(&storage_key, kind, numel, key)?;
        check_bounds(offset, &size, &stride, numel).map_err(|m| bad(&m))?;
        let view = storage
            .f_as_strided(&size, &stride, Some(offset))
            .and_then(|t| t.f_contiguous())
            .map_err(|source| CheckpointError::Torch {
                path: path.to_path_buf(),
                key: key.to_string(),
                source,
            })?;
        Ok(view)
    }

    /// Reads storage `data/<key>` as a flat tensor of `numel` elements (once per key).
    fn storage(
        &mut self,
        storage_key: &str,
        kind: Kind,
        numel: i64,
        key: &str,
    ) -> Result<Tensor, CheckpointError> {
        let path = self.path;
        if let Some(t) = self.storages.get(storage_key) {
            if t.kind() != kind || t.numel() as i64 != numel {
                return Err(CheckpointError::entry(
                    path,
                    key,
                    format!(
                        "storage data/{storage_key} is used as {kind:?}×{numel} and as {:?}×{}",
                        t.kind(),
                        t.numel()
                    ),
                ));
            }
            return Ok(t.shallow_clone());
        }
        if numel < 0 {
            return Err(CheckpointError::entry(
                path,
                key,
                format!("negative storage size {numel}"),
            ));
        }
        let record = format!("data/{storage_key}");
        let mut bytes = self.archive.record(&record)?;
        let elt = kind.elt_size_in_bytes();
        let expected = (numel as u128) * (elt as u128);
        if bytes.len() as u128 != expected {
            return Err(CheckpointError::entry(
                path,
                key,
                format!(
                    "storage {} holds {} bytes, expected {numel} × {elt} = {expected}",
                    self.archive.entry_name(&record),
                    bytes.len()
                ),
            ));
        }
        if self.archive.big_endian {
            swap_bytes(&mut bytes, elt);
        }
        let tensor = Tensor::f_from_data_size(&bytes, &[numel], kind).map_err(|source| {
            CheckpointError::Torch {
                path: path.to_path_buf(),
                key: key.to_string(),
                source,
            }
        })?;
        self.storages
            .insert(storage_key.to_string(), tensor.shallow_clone());
        Ok(tensor)
    }
}

/// Python's pickler writes dict items in SETITEMS batches of 1000 (`pickle._BATCHSIZE`), and
/// candle's interpreter appends each batch in reverse; reversing each run of 1000 restores the
/// file's order.
fn file_order(mut items: Vec<(Object, Object)>) -> Vec<(Object, Object)> {
    for chunk in items.chunks_mut(SETITEMS_BATCH) {
        chunk.reverse();
    }
    items
}

/// Items per SETITEMS batch, as Python's pickler (and our writer) emit them.
pub(crate) const SETITEMS_BATCH: usize = 1000;

/// Checks that a strided view stays inside its storage of `numel` elements.
fn check_bounds(offset: i64, size: &[i64], stride: &[i64], numel: i64) -> Result<(), String> {
    if offset < 0 {
        return Err(format!("negative storage offset {offset}"));
    }
    if let Some(s) = size.iter().find(|&&s| s < 0) {
        return Err(format!("negative size {s} in {size:?}"));
    }
    if let Some(s) = stride.iter().find(|&&s| s < 0) {
        return Err(format!("negative stride {s} in {stride:?}"));
    }
    if size.contains(&0) {
        return Ok(());
    }
    let last: i128 = offset as i128
        + size
            .iter()
            .zip(stride)
            .map(|(&n, &s)| (n as i128 - 1) * s as i128)
            .sum::<i128>();
    if last >= numel as i128 {
        return Err(format!(
            "size {size:?}, stride {stride:?} and offset {offset} reach element {last}, but the \
             storage holds {numel}"
        ));
    }
    Ok(())
}

/// Strips `module.sam.`, `sam.` or `module.` from each key, as micro_sam does with `sam.`.
/// Returns the prefix of the first key that had one (empty if none had).
fn strip_model_prefix(tensors: Vec<(String, Tensor)>) -> (Vec<(String, Tensor)>, String) {
    const PREFIXES: &[&str] = &["module.sam.", "sam.", "module."];
    let mut seen: Option<&str> = None;
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| match PREFIXES.iter().find(|p| k.starts_with(*p)) {
            Some(p) => {
                seen.get_or_insert(p);
                (k[p.len()..].to_string(), t)
            }
            None => (k, t),
        })
        .collect();
    (tensors, seen.unwrap_or("").to_string())
}

fn is_allowed_global(module: &str, name: &str) -> bool {
    match module {
        "torch._utils" => {
            matches!(
                name,
                "_rebuild_tensor_v2" | "_rebuild_parameter" | "_rebuild_parameter_with_state"
            )
        }
        "torch" => storage_kind(name).is_some(),
        "collections" => name == "OrderedDict",
        _ => false,
    }
}

/// Fails on the first global outside the state_dict allowlist, naming it and where it is.
fn check_globals(path: &Path, obj: &Object, location: &str) -> Result<(), CheckpointError> {
    let forbid = |module: &str, name: &str, location: &str| CheckpointError::ForbiddenGlobal {
        path: path.to_path_buf(),
        global: format!("{module}.{name}"),
        location: if location.is_empty() {
            "<file>".to_string()
        } else {
            location.to_string()
        },
    };
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => {
            if is_allowed_global(module_name, class_name) {
                Ok(())
            } else {
                Err(forbid(module_name, class_name, location))
            }
        }
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            check_globals(path, callable, location)?;
            check_globals(path, args, location)
        }
        Object::PersistentLoad(inner) => check_globals(path, inner, location),
        Object::Tuple(items) | Object::List(items) => items
            .iter()
            .try_for_each(|o| check_globals(path, o, location)),
        Object::Dict(items) => items.iter().try_for_each(|(k, v)| {
            check_globals(path, k, location)?;
            match k {
                Object::Unicode(k) if location.is_empty() => check_globals(path, v, k),
                Object::Unicode(k) => check_globals(path, v, &format!("{location}/{k}")),
                _ => check_globals(path, v, location),
            }
        }),
        Object::Int(_)
        | Object::Long(_)
        | Object::Float(_)
        | Object::Unicode(_)
        | Object::Bool(_)
        | Object::None
        | Object::Mark => Ok(()),
    }
}

fn is_str(obj: &Object, s: &str) -> bool {
    matches!(obj, Object::Unicode(u) if u == s)
}

fn as_i64(obj: &Object) -> Option<i64> {
    match obj {
        Object::Int(i) => Some(*i as i64),
        Object::Long(i) => Some(*i),
        _ => None,
    }
}

fn int_tuple(obj: &Object) -> Option<Vec<i64>> {
    match obj {
        Object::Tuple(items) => items.iter().map(as_i64).collect(),
        _ => None,
    }
}

/// A short description of a pickled value for error messages.
fn describe(obj: &Object) -> String {
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => format!("the global `{module_name}.{class_name}`"),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => match callable.as_ref()
        {
            Object::Class {
                module_name,
                class_name,
            } => {
                format!("an object built by `{module_name}.{class_name}`")
            }
            _ => "a constructed object".to_string(),
        },
        Object::Int(i) => format!("the integer {i}"),
        Object::Long(i) => format!("the integer {i}"),
        Object::Float(f) => format!("the number {f}"),
        Object::Unicode(s) => format!("the string {s:?}"),
        Object::Bool(b) => format!("the boolean {b}"),
        Object::None => "None".to_string(),
        Object::Tuple(t) => format!("a tuple of {} items", t.len()),
        Object::List(l) => format!("a list of {} items", l.len()),
        Object::Dict(d) => format!("a dict of {} entries", d.len()),
        Object::Mark => "a pickle mark".to_string(),
        Object::PersistentLoad(_) => "a bare storage".to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bounds_accept_transposed_and_offset_views() {
        // A 3×2 transpose of a 2×3 matrix: last element 0 + 2*1 + 1*3 = 5 < 6.
        assert!(check_bounds(0, &[3, 2], &[1, 3], 6).is_ok());
        // 2 elements from offset 4 of 6.
        assert!(check_bounds(4, &[2], &[1], 6).is_ok());
        assert!(check_bounds(5, &[2], &[1], 6).is_err());
        assert!(check_bounds(0, &[0, 7], &[100, 100], 0).is_ok());
        assert!(check_bounds(0, &[2], &[-1], 6).is_err());
        assert!(check_bounds(0, &[i64::MAX], &[i64::MAX], 6).is_err());
    }

    #[test]
    fn prefixes_are_stripped_per_key() {
        let t = || Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
        let (out, prefix) = strip_model_prefix(vec![
            ("module.sam.image_encoder.pos_embed".into(), t()),
            ("sam.mask_decoder.iou_token.weight".into(), t()),
            ("prompt_encoder.no_mask_embed.weight".into(), t()),
        ]);
        let keys: Vec<_> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "image_encoder.pos_embed",
                "mask_decoder.iou_token.weight",
                "prompt_encoder.no_mask_embed.weight"
            ]
        );
        assert_eq!(prefix, "module.sam.");
    }

    #[test]
    fn globals_outside_the_allowlist_are_named_with_their_location() {
        let evil = Object::Reduce {
            callable: Box::new(Object::Class {
                module_name: "posix".into(),
                class_name: "system".into(),
            }),
            args: Box::new(Object::Tuple(vec![Object::Unicode("echo".into())])),
        };
        let dict = Object::Dict(vec![(Object::Unicode("w".into()), evil)]);
        let err = check_globals(Path::new("f.pth"), &dict, "model_state").unwrap_err();
        match err {
            CheckpointError::ForbiddenGlobal {
                global, location, ..
            } => {
                assert_eq!(global, "posix.system");
                assert_eq!(location, "model_state/w");
            }
            other => panic!("unexpected {other}"),
        }
    }
}
