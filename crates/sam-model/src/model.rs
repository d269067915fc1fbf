//! A checkpointed model: SAM plus micro_sam's optional UNETR instance-segmentation decoder,
//! each in its own `VarStore`, as micro_sam keeps them (`model_state` and `decoder_state`).
//!
//! This is the one place that knows how the two networks share a namespace when their
//! variables are listed together (training state, our checkpoint folders): decoder variables
//! carry the prefix [`DECODER_PREFIX`], SAM's none.

use std::fmt;
use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::checkpoint::{
    infer_architecture, infer_unetr_config, read_checkpoint, CheckpointError, TorchCheckpoint,
};
use crate::error::ModelError;
use crate::state_dict::{apply_state_dict, LoadError, LoadMode, LoadReport};
use crate::{Sam, SamConfig, UnetrConfig, UnetrDecoder};

/// Prefix of the decoder's variables when SAM's and the decoder's are listed together
/// ([`SamModel::named_variables`]); SAM's keep segment_anything's keys unprefixed.
pub const DECODER_PREFIX: &str = "decoder.";

/// Named tensors, as a state_dict lists them: `(key, tensor)` in order.
pub type StateDict = Vec<(String, Tensor)>;

/// One of the two networks of a [`SamModel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelPart {
    /// SAM (segment_anything's state_dict, micro_sam's `model_state`).
    Sam,
    /// The UNETR instance-segmentation decoder (micro_sam's `decoder_state`).
    Decoder,
}

impl fmt::Display for ModelPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelPart::Sam => "SAM (model_state)",
            ModelPart::Decoder => "instance decoder (decoder_state)",
        })
    }
}

/// Why a [`SamModel`] could not be built or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SamModelError {
    /// The checkpoint could not be read, or the architecture not inferred from its weights.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A configuration that builds no model.
    #[error(transparent)]
    Build(#[from] ModelError),
    /// The weights of one part do not fit the model built for them (strict loading lists
    /// every missing, unexpected and wrongly shaped key).
    #[error("{origin}: the {part} weights do not fit: {source}")]
    Weights {
        /// Where the weights come from: the checkpoint file (with the architecture inferred
        /// from it) or `the given weights`.
        origin: String,
        /// The part that does not fit.
        part: ModelPart,
        /// What does not fit.
        #[source]
        source: LoadError,
    },
    /// Weights with [`DECODER_PREFIX`] keys for a model without a decoder.
    #[error(
        "the weights hold {count} instance-decoder variable(s) (e.g. `{example}`) but the model \
         has no decoder"
    )]
    UnexpectedDecoder {
        /// Decoder variables in the weights.
        count: usize,
        /// One of their keys, prefix included.
        example: String,
    },
}

/// What [`SamModel::load_state`] copied into each part.
#[derive(Debug)]
pub struct StateLoadReport {
    /// SAM's variables.
    pub sam: LoadReport,
    /// The decoder's variables; `None` when the model or the weights have no decoder.
    pub decoder: Option<LoadReport>,
}

/// SAM with an optional UNETR instance-segmentation decoder, each in its own `VarStore`
/// (variable paths equal segment_anything's state_dict keys and micro_sam's `decoder_state`
/// keys): what a checkpoint holds, what training updates and what inference runs.
///
/// Build one from configurations ([`SamModel::new`], random weights) or from a checkpoint
/// ([`SamModel::load`]: both architectures inferred from the weights, strict loading).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use sam_model::SamModel;
///
/// let model = SamModel::load("final_models/vit_b_lm.pt", tch::Device::Cpu)?;
/// println!("{}", model.describe());
/// if let Some(decoder) = model.decoder() {
///     assert_eq!(decoder.config().out_channels, 3);
/// }
/// # Ok(()) }
/// ```
pub struct SamModel {
    sam_vs: VarStore,
    sam: Sam,
    decoder: Option<(VarStore, UnetrDecoder)>,
}

impl fmt::Debug for SamModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SamModel")
            .field("sam", self.sam.config())
            .field("decoder", &self.decoder.as_ref().map(|(_, d)| d.config()))
            .finish()
    }
}

impl SamModel {
    /// Builds SAM from `sam` and, when given, the decoder from `decoder`, with random weights
    /// (seed them through `tch::manual_seed`), on `device`.
    pub fn new(
        sam: &SamConfig,
        decoder: Option<&UnetrConfig>,
        device: Device,
    ) -> Result<Self, ModelError> {
        let sam_vs = VarStore::new(device);
        let sam = Sam::new(&sam_vs.root(), sam)?;
        let decoder = match decoder {
            Some(cfg) => {
                let vs = VarStore::new(device);
                let dec = UnetrDecoder::new(&vs.root(), cfg)?;
                Some((vs, dec))
            }
            None => None,
        };
        Ok(Self {
            sam_vs,
            sam,
            decoder,
        })
    }

    /// Wraps networks built in code: `sam`'s variables must live at the root of `sam_vs`, the
    /// decoder's at the root of its var store.
    pub fn from_parts(
        sam_vs: VarStore,
        sam: Sam,
        decoder: Option<(VarStore, UnetrDecoder)>,
    ) -> Self {
        Self {
            sam_vs,
            sam,
            decoder,
        }
    }

    /// Reads a checkpoint (our safetensors, a plain segment_anything or MobileSAM state_dict,
    /// a micro_sam `{model_state, decoder_state}` file; see [`read_checkpoint`]) and loads it
    /// onto `device`.
    ///
    /// See [`SamModel::from_checkpoint`] for what is inferred and how strictly it loads.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self, SamModelError> {
        let ckpt = read_checkpoint(path)?;
        Self::from_checkpoint(&ckpt, device)
    }

    /// Builds the model that the weights of `ckpt` describe and loads them: SAM's architecture
    /// from `model_state` ([`infer_architecture`]), the decoder's from `decoder_state`
    /// ([`infer_unetr_config`]) when the file has one. Loading is strict: a missing, unexpected
    /// or wrongly shaped key of either part is an error naming it.
    pub fn from_checkpoint(ckpt: &TorchCheckpoint, device: Device) -> Result<Self, SamModelError> {
        let arch = infer_architecture(&ckpt.model_state)?;
        let sam_cfg = arch.sam_config(&ckpt.model_state)?;
        let decoder_cfg = match &ckpt.decoder_state {
            Some(state) => Some(infer_unetr_config(state, &sam_cfg)?),
            None => None,
        };
        let mut model = Self::new(&sam_cfg, decoder_cfg.as_ref(), device)?;
        if let Some(side) = ckpt.input_size {
            model.set_input_size(side)?;
        }
        let path = ckpt.path.display();
        model
            .load_state(
                &ckpt.model_state,
                ckpt.decoder_state.as_deref(),
                LoadMode::Strict,
            )
            .map_err(|e| match e {
                SamModelError::Weights { part, source, .. } => SamModelError::Weights {
                    origin: match part {
                        ModelPart::Sam => format!("{path} ({})", arch.describe()),
                        ModelPart::Decoder => path.to_string(),
                    },
                    part,
                    source,
                },
                other => other,
            })?;
        Ok(model)
    }

    /// SAM.
    pub fn sam(&self) -> &Sam {
        &self.sam
    }

    /// Runs SAM at another square input side ([`Sam::set_input_size`]), e.g. a model trained
    /// with `model.encoder_input: native`.
    pub fn set_input_size(&mut self, side: i64) -> Result<(), ModelError> {
        self.sam.set_input_size(side)
    }

    /// The instance-segmentation decoder, if the model has one.
    pub fn decoder(&self) -> Option<&UnetrDecoder> {
        self.decoder.as_ref().map(|(_, d)| d)
    }

    /// Whether the model has an instance-segmentation decoder.
    pub fn has_decoder(&self) -> bool {
        self.decoder.is_some()
    }

    /// SAM's variables (keys as segment_anything's state_dict).
    pub fn sam_var_store(&self) -> &VarStore {
        &self.sam_vs
    }

    /// The decoder's variables (keys as micro_sam's `decoder_state`), if it has one.
    pub fn decoder_var_store(&self) -> Option<&VarStore> {
        self.decoder.as_ref().map(|(vs, _)| vs)
    }

    /// The device the variables live on.
    pub fn device(&self) -> Device {
        self.sam_vs.device()
    }

    /// What the model is, for logs: the SAM architecture as its weights show it (e.g.
    /// `vit_b (embed_dim 768, depth 12, ...)`), and whether it has the decoder.
    pub fn describe(&self) -> String {
        let sam: Vec<(String, Tensor)> = self.sam_vs.variables().into_iter().collect();
        let arch = match infer_architecture(&sam) {
            Ok(a) => a.describe(),
            Err(_) => "SAM".to_string(),
        };
        let arch = if self.sam.is_native_input() {
            format!(
                "{arch}, fed at {} px (trained on patches at their own size)",
                self.sam.img_size()
            )
        } else {
            arch
        };
        if self.has_decoder() {
            format!("{arch}, with instance-segmentation decoder")
        } else {
            arch
        }
    }

    /// Every variable, sorted by name: SAM's under their own keys, the decoder's prefixed with
    /// [`DECODER_PREFIX`]. The tensors are the variables themselves (an optimiser may take
    /// them); detach them to write them.
    pub fn named_variables(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self.sam_vs.variables().into_iter().collect();
        if let Some((vs, _)) = &self.decoder {
            out.extend(
                vs.variables()
                    .into_iter()
                    .map(|(k, t)| (format!("{DECODER_PREFIX}{k}"), t)),
            );
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Splits a list as [`SamModel::named_variables`] writes it into SAM's weights and the
    /// decoder's (prefix removed), in their order. The tensors are shallow copies.
    pub fn split_named(tensors: &[(String, Tensor)]) -> (StateDict, StateDict) {
        let mut sam = Vec::new();
        let mut decoder = Vec::new();
        for (k, t) in tensors {
            match k.strip_prefix(DECODER_PREFIX) {
                Some(key) => decoder.push((key.to_string(), t.shallow_clone())),
                None => sam.push((k.clone(), t.shallow_clone())),
            }
        }
        (sam, decoder)
    }

    /// Copies SAM weights (`model_state`) and, when both the model and the weights have one,
    /// decoder weights (`decoder_state`) into the variables, without recording gradients.
    /// Decoder weights for a model without a decoder are ignored, and a model's decoder
    /// without weights keeps its own (the report says which part was loaded).
    ///
    /// In [`LoadMode::Strict`] a part that does not fit is a [`SamModelError::Weights`]
    /// naming the part and every key; SAM is loaded before the decoder is checked.
    pub fn load_state(
        &self,
        model_state: &[(String, Tensor)],
        decoder_state: Option<&[(String, Tensor)]>,
        mode: LoadMode,
    ) -> Result<StateLoadReport, SamModelError> {
        let weights_err = |part| {
            move |source| SamModelError::Weights {
                origin: "the given weights".to_string(),
                part,
                source,
            }
        };
        let sam = apply_state_dict(&self.sam_vs, model_state, mode)
            .map_err(weights_err(ModelPart::Sam))?;
        let decoder = match (&self.decoder, decoder_state) {
            (Some((vs, _)), Some(state)) => {
                Some(apply_state_dict(vs, state, mode).map_err(weights_err(ModelPart::Decoder))?)
            }
            _ => None,
        };
        Ok(StateLoadReport { sam, decoder })
    }

    /// Copies weights listed as [`SamModel::named_variables`] writes them back in (see
    /// [`SamModel::load_state`]). Decoder weights for a model without a decoder are a
    /// [`SamModelError::UnexpectedDecoder`]; a decoder without weights is missing them (an
    /// error in strict mode).
    pub fn load_named(
        &self,
        tensors: &[(String, Tensor)],
        mode: LoadMode,
    ) -> Result<StateLoadReport, SamModelError> {
        let (sam, decoder) = Self::split_named(tensors);
        if !self.has_decoder() && !decoder.is_empty() {
            return Err(SamModelError::UnexpectedDecoder {
                count: decoder.len(),
                example: format!("{DECODER_PREFIX}{}", decoder[0].0),
            });
        }
        self.load_state(&sam, Some(&decoder), mode)
    }
}
