//! `segment_anything/modeling/prompt_encoder.py`: embeds points, boxes and mask inputs.

use std::f64::consts::PI;

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::common::{conv2d, conv_cfg, gelu, LayerNorm2d};
use crate::error::{shape_error, ModelError};

/// Configuration of [`PromptEncoder`].
#[derive(Debug, Clone, PartialEq)]
pub struct PromptEncoderConfig {
    /// Prompt embedding width, 256.
    pub embed_dim: i64,
    /// Side of the (square) image embedding, 64.
    pub image_embedding_size: i64,
    /// Side of the padded model input, 1024.
    pub input_image_size: i64,
    /// Hidden channels of the mask downscaling convolutions, 16.
    pub mask_in_chans: i64,
}

impl PromptEncoderConfig {
    /// SAM's prompt encoder (`_build_sam`).
    pub fn sam() -> Self {
        Self {
            embed_dim: 256,
            image_embedding_size: 64,
            input_image_size: 1024,
            mask_in_chans: 16,
        }
    }

    /// A tiny prompt encoder for tests (32-d, 16×16 embedding of a 256 px input).
    pub fn tiny() -> Self {
        Self {
            embed_dim: 32,
            image_embedding_size: 16,
            input_image_size: 256,
            mask_in_chans: 8,
        }
    }

    /// Side of the low-resolution mask input and output, `4 * image_embedding_size` (256).
    pub fn mask_input_size(&self) -> i64 {
        4 * self.image_embedding_size
    }
}

/// Positional encoding with random spatial frequencies (`PositionEmbeddingRandom`).
#[derive(Debug)]
pub struct PositionEmbeddingRandom {
    positional_encoding_gaussian_matrix: Tensor,
}

impl PositionEmbeddingRandom {
    fn new(p: nn::Path, num_pos_feats: i64) -> Self {
        // A persistent buffer: part of the state_dict, not trained.
        let m = Tensor::randn([2, num_pos_feats], (Kind::Float, p.device()));
        let m = p.add("positional_encoding_gaussian_matrix", m, false);
        Self {
            positional_encoding_gaussian_matrix: m,
        }
    }

    /// `_pe_encoding`: coordinates normalised to [0, 1] → `[..., 2 * num_pos_feats]`.
    fn pe_encoding(&self, coords: &Tensor) -> Tensor {
        let coords = coords * 2.0 - 1.0;
        let coords = coords.matmul(
            &self
                .positional_encoding_gaussian_matrix
                .to_kind(coords.kind()),
        );
        let coords = coords * (2.0 * PI);
        Tensor::cat(&[coords.sin(), coords.cos()], -1)
    }

    /// Encoding of the centres of an `h × w` grid, `[c, h, w]`.
    pub fn forward(&self, size: (i64, i64)) -> Tensor {
        let (h, w) = size;
        let device = self.positional_encoding_gaussian_matrix.device();
        let grid = Tensor::ones([h, w], (Kind::Float, device));
        let y_embed = (grid.cumsum(0, Kind::Float) - 0.5) / h as f64;
        let x_embed = (grid.cumsum(1, Kind::Float) - 0.5) / w as f64;
        let pe = self.pe_encoding(&Tensor::stack(&[x_embed, y_embed], -1));
        pe.permute([2, 0, 1])
    }

    /// Encoding of pixel coordinates `(x, y)` in an image of `image_size` (h, w).
    ///
    /// # Shapes
    /// `coords_input`: `[b, n, 2]` → `[b, n, c]`.
    pub fn forward_with_coords(&self, coords_input: &Tensor, image_size: (i64, i64)) -> Tensor {
        // x / w and y / h, as segment_anything divides by the image size's numbers (no
        // host-made tensor to send to the device).
        let coords = coords_input.to_kind(Kind::Float);
        let x = coords.select(-1, 0) / image_size.1 as f64;
        let y = coords.select(-1, 1) / image_size.0 as f64;
        self.pe_encoding(&Tensor::stack(&[x, y], -1))
    }
}

/// `PromptEncoder`: sparse embeddings for points and boxes, dense embeddings for masks.
#[derive(Debug)]
pub struct PromptEncoder {
    pe_layer: PositionEmbeddingRandom,
    point_embeddings: Vec<Tensor>,
    not_a_point_embed: Tensor,
    mask_downscaling: (nn::Conv2D, LayerNorm2d, nn::Conv2D, LayerNorm2d, nn::Conv2D),
    no_mask_embed: Tensor,
    cfg: PromptEncoderConfig,
}

impl PromptEncoder {
    /// Builds the prompt encoder under `p` (`prompt_encoder`).
    pub fn new(p: &nn::Path, cfg: &PromptEncoderConfig) -> Result<Self, ModelError> {
        if cfg.embed_dim % 2 != 0 || cfg.mask_in_chans % 4 != 0 {
            return Err(ModelError::Config {
                field: "prompt_encoder".into(),
                expected: "an even embed_dim and mask_in_chans divisible by 4".into(),
                found: format!(
                    "embed_dim {}, mask_in_chans {}",
                    cfg.embed_dim, cfg.mask_in_chans
                ),
            });
        }
        let d = cfg.embed_dim;
        let emb = |q: nn::Path, n: i64| {
            q.var(
                "weight",
                &[n, d],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
        };
        // pos/neg point + 2 box corners
        let point_embeddings = (0..4).map(|i| emb(p / "point_embeddings" / i, 1)).collect();
        let md = p / "mask_downscaling";
        let c = cfg.mask_in_chans;
        let mask_downscaling = (
            conv2d(&md / 0, 1, c / 4, 2, conv_cfg(2, 0, 1, true)),
            LayerNorm2d::new(&md / 1, c / 4),
            // 2: activation
            conv2d(&md / 3, c / 4, c, 2, conv_cfg(2, 0, 1, true)),
            LayerNorm2d::new(&md / 4, c),
            // 5: activation
            conv2d(&md / 6, c, d, 1, conv_cfg(1, 0, 1, true)),
        );
        Ok(Self {
            pe_layer: PositionEmbeddingRandom::new(p / "pe_layer", d / 2),
            point_embeddings,
            not_a_point_embed: emb(p / "not_a_point_embed", 1),
            mask_downscaling,
            no_mask_embed: emb(p / "no_mask_embed", 1),
            cfg: cfg.clone(),
        })
    }

    /// The configuration this encoder was built with.
    pub fn config(&self) -> &PromptEncoderConfig {
        &self.cfg
    }

    /// Positional encoding of the image embedding grid, `[1, c, h, w]` (`get_dense_pe`).
    pub fn get_dense_pe(&self) -> Tensor {
        self.dense_pe_sized(self.cfg.image_embedding_size)
    }

    /// Positional encoding of a `grid × grid` embedding, `[1, c, grid, grid]`: the model run at
    /// another input side ([`crate::Sam::set_input_size`]).
    pub fn dense_pe_sized(&self, grid: i64) -> Tensor {
        self.pe_layer.forward((grid, grid)).unsqueeze(0)
    }

    /// `_embed_points`.
    fn embed_points(&self, points: &Tensor, labels: &Tensor, pad: bool, input: i64) -> Tensor {
        // Shift to center of pixel
        let mut points = points.to_kind(Kind::Float) + 0.5;
        let mut labels = labels.to_kind(Kind::Float);
        if pad {
            let b = points.size()[0];
            let padding_point = Tensor::zeros([b, 1, 2], (Kind::Float, points.device()));
            let padding_label = -Tensor::ones([b, 1], (Kind::Float, labels.device()));
            points = Tensor::cat(&[points, padding_point], 1);
            labels = Tensor::cat(&[labels, padding_label], 1);
        }
        let pe = self.pe_layer.forward_with_coords(&points, (input, input));
        let labels = labels.unsqueeze(-1);
        let kind = pe.kind();
        let is = |v: f64| labels.eq(v).to_kind(kind);
        // point_embedding[labels == -1] = 0.0, then += not_a_point_embed; labels 0 and 1 add
        // the negative / positive point embeddings. Masks of 0/1 keep the sums exact.
        let keep = labels.ne(-1.0).to_kind(kind);
        pe * keep
            + is(-1.0) * &self.not_a_point_embed
            + is(0.0) * &self.point_embeddings[0]
            + is(1.0) * &self.point_embeddings[1]
    }

    /// `_embed_boxes`.
    fn embed_boxes(&self, boxes: &Tensor, input: i64) -> Tensor {
        // Shift to center of pixel
        let boxes = boxes.to_kind(Kind::Float) + 0.5;
        let coords = boxes.reshape([-1, 2, 2]);
        let corner = self.pe_layer.forward_with_coords(&coords, (input, input));
        let offsets = Tensor::stack(&[&self.point_embeddings[2], &self.point_embeddings[3]], 1);
        corner + offsets
    }

    /// `_embed_masks`.
    fn embed_masks(&self, masks: &Tensor) -> Tensor {
        let (c0, n1, c3, n4, c6) = &self.mask_downscaling;
        let x = gelu(&n1.forward(&c0.forward(masks)));
        let x = gelu(&n4.forward(&c3.forward(&x)));
        c6.forward(&x)
    }

    /// Embeds prompts (`forward`).
    ///
    /// # Shapes
    /// `points`: (coords `[n, p, 2]` as (x, y) in model-input pixels, labels `[n, p]`: 1 positive,
    /// 0 negative, -1 padding); `boxes`: `[n, 4]` (x0, y0, x1, y1); `masks`: `[n, 1, 4h, 4w]`
    /// low-resolution logits → (sparse `[n, p', c]`, dense `[n, c, h, w]`).
    pub fn forward(
        &self,
        points: Option<(&Tensor, &Tensor)>,
        boxes: Option<&Tensor>,
        masks: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let (input, grid) = (self.cfg.input_image_size, self.cfg.image_embedding_size);
        self.forward_sized(points, boxes, masks, input, grid)
    }

    /// [`PromptEncoder::forward`] for a model run at input side `input` with a `grid × grid`
    /// image embedding ([`crate::Sam::set_input_size`]): coordinates are normalised by `input`,
    /// mask inputs are `[n, 1, 4 grid, 4 grid]` and the dense output is `grid × grid`.
    pub fn forward_sized(
        &self,
        points: Option<(&Tensor, &Tensor)>,
        boxes: Option<&Tensor>,
        masks: Option<&Tensor>,
        input: i64,
        grid: i64,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let bs = if let Some((coords, _)) = points {
            coords.size()[0]
        } else if let Some(b) = boxes {
            b.size()[0]
        } else if let Some(m) = masks {
            m.size()[0]
        } else {
            1
        };
        if let Some((coords, labels)) = points {
            let cs = coords.size();
            if cs.len() != 3 || cs[2] != 2 {
                return Err(shape_error("point_coords", "[n, p, 2]", coords));
            }
            if labels.size() != cs[..2] {
                return Err(shape_error(
                    "point_labels",
                    &format!("[{}, {}]", cs[0], cs[1]),
                    labels,
                ));
            }
        }
        if let Some(b) = boxes {
            if b.size() != [bs, 4] {
                return Err(shape_error("boxes", &format!("[{bs}, 4]"), b));
            }
        }
        let s = grid;
        if let Some(m) = masks {
            let ms = 4 * grid;
            if m.size() != [bs, 1, ms, ms] {
                return Err(shape_error(
                    "mask_input",
                    &format!("[{bs}, 1, {ms}, {ms}]"),
                    m,
                ));
            }
        }
        let device = self.no_mask_embed.device();
        let mut sparse = vec![Tensor::empty(
            [bs, 0, self.cfg.embed_dim],
            (Kind::Float, device),
        )];
        if let Some((coords, labels)) = points {
            sparse.push(self.embed_points(coords, labels, boxes.is_none(), input));
        }
        if let Some(b) = boxes {
            sparse.push(self.embed_boxes(b, input));
        }
        let sparse = Tensor::cat(&sparse, 1);
        let dense = match masks {
            Some(m) => self.embed_masks(m),
            None => self
                .no_mask_embed
                .reshape([1, -1, 1, 1])
                .expand([bs, -1, s, s], false),
        };
        Ok((sparse, dense))
    }
}
