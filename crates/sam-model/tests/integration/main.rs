//! The integration tests of sam-model, one test binary (each links libtorch once): one module per topic.

mod checkpoint;
mod checkpoint_cache;
mod flops;
mod model;
mod parity;
mod peft;
