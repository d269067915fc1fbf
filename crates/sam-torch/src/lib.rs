//! sam-torch: The C++ bridge to libtorch features tch lacks: c10d process groups, autocast, CUDA devices.
#![deny(missing_docs)]
