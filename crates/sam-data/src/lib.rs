//! sam-data: Brightfield image/label I/O, normalisation, augmentation, patch sampling, prompts and AIS targets.
#![deny(missing_docs)]
