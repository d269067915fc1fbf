//! PyTorch's legacy typed-storage names, which torch.save still writes into the pickle to
//! record each storage's dtype (`torch.FloatStorage` is float32, ...).

use tch::Kind;

/// Storage class names and their dtypes (torch/storage.py, `_dtype_to_storage_type_map`).
const STORAGES: &[(&str, Kind)] = &[
    ("FloatStorage", Kind::Float),
    ("HalfStorage", Kind::Half),
    ("BFloat16Storage", Kind::BFloat16),
    ("DoubleStorage", Kind::Double),
    ("LongStorage", Kind::Int64),
    ("IntStorage", Kind::Int),
    ("ShortStorage", Kind::Int16),
    ("CharStorage", Kind::Int8),
    ("ByteStorage", Kind::Uint8),
    ("BoolStorage", Kind::Bool),
];

/// The dtype of `torch.<name>`, if `name` is a supported storage type.
pub(crate) fn storage_kind(name: &str) -> Option<Kind> {
    STORAGES.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// The storage type name torch.save writes for a dtype.
pub(crate) fn storage_name(kind: Kind) -> Option<&'static str> {
    STORAGES.iter().find(|(_, k)| *k == kind).map(|(n, _)| *n)
}

/// Reverses the byte order of every `elt`-byte element (big-endian storages).
pub(crate) fn swap_bytes(bytes: &mut [u8], elt: usize) {
    if elt > 1 {
        for chunk in bytes.chunks_exact_mut(elt) {
            chunk.reverse();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_kinds_round_trip() {
        for (name, kind) in STORAGES {
            assert_eq!(storage_kind(name), Some(*kind));
            assert_eq!(storage_name(*kind), Some(*name));
        }
        assert_eq!(storage_kind("UntypedStorage"), None);
        assert_eq!(storage_name(Kind::ComplexFloat), None);
    }

    #[test]
    fn swaps_each_element() {
        let mut b = [1u8, 2, 3, 4, 5, 6, 7, 8];
        swap_bytes(&mut b, 4);
        assert_eq!(b, [4, 3, 2, 1, 8, 7, 6, 5]);
        swap_bytes(&mut b, 1);
        assert_eq!(b, [4, 3, 2, 1, 8, 7, 6, 5]);
    }
}
