//! Building blocks shared by the modules: `segment_anything/modeling/common.py` (`MLPBlock`,
//! `LayerNorm2d`) plus the small pieces the other files need (batch norm with PyTorch's buffer
//! names, the attention kernel switch).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// How attention products are computed.
///
/// Both compute the same function; they differ in rounding (≈1e-6 in fp32) and speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionMode {
    /// `scaled_dot_product_attention`, with any additive bias passed as a float mask: the
    /// fused flash / memory-efficient kernels on GPU and the fused CPU kernel.
    #[default]
    Sdpa,
    /// The reference formula, `softmax(q·kᵀ·scale + bias)·v`, written out as in the Python code.
    Math,
}

/// Attention over `[b, heads, n, c]` tensors with an optional additive bias broadcastable to
/// `[b, heads, n_q, n_k]`.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
    mode: AttentionMode,
) -> Tensor {
    match mode {
        AttentionMode::Sdpa => {
            // A float mask must have the query's dtype (bf16 under autocast / converted models).
            let mask = bias.map(|b| b.to_kind(q.kind()));
            Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, false, scale, false)
        }
        AttentionMode::Math => {
            let mut attn = (q * scale).matmul(&k.transpose(-2, -1));
            if let Some(b) = bias {
                attn = attn.g_add(b);
            }
            attn.softmax(-1, attn.kind()).matmul(v)
        }
    }
}

/// `nn.LayerNorm(dim, eps)` with PyTorch's parameter names (`weight`, `bias`).
pub(crate) fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

/// PyTorch's default weight initialisation of `nn.Linear` and `nn.Conv*d`
/// (`kaiming_uniform_(a=√5)`): U(±1/√fan_in). tch's own default is U(±√(6/fan_in)), 2.4× wider,
/// which makes a randomly initialised SAM learn markedly slower than the Python one.
const TORCH_DEFAULT_WEIGHT: nn::Init = nn::Init::Kaiming {
    dist: nn::init::NormalOrUniform::Uniform,
    fan: nn::init::FanInOut::FanIn,
    non_linearity: nn::init::NonLinearity::ExplicitGain(0.577_350_269_189_625_8), // 1/√3
};

/// PyTorch's default bias initialisation of `nn.Linear` and `nn.Conv*d`: U(±1/√fan_in).
/// (tch initialises convolution biases to 0.)
fn torch_default_bias(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `nn.Linear(in, out, bias)`, initialised as PyTorch does.
pub(crate) fn linear(p: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> nn::Linear {
    nn::linear(
        p,
        in_dim,
        out_dim,
        nn::LinearConfig {
            bias,
            ws_init: TORCH_DEFAULT_WEIGHT,
            bs_init: Some(torch_default_bias(in_dim)),
        },
    )
}

/// `nn.Conv2d(in, out, kernel)` with the options of `cfg` (see [`conv_cfg`]), initialised as
/// PyTorch does.
pub(crate) fn conv2d<'a, P: std::borrow::Borrow<nn::Path<'a>>>(
    p: P,
    in_dim: i64,
    out_dim: i64,
    kernel: i64,
    cfg: nn::ConvConfig,
) -> nn::Conv2D {
    let fan_in = in_dim / cfg.groups.max(1) * kernel * kernel;
    let cfg = nn::ConvConfig {
        ws_init: TORCH_DEFAULT_WEIGHT,
        bs_init: torch_default_bias(fan_in),
        ..cfg
    };
    nn::conv2d(p, in_dim, out_dim, kernel, cfg)
}

/// The options of `nn.Conv2d(..., stride, padding, groups=groups, bias=bias)`.
pub(crate) fn conv_cfg(stride: i64, padding: i64, groups: i64, bias: bool) -> nn::ConvConfig {
    nn::ConvConfig {
        stride,
        padding,
        groups,
        bias,
        ..Default::default()
    }
}

/// `nn.ConvTranspose2d(in, out, kernel_size=2, stride=2)`.
pub(crate) fn conv_transpose2x2(p: nn::Path, in_dim: i64, out_dim: i64) -> nn::ConvTranspose2D {
    // PyTorch computes a transposed convolution's fan-in from weight dim 1 (`out`).
    let cfg = nn::ConvTransposeConfig {
        stride: 2,
        ws_init: TORCH_DEFAULT_WEIGHT,
        bs_init: torch_default_bias(out_dim * 4),
        ..Default::default()
    };
    nn::conv_transpose2d(p, in_dim, out_dim, 2, cfg)
}

/// `nn.GELU()` (exact, erf-based).
pub(crate) fn gelu(x: &Tensor) -> Tensor {
    x.gelu("none")
}

/// `MLPBlock`: `lin2(act(lin1(x)))`.
#[derive(Debug)]
pub struct MLPBlock {
    lin1: nn::Linear,
    lin2: nn::Linear,
    act: Activation,
}

/// Activation of an [`MLPBlock`] (GELU in the image encoder, ReLU in the two-way transformer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Gelu,
    Relu,
}

impl MLPBlock {
    pub(crate) fn new(p: nn::Path, embedding_dim: i64, mlp_dim: i64, act: Activation) -> Self {
        let lin1 = linear(&p / "lin1", embedding_dim, mlp_dim, true);
        let lin2 = linear(&p / "lin2", mlp_dim, embedding_dim, true);
        Self { lin1, lin2, act }
    }
}

impl MLPBlock {
    /// The forward pass with an optional scale-shift after each linear layer (SSF).
    pub(crate) fn forward_scaled(
        &self,
        x: &Tensor,
        ss1: &Option<crate::peft::ScaleShift>,
        ss2: &Option<crate::peft::ScaleShift>,
    ) -> Tensor {
        let h = crate::peft::scale_shift(ss1, self.lin1.forward(x));
        let h = match self.act {
            Activation::Gelu => gelu(&h),
            Activation::Relu => h.relu(),
        };
        crate::peft::scale_shift(ss2, self.lin2.forward(&h))
    }
}

impl Module for MLPBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.lin1.forward(x);
        let h = match self.act {
            Activation::Gelu => gelu(&h),
            Activation::Relu => h.relu(),
        };
        self.lin2.forward(&h)
    }
}

/// `LayerNorm2d`: layer norm over the channel axis of a `[b, c, h, w]` tensor (eps 1e-6).
#[derive(Debug)]
pub struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm2d {
    pub(crate) fn new(p: nn::Path, num_channels: i64) -> Self {
        let weight = p.ones("weight", &[num_channels]);
        let bias = p.zeros("bias", &[num_channels]);
        Self {
            weight,
            bias,
            eps: 1e-6,
        }
    }
}

impl Module for LayerNorm2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        // u = x.mean(1, keepdim=True); s = (x - u).pow(2).mean(1, keepdim=True)
        let u = x.mean_dim(1, true, x.kind());
        let d = x - &u;
        let s = d.square().mean_dim(1, true, x.kind());
        let x = d / (s + self.eps).sqrt();
        x * self.weight.view([-1, 1, 1]) + self.bias.view([-1, 1, 1])
    }
}

/// `nn.BatchNorm2d(c)` with all of PyTorch's state_dict entries (`weight`, `bias`,
/// `running_mean`, `running_var`, `num_batches_tracked`), eps 1e-5, momentum 0.1.
#[derive(Debug)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
}

impl BatchNorm2d {
    pub(crate) fn new(p: nn::Path, num_features: i64) -> Self {
        Self::with_weight(p, num_features, 1.0)
    }

    /// `bn_weight_init` of TinyViT's `Conv2d_BN`.
    pub(crate) fn with_weight(p: nn::Path, num_features: i64, weight_init: f64) -> Self {
        let weight = p.var("weight", &[num_features], nn::Init::Const(weight_init));
        let bias = p.zeros("bias", &[num_features]);
        let running_mean = p.zeros_no_train("running_mean", &[num_features]);
        let running_var = p.ones_no_train("running_var", &[num_features]);
        let nbt = Tensor::zeros([], (Kind::Int64, p.device()));
        let num_batches_tracked = p.add("num_batches_tracked", nbt, false);
        Self {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
        }
    }
}

impl nn::ModuleT for BatchNorm2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        x.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            0.1,
            1e-5,
            true,
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::Device;

    /// Largest absolute value and whether every value is within ±`bound`.
    fn spread(t: &Tensor, bound: f64) -> (f64, bool) {
        let max = t.abs().max().double_value(&[]);
        (max, max <= bound * (1.0 + 1e-6))
    }

    #[test]
    fn layers_start_from_pytorch_default_initialisation() {
        // PyTorch: weight and bias ~ U(±1/√fan_in); a uniform sample of thousands of values
        // comes within 2 % of the bound. tch's defaults (U(±√(6/fan_in)), zero conv bias) fail.
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let lin = linear(&root / "lin", 256, 512, true);
        let conv = conv2d(&root / "conv", 64, 128, 3, conv_cfg(1, 1, 1, true));
        let grouped = conv2d(&root / "dw", 64, 64, 3, conv_cfg(1, 1, 64, true));
        let deconv = conv_transpose2x2(&root / "deconv", 32, 2048);
        for (name, w, b, fan_in) in [
            ("linear", &lin.ws, lin.bs.as_ref().unwrap(), 256),
            ("conv", &conv.ws, conv.bs.as_ref().unwrap(), 64 * 9),
            ("grouped conv", &grouped.ws, grouped.bs.as_ref().unwrap(), 9),
            (
                "transposed conv",
                &deconv.ws,
                deconv.bs.as_ref().unwrap(),
                2048 * 4,
            ),
        ] {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let (max, within) = spread(w, bound);
            assert!(
                within && max > 0.98 * bound,
                "{name} weight: max {max}, bound {bound}"
            );
            let (bmax, bwithin) = spread(b, bound);
            assert!(
                bwithin && bmax > 0.5 * bound,
                "{name} bias: max {bmax}, bound {bound}"
            );
        }
    }

    #[test]
    fn layer_norm_2d_normalises_channels() {
        let vs = nn::VarStore::new(Device::Cpu);
        let ln = LayerNorm2d::new(vs.root() / "ln", 3);
        // One pixel with channels [1, 2, 3]: mean 2, variance 2/3.
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([1, 3, 1, 1]);
        let y = Vec::<f32>::try_from(ln.forward(&x).flatten(0, -1)).unwrap();
        let sd = (2.0f32 / 3.0 + 1e-6).sqrt();
        let want = [-1.0 / sd, 0.0, 1.0 / sd];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "got {y:?}, expected {want:?}");
        }
    }

    #[test]
    fn sdpa_and_math_agree_with_bias() {
        tch::manual_seed(0);
        let q = Tensor::randn([2, 3, 5, 4], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([2, 3, 7, 4], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([2, 3, 7, 4], (Kind::Float, Device::Cpu));
        let bias = Tensor::randn([2, 3, 5, 7], (Kind::Float, Device::Cpu));
        let a = attention(&q, &k, &v, Some(&bias), 0.5, AttentionMode::Sdpa);
        let b = attention(&q, &k, &v, Some(&bias), 0.5, AttentionMode::Math);
        let d = (a - b).abs().max().double_value(&[]);
        assert!(d < 1e-5, "max abs diff {d}");
    }

    #[test]
    fn batch_norm_has_pytorch_names_and_counts_batches() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = BatchNorm2d::new(vs.root() / "bn", 2);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "bn.bias",
                "bn.num_batches_tracked",
                "bn.running_mean",
                "bn.running_var",
                "bn.weight"
            ]
        );
        let x = Tensor::ones([1, 2, 2, 2], (Kind::Float, Device::Cpu));
        let _ = nn::ModuleT::forward_t(&bn, &x, true);
        assert_eq!(vs.variables()["bn.num_batches_tracked"].int64_value(&[]), 1);
    }
}
