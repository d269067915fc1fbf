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
use crate::peft::{from_micro_sam_layout, merge_into_base, to_micro_sam_layout, PeftSpec};
use crate::state_dict::{apply_state_dict, LoadError, LoadMode, LoadReport};
use crate::{ImageEncoder, Sam, SamConfig, UnetrConfig, UnetrDecoder};

/// A var store's variables sorted by key.
fn sorted(vars: std::collections::HashMap<String, Tensor>) -> StateDict {
    let mut v: StateDict = vars.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Prefix of the decoder's variables when SAM's and the decoder's are listed together
/// ([`SamModel::named_variables`]); SAM's keep segment_anything's keys unprefixed.
pub const DECODER_PREFIX: &str = "decoder.";

/// Prefix of the image-encoder adapters' variables (LoRA, FacT, SSF) when listed with SAM's
/// ([`SamModel::named_variables`]); after it come micro_sam's keys, e.g.
/// `peft.image_encoder.blocks.3.attn.qkv.w_a_linear_q.weight`.
pub const PEFT_PREFIX: &str = "peft.";

/// Prefix of the image encoder's variables in SAM's state_dict.
const IMAGE_ENCODER_PREFIX: &str = "image_encoder.";

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
    /// Weights with [`PEFT_PREFIX`] keys for a model without adapters.
    #[error(
        "the weights hold {count} image-encoder adapter variable(s) (e.g. `{example}`) but the \
         model has no adapters (model.peft)"
    )]
    UnexpectedAdapters {
        /// Adapter variables in the weights.
        count: usize,
        /// One of their keys, prefix included.
        example: String,
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
    /// The image encoder's adapters (see [`SamModel::with_peft`]).
    peft: Option<VarStore>,
}

impl fmt::Debug for SamModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SamModel")
            .field("sam", self.sam.config())
            .field("decoder", &self.decoder.as_ref().map(|(_, d)| d.config()))
            .field("peft", &self.peft())
            .finish()
    }
}

impl SamModel {
    /// Builds SAM from `sam` and, when given, the decoder from `decoder`, with random weights
    /// (seed them through [`crate::seeded`]), on `device`.
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
            peft: None,
        })
    }

    /// Adds parameter-efficient adapters to the image encoder (micro_sam's `PEFT_Sam`): their
    /// variables in a var store of their own, randomly initialised as micro_sam's (LoRA's B
    /// factors zero), and the encoder's own weights frozen (`requires_grad` off). The prompt
    /// encoder, mask decoder and instance decoder stay trainable.
    ///
    /// Load the base weights before or after; adapters come from [`SamModel::load_named`] or
    /// [`SamModel::load_peft`].
    ///
    /// # Errors
    /// A TinyViT encoder (micro_sam has no PEFT for it), a second set of adapters, or a spec
    /// that does not fit the encoder (rank, block indexes).
    pub fn with_peft(mut self, spec: &PeftSpec) -> Result<Self, ModelError> {
        if self.peft.is_some() {
            return Err(ModelError::Config {
                field: "peft".into(),
                expected: "one set of adapters".into(),
                found: "a second one".into(),
            });
        }
        let vs = VarStore::new(self.device());
        match &mut self.sam.image_encoder {
            ImageEncoder::Vit(enc) => enc.attach_peft(&(vs.root() / "image_encoder"), spec)?,
            ImageEncoder::TinyVit(_) => {
                return Err(ModelError::Config {
                    field: "peft".into(),
                    expected: "a ViT image encoder (vit_b, vit_l, vit_h)".into(),
                    found: "TinyViT (vit_t)".into(),
                })
            }
        }
        for (name, var) in self.sam_vs.variables() {
            if name.starts_with(IMAGE_ENCODER_PREFIX) {
                let _ = var.set_requires_grad(false);
            }
        }
        self.peft = Some(vs);
        Ok(self)
    }

    /// The adapters of the image encoder, if it has any.
    pub fn peft(&self) -> Option<&PeftSpec> {
        match &self.sam.image_encoder {
            ImageEncoder::Vit(enc) => enc.peft(),
            ImageEncoder::TinyVit(_) => None,
        }
    }

    /// The adapters' variables (keys as micro_sam's PEFT state_dict), if there are adapters.
    pub fn peft_var_store(&self) -> Option<&VarStore> {
        self.peft.as_ref()
    }

    /// Copies adapter weights (micro_sam keys, no [`PEFT_PREFIX`]) into the adapters, strictly.
    pub fn load_peft(&self, adapters: &[(String, Tensor)]) -> Result<LoadReport, SamModelError> {
        match &self.peft {
            Some(vs) => apply_state_dict(vs, adapters, LoadMode::Strict).map_err(|source| {
                SamModelError::Weights {
                    origin: "the given adapter weights".into(),
                    part: ModelPart::Sam,
                    source,
                }
            }),
            None => Err(SamModelError::UnexpectedAdapters {
                count: adapters.len(),
                example: adapters.first().map(|(k, _)| k.clone()).unwrap_or_default(),
            }),
        }
    }

    /// SAM's weights with the adapters folded in: the plain segment_anything state_dict of a
    /// model that computes what this one computes in inference (see
    /// [`crate::peft::merge_into_base`]). Without adapters, SAM's weights.
    pub fn merged_sam_state(&self) -> StateDict {
        let base = sorted(self.sam_vs.variables());
        match (&self.peft, self.peft()) {
            (Some(vs), Some(spec)) => merge_into_base(&base, &sorted(vs.variables()), spec),
            _ => base.into_iter().map(|(k, t)| (k, t.detach())).collect(),
        }
    }

    /// SAM's weights in micro_sam's PEFT layout (what `get_sam_model(..., peft_kwargs=...)`
    /// loads); `None` without adapters.
    pub fn micro_sam_peft_state(&self) -> Option<StateDict> {
        let (vs, spec) = (self.peft.as_ref()?, self.peft()?);
        let detach = |v: StateDict| v.into_iter().map(|(k, t)| (k, t.detach())).collect();
        Some(to_micro_sam_layout(
            &detach(sorted(self.sam_vs.variables())),
            &detach(sorted(vs.variables())),
            spec,
        ))
    }

    /// The variables a training checkpoint keeps: every variable of
    /// [`SamModel::named_variables`] except, with adapters, the frozen base weights of the
    /// image encoder (the run names its base model instead; [`SamModel::load_named`] takes
    /// them from the model).
    pub fn checkpoint_variables(&self) -> Vec<(String, Tensor)> {
        let mut vars = self.named_variables();
        if self.peft.is_some() {
            vars.retain(|(k, _)| !k.starts_with(IMAGE_ENCODER_PREFIX));
        }
        vars
    }

    /// The frozen base weights of the image encoder (sorted by key), whose digest identifies the
    /// base model of a run with adapters.
    pub fn image_encoder_base(&self) -> StateDict {
        let mut v: StateDict = sorted(self.sam_vs.variables());
        v.retain(|(k, _)| k.starts_with(IMAGE_ENCODER_PREFIX));
        v
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
            peft: None,
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
        // micro_sam's PEFT layout: base weights under renamed keys plus the adapters.
        let peft = from_micro_sam_layout(&ckpt.model_state).map_err(|e| {
            SamModelError::Checkpoint(CheckpointError::Format {
                path: ckpt.path.clone(),
                reason: e.to_string(),
            })
        })?;
        let base_state = match &peft {
            Some((base, _, _)) => base,
            None => &ckpt.model_state,
        };
        let arch = infer_architecture(base_state)?;
        let sam_cfg = arch.sam_config(base_state)?;
        let decoder_cfg = match &ckpt.decoder_state {
            Some(state) => Some(infer_unetr_config(state, &sam_cfg)?),
            None => None,
        };
        let mut model = Self::new(&sam_cfg, decoder_cfg.as_ref(), device)?;
        if let Some(side) = ckpt.input_size {
            model.set_input_size(side)?;
        }
        if let Some((_, adapters, spec)) = &peft {
            model = model.with_peft(spec)?;
            model.load_peft(adapters)?;
        }
        let path = ckpt.path.display();
        model
            .load_state(base_state, ckpt.decoder_state.as_deref(), LoadMode::Strict)
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
        self.sam.set_input_size(side)?;
        if let Some((_, decoder)) = &mut self.decoder {
            decoder.set_input_size(side);
        }
        Ok(())
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
    /// [`DECODER_PREFIX`], the adapters' with [`PEFT_PREFIX`]. The tensors are the variables
    /// themselves (an optimiser may take them); detach them to write them.
    pub fn named_variables(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self.sam_vs.variables().into_iter().collect();
        if let Some((vs, _)) = &self.decoder {
            out.extend(
                vs.variables()
                    .into_iter()
                    .map(|(k, t)| (format!("{DECODER_PREFIX}{k}"), t)),
            );
        }
        if let Some(vs) = &self.peft {
            out.extend(
                vs.variables()
                    .into_iter()
                    .map(|(k, t)| (format!("{PEFT_PREFIX}{k}"), t)),
            );
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Splits a list as [`SamModel::named_variables`] writes it into SAM's weights and the
    /// decoder's (prefix removed), in their order; adapter weights are left out (see
    /// [`SamModel::split_adapters`]). The tensors are shallow copies.
    pub fn split_named(tensors: &[(String, Tensor)]) -> (StateDict, StateDict) {
        let mut sam = Vec::new();
        let mut decoder = Vec::new();
        for (k, t) in tensors {
            if k.starts_with(PEFT_PREFIX) {
                continue;
            }
            match k.strip_prefix(DECODER_PREFIX) {
                Some(key) => decoder.push((key.to_string(), t.shallow_clone())),
                None => sam.push((k.clone(), t.shallow_clone())),
            }
        }
        (sam, decoder)
    }

    /// The adapter weights of a list as [`SamModel::named_variables`] writes it, prefix
    /// removed (micro_sam keys), in their order.
    pub fn split_adapters(tensors: &[(String, Tensor)]) -> StateDict {
        tensors
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix(PEFT_PREFIX)
                    .map(|key| (key.to_string(), t.shallow_clone()))
            })
            .collect()
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
        let (mut sam, decoder) = Self::split_named(tensors);
        if !self.has_decoder() && !decoder.is_empty() {
            return Err(SamModelError::UnexpectedDecoder {
                count: decoder.len(),
                example: format!("{DECODER_PREFIX}{}", decoder[0].0),
            });
        }
        let adapters = Self::split_adapters(tensors);
        match &self.peft {
            None if !adapters.is_empty() => {
                return Err(SamModelError::UnexpectedAdapters {
                    count: adapters.len(),
                    example: format!("{PEFT_PREFIX}{}", adapters[0].0),
                })
            }
            None => {}
            Some(vs) => {
                apply_state_dict(vs, &adapters, mode).map_err(|source| SamModelError::Weights {
                    origin: "the given weights (adapters)".into(),
                    part: ModelPart::Sam,
                    source,
                })?;
                // A checkpoint of a run with adapters leaves out the frozen base encoder
                // (`checkpoint_variables`): keep the model's own.
                if !sam.iter().any(|(k, _)| k.starts_with(IMAGE_ENCODER_PREFIX)) {
                    sam.extend(self.image_encoder_base());
                }
            }
        }
        self.load_state(&sam, Some(&decoder), mode)
    }
}
