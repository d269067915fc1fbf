//! APG against micro_sam 1.8's `AutomaticPromptGenerator`.
//!
//! `tests/python/make_apg_reference.py` (seeded) writes a tiny SAM (`sam.pth`), an image of 24
//! dark objects, crafted decoder maps (what a trained UNETR predicts for those objects, with
//! noise) and micro_sam's results for four parameter sets (defaults; intersection over min with
//! other thresholds; multimasking; box refinement) into `target/test-fixtures/sam-infer-apg/`.
//! We load the same checkpoint, embed the same image and run the same maps through our APG, and
//! compare in stages:
//!
//! 0. image embeddings (our predictor path vs the same path in PyTorch): max error < 1e-3;
//! 1. the point prompts: identical;
//! 2. the masks SAM predicts for them (the masks micro_sam's NMS receives), mask by mask:
//!    IoU ≥ 0.95, predicted IoU within 1e-3, stability within 0.02;
//! 3. our NMS + merge on micro_sam's own masks: exactly micro_sam's objects;
//! 4. the whole pipeline: ≥ 99 % of micro_sam's objects matched by one of ours at IoU ≥ 0.5, and
//!    ≥ 99 % of ours by one of micro_sam's. (Measured: every object, IoU 1.0, in all four cases.)
//!
//! Two fixture choices, both explained in the script: micro_sam maps prompts with a hard-coded
//! 1024 px `ResizeLongestSide` (its models' input), patched to the tiny model's 256 px; and its box
//! refinement clips x by the image height and y by the width, so that case runs on a square crop.
//! The SAM has random weights (logits scaled away from the threshold): its masks are large
//! speckled blobs, so the NMS and the exclusive merge into many pieces are what is compared.
#![allow(clippy::unwrap_used)]

use sam_data::Plane;
use sam_infer::{
    apg_point_prompts, apg_segment, ApgParams, DecoderMaps, InferenceModel, MaskRecord, TileSpec,
};
use sam_model::ImageEmbedding;
use tch::Device;

use crate::{read_f32, read_u32};

/// For each object of `a`, the best IoU with an object of `b` (`a`'s ids 1..=n in order).
fn best_ious(a: &[u32], b: &[u32]) -> Vec<f64> {
    let na = a.iter().copied().max().unwrap_or(0) as usize;
    let nb = b.iter().copied().max().unwrap_or(0) as usize;
    let mut size_a = vec![0u64; na + 1];
    let mut size_b = vec![0u64; nb + 1];
    let mut inter = std::collections::HashMap::<(u32, u32), u64>::new();
    for (&x, &y) in a.iter().zip(b) {
        size_a[x as usize] += 1;
        size_b[y as usize] += 1;
        if x > 0 && y > 0 {
            *inter.entry((x, y)).or_default() += 1;
        }
    }
    let mut best = vec![0.0f64; na + 1];
    for (&(x, y), &i) in &inter {
        let iou = i as f64 / (size_a[x as usize] + size_b[y as usize] - i) as f64;
        best[x as usize] = best[x as usize].max(iou);
    }
    (1..=na)
        .filter(|&i| size_a[i] > 0)
        .map(|i| best[i])
        .collect()
}

/// A mask record as a 0/1 label image.
fn paint(m: &MaskRecord, h: usize, w: usize) -> Vec<u32> {
    let mut out = vec![0u32; h * w];
    for y in 0..m.mask.rows() {
        for (x, &b) in m.mask.row(y).iter().enumerate() {
            if b {
                out[(m.y0 + y) * w + m.x0 + x] = 1;
            }
        }
    }
    out
}

#[test]
fn apg_matches_micro_sam_automatic_prompt_generator() {
    let script =
        sam_testkit::workspace_root().join("crates/sam-infer/tests/python/make_apg_reference.py");
    let dir = sam_testkit::script_fixtures("sam-infer-apg", &script, |_| Vec::new());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let h = meta["height"].as_u64().unwrap() as usize;
    let w = meta["width"].as_u64().unwrap() as usize;
    let n = h * w;
    let model = InferenceModel::load(&dir.join("sam.pth"), Device::Cpu).unwrap();
    let image = Plane::from_vec(h, w, read_f32(&dir.join("image.f32"))).unwrap();
    let raw = read_f32(&dir.join("maps.f32"));
    let plane = |c: usize| Plane::from_vec(h, w, raw[c * n..(c + 1) * n].to_vec()).unwrap();
    let maps = DecoderMaps {
        foreground: plane(0),
        center_distances: plane(1),
        boundary_distances: plane(2),
    };
    let whole = TileSpec {
        tile_shape: None,
        halo: (0, 0),
    };
    let embed = |image: &Plane<f32>| {
        let tiling = whole.tiling_for(image.shape(), model.input_size()).unwrap();
        let e = model
            .embed_tiles(image, &tiling.tiles(), 1, &mut || {})
            .unwrap();
        (tiling, e)
    };
    let (tiling, embeddings) = embed(&image);
    let theirs_emb = read_f32(&dir.join("embeddings.f32"));
    let ours_emb: Vec<f32> = Vec::try_from(embeddings[0].features.flatten(0, -1)).unwrap();
    assert_eq!(ours_emb.len(), theirs_emb.len());
    let emb_err = ours_emb
        .iter()
        .zip(&theirs_emb)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("image embeddings: max |ours - micro_sam's| {emb_err:.2e}");
    assert!(emb_err < 1e-3, "image embeddings differ by {emb_err}");
    let cases = meta["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let params: ApgParams = serde_json::from_value(case["params"].clone()).unwrap();
        // The box-refinement case runs on the top-left square (see the fixture script).
        let square = case["square"].as_bool().unwrap();
        let (h, w) = if square { (h.min(w), h.min(w)) } else { (h, w) };
        let n = h * w;
        let crop = |p: &Plane<f32>| p.crop(0, 0, h, w);
        let maps = DecoderMaps {
            foreground: crop(&maps.foreground),
            center_distances: crop(&maps.center_distances),
            boundary_distances: crop(&maps.boundary_distances),
        };
        let (tiling, embeddings) = if square {
            embed(&crop(&image))
        } else {
            let copy = |e: &ImageEmbedding| ImageEmbedding {
                features: e.features.shallow_clone(),
                original_size: e.original_size,
                input_size: e.input_size,
            };
            (tiling.clone(), embeddings.iter().map(copy).collect())
        };

        let points = apg_point_prompts(&maps, &params).unwrap();
        let reference: Vec<[f32; 2]> = read_f32(&dir.join(format!("{name}.points.f32")))
            .chunks_exact(2)
            .map(|p| [p[0], p[1]])
            .collect();
        assert_eq!(points, reference, "{name}: point prompts differ");
        assert!(points.len() >= 20, "{name}: only {} prompts", points.len());

        let masks = model
            .apg_masks_from_maps(&tiling, &embeddings, &maps, &params, &mut || {})
            .unwrap();
        let theirs = read_u32(&dir.join(format!("{name}.micro_sam.u32")));

        // Stage 1: the masks SAM gives for the prompts, mask by mask.
        let n_masks = case["n_masks"].as_u64().unwrap() as usize;
        let raw_masks = std::fs::read(dir.join(format!("{name}.masks.u8"))).unwrap();
        let scores = read_f32(&dir.join(format!("{name}.scores.f32")));
        let reference: Vec<MaskRecord> = (0..n_masks)
            .map(|k| {
                let m = Plane::from_vec(
                    h,
                    w,
                    raw_masks[k * n..(k + 1) * n]
                        .iter()
                        .map(|&b| b != 0)
                        .collect(),
                )
                .unwrap();
                MaskRecord::from_mask(&m, 0, 0, scores[2 * k], scores[2 * k + 1]).unwrap()
            })
            .collect();
        assert_eq!(masks.len(), n_masks, "{name}: mask count");
        let (mut worst_iou, mut worst_pred, mut worst_stab) = (1.0f64, 0.0f32, 0.0f32);
        for (a, b) in masks.iter().zip(&reference) {
            let pa = paint(a, h, w);
            let pb = paint(b, h, w);
            worst_iou = worst_iou.min(best_ious(&pa, &pb)[0]);
            worst_pred = worst_pred.max((a.predicted_iou - b.predicted_iou).abs());
            worst_stab = worst_stab.max((a.stability_score - b.stability_score).abs());
        }
        eprintln!(
            "{name}: {n_masks} masks; lowest mask IoU ours vs micro_sam {worst_iou:.4}; max \
             |predicted IoU diff| {worst_pred:.2e}; max |stability diff| {worst_stab:.2e}"
        );
        assert!(
            worst_iou >= 0.95,
            "{name}: a mask differs (IoU {worst_iou})"
        );
        assert!(
            worst_pred < 1e-3,
            "{name}: predicted IoU differs by {worst_pred}"
        );
        assert!(
            worst_stab < 0.02,
            "{name}: stability differs by {worst_stab}"
        );

        // Stage 2: NMS and merge on micro_sam's own masks: the same objects exactly.
        let exact = apg_segment(&reference, (h, w), &params).unwrap();
        let exact_best = best_ious(&theirs, exact.labels.as_slice());
        assert_eq!(
            exact_best.len(),
            case["n_objects"].as_u64().unwrap() as usize
        );
        assert!(
            exact_best.iter().all(|&v| v == 1.0)
                && exact.labels.max_id() as usize == exact_best.len(),
            "{name}: NMS + merge on micro_sam's masks differ from micro_sam's result"
        );

        // Stage 3: the whole pipeline.
        let ours = apg_segment(&masks, (h, w), &params).unwrap();
        let ours = ours.labels.as_slice();
        let n_ref = case["n_objects"].as_u64().unwrap() as usize;
        let ref_best = best_ious(&theirs, ours);
        let our_best = best_ious(ours, &theirs);
        assert_eq!(ref_best.len(), n_ref, "{name}: reference object count");
        let matched = |v: &[f64]| v.iter().filter(|&&x| x >= 0.5).count();
        let min_iou = ref_best.iter().copied().fold(1.0, f64::min);
        let same = ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| (**a > 0) == (**b > 0))
            .count();
        eprintln!(
            "{name}: {} prompts; micro_sam {n_ref} objects, ours {}; matched at IoU ≥ 0.5: {} \
             of micro_sam's, {} of ours; lowest best IoU {min_iou:.4}; foreground agrees on \
             {:.4} of pixels",
            points.len(),
            our_best.len(),
            matched(&ref_best),
            matched(&our_best),
            same as f64 / n as f64
        );
        assert!(
            matched(&ref_best) as f64 >= 0.99 * ref_best.len() as f64,
            "{name}: {} of {} micro_sam objects matched",
            matched(&ref_best),
            ref_best.len()
        );
        assert!(
            matched(&our_best) as f64 >= 0.99 * our_best.len() as f64,
            "{name}: {} of our {} objects matched",
            matched(&our_best),
            our_best.len()
        );
    }
}
