//! The integration tests of sam-infer, one test binary (each links libtorch once): one module per topic.
#![allow(clippy::unwrap_used)]

mod ais_reference;
mod apg_reference;
mod tiling;

use std::path::Path;

/// Little-endian f32 values of a raw file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Little-endian u32 values of a raw file.
pub fn read_u32(path: &Path) -> Vec<u32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
