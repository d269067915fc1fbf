//! Parameter-efficient fine-tuning of the ViT image encoder, as micro_sam's
//! `micro_sam/models/peft_sam.py` has it: LoRA and FacT on the qkv projection of chosen blocks,
//! SSF (a learned scale and shift after every layer) on chosen blocks.
//!
//! The adapters' variables live in their own `VarStore` under micro_sam's state_dict keys
//! (e.g. `image_encoder.blocks.3.attn.qkv.w_a_linear_q.weight`), the base weights keep
//! segment_anything's keys. This module also converts between that pair and the two layouts
//! other programs read: the merged plain SAM state_dict ([`merge_into_base`]) and micro_sam's
//! PEFT state_dict ([`to_micro_sam_layout`], [`from_micro_sam_layout`]).

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use tch::nn;
use tch::{Kind, Tensor};

use crate::error::ModelError;
use crate::model::StateDict;

/// The adaptation method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftMethod {
    /// Low-rank updates of the q and v projections (`LoRASurgery` with `["q", "v"]`).
    Lora,
    /// Factor-tuning of the q and v projections (`FacTSurgery`, dropout 0.1 in training).
    Fact,
    /// Scale and shift after qkv, proj, lin1, lin2, norm1 and norm2 (`SSFSurgery`).
    Ssf,
}

impl fmt::Display for PeftMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeftMethod::Lora => "lora",
            PeftMethod::Fact => "fact",
            PeftMethod::Ssf => "ssf",
        })
    }
}

/// Which adapters an image encoder gets.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftSpec {
    /// The method.
    pub method: PeftMethod,
    /// Rank of the LoRA / FacT factors (≥ 1); not used by SSF.
    pub rank: i64,
    /// Factor on the LoRA update (micro_sam: 1). FacT and SSF do not use it.
    pub alpha: f64,
    /// The adapted blocks, 0-based, ascending and distinct.
    pub blocks: Vec<i64>,
    /// Dropout of the FacT factors in training (micro_sam: 0.1).
    pub fact_dropout: f64,
}

impl PeftSpec {
    /// A spec with micro_sam's defaults (alpha 1, FacT dropout 0.1) for `blocks`.
    pub fn new(method: PeftMethod, rank: i64, blocks: Vec<i64>) -> Self {
        Self {
            method,
            rank,
            alpha: 1.0,
            blocks,
            fact_dropout: 0.1,
        }
    }

    /// Checks the spec against an encoder of `depth` blocks.
    pub fn validate(&self, depth: i64) -> Result<(), ModelError> {
        let bad = |field: &str, expected: &str, found: String| ModelError::Config {
            field: format!("peft.{field}"),
            expected: expected.into(),
            found,
        };
        if self.method != PeftMethod::Ssf && self.rank < 1 {
            return Err(bad("rank", "≥ 1 for lora and fact", self.rank.to_string()));
        }
        if self.blocks.is_empty() {
            return Err(bad("blocks", "at least one block", "none".into()));
        }
        if let Some(b) = self.blocks.iter().find(|&&b| b < 0 || b >= depth) {
            return Err(bad(
                "blocks",
                &format!("block indexes in 0..{depth}"),
                b.to_string(),
            ));
        }
        if self.blocks.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(
                "blocks",
                "ascending, distinct indexes",
                format!("{:?}", self.blocks),
            ));
        }
        Ok(())
    }

    /// The first adapted block: blocks before it (and the patch embedding) hold no trainable
    /// weight and need not be in the autograd graph.
    pub fn first_block(&self) -> i64 {
        self.blocks.first().copied().unwrap_or(0)
    }
}

/// `ScaleShiftLayer`: `y · scale + shift` over the last axis.
#[derive(Debug)]
pub(crate) struct ScaleShift {
    scale: Tensor,
    shift: Tensor,
}

impl ScaleShift {
    /// `scale ~ N(1, 0.2)`, `shift ~ N(0, 0.2)` of width `dim` under `p`.
    pub(crate) fn new(p: nn::Path, dim: i64) -> Self {
        let scale = p.var(
            "scale",
            &[dim],
            nn::Init::Randn {
                mean: 1.0,
                stdev: 0.2,
            },
        );
        let shift = p.var(
            "shift",
            &[dim],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.2,
            },
        );
        Self { scale, shift }
    }

    pub(crate) fn apply(&self, y: &Tensor) -> Tensor {
        let kind = y.kind();
        y * self.scale.to_kind(kind) + self.shift.to_kind(kind)
    }
}

/// Applies an optional [`ScaleShift`].
pub(crate) fn scale_shift(ss: &Option<ScaleShift>, y: Tensor) -> Tensor {
    match ss {
        Some(ss) => ss.apply(&y),
        None => y,
    }
}

/// An additive update of the q and v parts of a qkv projection.
#[derive(Debug)]
pub(crate) enum QkvAdapter {
    /// `Δq = α·B_q·A_q·x`, `Δv = α·B_v·A_v·x` (`AttentionLoRA`).
    Lora {
        a_q: Tensor,
        b_q: Tensor,
        a_v: Tensor,
        b_v: Tensor,
        alpha: f64,
    },
    /// `Δq = V·drop(S_q·U·x)`, `Δv = V·drop(S_v·U·x)` (`FacTSurgery`).
    Fact {
        u: Tensor,
        v: Tensor,
        s_q: Tensor,
        s_v: Tensor,
        dropout: f64,
    },
}

/// PyTorch's `nn.Linear` weight initialisation, U(±1/√fan_in).
fn torch_linear_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

impl QkvAdapter {
    /// The adapter of `spec.method` for a `dim`-wide qkv projection, under `p` (the path of
    /// the projection, `…attn.qkv`). LoRA's B factors start at zero, as micro_sam's.
    pub(crate) fn new(p: &nn::Path, spec: &PeftSpec, dim: i64) -> Option<Self> {
        let r = spec.rank;
        let w =
            |name: &str, shape: [i64; 2], init: nn::Init| (p / name).var("weight", &shape, init);
        match spec.method {
            PeftMethod::Lora => Some(Self::Lora {
                a_q: w("w_a_linear_q", [r, dim], torch_linear_init(dim)),
                b_q: w("w_b_linear_q", [dim, r], nn::Init::Const(0.0)),
                a_v: w("w_a_linear_v", [r, dim], torch_linear_init(dim)),
                b_v: w("w_b_linear_v", [dim, r], nn::Init::Const(0.0)),
                alpha: spec.alpha,
            }),
            PeftMethod::Fact => Some(Self::Fact {
                s_q: w("q_FacTs", [r, r], torch_linear_init(r)),
                s_v: w("v_FacTs", [r, r], torch_linear_init(r)),
                u: w("FacTu", [r, dim], torch_linear_init(dim)),
                v: w("FacTv", [dim, r], torch_linear_init(r)),
                dropout: spec.fact_dropout,
            }),
            PeftMethod::Ssf => None,
        }
    }

    /// Adds the update to `qkv`, the projection's output for `x`.
    ///
    /// # Shapes
    /// `x`: `[..., dim]`, `qkv`: `[..., 3 dim]` → `[..., 3 dim]`.
    pub(crate) fn apply(&self, x: &Tensor, qkv: Tensor, train: bool) -> Tensor {
        let kind = x.kind();
        let mm = |x: &Tensor, w: &Tensor| x.matmul(&w.to_kind(kind).tr());
        let (dq, dv) = match self {
            Self::Lora {
                a_q,
                b_q,
                a_v,
                b_v,
                alpha,
            } => {
                let dq = mm(&mm(x, a_q), b_q);
                let dv = mm(&mm(x, a_v), b_v);
                if *alpha == 1.0 {
                    (dq, dv)
                } else {
                    (dq * *alpha, dv * *alpha)
                }
            }
            Self::Fact {
                u,
                v,
                s_q,
                s_v,
                dropout,
            } => {
                let ux = mm(x, u);
                let hq = mm(&ux, s_q).dropout(*dropout, train);
                let hv = mm(&ux, s_v).dropout(*dropout, train);
                (mm(&hq, v), mm(&hv, v))
            }
        };
        let parts = qkv.chunk(3, -1);
        Tensor::cat(
            &[&parts[0] + dq, parts[1].shallow_clone(), &parts[2] + dv],
            -1,
        )
    }
}

/// The scale-shift layers of one block (`SSFSurgery` on a `Block`).
#[derive(Debug)]
pub(crate) struct BlockScaleShift {
    pub(crate) norm1: Option<ScaleShift>,
    pub(crate) norm2: Option<ScaleShift>,
    pub(crate) lin1: Option<ScaleShift>,
    pub(crate) lin2: Option<ScaleShift>,
}

// ---------------------------------------------------------------------------------------------
// State-dict layouts.

/// The base weights a method renames in an adapted block of micro_sam's layout:
/// (module path inside the block, the wrapped module's name in micro_sam).
fn wrapped_modules(method: PeftMethod) -> &'static [(&'static str, &'static str)] {
    match method {
        PeftMethod::Lora | PeftMethod::Fact => &[("attn.qkv", "qkv_proj")],
        PeftMethod::Ssf => &[
            ("attn.qkv", "layer"),
            ("attn.proj", "layer"),
            ("mlp.lin1", "layer"),
            ("mlp.lin2", "layer"),
            ("norm1", "layer"),
            ("norm2", "layer"),
        ],
    }
}

fn block_prefix(i: i64) -> String {
    format!("image_encoder.blocks.{i}.")
}

/// micro_sam's PEFT state_dict (what `get_sam_model(..., peft_kwargs=...)` loads) from the base
/// weights (segment_anything keys) and the adapters (their micro_sam keys). micro_sam's LoRA
/// has alpha 1: another alpha is folded into the B factors.
pub fn to_micro_sam_layout(base: &StateDict, adapters: &StateDict, spec: &PeftSpec) -> StateDict {
    let mut out: StateDict = base
        .iter()
        .map(|(k, t)| (rename_base(k, spec, true), t.shallow_clone()))
        .collect();
    let fold_alpha = spec.method == PeftMethod::Lora && spec.alpha != 1.0;
    out.extend(adapters.iter().map(|(k, t)| {
        let t = if fold_alpha && k.contains(".w_b_linear_") {
            tch::no_grad(|| t.detach() * spec.alpha)
        } else {
            t.shallow_clone()
        };
        (k.clone(), t)
    }));
    out
}

/// Renames a base key into micro_sam's PEFT layout (`to_peft`) or back.
fn rename_base(key: &str, spec: &PeftSpec, to_peft: bool) -> String {
    for &b in &spec.blocks {
        let prefix = block_prefix(b);
        let Some(rest) = key.strip_prefix(&prefix) else {
            continue;
        };
        for (module, wrapper) in wrapped_modules(spec.method) {
            let plain = format!("{module}.");
            let wrapped = format!("{module}.{wrapper}.");
            let (from, to) = if to_peft {
                (&plain, &wrapped)
            } else {
                (&wrapped, &plain)
            };
            if let Some(param) = rest.strip_prefix(from.as_str()) {
                if to_peft || !param.contains('.') {
                    return format!("{prefix}{to}{param}");
                }
            }
        }
    }
    key.to_string()
}

/// Whether `key` names an adapter variable of micro_sam's layout, and of which method.
fn adapter_method(key: &str) -> Option<PeftMethod> {
    if !key.starts_with("image_encoder.blocks.") {
        return None;
    }
    let last2: Vec<&str> = key.rsplitn(3, '.').collect();
    match last2.as_slice() {
        ["weight", "w_a_linear_q" | "w_b_linear_q" | "w_a_linear_v" | "w_b_linear_v", _] => {
            Some(PeftMethod::Lora)
        }
        ["weight", "q_FacTs" | "v_FacTs" | "FacTu" | "FacTv", _] => Some(PeftMethod::Fact),
        ["scale" | "shift", _, _] => Some(PeftMethod::Ssf),
        _ => None,
    }
}

/// Block index of an `image_encoder.blocks.<i>.` key.
fn block_of(key: &str) -> Option<i64> {
    key.strip_prefix("image_encoder.blocks.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Why a state_dict is not a PEFT checkpoint we can read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeftLayoutError {
    /// Adapters of two methods in one state_dict.
    #[error("the weights mix adapters of two methods ({0} and {1})")]
    MixedMethods(PeftMethod, PeftMethod),
    /// Keys of the micro_sam layout that the method does not have (e.g. LoRA on the MLP).
    #[error(
        "unsupported PEFT key `{0}`: only LoRA on q and v, FacT and SSF as micro_sam builds \
         them are read"
    )]
    Unsupported(String),
}

/// Splits a micro_sam PEFT state_dict into base weights (segment_anything keys), adapters
/// (micro_sam keys) and the spec they describe (method, rank from the factor shapes, the
/// adapted blocks; alpha 1 as micro_sam's). `Ok(None)`: a plain SAM state_dict.
pub fn from_micro_sam_layout(
    state: &StateDict,
) -> Result<Option<(StateDict, StateDict, PeftSpec)>, PeftLayoutError> {
    let mut method = None;
    let mut blocks = BTreeSet::new();
    let mut rank = 0;
    for (k, t) in state {
        let Some(m) = adapter_method(k) else {
            if k.contains(".qkv.w_") || k.contains(".mlp.w_") || k.contains(".mlp.mlp_layer.") {
                return Err(PeftLayoutError::Unsupported(k.clone()));
            }
            continue;
        };
        match method {
            Some(prev) if prev != m => return Err(PeftLayoutError::MixedMethods(prev, m)),
            _ => method = Some(m),
        }
        if let Some(b) = block_of(k) {
            blocks.insert(b);
        }
        if k.ends_with("w_a_linear_q.weight") || k.ends_with("FacTu.weight") {
            rank = t.size()[0];
        }
    }
    let Some(method) = method else {
        return Ok(None);
    };
    let spec = PeftSpec {
        rank,
        ..PeftSpec::new(method, rank, blocks.into_iter().collect())
    };
    let mut base = Vec::new();
    let mut adapters = Vec::new();
    for (k, t) in state {
        if adapter_method(k).is_some() {
            adapters.push((k.clone(), t.shallow_clone()));
        } else {
            base.push((rename_base(k, &spec, false), t.shallow_clone()));
        }
    }
    Ok(Some((base, adapters, spec)))
}

/// Folds the adapters into the base weights: the plain SAM state_dict whose model computes
/// what base + adapters compute in inference (FacT without dropout). LoRA / FacT add their
/// q and v updates to the qkv weight; SSF scales the rows of the wrapped linear layers and
/// the affine parameters of the norms and shifts their biases.
pub fn merge_into_base(base: &StateDict, adapters: &StateDict, spec: &PeftSpec) -> StateDict {
    let ad: HashMap<&str, &Tensor> = adapters.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let get = |k: String| ad.get(k.as_str()).map(|t| t.to_kind(Kind::Double));
    let _guard = tch::no_grad_guard();
    base.iter()
        .map(|(k, t)| {
            let merged = merged_tensor(k, t, spec, &get);
            (k.clone(), merged.unwrap_or_else(|| t.detach().copy()))
        })
        .collect()
}

fn merged_tensor(
    key: &str,
    t: &Tensor,
    spec: &PeftSpec,
    get: &dyn Fn(String) -> Option<Tensor>,
) -> Option<Tensor> {
    let b = block_of(key)?;
    if !spec.blocks.contains(&b) {
        return None;
    }
    let rest = key.strip_prefix(&block_prefix(b))?;
    let p = block_prefix(b);
    let kind = t.kind();
    let w = t.to_kind(Kind::Double);
    match spec.method {
        PeftMethod::Lora | PeftMethod::Fact => {
            if rest != "attn.qkv.weight" {
                return None;
            }
            let q = format!("{p}attn.qkv.");
            let f = |n: &str| get(format!("{q}{n}.weight"));
            let (dq, dv) = if spec.method == PeftMethod::Lora {
                let dq = f("w_b_linear_q")?.matmul(&f("w_a_linear_q")?) * spec.alpha;
                let dv = f("w_b_linear_v")?.matmul(&f("w_a_linear_v")?) * spec.alpha;
                (dq, dv)
            } else {
                let (u, v) = (f("FacTu")?, f("FacTv")?);
                let dq = v.matmul(&f("q_FacTs")?).matmul(&u);
                let dv = v.matmul(&f("v_FacTs")?).matmul(&u);
                (dq, dv)
            };
            let parts = w.chunk(3, 0);
            let merged = Tensor::cat(
                &[&parts[0] + dq, parts[1].shallow_clone(), &parts[2] + dv],
                0,
            );
            Some(merged.to_kind(kind))
        }
        PeftMethod::Ssf => {
            let (module, param) = rest.rsplit_once('.')?;
            if !wrapped_modules(PeftMethod::Ssf)
                .iter()
                .any(|(m, _)| *m == module)
            {
                return None;
            }
            let scale = get(format!("{p}{module}.scale"))?;
            let shift = get(format!("{p}{module}.shift"))?;
            let merged = match param {
                // Rows of a linear weight, or the affine weight of a norm.
                "weight" if w.dim() == 2 => w * scale.unsqueeze(1),
                "weight" => w * scale,
                "bias" => w * scale + shift,
                _ => return None,
            };
            Some(merged.to_kind(kind))
        }
    }
}
