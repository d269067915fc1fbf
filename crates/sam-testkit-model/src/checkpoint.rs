//! Tiny random-weight checkpoints.

use std::path::{Path, PathBuf};

use sam_model::{
    named_tensors, write_micro_sam_checkpoint, write_sam_state_dict, Sam, SamConfig, UnetrConfig,
    UnetrDecoder,
};
use tch::{nn, Device, Tensor};

/// Named tensors, as `sam_model::named_tensors` returns them.
pub type NamedTensors = Vec<(String, Tensor)>;

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
/// (7 unless set), under a lock: the same in every run, also when tests run in parallel
/// threads (as long as they draw from libtorch's generator only through this type).
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

    /// The weights: the SAM state_dict and, with the decoder, the UNETR decoder's, each sorted
    /// by key. For tests that change weights before writing them.
    pub fn named_tensors(&self) -> Result<(NamedTensors, Option<NamedTensors>), Error> {
        sam_model::seeded(self.seed, || {
            let vs = nn::VarStore::new(Device::Cpu);
            Sam::new(&vs.root(), &SamConfig::tiny()).map_err(Error::Model)?;
            let decoder = if self.decoder {
                let dvs = nn::VarStore::new(Device::Cpu);
                UnetrDecoder::new(&dvs.root(), &UnetrConfig::tiny()).map_err(Error::Model)?;
                Some(named_tensors(&dvs))
            } else {
                None
            };
            Ok((named_tensors(&vs), decoder))
        })
    }

    /// Builds the model and writes it to `path` (whose folder must exist).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let checkpoint_error = |source| Error::Checkpoint {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        match self.named_tensors()? {
            (sam, Some(decoder)) => {
                write_micro_sam_checkpoint(path, &sam, &decoder).map_err(checkpoint_error)
            }
            (sam, None) => write_sam_state_dict(path, &sam).map_err(checkpoint_error),
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

    /// Max |a - b| over the tensors of two state_dicts with the same keys.
    fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|((ka, ta), (kb, tb))| {
                assert_eq!(ka, kb);
                (ta - tb).abs().max().double_value(&[])
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn parallel_threads_get_the_weights_of_their_seed() {
        let reference = |seed| {
            TinyCheckpoint::new()
                .seed(seed)
                .named_tensors()
                .unwrap_or_else(|e| panic!("{e}"))
                .0
        };
        let (seven, eight) = (reference(7), reference(8));
        assert!(max_diff(&seven, &eight) > 0.0);
        let drawn: Vec<(i64, NamedTensors)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    s.spawn(move || {
                        let seed = 7 + i % 2;
                        (0..4).map(|_| (seed, reference(seed))).collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|_| panic!("thread panicked")))
                .collect()
        });
        for (seed, tensors) in drawn {
            let expected = if seed == 7 { &seven } else { &eight };
            assert_eq!(max_diff(&tensors, expected), 0.0, "seed {seed}");
        }
    }
}
