//! `segment_anything/modeling/image_encoder.py`: the ViT image encoder of SAM (vit_b, vit_l,
//! vit_h) with windowed and global attention and decomposed relative positions.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::common::{
    attention, conv2d, conv_cfg, layer_norm, linear, Activation, AttentionMode, LayerNorm2d,
    MLPBlock,
};
use crate::error::ModelError;
use crate::peft::{scale_shift, BlockScaleShift, PeftMethod, PeftSpec, QkvAdapter, ScaleShift};

/// Configuration of [`ImageEncoderViT`] (the arguments of `ImageEncoderViT.__init__` as
/// `segment_anything/build_sam.py` sets them).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEncoderViTConfig {
    /// Input image size (square), 1024 for SAM.
    pub img_size: i64,
    /// Patch size, 16.
    pub patch_size: i64,
    /// Input channels, 3.
    pub in_chans: i64,
    /// Patch embedding width: 768 (vit_b), 1024 (vit_l), 1280 (vit_h).
    pub embed_dim: i64,
    /// Number of transformer blocks: 12, 24, 32.
    pub depth: i64,
    /// Attention heads per block: 12, 16, 16.
    pub num_heads: i64,
    /// MLP hidden width as a multiple of `embed_dim`, 4.
    pub mlp_ratio: f64,
    /// Output channels of the neck (the prompt embedding width), 256.
    pub out_chans: i64,
    /// Bias in the qkv projection, true.
    pub qkv_bias: bool,
    /// Learned absolute position embedding, true.
    pub use_abs_pos: bool,
    /// Decomposed relative position bias, true.
    pub use_rel_pos: bool,
    /// Window size of the windowed blocks, 14.
    pub window_size: i64,
    /// Blocks with global attention: [2, 5, 8, 11] (vit_b), [5, 11, 17, 23] (vit_l),
    /// [7, 15, 23, 31] (vit_h).
    pub global_attn_indexes: Vec<i64>,
    /// Epsilon of the blocks' layer norms, 1e-6 (`partial(nn.LayerNorm, eps=1e-6)`).
    pub layer_norm_eps: f64,
    /// Attention kernel.
    pub attention: AttentionMode,
}

impl ImageEncoderViTConfig {
    fn sam(embed_dim: i64, depth: i64, num_heads: i64, global_attn_indexes: Vec<i64>) -> Self {
        // segment_anything/build_sam.py, `_build_sam`.
        Self {
            img_size: 1024,
            patch_size: 16,
            in_chans: 3,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            out_chans: 256,
            qkv_bias: true,
            use_abs_pos: true,
            use_rel_pos: true,
            window_size: 14,
            global_attn_indexes,
            layer_norm_eps: 1e-6,
            attention: AttentionMode::Sdpa,
        }
    }

    /// SAM ViT-B (`build_sam_vit_b`).
    pub fn vit_b() -> Self {
        Self::sam(768, 12, 12, vec![2, 5, 8, 11])
    }

    /// SAM ViT-L (`build_sam_vit_l`).
    pub fn vit_l() -> Self {
        Self::sam(1024, 24, 16, vec![5, 11, 17, 23])
    }

    /// SAM ViT-H (`build_sam_vit_h`).
    pub fn vit_h() -> Self {
        Self::sam(1280, 32, 16, vec![7, 15, 23, 31])
    }

    /// A tiny encoder for tests: 256 px input, 64-d, 2 blocks (windowed with padding, then global),
    /// 32-d output.
    pub fn tiny() -> Self {
        Self {
            img_size: 256,
            embed_dim: 64,
            depth: 2,
            num_heads: 2,
            out_chans: 32,
            window_size: 6,
            global_attn_indexes: vec![1],
            ..Self::vit_b()
        }
    }

    /// Side of the image embedding grid, `img_size / patch_size`.
    pub fn embedding_size(&self) -> i64 {
        self.img_size / self.patch_size
    }

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        let bad = |field: &str, expected: &str, found: String| {
            Err(ModelError::Config {
                field: format!("image_encoder.{field}"),
                expected: expected.into(),
                found,
            })
        };
        if self.patch_size <= 0 || self.img_size % self.patch_size != 0 {
            return bad(
                "img_size",
                "a positive multiple of patch_size",
                format!("{} (patch_size {})", self.img_size, self.patch_size),
            );
        }
        if self.num_heads <= 0 || self.embed_dim % self.num_heads != 0 {
            return bad(
                "num_heads",
                "a divisor of embed_dim",
                format!("{} (embed_dim {})", self.num_heads, self.embed_dim),
            );
        }
        if self.window_size < 0 {
            return bad("window_size", "≥ 0", self.window_size.to_string());
        }
        Ok(())
    }
}

/// `PatchEmbed`: a strided convolution, output channels-last `[b, h, w, c]`.
#[derive(Debug)]
struct PatchEmbed {
    proj: nn::Conv2D,
}

impl PatchEmbed {
    fn new(p: nn::Path, cfg: &ImageEncoderViTConfig) -> Self {
        let conv = conv_cfg(cfg.patch_size, 0, 1, true);
        let proj = conv2d(
            &p / "proj",
            cfg.in_chans,
            cfg.embed_dim,
            cfg.patch_size,
            conv,
        );
        Self { proj }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        // x = self.proj(x); x = x.permute(0, 2, 3, 1)
        self.proj.forward(x).permute([0, 2, 3, 1])
    }
}

/// Multi-head attention with decomposed relative position bias (`Attention`).
#[derive(Debug)]
struct Attention {
    num_heads: i64,
    scale: f64,
    qkv: nn::Linear,
    proj: nn::Linear,
    rel_pos: Option<(Tensor, Tensor)>,
    mode: AttentionMode,
    /// LoRA / FacT update of the qkv projection.
    qkv_adapter: Option<QkvAdapter>,
    /// SSF after the qkv and output projections.
    qkv_ss: Option<ScaleShift>,
    proj_ss: Option<ScaleShift>,
}

impl Attention {
    fn new(p: nn::Path, cfg: &ImageEncoderViTConfig, input_size: (i64, i64)) -> Self {
        let dim = cfg.embed_dim;
        let head_dim = dim / cfg.num_heads;
        let qkv = linear(&p / "qkv", dim, dim * 3, cfg.qkv_bias);
        let proj = linear(&p / "proj", dim, dim, true);
        let rel_pos = cfg.use_rel_pos.then(|| {
            let h = p.zeros("rel_pos_h", &[2 * input_size.0 - 1, head_dim]);
            let w = p.zeros("rel_pos_w", &[2 * input_size.1 - 1, head_dim]);
            (h, w)
        });
        Self {
            num_heads: cfg.num_heads,
            scale: (head_dim as f64).powf(-0.5),
            qkv,
            proj,
            rel_pos,
            mode: cfg.attention,
            qkv_adapter: None,
            qkv_ss: None,
            proj_ss: None,
        }
    }

    /// Adds the adapters of `spec` under `p` (this attention's path in the adapters' store).
    fn attach_peft(&mut self, p: &nn::Path, spec: &PeftSpec, dim: i64) {
        match spec.method {
            PeftMethod::Lora | PeftMethod::Fact => {
                self.qkv_adapter = QkvAdapter::new(&(p / "qkv"), spec, dim);
            }
            PeftMethod::Ssf => {
                self.qkv_ss = Some(ScaleShift::new(p / "qkv", 3 * dim));
                self.proj_ss = Some(ScaleShift::new(p / "proj", dim));
            }
        }
    }

    /// # Shapes
    /// `x`: `[b, h, w, c]` → `[b, h, w, c]`. `train` switches the adapters' dropout on.
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_chunked(x, train, ATTENTION_CHUNK_ENTRIES)
    }

    /// [`Attention::forward_t`] with attention calls of at most `max_entries` entries.
    fn forward_chunked(&self, x: &Tensor, train: bool, max_entries: i64) -> Tensor {
        let (b, h, w, _) = x.size4().unwrap_or_default();
        let nh = self.num_heads;
        let mut qkv = scale_shift(&self.qkv_ss, self.qkv.forward(x));
        if let Some(adapter) = &self.qkv_adapter {
            qkv = adapter.apply(x, qkv, train);
        }
        // qkv with shape (3, B, nHead, H * W, C)
        let qkv = qkv.reshape([b, h * w, 3, nh, -1]).permute([2, 0, 3, 1, 4]);
        // q, k, v with shape (B * nHead, H * W, C)
        let qkv = qkv.reshape([3, b * nh, h * w, -1]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let x = self.attend_in_row_chunks(&q, &k, &v, (b, h, w), max_entries);
        // (attn @ v).view(B, nHead, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        let x = x
            .view([b, nh, h, w, -1])
            .permute([0, 2, 3, 1, 4])
            .reshape([b, h, w, -1]);
        scale_shift(&self.proj_ss, self.proj.forward(&x))
    }
}

/// The most attention-matrix entries (batch × heads × queries × keys) one attention call
/// materialises: 2²⁵, 128 MiB in fp32. Larger attentions — the global blocks at full size:
/// 12 × 4096 × 4096 for vit_b at 1024 px, 805 MB of scores plus as much of relative-position
/// bias — run over chunks of query rows, so that their bias, scores and, in the backward, the
/// gradients of these exist one chunk at a time. Each query's row is computed as in one call.
pub const ATTENTION_CHUNK_ENTRIES: i64 = 1 << 25;

impl Attention {
    /// Attention of `q` over `k`, `v` (`[b * nh, h * w, c]`, the grid `(b, h, w)`) with the
    /// decomposed relative-position bias, in chunks of whole query rows of the grid holding at
    /// most `max_entries` attention entries each (one chunk when it all fits). Returns
    /// `[b, nh, h * w, c]` (SDPA) or `[b * nh, h * w, c]` (math), as one call would.
    fn attend_in_row_chunks(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (b, h, w): (i64, i64, i64),
        max_entries: i64,
    ) -> Tensor {
        let nh = self.num_heads;
        let head_dim = q.size()[2];
        let entries_per_row = (b * nh * w * h * w).max(1);
        let rows = (max_entries / entries_per_row).clamp(1, h.max(1));
        let chunks: Vec<Tensor> = (0..h)
            .step_by(rows as usize)
            .map(|r0| {
                let len = rows.min(h - r0);
                let q = if len == h {
                    q.shallow_clone()
                } else {
                    q.view([b * nh, h, w, head_dim])
                        .narrow(1, r0, len)
                        .reshape([b * nh, len * w, head_dim])
                };
                let bias = self.rel_pos.as_ref().map(|(rel_pos_h, rel_pos_w)| {
                    decomposed_rel_pos_bias_rows(
                        &q,
                        rel_pos_h,
                        rel_pos_w,
                        (r0, len),
                        (h, w),
                        (h, w),
                    )
                });
                match self.mode {
                    AttentionMode::Sdpa => {
                        let q4 = q.view([b, nh, len * w, head_dim]);
                        let k4 = k.view([b, nh, h * w, head_dim]);
                        let v4 = v.view([b, nh, h * w, head_dim]);
                        let bias = bias.map(|t| t.view([b, nh, len * w, h * w]));
                        attention(&q4, &k4, &v4, bias.as_ref(), self.scale, self.mode)
                    }
                    AttentionMode::Math => {
                        attention(&q, k, v, bias.as_ref(), self.scale, self.mode)
                    }
                }
            })
            .collect();
        if chunks.len() == 1 {
            chunks
                .into_iter()
                .next()
                .unwrap_or_else(|| q.shallow_clone())
        } else {
            Tensor::cat(&chunks, -2)
        }
    }
}

/// `get_rel_pos`: relative position embeddings for every (query, key) pair along one axis,
/// linearly interpolating the table when its length is not `2 * max(q_size, k_size) - 1`.
///
/// # Shapes
/// `rel_pos`: `[L, c]` → `[q_size, k_size, c]`.
pub(crate) fn get_rel_pos(q_size: i64, k_size: i64, rel_pos: &Tensor) -> Tensor {
    let max_rel_dist = 2 * q_size.max(k_size) - 1;
    let len = rel_pos.size()[0];
    let resized = if len != max_rel_dist {
        // F.interpolate(rel_pos.reshape(1, L, -1).permute(0, 2, 1), size=max_rel_dist, mode="linear")
        rel_pos
            .reshape([1, len, -1])
            .permute([0, 2, 1])
            .upsample_linear1d([max_rel_dist], false, None)
            .reshape([-1, max_rel_dist])
            .permute([1, 0])
    } else {
        rel_pos.shallow_clone()
    };
    // Scale the coords with short length if shapes for q and k are different.
    let q_scale = (k_size as f64 / q_size as f64).max(1.0);
    let k_scale = (q_size as f64 / k_size as f64).max(1.0);
    // idx[i, j] = (i·q_scale − j·k_scale) + (k_size − 1)·k_scale, never negative, truncated:
    // computed where the table is (in f64, the same operations in the same order as on the
    // host), so that a forward pass sends nothing from the host.
    let f64_on = (Kind::Double, rel_pos.device());
    let rows = Tensor::arange(q_size, f64_on).unsqueeze(1) * q_scale;
    let cols = Tensor::arange(k_size, f64_on).unsqueeze(0) * k_scale;
    let idx = ((rows - cols) + (k_size - 1) as f64 * k_scale)
        .to_kind(Kind::Int64)
        .reshape([-1]);
    resized.index_select(0, &idx).reshape([q_size, k_size, -1])
}

/// The decomposed relative position bias of `add_decomposed_rel_pos`, as a tensor to add to the
/// attention logits.
///
/// # Shapes
/// `q`: `[b, q_h * q_w, c]` → `[b, q_h * q_w, k_h * k_w]`.
///
/// For the query rows `first .. first + len` of the `q_size` grid: `q` holds those rows only
/// (`[b, len * q_w, c]`) → `[b, len * q_w, k_h * k_w]` (all rows: `(0, q_h)`).
pub(crate) fn decomposed_rel_pos_bias_rows(
    q: &Tensor,
    rel_pos_h: &Tensor,
    rel_pos_w: &Tensor,
    (first, len): (i64, i64),
    q_size: (i64, i64),
    k_size: (i64, i64),
) -> Tensor {
    let (q_h, q_w) = q_size;
    let (k_h, k_w) = k_size;
    let rh = get_rel_pos(q_h, k_h, rel_pos_h);
    let rh = if len == q_h {
        rh
    } else {
        rh.narrow(0, first, len)
    };
    let rw = get_rel_pos(q_w, k_w, rel_pos_w);
    let size = q.size();
    let (b, dim) = (size[0], size[2]);
    let q_h = len;
    let r_q = q.reshape([b, q_h, q_w, dim]);
    let rel_h = Tensor::einsum(
        "bhwc,hkc->bhwk",
        &[&r_q, &rh.to_kind(q.kind())],
        None::<i64>,
    );
    let rel_w = Tensor::einsum(
        "bhwc,wkc->bhwk",
        &[&r_q, &rw.to_kind(q.kind())],
        None::<i64>,
    );
    // rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]. The einsums return permuted views;
    // made contiguous (small: [b, q_h, q_w, k]), the sum is laid out row-major and the reshape
    // is a view. Otherwise the sum follows their permuted layout and the reshape copies the
    // whole [b, q, k] bias again (400 MB per global-attention block of vit_b at 1024² in bf16).
    (rel_h.contiguous().unsqueeze(-1) + rel_w.contiguous().unsqueeze(-2)).reshape([
        b,
        q_h * q_w,
        k_h * k_w,
    ])
}

/// `window_partition`: `[b, h, w, c]` → (`[b * n_windows, ws, ws, c]`, padded (h, w)).
pub(crate) fn window_partition(x: &Tensor, window_size: i64) -> (Tensor, (i64, i64)) {
    let (b, h, w, c) = x.size4().unwrap_or_default();
    let pad_h = (window_size - h % window_size) % window_size;
    let pad_w = (window_size - w % window_size) % window_size;
    let x = if pad_h > 0 || pad_w > 0 {
        x.constant_pad_nd([0, 0, 0, pad_w, 0, pad_h])
    } else {
        x.shallow_clone()
    };
    let (hp, wp) = (h + pad_h, w + pad_w);
    let windows = x
        .view([
            b,
            hp / window_size,
            window_size,
            wp / window_size,
            window_size,
            c,
        ])
        .permute([0, 1, 3, 2, 4, 5])
        .contiguous()
        .view([-1, window_size, window_size, c]);
    (windows, (hp, wp))
}

/// `window_unpartition`: the inverse of [`window_partition`], removing the padding.
pub(crate) fn window_unpartition(
    windows: &Tensor,
    window_size: i64,
    pad_hw: (i64, i64),
    hw: (i64, i64),
) -> Tensor {
    let (hp, wp) = pad_hw;
    let (h, w) = hw;
    let b = windows.size()[0] / (hp * wp / window_size / window_size);
    let x = windows
        .view([
            b,
            hp / window_size,
            wp / window_size,
            window_size,
            window_size,
            -1,
        ])
        .permute([0, 1, 3, 2, 4, 5])
        .contiguous()
        .view([b, hp, wp, -1]);
    if hp > h || wp > w {
        x.narrow(1, 0, h).narrow(2, 0, w).contiguous()
    } else {
        x
    }
}

/// A transformer block with windowed or global attention (`Block`).
#[derive(Debug)]
struct Block {
    norm1: nn::LayerNorm,
    attn: Attention,
    norm2: nn::LayerNorm,
    mlp: MLPBlock,
    window_size: i64,
    /// SSF after the norms and the MLP's linear layers.
    ss: Option<BlockScaleShift>,
}

impl Block {
    fn new(p: nn::Path, cfg: &ImageEncoderViTConfig, window_size: i64) -> Self {
        let grid = cfg.embedding_size();
        let input_size = if window_size == 0 {
            (grid, grid)
        } else {
            (window_size, window_size)
        };
        let dim = cfg.embed_dim;
        let mlp_dim = (dim as f64 * cfg.mlp_ratio) as i64;
        Self {
            norm1: layer_norm(&p / "norm1", dim, cfg.layer_norm_eps),
            attn: Attention::new(&p / "attn", cfg, input_size),
            norm2: layer_norm(&p / "norm2", dim, cfg.layer_norm_eps),
            mlp: MLPBlock::new(&p / "mlp", dim, mlp_dim, Activation::Gelu),
            window_size,
            ss: None,
        }
    }

    /// Adds the adapters of `spec` under `p` (this block's path in the adapters' store).
    fn attach_peft(&mut self, p: &nn::Path, spec: &PeftSpec, cfg: &ImageEncoderViTConfig) {
        let dim = cfg.embed_dim;
        self.attn.attach_peft(&(p / "attn"), spec, dim);
        if spec.method == PeftMethod::Ssf {
            let mlp_dim = (dim as f64 * cfg.mlp_ratio) as i64;
            self.ss = Some(BlockScaleShift {
                norm1: Some(ScaleShift::new(p / "norm1", dim)),
                norm2: Some(ScaleShift::new(p / "norm2", dim)),
                lin1: Some(ScaleShift::new(p / "mlp" / "lin1", mlp_dim)),
                lin2: Some(ScaleShift::new(p / "mlp" / "lin2", dim)),
            });
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let ss = self.ss.as_ref();
        let shortcut = x;
        let x = self.norm1.forward(x);
        let x = match ss {
            Some(ss) => scale_shift(&ss.norm1, x),
            None => x,
        };
        let x = if self.window_size > 0 {
            let (h, w) = (x.size()[1], x.size()[2]);
            let (windows, pad_hw) = window_partition(&x, self.window_size);
            let windows = self.attn.forward_t(&windows, train);
            window_unpartition(&windows, self.window_size, pad_hw, (h, w))
        } else {
            self.attn.forward_t(&x, train)
        };
        let x = shortcut + x;
        let y = match ss {
            Some(ss) => {
                let n = scale_shift(&ss.norm2, self.norm2.forward(&x));
                self.mlp.forward_scaled(&n, &ss.lin1, &ss.lin2)
            }
            None => self.mlp.forward(&self.norm2.forward(&x)),
        };
        x + y
    }
}

/// `ImageEncoderViT`: patch embedding, transformer blocks and a convolutional neck.
#[derive(Debug)]
pub struct ImageEncoderViT {
    patch_embed: PatchEmbed,
    pos_embed: Option<Tensor>,
    blocks: Vec<Block>,
    neck: (nn::Conv2D, LayerNorm2d, nn::Conv2D, LayerNorm2d),
    cfg: ImageEncoderViTConfig,
    peft: Option<PeftSpec>,
}

impl ImageEncoderViT {
    /// Builds the encoder under `p` (`image_encoder` in a SAM state_dict).
    pub fn new(p: &nn::Path, cfg: &ImageEncoderViTConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let grid = cfg.embedding_size();
        let pos_embed = cfg
            .use_abs_pos
            .then(|| p.zeros("pos_embed", &[1, grid, grid, cfg.embed_dim]));
        let blocks = (0..cfg.depth)
            .map(|i| {
                let global = cfg.global_attn_indexes.contains(&i);
                Block::new(
                    p / "blocks" / i,
                    cfg,
                    if global { 0 } else { cfg.window_size },
                )
            })
            .collect();
        let neck = p / "neck";
        let neck = (
            conv2d(
                &neck / 0,
                cfg.embed_dim,
                cfg.out_chans,
                1,
                conv_cfg(1, 0, 1, false),
            ),
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
            patch_embed: PatchEmbed::new(p / "patch_embed", cfg),
            pos_embed,
            blocks,
            neck,
            cfg: cfg.clone(),
            peft: None,
        })
    }

    /// Adds the adapters of `spec` (LoRA, FacT or SSF on `spec.blocks`), their variables under
    /// `p`, the `image_encoder` path of the adapters' own var store (so their keys are
    /// micro_sam's, e.g. `image_encoder.blocks.3.attn.qkv.w_a_linear_q.weight`). The encoder's
    /// own weights are not touched: freezing them is the caller's (see
    /// [`crate::SamModel::with_peft`]). From now on the patch embedding and the blocks before
    /// [`ImageEncoderViT::first_graph_block`] run without recording gradients.
    ///
    /// An encoder takes one set of adapters: a second call is a configuration error.
    pub fn attach_peft(&mut self, p: &nn::Path, spec: &PeftSpec) -> Result<(), ModelError> {
        spec.validate(self.cfg.depth)?;
        if self.peft.is_some() {
            return Err(ModelError::Config {
                field: "peft".into(),
                expected: "one set of adapters per encoder".into(),
                found: "a second one".into(),
            });
        }
        for &i in &spec.blocks {
            let cfg = self.cfg.clone();
            if let Some(block) = self.blocks.get_mut(i as usize) {
                block.attach_peft(&(p / "blocks" / i), spec, &cfg);
            }
        }
        self.peft = Some(spec.clone());
        Ok(())
    }

    /// The adapters attached with [`ImageEncoderViT::attach_peft`], if any.
    pub fn peft(&self) -> Option<&PeftSpec> {
        self.peft.as_ref()
    }

    /// The first block that is part of the autograd graph in a training forward: with adapters,
    /// the first adapted block (the blocks before it and the patch embedding hold only frozen
    /// weights and run under `no_grad`); without adapters 0 (everything is in the graph).
    pub fn first_graph_block(&self) -> usize {
        self.peft.as_ref().map_or(0, |s| s.first_block() as usize)
    }

    /// The configuration this encoder was built with.
    pub fn config(&self) -> &ImageEncoderViTConfig {
        &self.cfg
    }

    /// Encodes normalised, padded images.
    ///
    /// # Shapes
    /// `x`: `[b, 3, img_size, img_size]` → `[b, out_chans, img_size / 16, img_size / 16]`.
    /// Other input sizes (multiples of the patch size) work too: the absolute position
    /// embedding is interpolated bicubically and the relative position tables linearly.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_t(x, false)
    }

    /// [`ImageEncoderViT::forward`], with the adapters' dropout (FacT) active when `train`.
    /// With adapters attached, the patch embedding and the blocks before
    /// [`ImageEncoderViT::first_graph_block`] run under `no_grad`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let first = self.first_graph_block().min(self.depth());
        let mut x = if self.peft.is_some() {
            tch::no_grad(|| {
                let mut x = self.embed(x);
                for i in 0..first {
                    x = self.block_t(i, &x, train);
                }
                x
            })
        } else {
            self.embed(x)
        };
        for i in first..self.depth() {
            x = self.block_t(i, &x, train);
        }
        self.neck(&x)
    }

    /// The first segment of [`ImageEncoderViT::forward`]: patch embedding plus the absolute
    /// position embedding. `forward(x)` is `neck(block(depth - 1, … block(0, embed(x))))`; the
    /// segments let a caller keep or recompute the activations of each block (activation
    /// checkpointing).
    ///
    /// # Shapes
    /// `x`: `[b, 3, H, W]` → `[b, H / 16, W / 16, embed_dim]` (channels last).
    pub fn embed(&self, x: &Tensor) -> Tensor {
        let x = self.patch_embed.forward(x);
        let Some(pos_embed) = &self.pos_embed else {
            return x;
        };
        let (h, w) = (x.size()[1], x.size()[2]);
        let pos = if pos_embed.size()[1] != h || pos_embed.size()[2] != w {
            pos_embed
                .permute([0, 3, 1, 2])
                .upsample_bicubic2d([h, w], false, None, None)
                .permute([0, 2, 3, 1])
        } else {
            pos_embed.shallow_clone()
        };
        let kind = x.kind();
        x.g_add(&pos.to_kind(kind))
    }

    /// Number of transformer blocks ([`ImageEncoderViT::block`] takes `0..depth()`).
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// Whether block `index` is one of the configuration's `global_attn_indexes`.
    pub fn is_global_block(&self, index: usize) -> bool {
        self.cfg.global_attn_indexes.contains(&(index as i64))
    }

    /// Transformer block `index` (`0..depth()`), a pure function of its input and weights.
    ///
    /// # Shapes
    /// `x`: `[b, h, w, embed_dim]` → the same.
    ///
    /// # Panics
    /// When `index ≥ depth()`.
    pub fn block(&self, index: usize, x: &Tensor) -> Tensor {
        self.block_t(index, x, false)
    }

    /// [`ImageEncoderViT::block`] with the adapters' dropout (FacT) active when `train`.
    ///
    /// # Panics
    /// When `index ≥ depth()`.
    pub fn block_t(&self, index: usize, x: &Tensor, train: bool) -> Tensor {
        self.blocks[index].forward_t(x, train)
    }

    /// The last segment of [`ImageEncoderViT::forward`]: the convolutional neck.
    ///
    /// # Shapes
    /// `x`: `[b, h, w, embed_dim]` → `[b, out_chans, h, w]`.
    pub fn neck(&self, x: &Tensor) -> Tensor {
        let x = x.permute([0, 3, 1, 2]);
        let (c0, n1, c2, n3) = &self.neck;
        n3.forward(&c2.forward(&n1.forward(&c0.forward(&x))))
    }
}

impl Module for ImageEncoderViT {
    fn forward(&self, x: &Tensor) -> Tensor {
        ImageEncoderViT::forward(self, x)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Global attention over chunks of query rows (what large grids get) equals one call, in
    /// values and in the gradients of the input and of the relative-position tables.
    #[test]
    fn attention_in_row_chunks_equals_one_call() {
        for mode in [AttentionMode::Sdpa, AttentionMode::Math] {
            tch::manual_seed(1);
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = ImageEncoderViTConfig {
                attention: mode,
                ..ImageEncoderViTConfig::tiny()
            };
            let attn = Attention::new(vs.root() / "attn", &cfg, (5, 7));
            tch::no_grad(|| {
                for (_, mut t) in vs.variables() {
                    let r = Tensor::randn_like(&t) * 0.5;
                    t.copy_(&r);
                }
            });
            let x = Tensor::randn([2, 5, 7, cfg.embed_dim], (Kind::Float, Device::Cpu));
            let run = |max_entries: i64| {
                let x = x.detach().set_requires_grad(true);
                let y = attn.forward_chunked(&x, false, max_entries);
                let (rel_h, rel_w) = attn.rel_pos.as_ref().unwrap();
                for t in [rel_h, rel_w] {
                    t.shallow_clone().zero_grad();
                }
                (&y * &y).sum(Kind::Float).backward();
                (
                    y.detach(),
                    x.grad(),
                    rel_h.grad().copy(),
                    rel_w.grad().copy(),
                )
            };
            let whole = run(i64::MAX);
            // 2 images × 2 heads × 7 columns × 35 keys = 980 entries per query row: one row,
            // then two rows (the last chunk shorter) per call.
            for max_entries in [980, 2 * 980] {
                let chunked = run(max_entries);
                for (what, a, b) in [
                    ("output", &chunked.0, &whole.0),
                    ("input grad", &chunked.1, &whole.1),
                    ("rel_pos_h grad", &chunked.2, &whole.2),
                    ("rel_pos_w grad", &chunked.3, &whole.3),
                ] {
                    let diff = (a - b).abs().max().double_value(&[]);
                    let scale = b.abs().max().double_value(&[]).max(1.0);
                    assert!(
                        diff / scale < 1e-6,
                        "{mode:?} {max_entries}: {what} differs by {diff} (largest {scale})"
                    );
                }
            }
        }
    }

    #[test]
    fn window_partition_round_trips_with_padding() {
        let x = Tensor::arange(2 * 5 * 7 * 3, (Kind::Float, Device::Cpu)).view([2, 5, 7, 3]);
        let (windows, pad_hw) = window_partition(&x, 4);
        assert_eq!(pad_hw, (8, 8));
        assert_eq!(windows.size(), [2 * 2 * 2, 4, 4, 3]);
        // The first window holds rows 0..4, cols 0..4 of image 0.
        assert_eq!(
            windows.get(0).get(1).get(2).get(0).double_value(&[]),
            x.get(0).get(1).get(2).get(0).double_value(&[])
        );
        let back = window_unpartition(&windows, 4, pad_hw, (5, 7));
        assert_eq!(back.size(), [2, 5, 7, 3]);
        assert!(back.equal(&x));
    }

    #[test]
    fn get_rel_pos_indexes_by_offset() {
        // Table of length 2*3-1 = 5 with rows 0..5: entry (i, j) is row i - j + 2.
        let table = Tensor::arange(5, (Kind::Float, Device::Cpu)).view([5, 1]);
        let r = get_rel_pos(3, 3, &table).view([3, 3]);
        let got = Vec::<f32>::try_from(r.flatten(0, -1)).unwrap();
        assert_eq!(got, [2.0, 1.0, 0.0, 3.0, 2.0, 1.0, 4.0, 3.0, 2.0]);
    }

    #[test]
    fn get_rel_pos_interpolates_short_tables() {
        // A table of length 3 stretched linearly to 5 (align_corners=False): a linear ramp stays
        // a ramp inside, clamped at the ends.
        let table = Tensor::from_slice(&[0.0f32, 1.0, 2.0]).view([3, 1]);
        let r = get_rel_pos(3, 3, &table).view([3, 3]);
        let row0 = Vec::<f32>::try_from(r.get(0)).unwrap();
        // Interpolated table: x_src = (i + 0.5) * 3/5 - 0.5 → [0, 0.4, 1.0, 1.6, 2.0].
        let want = [1.0f32, 0.4, 0.0];
        for (a, b) in row0.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "got {row0:?}, expected {want:?}");
        }
    }
}
