//! Tiny random-weight checkpoints.

use std::path::{Path, PathBuf};

use sam_model::{
    named_tensors, write_micro_sam_checkpoint, write_sam_state_dict, Sam, SamConfig, UnetrConfig,
    UnetrDecoder,
};
use tch::{nn, Device};

/// The tiny checkpoint could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building the tiny model failed.
    #[error("tiny model: {0}")]
    Model(#[source] sam_model::ModelError),
    /// Writing the checkpoint failed.
    #[error("{}: {source}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// The cause (boxed: the checkpoint error is large).
        #[source]
        source: Box<sam_model::CheckpointError>,
    },
}

/// A checkpoint of a random-weight [`SamConfig::tiny`] model (256 px input, two ViT blocks):
/// a plain SAM state_dict, or with [`TinyCheckpoint::with_decoder`] a micro_sam checkpoint
/// that also holds a [`UnetrConfig::tiny`] decoder. Written in seconds on the CPU; loads
/// wherever a real checkpoint does.
///
/// The weights come from libtorch's global generator seeded with [`TinyCheckpoint::seed`]
/// (7 unless set), so they are the same in every run of a single-threaded test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TinyCheckpoint {
    decoder: bool,
    seed: i64,
}

impl Default for TinyCheckpoint {
    fn default() -> Self {
        Self::new()
    }
}

impl TinyCheckpoint {
    /// A plain SAM checkpoint, seed 7.
    pub fn new() -> Self {
        Self {
            decoder: false,
            seed: 7,
        }
    }

    /// With (`true`) or without the UNETR decoder.
    pub fn with_decoder(mut self, decoder: bool) -> Self {
        self.decoder = decoder;
        self
    }

    /// The seed of the random weights.
    pub fn seed(mut self, seed: i64) -> Self {
        self.seed = seed;
        self
    }

    /// Builds the model and writes it to `path` (whose folder must exist).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let checkpoint_error = |source| Error::Checkpoint {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        tch::manual_seed(self.seed);
        let vs = nn::VarStore::new(Device::Cpu);
        Sam::new(&vs.root(), &SamConfig::tiny()).map_err(Error::Model)?;
        if self.decoder {
            let dvs = nn::VarStore::new(Device::Cpu);
            UnetrDecoder::new(&dvs.root(), &UnetrConfig::tiny()).map_err(Error::Model)?;
            write_micro_sam_checkpoint(path, &named_tensors(&vs), &named_tensors(&dvs))
                .map_err(checkpoint_error)
        } else {
            write_sam_state_dict(path, &named_tensors(&vs)).map_err(checkpoint_error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_plain_and_micro_sam_checkpoints_that_read_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for decoder in [false, true] {
            let path = dir.path().join(format!("tiny_{decoder}.pt"));
            TinyCheckpoint::new()
                .with_decoder(decoder)
                .write(&path)
                .unwrap_or_else(|e| panic!("{e}"));
            let ckpt = sam_model::read_checkpoint(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!ckpt.model_state.is_empty());
            assert_eq!(ckpt.decoder_state.is_some(), decoder);
        }
    }
}
