//! Export to TorchScript: the networks of a model as modules that `torch.jit.load` runs
//! without this project, segment_anything or micro_sam, plus `model.json`, which says how
//! they are fed and what they return.
//!
//! The modules are traced (`torch.jit.trace`'s equivalent): the weights are frozen into them
//! as constants and every shape is the one traced, so each module takes exactly the input
//! shapes `model.json` lists (one image, one prompt of `points` points, ...). Files written:
//!
//! | file | inputs | outputs |
//! |---|---|---|
//! | `image_encoder.pt` | image `[1, 3, S, S]` (normalised, padded) | embeddings `[1, C, E, E]` |
//! | `prompt_points.pt` | embeddings, coords `[1, P, 2]`, labels `[1, P]` | `[1, 4, 4E·4E + 1]` |
//! | `prompt_box.pt` | embeddings, box `[1, 4]` | `[1, 4, 4E·4E + 1]` |
//! | `unetr_decoder.pt` (with a decoder) | embeddings | `[1, 3, 16E, 16E]` |
//! | `ais.pt` (with a decoder) | grey image `[1, 1, S, S]` in [0, 1] | `[1, 3, S, S]` |
//!
//! A traced module returns one tensor, so the prompt modules return, for each of the 4 mask
//! tokens, its flattened mask logits followed by its predicted IoU ([`pack_prompt_output`]).
//! `ais.pt` resizes the decoder's output to S (bilinear) when 16E differs from S (an encoder
//! with 8 px patches). S is the model input side (1024 for SAM, or the side a model trained with
//! `model.encoder_input: native` runs at), E = S / 16 and C the embedding channels (256).

use std::fs;
use std::path::{Path, PathBuf};

use sam_config::{load_config_with, ValidateOptions};
use sam_model::{CheckpointKind, SamModel, TorchCheckpoint};
use serde_json::{json, Value};
use tch::{CModule, Device, Kind, Tensor};

use crate::export::{read_source, resolve, run_config_above, PeftLayout};
use crate::TrainError;

/// How [`export_torchscript`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TorchScriptOptions {
    /// Write into an output folder that already holds files (the files of the export are
    /// replaced, nothing else is touched). Never the checkpoint folder itself.
    pub replace: bool,
    /// Points per prompt that `prompt_points.pt` is traced for (at least 1).
    pub points: i64,
}

impl Default for TorchScriptOptions {
    fn default() -> Self {
        Self {
            replace: false,
            points: 1,
        }
    }
}

/// The file names of the traced modules and their description.
pub mod files {
    /// The image encoder.
    pub const IMAGE_ENCODER: &str = "image_encoder.pt";
    /// Prompt encoder + mask decoder for point prompts.
    pub const PROMPT_POINTS: &str = "prompt_points.pt";
    /// Prompt encoder + mask decoder for a box prompt.
    pub const PROMPT_BOX: &str = "prompt_box.pt";
    /// The UNETR instance-segmentation decoder.
    pub const UNETR_DECODER: &str = "unetr_decoder.pt";
    /// The automatic instance segmentation network: grey image → UNETR outputs.
    pub const AIS: &str = "ais.pt";
    /// What the modules expect and return.
    pub const MANIFEST: &str = "model.json";
}

/// The percentile normalisation a model was trained with, and where it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportNormalization {
    /// Lower percentile mapped to 0.
    pub lower_percentile: f64,
    /// Upper percentile mapped to 1.
    pub upper_percentile: f64,
    /// Whether normalised values are clipped to [0, 1].
    pub clip: bool,
    /// The run config it was read from; `None`: none was found, the defaults are assumed.
    pub config: Option<PathBuf>,
}

/// A model ready to trace: built on the CPU from a checkpoint with its adapters merged, its
/// weights frozen, and the training's normalisation.
pub(crate) struct Loaded {
    pub model: SamModel,
    pub normalization: ExportNormalization,
}

/// Builds the model of `source` (see [`crate::export_model`]) for tracing.
pub(crate) fn load_for_tracing(source: &Path) -> Result<Loaded, TrainError> {
    let (model_state, decoder_state, input_size) = read_source(source, PeftLayout::Merged)?;
    let ckpt = TorchCheckpoint {
        path: source.to_path_buf(),
        kind: CheckpointKind::Safetensors,
        model_state,
        decoder_state,
        warnings: Vec::new(),
        input_size,
    };
    let model = SamModel::from_checkpoint(&ckpt, Device::Cpu)
        .map_err(|e| TrainError::Model(format!("{}: {e}", source.display())))?;
    // A traced graph holds the weights as constants, which must not require gradients.
    for (_, t) in model.named_variables() {
        let _ = t.set_requires_grad(false);
    }
    Ok(Loaded {
        model,
        normalization: training_normalization(source)?,
    })
}

/// `data.normalization` of the run `source` belongs to, else the defaults (1, 99.8, clipped).
fn training_normalization(source: &Path) -> Result<ExportNormalization, TrainError> {
    let Some(config) = run_config_above(source) else {
        return Ok(ExportNormalization {
            lower_percentile: 1.0,
            upper_percentile: 99.8,
            clip: true,
            config: None,
        });
    };
    let loaded = load_config_with(&config, &ValidateOptions::without_path_checks())
        .map_err(|e| TrainError::Model(format!("{}: {e}", config.display())))?;
    let n = &loaded.config.data.normalization;
    Ok(ExportNormalization {
        lower_percentile: n.lower_percentile,
        upper_percentile: n.upper_percentile,
        clip: n.clip,
        config: Some(config),
    })
}

/// Exports the networks of `source` (a checkpoint folder or file, as for
/// [`crate::export_model`]) as TorchScript modules into the folder `output`, with
/// `model.json`. Adapters are merged into the encoder. Returns the files written.
///
/// # Errors
/// [`TrainError::Usage`] before anything is written when `output` is a file, is the
/// checkpoint folder or lies inside it, or holds files and `options.replace` is off, or
/// `options.points` is below 1; reading the checkpoint or tracing failures otherwise.
pub fn export_torchscript(
    source: &Path,
    output: &Path,
    options: TorchScriptOptions,
) -> Result<Vec<PathBuf>, TrainError> {
    if options.points < 1 {
        return Err(TrainError::Usage(format!(
            "export --points {}: a point prompt has at least 1 point",
            options.points
        )));
    }
    check_output_dir(source, output, options.replace)?;
    let loaded = load_for_tracing(source)?;
    fs::create_dir_all(output).map_err(|e| TrainError::io(output, e))?;
    let traced = tch::no_grad(|| trace_all(&loaded.model, options.points))?;
    let mut written = Vec::new();
    let mut modules = serde_json::Map::new();
    for t in &traced {
        let path = output.join(t.file);
        save_module(&t.module, &path)?;
        modules.insert(t.name.into(), t.describe());
        written.push(path);
    }
    let manifest = manifest(source, &loaded, modules);
    let path = output.join(files::MANIFEST);
    write_text(
        &path,
        &serde_json::to_string_pretty(&manifest).unwrap_or_default(),
    )?;
    written.push(path);
    Ok(written)
}

/// A traced module with what it was traced on.
pub(crate) struct Traced {
    /// Its key in `model.json`.
    pub name: &'static str,
    /// Its file name.
    pub file: &'static str,
    /// The module.
    pub module: CModule,
    /// Input names, traced shapes, meanings.
    pub inputs: Vec<(&'static str, Vec<i64>, &'static str)>,
    /// Output names, traced shapes, meanings.
    pub outputs: Vec<(&'static str, Vec<i64>, &'static str)>,
    /// What it computes.
    pub about: &'static str,
}

impl Traced {
    fn describe(&self) -> Value {
        json!({
            "file": self.file,
            "computes": self.about,
            "inputs": tensor_list(&self.inputs),
            "outputs": tensor_list(&self.outputs),
        })
    }
}

/// `model.json`'s description of a module's inputs or outputs.
fn tensor_list(v: &[(&'static str, Vec<i64>, &'static str)]) -> Vec<Value> {
    v.iter()
        .map(|(n, s, m)| json!({"name": n, "shape": s, "dtype": "float32", "meaning": m}))
        .collect()
}

/// Example inputs of the traced shapes: a deterministic grey image, points and a box inside
/// the input.
pub(crate) struct ExampleInputs {
    /// `[1, 1, S, S]` grey image in [0, 1].
    pub grey: Tensor,
    /// `[1, P, 2]` point coordinates (x, y) in input pixels.
    pub coords: Tensor,
    /// `[1, P]` labels, alternately 1 and 0.
    pub labels: Tensor,
    /// `[1, 4]` box (x0, y0, x1, y1).
    pub boxes: Tensor,
}

impl ExampleInputs {
    /// Inputs for a model of input side `side` and `points` points.
    pub fn new(side: i64, points: i64) -> Self {
        let opts = (Kind::Float, Device::Cpu);
        let ramp = Tensor::arange(side, opts) / side as f64;
        let grey = (ramp.view([1, side]) * 7.0).sin() * (ramp.view([side, 1]) * 5.0).cos();
        let grey = ((grey + 1.0) * 0.5).view([1, 1, side, side]);
        let s = side as f32;
        let xy: Vec<f32> = (0..points)
            .flat_map(|i| {
                let f = (i + 1) as f32 / (points + 1) as f32;
                [f * s, (1.0 - f) * s * 0.8]
            })
            .collect();
        let labels: Vec<f32> = (0..points).map(|i| ((i + 1) % 2) as f32).collect();
        Self {
            grey,
            coords: Tensor::from_slice(&xy).view([1, points, 2]),
            labels: Tensor::from_slice(&labels).view([1, points]),
            boxes: Tensor::from_slice(&[0.2 * s, 0.25 * s, 0.7 * s, 0.6 * s]).view([1, 4]),
        }
    }
}

/// Traces one module, turning a forward error into the trace's error.
fn trace(
    name: &str,
    inputs: &[Tensor],
    mut f: impl FnMut(&[Tensor]) -> Result<Vec<Tensor>, TrainError>,
) -> Result<CModule, TrainError> {
    let mut failure = None;
    let module =
        CModule::create_by_tracing(name, "forward", inputs, &mut |x: &[Tensor]| match f(x) {
            Ok(out) => out,
            Err(e) => {
                failure = Some(e);
                Vec::new()
            }
        });
    if let Some(e) = failure {
        return Err(e);
    }
    module.map_err(|e| TrainError::Model(format!("tracing {name}: {e}")))
}

/// The grey image `[1, 1, S, S]` in [0, 1] → SAM's normalised input `[1, 3, S, S]`.
fn grey_to_input(grey: &Tensor, model: &SamModel) -> Result<Tensor, TrainError> {
    let (_, _, h, w) = grey.size4()?;
    Ok(model
        .sam()
        .preprocess(&(grey * 255.0).expand([1, 3, h, w], false))?)
}

/// Traces every network of `model`; call under `no_grad`.
pub(crate) fn trace_all(model: &SamModel, points: i64) -> Result<Vec<Traced>, TrainError> {
    let sam = model.sam();
    let side = sam.img_size();
    let grid = sam.embedding_size();
    let ex = ExampleInputs::new(side, points);
    let image = grey_to_input(&ex.grey, model)?;
    let embeddings = sam.image_encoder.forward(&image);
    let c = embeddings.size()[1];
    let low = 4 * grid;
    let k = 4;
    let image_meaning = "(RGB on 0..255 − pixel_mean) / pixel_std, padded bottom/right with 0";
    let emb_meaning = "image embeddings of image_encoder";
    let packed_meaning =
        "per mask token (index 0: the single-mask output, multimask_output=False; \
                          1..3: the three multimask outputs), its 4E×4E mask logits flattened \
                          row by row (threshold 0), then its predicted IoU: \
                          masks = out[..., :-1].unflatten(-1, (4E, 4E)), iou = out[..., -1]";
    let mut out = vec![Traced {
        name: "image_encoder",
        file: files::IMAGE_ENCODER,
        module: trace("image_encoder", &[image.shallow_clone()], |x| {
            Ok(vec![sam.image_encoder.forward(&x[0])])
        })?,
        inputs: vec![("image", vec![1, 3, side, side], image_meaning)],
        outputs: vec![(
            "image_embeddings",
            vec![1, c, grid, grid],
            "SAM's image embeddings, the input of the other modules",
        )],
        about: "SAM's image encoder",
    }];
    let prompt_out = || vec![("masks_and_iou", vec![1, k, low * low + 1], packed_meaning)];
    let decode = |emb: &Tensor,
                  pts: Option<(&Tensor, &Tensor)>,
                  boxes: Option<&Tensor>|
     -> Result<Vec<Tensor>, TrainError> {
        let (sparse, dense) = sam
            .prompt_encoder
            .forward_sized(pts, boxes, None, side, grid)?;
        let pe = sam.prompt_encoder.dense_pe_sized(grid);
        let (masks, iou) = sam.mask_decoder.predict_masks(emb, &pe, &sparse, &dense)?;
        Ok(vec![pack_prompt_output(&masks, &iou)?])
    };
    out.push(Traced {
        name: "prompt_points",
        file: files::PROMPT_POINTS,
        module: trace(
            "prompt_points",
            &[
                embeddings.shallow_clone(),
                ex.coords.shallow_clone(),
                ex.labels.shallow_clone(),
            ],
            |x| decode(&x[0], Some((&x[1], &x[2])), None),
        )?,
        inputs: vec![
            ("image_embeddings", vec![1, c, grid, grid], emb_meaning),
            (
                "point_coords",
                vec![1, points, 2],
                "(x, y) in model-input pixels (after resizing the long side to S)",
            ),
            (
                "point_labels",
                vec![1, points],
                "1 positive, 0 negative, -1 ignored",
            ),
        ],
        outputs: prompt_out(),
        about: "SAM's prompt encoder and mask decoder on point prompts",
    });
    out.push(Traced {
        name: "prompt_box",
        file: files::PROMPT_BOX,
        module: trace(
            "prompt_box",
            &[embeddings.shallow_clone(), ex.boxes.shallow_clone()],
            |x| decode(&x[0], None, Some(&x[1])),
        )?,
        inputs: vec![
            ("image_embeddings", vec![1, c, grid, grid], emb_meaning),
            (
                "box",
                vec![1, 4],
                "(x0, y0, x1, y1) in model-input pixels (after resizing the long side to S)",
            ),
        ],
        outputs: prompt_out(),
        about: "SAM's prompt encoder and mask decoder on a box prompt",
    });
    if let Some(decoder) = model.decoder() {
        let channels = decoder.config().out_channels;
        let unetr_meaning = unetr_meaning(decoder.config().sigmoid_output);
        out.push(Traced {
            name: "unetr_decoder",
            file: files::UNETR_DECODER,
            module: trace("unetr_decoder", &[embeddings.shallow_clone()], |x| {
                Ok(vec![decoder.forward_t(&x[0], false)?])
            })?,
            inputs: vec![("image_embeddings", vec![1, c, grid, grid], emb_meaning)],
            outputs: vec![(
                "instance_maps",
                vec![1, channels, 16 * grid, 16 * grid],
                unetr_meaning,
            )],
            about: "micro_sam's UNETR decoder (automatic instance segmentation)",
        });
        out.push(trace_ais(model)?);
    }
    Ok(out)
}

/// `[n, k, h, w]` mask logits and `[n, k]` IoU predictions as one `[n, k, h·w + 1]` tensor: a
/// traced module returns a single tensor.
pub(crate) fn pack_prompt_output(masks: &Tensor, iou: &Tensor) -> Result<Tensor, TrainError> {
    let (n, k, h, w) = masks.size4()?;
    Ok(Tensor::cat(
        &[masks.reshape([n, k, h * w]), iou.reshape([n, k, 1])],
        2,
    ))
}

/// Traces the automatic instance segmentation network (grey image → image encoder → UNETR
/// decoder); call under `no_grad`.
///
/// # Errors
/// [`TrainError::Usage`] for a model without the decoder.
pub(crate) fn trace_ais(model: &SamModel) -> Result<Traced, TrainError> {
    let Some(decoder) = model.decoder() else {
        return Err(TrainError::Usage(
            "the model has no instance-segmentation decoder".into(),
        ));
    };
    let sam = model.sam();
    let side = sam.img_size();
    let channels = decoder.config().out_channels;
    let ex = ExampleInputs::new(side, 1);
    Ok(Traced {
        name: "ais",
        file: files::AIS,
        module: trace("ais", &[ex.grey.shallow_clone()], |x| {
            let emb = sam.image_encoder.forward(&grey_to_input(&x[0], model)?);
            Ok(vec![ais_output(model, &emb)?])
        })?,
        inputs: vec![(
            "grey",
            vec![1, 1, side, side],
            "grey image percentile-normalised to [0, 1] (see preprocessing), S×S",
        )],
        outputs: vec![(
            "instance_maps",
            vec![1, channels, side, side],
            unetr_meaning(decoder.config().sigmoid_output),
        )],
        about: "grey image → ×255, 3 channels, pixel mean/std → image encoder → UNETR decoder",
    })
}

/// The UNETR decoder's output on `emb` at the model input side (micro_sam's
/// `postprocess_masks` without crop: bilinear to S × S when the decoder's 16 × E differs, e.g.
/// for an encoder with 8 px patches).
pub(crate) fn ais_output(model: &SamModel, emb: &Tensor) -> Result<Tensor, TrainError> {
    let Some(decoder) = model.decoder() else {
        return Err(TrainError::Usage(
            "the model has no instance-segmentation decoder".into(),
        ));
    };
    let side = model.sam().img_size();
    let out = decoder.forward_t(emb, false)?;
    Ok(decoder.postprocess_masks(&out, (side, side), (side, side)))
}

/// What the UNETR decoder's channels mean.
fn unetr_meaning(sigmoid: bool) -> &'static str {
    if sigmoid {
        "after the sigmoid: foreground probability, normalised distance to the object \
         centre, normalised distance to the object boundary"
    } else {
        "logits: foreground, centre distance, boundary distance"
    }
}

/// The contents of `model.json`.
fn manifest(source: &Path, loaded: &Loaded, modules: serde_json::Map<String, Value>) -> Value {
    let sam = loaded.model.sam();
    let n = &loaded.normalization;
    json!({
        "format": "sam_trainer torchscript",
        "format_version": 1,
        "source": source.display().to_string(),
        "model": loaded.model.describe(),
        "input_size": sam.img_size(),
        "embedding_size": sam.embedding_size(),
        "preprocessing": {
            "normalization": {
                "kind": "percentile",
                "lower_percentile": n.lower_percentile,
                "upper_percentile": n.upper_percentile,
                "clip": n.clip,
                "formula": "(x - percentile(x, lower)) / (percentile(x, upper) - percentile(x, lower)), over the whole grey image (numpy's linear percentiles)",
                "from": n.config.as_ref().map_or_else(
                    || "defaults (no run config.yaml found above the checkpoint)".to_string(),
                    |c| c.display().to_string()),
            },
            "grey_to_rgb": "normalised grey × 255, the same value in the 3 channels",
            "resize": "bilinear (antialiased) so that the long side is input_size, aspect kept",
            "pixel_mean": sam.config().pixel_mean,
            "pixel_std": sam.config().pixel_std,
            "padding": "after (x - pixel_mean) / pixel_std: zeros at the bottom and right to input_size × input_size",
            "coordinates": "prompt coordinates are (x, y) pixels of the resized image: multiply the original coordinates by input_size / max(height, width)",
            "postprocessing": "outputs cover the padded square: upscale (bilinear) to input_size if smaller, crop to the resized image, resize (bilinear) to the original size",
        },
        "traced_shapes": "every module takes exactly the input shapes listed (tracing fixes shapes): one image, one prompt",
        "modules": modules,
    })
}

/// Refuses an output folder that is a file, is the checkpoint (folder) or lies inside it, or
/// holds files when `replace` is off.
pub(crate) fn check_output_dir(
    source: &Path,
    output: &Path,
    replace: bool,
) -> Result<(), TrainError> {
    if output.is_file() {
        return Err(TrainError::Usage(format!(
            "export --output {} is a file: this format writes a folder (nothing was written)",
            output.display()
        )));
    }
    if let (Ok(src), Some(out)) = (fs::canonicalize(source), resolve(output)) {
        if out == src || out.starts_with(&src) || (src.is_file() && src.parent() == Some(&out)) {
            return Err(TrainError::Usage(format!(
                "export --output {} is or lies inside the checkpoint being exported ({}): \
                 write it elsewhere, e.g. final_models/<name> (nothing was written)",
                output.display(),
                src.display()
            )));
        }
    }
    let non_empty = fs::read_dir(output).is_ok_and(|mut d| d.next().is_some());
    if non_empty && !replace {
        return Err(TrainError::Usage(format!(
            "export --output {} holds files: pass --force to replace the exported files in \
             it, or choose another folder (nothing was written)",
            output.display()
        )));
    }
    Ok(())
}

/// Saves a module under a temporary name and renames it into place.
pub(crate) fn save_module(module: &CModule, path: &Path) -> Result<(), TrainError> {
    let tmp = path.with_extension("pt.tmp");
    module
        .save(&tmp)
        .map_err(|e| TrainError::Model(format!("writing {}: {e}", path.display())))?;
    fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Writes a text file under a temporary name and renames it into place.
pub(crate) fn write_text(path: &Path, text: &str) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}
