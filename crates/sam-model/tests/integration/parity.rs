//! Parity with the Python reference implementations.
//!
//! `tests/python/make_parity.py` builds seeded, randomly initialised models with the Python
//! packages (segment-anything 1.0, MobileSAM's TinyViT, torch_em's UNETR as micro_sam builds it),
//! and saves their state_dicts and outputs for fixed inputs under
//! `target/test-fixtures/sam-model-parity/`. These tests load the same weights by name and
//! require the same outputs to ≤ 1e-4 max abs error in fp32, with both attention kernels.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sam_model::{
    AttentionMode, ImageView, Prompts, Sam, SamConfig, SamPredictor, TinyViT, TinyViTConfig,
    UnetrConfig, UnetrDecoder,
};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;
/// vit_b's 12 blocks at 1024²: see `vit_b_matches_segment_anything`.
const VIT_B_EMBEDDING_TOL: f64 = 1e-3;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture_dir() -> PathBuf {
    workspace_root().join("target/test-fixtures/sam-model-parity")
}

static GENERATE: Mutex<()> = Mutex::new(());

/// Returns (state_dict, io) of a case, running the Python script when the fixture is missing or
/// older than the script or a shared module it imports (`sam_testkit::shared_python_modules`).
fn fixture(case: &str, files: &[&str]) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let _guard = GENERATE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fixture_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/make_parity.py");
    let script_time = std::iter::once(script.clone())
        .chain(sam_testkit::shared_python_modules())
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect::<Option<Vec<_>>>()
        .and_then(|times| times.into_iter().max());
    let fresh = files.iter().all(|f| {
        let t = std::fs::metadata(dir.join(f))
            .and_then(|m| m.modified())
            .ok();
        matches!((t, script_time), (Some(t), Some(s)) if t >= s)
    });
    if !fresh {
        let python = workspace_root().join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup.sh to create the Python environment with the \
             reference packages (segment-anything, mobilesam-mirror, torch-em, safetensors)",
            python.display()
        );
        // Write into a fresh folder, then move, so that an interrupted run leaves nothing
        // half-written behind.
        let tmp = dir.join(format!(".tmp-{case}-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(case)
            .arg(&tmp)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "{} {} {case} failed:\n{}",
            python.display(),
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        for f in files {
            std::fs::rename(tmp.join(f), dir.join(f)).unwrap();
        }
        std::fs::remove_dir_all(&tmp).ok();
    }
    let read = |name: &str| -> HashMap<String, Tensor> {
        Tensor::read_safetensors(dir.join(name))
            .unwrap()
            .into_iter()
            .collect()
    };
    let state = read(files[0]);
    let io = read(files[1]);
    (state, io)
}

fn case_files(case: &str) -> [String; 2] {
    [
        format!("{case}.safetensors"),
        format!("{case}_io.safetensors"),
    ]
}

fn load_case(case: &str) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let files = case_files(case);
    fixture(case, &[&files[0], &files[1]])
}

/// Our variable names must be exactly the reference state_dict keys; then copy the values.
fn load_exact(vs: &nn::VarStore, state: &HashMap<String, Tensor>) {
    let ours: BTreeSet<String> = vs.variables().into_keys().collect();
    let theirs: BTreeSet<String> = state.keys().cloned().collect();
    let missing: Vec<_> = theirs.difference(&ours).collect();
    let unexpected: Vec<_> = ours.difference(&theirs).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "variable names differ from the reference state_dict\nmissing in ours: {missing:?}\n\
         not in the reference: {unexpected:?}"
    );
    assert!(
        ours.iter().all(|n| !n.contains("__")),
        "a variable was renamed with __"
    );
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let src = &state[&name];
            assert_eq!(var.size(), src.size(), "shape of {name}");
            var.copy_(src);
        }
    });
}

fn assert_close(what: &str, got: &Tensor, expected: &Tensor, tol: f64) {
    assert_eq!(got.size(), expected.size(), "{what}: shape");
    let got = got.to_kind(Kind::Double);
    let expected = expected.to_kind(Kind::Double);
    let diff = (&got - &expected).abs();
    let max = diff.max().double_value(&[]);
    if max.is_nan() || max > tol {
        let idx = diff.flatten(0, -1).argmax(0, false).int64_value(&[]);
        let e = expected.flatten(0, -1).double_value(&[idx]);
        let g = got.flatten(0, -1).double_value(&[idx]);
        panic!(
            "{what}: max abs error {max:e} > {tol:e} at flat index {idx}\n  expected: {e}\n  got:      {g}\n  \
             expected range [{}, {}]",
            expected.min().double_value(&[]),
            expected.max().double_value(&[])
        );
    }
}

const MODES: [AttentionMode; 2] = [AttentionMode::Math, AttentionMode::Sdpa];

fn tiny_sam(mode: AttentionMode, state: &HashMap<String, Tensor>) -> (nn::VarStore, Sam) {
    let vs = nn::VarStore::new(Device::Cpu);
    let sam = Sam::new(&vs.root(), &SamConfig::tiny().with_attention(mode)).unwrap();
    load_exact(&vs, state);
    (vs, sam)
}

/// Checks point, box, point+box and mask prompts, as written by `prompt_outputs`.
fn check_prompts(
    sam: &Sam,
    emb: &Tensor,
    io: &HashMap<String, Tensor>,
    multimask: &[bool],
    tag: &str,
) {
    let coords = &io["point_coords"];
    let labels = &io["point_labels"];
    let boxes = &io["boxes"];
    let masks = &io["mask_input"];
    let c1 = coords.narrow(1, 0, 1);
    let l1 = labels.narrow(1, 0, 1);
    type Case<'a> = (
        &'a str,
        Option<(&'a Tensor, &'a Tensor)>,
        Option<&'a Tensor>,
        Option<&'a Tensor>,
    );
    let cases: [Case; 4] = [
        ("point", Some((coords, labels)), None, None),
        ("box", None, Some(boxes), None),
        ("point_box", Some((&c1, &l1)), Some(boxes), None),
        ("point_mask", Some((coords, labels)), None, Some(masks)),
    ];
    for (name, points, b, m) in cases {
        for &mm in multimask {
            let (low, iou) = tch::no_grad(|| sam.forward_prompts(emb, points, b, m, mm)).unwrap();
            let key = format!("{name}_{}", if mm { "multi" } else { "single" });
            assert_close(
                &format!("{tag} {key} low_res"),
                &low,
                &io[&format!("{key}_low_res")],
                TOL,
            );
            assert_close(
                &format!("{tag} {key} iou"),
                &iou,
                &io[&format!("{key}_iou")],
                TOL,
            );
        }
    }
}

#[test]
fn tiny_sam_matches_segment_anything() {
    let (state, io) = load_case("tiny_sam");
    for mode in MODES {
        let (_vs, sam) = tiny_sam(mode, &state);
        let tag = format!("{mode:?}");
        let emb = tch::no_grad(|| sam.image_encoder.forward(&io["image"]));
        assert_close(
            &format!("{tag} image_embeddings"),
            &emb,
            &io["image_embeddings"],
            TOL,
        );
        // Prompts on the reference embedding, so each stage is checked on its own.
        let emb0 = io["image_embeddings"].narrow(0, 0, 1);
        check_prompts(&sam, &emb0, &io, &[true, false], &tag);

        // One embedding per prompt (several images in one decoder call).
        let c = io["point_coords"].narrow(0, 0, 2);
        let l = io["point_labels"].narrow(0, 0, 2);
        let (low, iou) = tch::no_grad(|| {
            sam.forward_prompts(&io["image_embeddings"], Some((&c, &l)), None, None, true)
        })
        .unwrap();
        assert_close(
            "per-image low_res",
            &low,
            &io["per_image_point_multi_low_res"],
            TOL,
        );
        assert_close("per-image iou", &iou, &io["per_image_point_multi_iou"], TOL);
    }
}

/// Issue 19, `model.encoder_input: native`: the tiny model fed a 128 px input instead of its
/// built 256 px matches segment_anything with its position embedding resized to the 8×8 grid
/// and its prompt encoder at that grid and side.
#[test]
fn tiny_sam_at_a_native_input_side_matches_segment_anything() {
    let (state, io) = load_case("tiny_sam");
    for mode in MODES {
        let (_vs, mut sam) = tiny_sam(mode, &state);
        assert!(sam.set_input_size(100).is_err(), "not a multiple of 16");
        sam.set_input_size(128).unwrap();
        assert!(sam.is_native_input());
        assert_eq!((sam.img_size(), sam.embedding_size()), (128, 8));
        let tag = format!("{mode:?} native");
        let emb = tch::no_grad(|| sam.image_encoder.forward(&io["native_image"]));
        assert_close(
            &format!("{tag} embeddings"),
            &emb,
            &io["native_embeddings"],
            TOL,
        );
        let (c, l) = (&io["native_point_coords"], &io["native_point_labels"]);
        let (low, iou) = tch::no_grad(|| {
            sam.forward_prompts(&io["native_embeddings"], Some((c, l)), None, None, true)
        })
        .unwrap();
        assert_eq!(low.size(), [2, 3, 32, 32]);
        assert_close(&format!("{tag} low_res"), &low, &io["native_low_res"], TOL);
        assert_close(&format!("{tag} iou"), &iou, &io["native_iou"], TOL);
        let masks = sam.postprocess_masks(&low, (120, 128), (240, 256));
        assert_close(&format!("{tag} masks"), &masks, &io["native_masks"], TOL);
        // Mask inputs are at the native low-resolution side.
        let wrong = Tensor::zeros([2, 1, 64, 64], (tch::Kind::Float, tch::Device::Cpu));
        assert!(sam
            .forward_prompts(
                &io["native_embeddings"],
                Some((c, l)),
                None,
                Some(&wrong),
                false
            )
            .is_err());
    }
}

#[test]
fn tiny_sam_postprocess_masks_matches() {
    let (state, io) = load_case("tiny_sam");
    let (_vs, sam) = tiny_sam(AttentionMode::Math, &state);
    let got = sam.postprocess_masks(&io["point_multi_low_res"], (256, 192), (300, 225));
    assert_close("postprocess_masks", &got, &io["postprocessed"], TOL);
}

#[test]
fn predictor_on_grey_image_matches_reference_pipeline() {
    let (state, io) = load_case("tiny_sam");
    let (_vs, sam) = tiny_sam(AttentionMode::Sdpa, &state);
    let grey = &io["grey"];
    let pixels = Vec::<f32>::try_from(grey.flatten(0, -1)).unwrap();
    let image = ImageView {
        pixels: &pixels,
        rows: 150,
        cols: 200,
    };
    let mut predictor = SamPredictor::new(&sam);
    let resized = predictor.to_model_input(image).unwrap();
    assert_close("resized grey image", &resized, &io["grey_resized"], 1e-3);
    predictor.set_image(image).unwrap();
    let e = predictor.embedding().unwrap();
    assert_eq!((e.original_size, e.input_size), ((150, 200), (192, 256)));
    assert_close("grey embeddings", &e.features, &io["grey_embeddings"], TOL);
    let prompts = Prompts {
        point_coords: Some(io["grey_point_coords"].shallow_clone()),
        point_labels: Some(io["grey_point_labels"].shallow_clone()),
        ..Default::default()
    };
    let out = predictor.predict(&prompts, true).unwrap();
    assert_close(
        "grey low_res",
        &out.low_res_logits,
        &io["grey_low_res"],
        TOL,
    );
    assert_close("grey iou", &out.iou_predictions, &io["grey_iou"], TOL);
    assert_close("grey masks", &out.masks, &io["grey_masks"], TOL);

    // Batching over images gives the same as one image at a time.
    let embs = predictor.embed_images(&[image, image]).unwrap();
    let preds = predictor
        .predict_batch(
            &embs,
            &[clone_prompts(&prompts), clone_prompts(&prompts)],
            true,
        )
        .unwrap();
    for p in &preds {
        assert_close("batched grey masks", &p.masks, &io["grey_masks"], TOL);
    }
}

fn clone_prompts(p: &Prompts) -> Prompts {
    Prompts {
        point_coords: p.point_coords.as_ref().map(Tensor::shallow_clone),
        point_labels: p.point_labels.as_ref().map(Tensor::shallow_clone),
        boxes: p.boxes.as_ref().map(Tensor::shallow_clone),
        mask_input: p.mask_input.as_ref().map(Tensor::shallow_clone),
    }
}

#[test]
fn tiny_vit_matches_mobile_sam() {
    let files = case_files("tiny_vit");
    let (state, io) = fixture("tiny_vit", &[&files[0], &files[1], "vit_t_keys.txt"]);
    for mode in MODES {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = TinyViTConfig {
            attention: mode,
            ..TinyViTConfig::tiny()
        };
        let model = TinyViT::new(&vs.root(), &cfg).unwrap();
        load_exact(&vs, &state);
        let out = tch::no_grad(|| model.forward_t(&io["image"], false));
        assert_close(
            &format!("{mode:?} TinyViT eval"),
            &out,
            &io["image_embeddings"],
            TOL,
        );
        if mode == AttentionMode::Math {
            let out = tch::no_grad(|| model.forward_t(&io["train_image"], true));
            assert_close("TinyViT train", &out, &io["train_embeddings"], TOL);
            let rm = &vs.variables()["patch_embed.seq.0.bn.running_mean"];
            assert_close("TinyViT running_mean", rm, &io["train_running_mean"], 1e-6);
        }
    }
}

#[test]
fn vit_t_preset_has_mobile_sam_names_and_shapes() {
    let files = case_files("tiny_vit");
    let _ = fixture("tiny_vit", &[&files[0], &files[1], "vit_t_keys.txt"]);
    let text = std::fs::read_to_string(fixture_dir().join("vit_t_keys.txt")).unwrap();
    let theirs: BTreeSet<String> = text.lines().map(str::to_string).collect();
    let vs = nn::VarStore::new(Device::Cpu);
    let _sam = Sam::new(&vs.root(), &SamConfig::vit_t()).unwrap();
    let ours: BTreeSet<String> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| format!("{k} {:?}", v.size()))
        .collect();
    let missing: Vec<_> = theirs.difference(&ours).collect();
    let unexpected: Vec<_> = ours.difference(&theirs).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "vit_t names/shapes differ from MobileSAM\nmissing in ours: {missing:?}\nnot in MobileSAM: {unexpected:?}"
    );
}

#[test]
fn unetr_decoder_matches_torch_em() {
    for (case, conv_transpose) in [("unetr", false), ("unetr_transpose", true)] {
        let (state, io) = load_case(case);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = UnetrConfig {
            use_conv_transpose: conv_transpose,
            ..UnetrConfig::tiny()
        };
        let decoder = UnetrDecoder::new(&vs.root(), &cfg).unwrap();
        load_exact(&vs, &state);
        let z = &io["image_embeddings"];
        let out = tch::no_grad(|| decoder.forward_t(z, false)).unwrap();
        assert_close(&format!("{case} output"), &out, &io["output"], TOL);
        let post = decoder.postprocess_masks(&out, (256, 192), (300, 225));
        assert_close(
            &format!("{case} postprocessed"),
            &post,
            &io["postprocessed"],
            TOL,
        );
        let train = tch::no_grad(|| decoder.forward_t(z, true)).unwrap();
        assert_close(
            &format!("{case} train output"),
            &train,
            &io["train_output"],
            TOL,
        );
        let rm = &vs.variables()["deconv1.block.2.running_mean"];
        assert_close(
            &format!("{case} running_mean"),
            rm,
            &io["train_running_mean"],
            1e-6,
        );
    }
}

/// With 8 px patches (a 128 px encoder input, as the demo's model) the decoder's output is twice
/// the input side: the postprocessing resizes it to the encoder's input side before the crop,
/// as torch_em's `postprocess_masks` does. The same holds for a decoder whose input side is set
/// afterwards (a model run at its native input side).
#[test]
fn unetr_postprocessing_with_8_px_patches_matches_torch_em() {
    let (state, io) = load_case("unetr_patch8");
    for set_later in [false, true] {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = UnetrConfig {
            img_size: if set_later { 256 } else { 128 },
            ..UnetrConfig::tiny()
        };
        let mut decoder = UnetrDecoder::new(&vs.root(), &cfg).unwrap();
        if set_later {
            decoder.set_input_size(128);
        }
        load_exact(&vs, &state);
        let out = tch::no_grad(|| decoder.forward_t(&io["image_embeddings"], false)).unwrap();
        assert_eq!(out.size(), [2, 3, 256, 256], "16x the embedding side");
        let case = format!("unetr_patch8 (input side set later: {set_later})");
        let at_input = decoder.postprocess_masks(&out, (128, 128), (128, 128));
        assert_close(&format!("{case} at input"), &at_input, &io["at_input"], TOL);
        let post = decoder.postprocess_masks(&out, (128, 96), (150, 113));
        assert_close(
            &format!("{case} postprocessed"),
            &post,
            &io["postprocessed"],
            TOL,
        );
    }
}

/// The real vit_b architecture at 1024² (one Python forward, about 15 s on 2 cores).
#[test]
fn vit_b_matches_segment_anything() {
    let (state, io) = load_case("vit_b");
    let vs = nn::VarStore::new(Device::Cpu);
    let sam = Sam::new(&vs.root(), &SamConfig::vit_b()).unwrap();
    load_exact(&vs, &state);
    assert_eq!(state.len(), 314, "vit_b state_dict entries");
    let emb = tch::no_grad(|| sam.image_encoder.forward(&io["image"]));
    // The reference itself is not bit-stable at this depth: the same script, weights, image and
    // torch wheel once gave embeddings 7.1e-4 away from its usual output (values in ±5; during
    // a loaded test run), which ours match to < 1e-4. 1e-3 is 2e-4 of the range: still far
    // below any real difference (a wrong bias, norm or window gives errors of order 0.1-1).
    assert_close(
        "vit_b image_embeddings (sdpa)",
        &emb,
        &io["image_embeddings"],
        VIT_B_EMBEDDING_TOL,
    );
    check_prompts(&sam, &io["image_embeddings"], &io, &[true], "vit_b");
}
