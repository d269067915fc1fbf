//! sam-config: Typed, validated experiment configuration for sam_trainer (YAML, JSON Schema, run paths).
#![deny(missing_docs)]
