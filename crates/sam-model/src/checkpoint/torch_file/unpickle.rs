//! Turning the unpickled object tree of a `torch.save` archive into tensors: dicts of tensors
//! (state_dicts) rebuilt from `_rebuild_tensor_v2` / `_rebuild_parameter` and the archive's
//! storages, with every global checked against what a state_dict needs.
//!
//! Nothing here knows what the keys mean; which entries hold which network is decided in
//! `checkpoint::layout`.

use super::archive::TorchArchive;
use super::pickle_read::{self, Object};
use super::storage::{storage_kind, swap_bytes};
use crate::checkpoint::error::CheckpointError;
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// An opened `torch.save` archive whose pickle has been parsed: reads the tensors of the
/// object tree, storage by storage.
pub(crate) struct TorchFile<'a> {
    path: &'a Path,
    archive: TorchArchive,
    /// Storages already read, by key: tensors that are views of one storage share it.
    storages: HashMap<String, Tensor>,
}

impl<'a> TorchFile<'a> {
    /// Opens the archive at `path` and parses its pickle (without running anything). Returns
    /// the file and the root of the object tree.
    pub(crate) fn open(path: &'a Path) -> Result<(Self, Object), CheckpointError> {
        let mut archive = TorchArchive::open(path)?;
        let pickle = archive.record("data.pkl")?;
        let root = pickle_read::parse(&pickle).map_err(|e| CheckpointError::Pickle {
            path: path.to_path_buf(),
            entry: archive.entry_name("data.pkl"),
            offset: e.offset,
            message: e.message,
        })?;
        let file = Self {
            path,
            archive,
            storages: HashMap::new(),
        };
        Ok((file, root))
    }

    /// Reads a record of the archive that may be absent (`None`).
    pub(crate) fn optional_record(
        &mut self,
        name: &str,
    ) -> Result<Option<Vec<u8>>, CheckpointError> {
        if self.archive.has_record(name) {
            self.archive.record(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Reads a dict of tensors. `where_` names the dict for errors (empty for the file itself).
    pub(crate) fn state_dict(
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
        let items: Vec<_> = items
            .into_iter()
            .filter(|(k, _)| !is_str(k, "_metadata"))
            .collect();
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
pub(crate) fn check_globals(
    path: &Path,
    obj: &Object,
    location: &str,
) -> Result<(), CheckpointError> {
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
        Object::Int(_) | Object::Float(_) | Object::Unicode(_) | Object::Bool(_) | Object::None => {
            Ok(())
        }
    }
}

pub(crate) fn is_str(obj: &Object, s: &str) -> bool {
    matches!(obj, Object::Unicode(u) if u == s)
}

fn as_i64(obj: &Object) -> Option<i64> {
    match obj {
        Object::Int(i) => Some(*i),
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
pub(crate) fn describe(obj: &Object) -> String {
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
        Object::Float(f) => format!("the number {f}"),
        Object::Unicode(s) => format!("the string {s:?}"),
        Object::Bool(b) => format!("the boolean {b}"),
        Object::None => "None".to_string(),
        Object::Tuple(t) => format!("a tuple of {} items", t.len()),
        Object::List(l) => format!("a list of {} items", l.len()),
        Object::Dict(d) => format!("a dict of {} entries", d.len()),
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
