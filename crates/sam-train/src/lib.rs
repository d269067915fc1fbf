//! sam-train: SAM fine-tuning: iterative prompting, losses, AdamW, checkpoints, resume, distributed c10d.
#![deny(missing_docs)]
