//! The integration tests of sam-infer, one test binary (each links libtorch once): one module per topic.

mod ais_reference;
mod tiling;
