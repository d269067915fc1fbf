//! `segment_anything/predictor.py` and `utils/transforms.py`: image embeddings once per image,
//! then any number of prompt batches on them.

use tch::{Device, Kind, Tensor};

use crate::error::{shape_error, ModelError};
use crate::precision::Precision;
use crate::sam::Sam;

/// Resizes images so that the long side equals the model input, and maps coordinates and
/// boxes the same way (`ResizeLongestSide`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResizeLongestSide {
    /// Length of the long side after resizing (the model's `img_size`).
    pub target_length: i64,
}

impl ResizeLongestSide {
    /// The output (h, w) for an input of (h, w) (`get_preprocess_shape`).
    pub fn get_preprocess_shape(old_h: i64, old_w: i64, long_side_length: i64) -> (i64, i64) {
        let scale = long_side_length as f64 / old_h.max(old_w) as f64;
        let (new_h, new_w) = (old_h as f64 * scale, old_w as f64 * scale);
        ((new_h + 0.5) as i64, (new_w + 0.5) as i64)
    }

    /// Resizes `[b, c, h, w]` float images with antialiased bilinear interpolation
    /// (`apply_image_torch`, with the sizes taken from h and w).
    pub fn apply_image(&self, image: &Tensor) -> Tensor {
        let s = image.size();
        let (h, w) = Self::get_preprocess_shape(s[2], s[3], self.target_length);
        if (h, w) == (s[2], s[3]) {
            return image.shallow_clone();
        }
        image.internal_upsample_bilinear2d_aa([h, w], false, None, None)
    }

    /// Maps `(x, y)` pixel coordinates `[..., 2]` of an image of `original_size` (h, w) into
    /// the resized frame (`apply_coords`).
    pub fn apply_coords(&self, coords: &Tensor, original_size: (i64, i64)) -> Tensor {
        let (old_h, old_w) = original_size;
        let (new_h, new_w) = Self::get_preprocess_shape(old_h, old_w, self.target_length);
        let scale = Tensor::from_slice(&[new_w as f64 / old_w as f64, new_h as f64 / old_h as f64])
            .to_device(coords.device());
        (coords.to_kind(Kind::Double) * scale).to_kind(Kind::Float)
    }

    /// Maps `[n, 4]` boxes (x0, y0, x1, y1) into the resized frame (`apply_boxes`).
    pub fn apply_boxes(&self, boxes: &Tensor, original_size: (i64, i64)) -> Tensor {
        self.apply_coords(&boxes.reshape([-1, 2, 2]), original_size)
            .reshape([-1, 4])
    }
}

/// A borrowed grey image: `rows × cols` values, row-major (the value at `(row, col)` is
/// `pixels[row * cols + col]`, as in sam-data's `Plane`), percentile normalised to [0, 1].
///
/// The predictor borrows any row-major buffer rather than taking sam-data's `Plane`, so that
/// the model crate does not depend on the data crate and its image codecs: a `Plane<f32>` `p`
/// is viewed as `ImageView { pixels: p.as_slice(), rows: p.rows(), cols: p.cols() }`.
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    /// The pixels, `rows * cols` values in [0, 1], row-major.
    pub pixels: &'a [f32],
    /// Number of rows (the image height).
    pub rows: usize,
    /// Number of columns (the image width).
    pub cols: usize,
}

/// The embedding of one image with the sizes needed to map prompts and masks.
#[derive(Debug)]
pub struct ImageEmbedding {
    /// `[1, c, h, w]` image embedding.
    pub features: Tensor,
    /// Size of the image given to `set_image`, (h, w).
    pub original_size: (i64, i64),
    /// Size after resizing, before padding, (h, w).
    pub input_size: (i64, i64),
}

/// Prompts for one image, batched over `n` objects. Coordinates are pixels of the original
/// image, `(x, y)`; at least one of points, boxes or a mask input is needed.
#[derive(Debug, Default)]
pub struct Prompts {
    /// `[n, p, 2]` point coordinates (x, y).
    pub point_coords: Option<Tensor>,
    /// `[n, p]` point labels: 1 foreground, 0 background, -1 ignored.
    pub point_labels: Option<Tensor>,
    /// `[n, 4]` boxes (x0, y0, x1, y1).
    pub boxes: Option<Tensor>,
    /// `[n, 1, 256, 256]` low-resolution logits, e.g. a previous prediction.
    pub mask_input: Option<Tensor>,
}

/// Result of [`SamPredictor::predict`].
#[derive(Debug)]
pub struct Prediction {
    /// `[n, k, H, W]` mask logits at the original image size; threshold at 0
    /// ([`Prediction::binary_masks`]).
    pub masks: Tensor,
    /// `[n, k]` predicted IoU of each mask.
    pub iou_predictions: Tensor,
    /// `[n, k, 256, 256]` low-resolution logits, usable as the next `mask_input`.
    pub low_res_logits: Tensor,
}

impl Prediction {
    /// `masks > 0` (`Sam.mask_threshold`).
    pub fn binary_masks(&self) -> Tensor {
        self.masks.gt(0.0)
    }
}

/// Computes image embeddings and predicts masks from prompts (`SamPredictor`).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use sam_model::{ImageView, Prompts, Sam, SamConfig, SamPredictor};
/// use tch::{nn, Device, Tensor};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let sam = Sam::new(&vs.root(), &SamConfig::vit_b())?;
/// // ... load weights into `vs` ...
/// let pixels = vec![0.5f32; 512 * 512];
/// let mut predictor = SamPredictor::new(&sam);
/// predictor.set_image(ImageView { pixels: &pixels, rows: 512, cols: 512 })?;
/// let prompts = Prompts {
///     point_coords: Some(Tensor::from_slice(&[100.0f32, 120.0]).view([1, 1, 2])),
///     point_labels: Some(Tensor::from_slice(&[1i64]).view([1, 1])),
///     ..Default::default()
/// };
/// let out = predictor.predict(&prompts, true)?;
/// assert_eq!(out.masks.size(), [1, 3, 512, 512]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SamPredictor<'a> {
    model: &'a Sam,
    transform: ResizeLongestSide,
    image: Option<ImageEmbedding>,
    precision: Precision,
}

impl<'a> SamPredictor<'a> {
    /// A predictor on `model` with no image set.
    pub fn new(model: &'a Sam) -> Self {
        let transform = ResizeLongestSide {
            target_length: model.img_size(),
        };
        Self {
            model,
            transform,
            image: None,
            precision: Precision::Fp32,
        }
    }

    /// The same predictor running its forward passes in `precision` (fp32 by default). The
    /// embeddings, mask logits and IoU predictions it returns are fp32 either way.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The precision of the forward passes.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The coordinate transform of the model input.
    pub fn transform(&self) -> ResizeLongestSide {
        self.transform
    }

    fn device(&self) -> Device {
        self.model.prompt_encoder.get_dense_pe().device()
    }

    /// Grey [0, 1] image → `[1, 3, h', w']` on the 0..255 scale, long side = `img_size`.
    pub fn to_model_input(&self, image: ImageView<'_>) -> Result<Tensor, ModelError> {
        let (h, w) = (image.rows as i64, image.cols as i64);
        if image.pixels.len() != image.rows * image.cols || h == 0 || w == 0 {
            return Err(ModelError::Argument {
                argument: "image",
                message: format!(
                    "expected {}×{} = {} pixels, found {}",
                    image.rows,
                    image.cols,
                    image.rows * image.cols,
                    image.pixels.len()
                ),
            });
        }
        let x = Tensor::from_slice(image.pixels)
            .to_device(self.device())
            .view([1, 1, h, w]);
        // Grey → 3 channels on SAM's 0..255 scale.
        let x = (x * 255.0).expand([1, 3, h, w], false).contiguous();
        Ok(self.transform.apply_image(&x))
    }

    /// Embeds several images in one encoder batch (all are resized and padded to the model
    /// input). The encoder runs without gradients, in the predictor's precision; the embeddings
    /// are fp32.
    pub fn embed_images(
        &self,
        images: &[ImageView<'_>],
    ) -> Result<Vec<ImageEmbedding>, ModelError> {
        let mut inputs = Vec::with_capacity(images.len());
        let mut sizes = Vec::with_capacity(images.len());
        for image in images {
            let x = self.to_model_input(*image)?;
            let s = x.size();
            sizes.push(((image.rows as i64, image.cols as i64), (s[2], s[3])));
            inputs.push(self.model.preprocess(&x)?);
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let batch = Tensor::cat(&inputs, 0);
        let features = self
            .precision
            .run(batch.device(), || {
                tch::no_grad(|| self.model.image_encoder.forward(&batch))
            })?
            .to_kind(Kind::Float);
        Ok(sizes
            .into_iter()
            .enumerate()
            .map(|(i, (original_size, input_size))| ImageEmbedding {
                features: features.narrow(0, i as i64, 1),
                original_size,
                input_size,
            })
            .collect())
    }

    /// Computes the embedding of `image` for the following [`SamPredictor::predict`] calls.
    pub fn set_image(&mut self, image: ImageView<'_>) -> Result<(), ModelError> {
        let mut e = self.embed_images(&[image])?;
        self.image = e.pop();
        Ok(())
    }

    /// Uses an embedding computed before (e.g. by [`SamPredictor::embed_images`]).
    pub fn set_embedding(&mut self, embedding: ImageEmbedding) {
        self.image = Some(embedding);
    }

    /// The current image embedding, if an image is set.
    pub fn embedding(&self) -> Option<&ImageEmbedding> {
        self.image.as_ref()
    }

    /// Predicts masks for a batch of prompts on the current image.
    pub fn predict(
        &self,
        prompts: &Prompts,
        multimask_output: bool,
    ) -> Result<Prediction, ModelError> {
        let image = self.image.as_ref().ok_or(ModelError::Argument {
            argument: "image",
            message: "no image set: call set_image before predict".into(),
        })?;
        predict_on(self, image, prompts, multimask_output)
    }

    /// Predicts masks for prompts on several images, one prompt batch per image.
    pub fn predict_batch(
        &self,
        images: &[ImageEmbedding],
        prompts: &[Prompts],
        multimask_output: bool,
    ) -> Result<Vec<Prediction>, ModelError> {
        if images.len() != prompts.len() {
            return Err(ModelError::Argument {
                argument: "prompts",
                message: format!("{} prompt sets for {} images", prompts.len(), images.len()),
            });
        }
        images
            .iter()
            .zip(prompts)
            .map(|(image, p)| predict_on(self, image, p, multimask_output))
            .collect()
    }
}

fn predict_on(
    predictor: &SamPredictor<'_>,
    image: &ImageEmbedding,
    prompts: &Prompts,
    multimask_output: bool,
) -> Result<Prediction, ModelError> {
    let (model, transform) = (predictor.model, predictor.transform);
    let device = image.features.device();
    let points = match (&prompts.point_coords, &prompts.point_labels) {
        (Some(c), Some(l)) => {
            if c.dim() != 3 {
                return Err(shape_error("point_coords", "[n, p, 2]", c));
            }
            let c = transform.apply_coords(&c.to_device(device), image.original_size);
            Some((c, l.to_device(device)))
        }
        (None, None) => None,
        _ => {
            return Err(ModelError::Argument {
                argument: "point_labels",
                message: "point_coords and point_labels must be given together".into(),
            })
        }
    };
    let boxes = prompts
        .boxes
        .as_ref()
        .map(|b| transform.apply_boxes(&b.to_device(device), image.original_size));
    let mask_input = prompts
        .mask_input
        .as_ref()
        .map(|m| m.to_device(device).to_kind(Kind::Float));
    if points.is_none() && boxes.is_none() && mask_input.is_none() {
        return Err(ModelError::Argument {
            argument: "prompts",
            message: "no points, boxes or mask input given".into(),
        });
    }
    let (low_res, iou) = predictor.precision.run(device, || {
        tch::no_grad(|| {
            model.forward_prompts(
                &image.features,
                points.as_ref().map(|(c, l)| (c, l)),
                boxes.as_ref(),
                mask_input.as_ref(),
                multimask_output,
            )
        })
    })??;
    // Resizing and thresholding happen in fp32 whatever the forward pass ran in.
    let (low_res, iou) = (low_res.to_kind(Kind::Float), iou.to_kind(Kind::Float));
    let masks =
        tch::no_grad(|| model.postprocess_masks(&low_res, image.input_size, image.original_size));
    Ok(Prediction {
        masks,
        iou_predictions: iou,
        low_res_logits: low_res,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_shape_rounds_like_segment_anything() {
        // 256 / 200 = 1.28: 150 * 1.28 = 192.
        assert_eq!(
            ResizeLongestSide::get_preprocess_shape(150, 200, 256),
            (192, 256)
        );
        // 1024 / 2048 = 0.5: 1001 * 0.5 = 500.5 rounds up.
        assert_eq!(
            ResizeLongestSide::get_preprocess_shape(2048, 1001, 1024),
            (1024, 501)
        );
    }

    #[test]
    fn coordinates_and_boxes_scale_with_the_image() {
        let t = ResizeLongestSide { target_length: 256 };
        let c = t.apply_coords(
            &Tensor::from_slice(&[40.0f32, 30.0]).view([1, 1, 2]),
            (150, 200),
        );
        let got = Vec::<f32>::try_from(c.flatten(0, -1)).unwrap();
        assert!(
            (got[0] - 51.2).abs() < 1e-5 && (got[1] - 38.4).abs() < 1e-5,
            "{got:?}"
        );
        let b = t.apply_boxes(
            &Tensor::from_slice(&[0.0f32, 10.0, 100.0, 150.0]).view([1, 4]),
            (150, 200),
        );
        let got = Vec::<f32>::try_from(b.flatten(0, -1)).unwrap();
        let want = [0.0f32, 12.8, 128.0, 192.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "got {got:?}, expected {want:?}");
        }
    }

    #[test]
    fn predict_without_image_or_prompts_is_an_error() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let sam = Sam::new(&vs.root(), &crate::SamConfig::tiny()).unwrap();
        let mut predictor = SamPredictor::new(&sam);
        let err = predictor.predict(&Prompts::default(), true).unwrap_err();
        assert!(err.to_string().contains("set_image"), "{err}");
        let pixels = vec![0.5f32; 20 * 30];
        let bad = ImageView {
            pixels: &pixels,
            rows: 20,
            cols: 31,
        };
        let err = predictor.set_image(bad).unwrap_err();
        assert!(err.to_string().contains("620"), "{err}");
        predictor
            .set_image(ImageView {
                pixels: &pixels,
                rows: 20,
                cols: 30,
            })
            .unwrap();
        let e = predictor.embedding().unwrap();
        assert_eq!((e.original_size, e.input_size), ((20, 30), (171, 256)));
        let err = predictor.predict(&Prompts::default(), true).unwrap_err();
        assert!(
            err.to_string().contains("no points, boxes or mask input"),
            "{err}"
        );
        // Two boxes, single-mask output: masks at the original size.
        let boxes =
            Tensor::from_slice(&[1.0f32, 2.0, 10.0, 12.0, 5.0, 5.0, 25.0, 15.0]).view([2, 4]);
        let out = predictor
            .predict(
                &Prompts {
                    boxes: Some(boxes),
                    ..Default::default()
                },
                false,
            )
            .unwrap();
        assert_eq!(out.masks.size(), [2, 1, 20, 30]);
        assert_eq!(out.low_res_logits.size(), [2, 1, 64, 64]);
        assert_eq!(out.iou_predictions.size(), [2, 1]);
    }

    /// Largest |a - b| over the largest |a|.
    fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
        let scale = a.abs().max().double_value(&[]).max(1e-12);
        (a - b).abs().max().double_value(&[]) / scale
    }

    #[test]
    fn bf16_predictions_are_fp32_tensors_close_to_the_fp32_ones() {
        tch::manual_seed(3);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let sam = Sam::new(&vs.root(), &crate::SamConfig::tiny()).unwrap();
        let pixels: Vec<f32> = (0..40 * 48)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect();
        let image = ImageView {
            pixels: &pixels,
            rows: 40,
            cols: 48,
        };
        let prompts = || Prompts {
            point_coords: Some(Tensor::from_slice(&[10.0f32, 12.0, 30.0, 20.0]).view([2, 1, 2])),
            point_labels: Some(Tensor::from_slice(&[1i64, 1]).view([2, 1])),
            ..Default::default()
        };
        let run = |precision: Precision| {
            let mut p = SamPredictor::new(&sam).with_precision(precision);
            p.set_image(image).unwrap();
            let features = p.embedding().unwrap().features.shallow_clone();
            (features, p.predict(&prompts(), true).unwrap())
        };
        let (f32_features, f32_out) = run(Precision::Fp32);
        let (bf16_features, bf16_out) = run(Precision::Bf16);
        for t in [&bf16_features, &bf16_out.masks, &bf16_out.iou_predictions] {
            assert_eq!(t.kind(), Kind::Float);
        }
        assert_eq!(bf16_out.low_res_logits.kind(), Kind::Float);
        let errors = [
            relative_error(&f32_features, &bf16_features),
            relative_error(&f32_out.low_res_logits, &bf16_out.low_res_logits),
            relative_error(&f32_out.iou_predictions, &bf16_out.iou_predictions),
        ];
        eprintln!("bf16 vs fp32 relative errors (features, logits, iou): {errors:?}");
        // bf16 keeps 8 significant bits (relative step 2^-8 = 0.4 %); a few roundings add up.
        for e in errors {
            assert!(e > 0.0 && e < 5e-2, "{errors:?}");
        }
    }
}
