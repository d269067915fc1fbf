//! MobileSAM's `mobile_sam/modeling/tiny_vit_sam.py`: the TinyViT image encoder of vit_t.
//!
//! TinyViT has batch norms: use [`nn::ModuleT::forward_t`] with `train = true` while training
//! (batch statistics, running statistics updated) and `false` otherwise.

use std::collections::HashMap;

use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use crate::common::{
    attention, conv2d, conv_cfg, gelu, layer_norm, linear, AttentionMode, BatchNorm2d, LayerNorm2d,
};
use crate::error::ModelError;
use crate::image_encoder::{window_partition, window_unpartition};

/// Configuration of [`TinyViT`] (the arguments of `TinyViT.__init__` as MobileSAM's
/// `build_sam_vit_t` sets them).
#[derive(Debug, Clone, PartialEq)]
pub struct TinyViTConfig {
    /// Input image size (square), 1024.
    pub img_size: i64,
    /// Input channels, 3.
    pub in_chans: i64,
    /// Classes of the (unused) classification head, 1000; kept so that checkpoints load.
    pub num_classes: i64,
    /// Width of the four stages: [64, 128, 160, 320].
    pub embed_dims: Vec<i64>,
    /// Blocks per stage: [2, 2, 6, 2].
    pub depths: Vec<i64>,
    /// Attention heads per stage (stage 0 is convolutional): [2, 4, 5, 10].
    pub num_heads: Vec<i64>,
    /// Attention window per stage: [7, 7, 14, 7].
    pub window_sizes: Vec<i64>,
    /// MLP hidden width as a multiple of the stage width, 4.
    pub mlp_ratio: f64,
    /// Expansion of the MBConv blocks, 4.
    pub mbconv_expand_ratio: f64,
    /// Kernel of the depthwise convolution between attention and MLP, 3.
    pub local_conv_size: i64,
    /// Output channels of the neck, 256.
    pub out_chans: i64,
    /// Attention kernel.
    pub attention: AttentionMode,
}

impl TinyViTConfig {
    /// MobileSAM's encoder (`build_sam_vit_t`).
    pub fn vit_t() -> Self {
        Self {
            img_size: 1024,
            in_chans: 3,
            num_classes: 1000,
            embed_dims: vec![64, 128, 160, 320],
            depths: vec![2, 2, 6, 2],
            num_heads: vec![2, 4, 5, 10],
            window_sizes: vec![7, 7, 14, 7],
            mlp_ratio: 4.0,
            mbconv_expand_ratio: 4.0,
            local_conv_size: 3,
            out_chans: 256,
            attention: AttentionMode::Sdpa,
        }
    }

    /// A small encoder for tests with the same structure: narrow stages, one block each.
    /// The input stays 1024 px because MobileSAM's forward assumes a 64×64 output grid.
    pub fn tiny() -> Self {
        Self {
            num_classes: 10,
            embed_dims: vec![8, 16, 24, 320],
            depths: vec![1, 1, 1, 1],
            num_heads: vec![1, 2, 2, 4],
            ..Self::vit_t()
        }
    }

    fn validate(&self) -> Result<(), ModelError> {
        let n = self.embed_dims.len();
        let bad = |field: &str, expected: String, found: String| {
            Err(ModelError::Config {
                field: format!("image_encoder.{field}"),
                expected,
                found,
            })
        };
        if n < 2
            || self.depths.len() != n
            || self.num_heads.len() != n
            || self.window_sizes.len() != n
        {
            return bad(
                "embed_dims",
                "at least 2 stages, with depths, num_heads and window_sizes of the same length"
                    .into(),
                format!(
                    "{} embed_dims, {} depths, {} num_heads, {} window_sizes",
                    n,
                    self.depths.len(),
                    self.num_heads.len(),
                    self.window_sizes.len()
                ),
            );
        }
        for i in 1..n {
            if self.num_heads[i] <= 0 || self.embed_dims[i] % self.num_heads[i] != 0 {
                return bad(
                    &format!("num_heads[{i}]"),
                    format!("a divisor of embed_dims[{i}] = {}", self.embed_dims[i]),
                    self.num_heads[i].to_string(),
                );
            }
        }
        Ok(())
    }
}

/// `Conv2d_BN`: a bias-free convolution followed by batch norm.
#[derive(Debug)]
struct Conv2dBN {
    c: nn::Conv2D,
    bn: BatchNorm2d,
}

impl Conv2dBN {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: nn::Path,
        a: i64,
        b: i64,
        ks: i64,
        stride: i64,
        pad: i64,
        groups: i64,
        bn_weight_init: f64,
    ) -> Self {
        let c = conv2d(&p / "c", a, b, ks, conv_cfg(stride, pad, groups, false));
        let bn = BatchNorm2d::with_weight(&p / "bn", b, bn_weight_init);
        Self { c, bn }
    }

    fn pointwise(p: nn::Path, a: i64, b: i64) -> Self {
        Self::new(p, a, b, 1, 1, 0, 1, 1.0)
    }
}

impl ModuleT for Conv2dBN {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&self.c.forward(x), train)
    }
}

/// `MBConv`: inverted residual block of the convolutional stage.
#[derive(Debug)]
struct MBConv {
    conv1: Conv2dBN,
    conv2: Conv2dBN,
    conv3: Conv2dBN,
}

impl MBConv {
    fn new(p: nn::Path, in_chans: i64, out_chans: i64, expand_ratio: f64) -> Self {
        let hidden = (in_chans as f64 * expand_ratio) as i64;
        Self {
            conv1: Conv2dBN::pointwise(&p / "conv1", in_chans, hidden),
            conv2: Conv2dBN::new(&p / "conv2", hidden, hidden, 3, 1, 1, hidden, 1.0),
            conv3: Conv2dBN::new(&p / "conv3", hidden, out_chans, 1, 1, 0, 1, 0.0),
        }
    }
}

impl ModuleT for MBConv {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = gelu(&self.conv1.forward_t(x, train));
        let y = gelu(&self.conv2.forward_t(&y, train));
        let y = self.conv3.forward_t(&y, train);
        gelu(&(y + x))
    }
}

/// `PatchMerging`: halves the resolution (except into the last stage of SAM's TinyViT).
#[derive(Debug)]
struct PatchMerging {
    conv1: Conv2dBN,
    conv2: Conv2dBN,
    conv3: Conv2dBN,
    stride: i64,
}

impl PatchMerging {
    fn new(p: nn::Path, dim: i64, out_dim: i64) -> Self {
        // MobileSAM keeps the resolution into its last stage by testing the output width:
        // `stride_c = 1 if out_dim in (320, 448, 576) else 2`.
        let stride = if matches!(out_dim, 320 | 448 | 576) {
            1
        } else {
            2
        };
        Self {
            conv1: Conv2dBN::pointwise(&p / "conv1", dim, out_dim),
            conv2: Conv2dBN::new(&p / "conv2", out_dim, out_dim, 3, stride, 1, out_dim, 1.0),
            conv3: Conv2dBN::pointwise(&p / "conv3", out_dim, out_dim),
            stride,
        }
    }

    /// `[b, c, h, w]` → `[b, h' * w', c']`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let x = gelu(&self.conv1.forward_t(x, train));
        let x = gelu(&self.conv2.forward_t(&x, train));
        let x = self.conv3.forward_t(&x, train);
        x.flatten(2, -1).transpose(1, 2)
    }

    fn output_size(&self, hw: (i64, i64)) -> (i64, i64) {
        // 3×3 convolution, padding 1.
        ((hw.0 - 1) / self.stride + 1, (hw.1 - 1) / self.stride + 1)
    }
}

/// `Mlp` of a TinyViT block: layer norm, fc1, GELU, fc2.
#[derive(Debug)]
struct Mlp {
    norm: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2
            .forward(&gelu(&self.fc1.forward(&self.norm.forward(x))))
    }
}

/// `Attention` of TinyViT: learned per-head bias for every (|dy|, |dx|) offset in the window.
#[derive(Debug)]
struct Attention {
    norm: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    attention_biases: Tensor,
    attention_bias_idxs: Tensor,
    num_heads: i64,
    key_dim: i64,
    mode: AttentionMode,
}

impl Attention {
    fn new(
        p: nn::Path,
        dim: i64,
        key_dim: i64,
        num_heads: i64,
        resolution: i64,
        mode: AttentionMode,
    ) -> Self {
        // attn_ratio = 1: d = key_dim, dh = key_dim * num_heads.
        let dh = key_dim * num_heads;
        let h = dh + 2 * key_dim * num_heads;
        let points: Vec<(i64, i64)> = (0..resolution)
            .flat_map(|a| (0..resolution).map(move |b| (a, b)))
            .collect();
        let mut offsets: HashMap<(i64, i64), i64> = HashMap::new();
        let mut idxs = Vec::with_capacity(points.len() * points.len());
        for p1 in &points {
            for p2 in &points {
                let offset = ((p1.0 - p2.0).abs(), (p1.1 - p2.1).abs());
                let next = offsets.len() as i64;
                idxs.push(*offsets.entry(offset).or_insert(next));
            }
        }
        let n = points.len() as i64;
        Self {
            norm: layer_norm(&p / "norm", dim, 1e-5),
            qkv: linear(&p / "qkv", dim, h, true),
            proj: linear(&p / "proj", dh, dim, true),
            attention_biases: p.zeros("attention_biases", &[num_heads, offsets.len() as i64]),
            // A non-persistent buffer in Python: not in the state_dict.
            attention_bias_idxs: Tensor::from_slice(&idxs).view([n, n]).to_device(p.device()),
            num_heads,
            key_dim,
            mode,
        }
    }

    /// `[b, n, c]` → `[b, n, c]`, n = window².
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, n, _) = x.size3().unwrap_or_default();
        let x = self.norm.forward(x);
        let qkv = self.qkv.forward(&x).view([b, n, self.num_heads, -1]);
        let kd = self.key_dim;
        let parts = qkv.split_with_sizes([kd, kd, kd], 3);
        let (q, k, v) = (
            parts[0].permute([0, 2, 1, 3]),
            parts[1].permute([0, 2, 1, 3]),
            parts[2].permute([0, 2, 1, 3]),
        );
        // self.attention_biases[:, self.attention_bias_idxs]: [heads, n, n]
        let bias = self
            .attention_biases
            .index_select(1, &self.attention_bias_idxs.flatten(0, -1))
            .view([self.num_heads, n, n])
            .unsqueeze(0);
        let scale = (kd as f64).powf(-0.5);
        let x = attention(&q, &k, &v, Some(&bias), scale, self.mode);
        let x = x.transpose(1, 2).reshape([b, n, self.num_heads * kd]);
        self.proj.forward(&x)
    }
}

/// `TinyViTBlock`: windowed attention, a depthwise convolution and an MLP.
#[derive(Debug)]
struct TinyViTBlock {
    attn: Attention,
    mlp: Mlp,
    local_conv: Conv2dBN,
    window_size: i64,
}

impl TinyViTBlock {
    fn new(p: nn::Path, cfg: &TinyViTConfig, stage: usize) -> Self {
        let dim = cfg.embed_dims[stage];
        let num_heads = cfg.num_heads[stage];
        let window_size = cfg.window_sizes[stage];
        let head_dim = dim / num_heads;
        let hidden = (dim as f64 * cfg.mlp_ratio) as i64;
        let mlp = &p / "mlp";
        let k = cfg.local_conv_size;
        Self {
            attn: Attention::new(
                &p / "attn",
                dim,
                head_dim,
                num_heads,
                window_size,
                cfg.attention,
            ),
            mlp: Mlp {
                norm: layer_norm(&mlp / "norm", dim, 1e-5),
                fc1: linear(&mlp / "fc1", dim, hidden, true),
                fc2: linear(&mlp / "fc2", hidden, dim, true),
            },
            local_conv: Conv2dBN::new(&p / "local_conv", dim, dim, k, 1, k / 2, dim, 1.0),
            window_size,
        }
    }

    /// `[b, h * w, c]` → `[b, h * w, c]`.
    fn forward_t(&self, x: &Tensor, hw: (i64, i64), train: bool) -> Tensor {
        let (h, w) = hw;
        let (b, l, c) = x.size3().unwrap_or_default();
        let ws = self.window_size;
        let res_x = x;
        let x = if h == ws && w == ws {
            self.attn.forward(x)
        } else {
            let (windows, pad_hw) = window_partition(&x.view([b, h, w, c]), ws);
            let windows = self.attn.forward(&windows.view([-1, ws * ws, c]));
            let windows = windows.view([-1, ws, ws, c]);
            window_unpartition(&windows, ws, pad_hw, (h, w)).view([b, l, c])
        };
        let x = res_x + x;
        let x = x.transpose(1, 2).reshape([b, c, h, w]);
        let x = self.local_conv.forward_t(&x, train);
        let x = x.view([b, c, l]).transpose(1, 2);
        &x + self.mlp.forward(&x)
    }
}

/// One stage: `ConvLayer` (stage 0, MBConv blocks) or `BasicLayer` (TinyViT blocks), each with
/// an optional `PatchMerging` at its end.
#[derive(Debug)]
enum Stage {
    Conv {
        blocks: Vec<MBConv>,
        downsample: Option<PatchMerging>,
    },
    Basic {
        blocks: Vec<TinyViTBlock>,
        downsample: Option<PatchMerging>,
    },
}

/// MobileSAM's `TinyViT` image encoder (vit_t).
#[derive(Debug)]
pub struct TinyViT {
    patch_embed: (Conv2dBN, Conv2dBN),
    layers: Vec<Stage>,
    neck: (nn::Conv2D, LayerNorm2d, nn::Conv2D, LayerNorm2d),
    cfg: TinyViTConfig,
}

impl TinyViT {
    /// Builds the encoder under `p` (`image_encoder` in a MobileSAM state_dict).
    pub fn new(p: &nn::Path, cfg: &TinyViTConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let n = cfg.embed_dims.len();
        let e0 = cfg.embed_dims[0];
        let seq = p / "patch_embed" / "seq";
        let patch_embed = (
            Conv2dBN::new(&seq / 0, cfg.in_chans, e0 / 2, 3, 2, 1, 1, 1.0),
            // 1: GELU
            Conv2dBN::new(&seq / 2, e0 / 2, e0, 3, 2, 1, 1, 1.0),
        );
        let layers = (0..n)
            .map(|i| {
                let lp = p / "layers" / i as i64;
                let dim = cfg.embed_dims[i];
                let out_dim = cfg.embed_dims[(i + 1).min(n - 1)];
                let downsample =
                    (i < n - 1).then(|| PatchMerging::new(&lp / "downsample", dim, out_dim));
                let depth = cfg.depths[i];
                if i == 0 {
                    let blocks = (0..depth)
                        .map(|j| MBConv::new(&lp / "blocks" / j, dim, dim, cfg.mbconv_expand_ratio))
                        .collect();
                    Stage::Conv { blocks, downsample }
                } else {
                    let blocks = (0..depth)
                        .map(|j| TinyViTBlock::new(&lp / "blocks" / j, cfg, i))
                        .collect();
                    Stage::Basic { blocks, downsample }
                }
            })
            .collect();
        let last = cfg.embed_dims[n - 1];
        // The classification head of TinyViT is unused by SAM but part of its state_dict.
        let _ = layer_norm(p / "norm_head", last, 1e-5);
        let _ = linear(p / "head", last, cfg.num_classes, true);
        let neck = p / "neck";
        let neck = (
            conv2d(&neck / 0, last, cfg.out_chans, 1, conv_cfg(1, 0, 1, false)),
            LayerNorm2d::new(&neck / 1, cfg.out_chans),
            conv2d(
                &neck / 2,
                cfg.out_chans,
                cfg.out_chans,
                3,
                conv_cfg(1, 1, 1, false),
            ),
            LayerNorm2d::new(&neck / 3, cfg.out_chans),
        );
        Ok(Self {
            patch_embed,
            layers,
            neck,
            cfg: cfg.clone(),
        })
    }

    /// The configuration this encoder was built with.
    pub fn config(&self) -> &TinyViTConfig {
        &self.cfg
    }
}

impl ModuleT for TinyViT {
    /// # Shapes
    /// `x`: `[b, 3, img_size, img_size]` → `[b, out_chans, img_size / 16, img_size / 16]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let (pe0, pe2) = &self.patch_embed;
        let mut x = pe2.forward_t(&gelu(&pe0.forward_t(x, train)), train);
        let size = x.size();
        let mut hw = (size[2], size[3]);
        for stage in &self.layers {
            match stage {
                Stage::Conv { blocks, downsample } => {
                    for blk in blocks {
                        x = blk.forward_t(&x, train);
                    }
                    if let Some(d) = downsample {
                        x = d.forward_t(&x, train);
                        hw = d.output_size(hw);
                    }
                }
                Stage::Basic { blocks, downsample } => {
                    for blk in blocks {
                        x = blk.forward_t(&x, hw, train);
                    }
                    if let Some(d) = downsample {
                        // (B, L, C) -> (B, C, H, W)
                        let (b, _, c) = x.size3().unwrap_or_default();
                        let x4 = x.view([b, hw.0, hw.1, c]).permute([0, 3, 1, 2]);
                        x = d.forward_t(&x4, train);
                        hw = d.output_size(hw);
                    }
                }
            }
        }
        let (b, _, c) = x.size3().unwrap_or_default();
        let x = x.view([b, hw.0, hw.1, c]).permute([0, 3, 1, 2]);
        let (c0, n1, c2, n3) = &self.neck;
        n3.forward(&c2.forward(&n1.forward(&c0.forward(&x))))
    }
}
