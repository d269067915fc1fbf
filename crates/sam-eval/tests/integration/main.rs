//! The integration tests of sam-eval, one test binary (each links libtorch once): one module per topic.

mod html;
mod labels;
mod metrics;
