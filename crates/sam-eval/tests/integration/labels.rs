//! `evaluate_label_dirs` on small folders written in a fresh temporary directory.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::fs::File;
use std::path::{Path, PathBuf};

use sam_data::{write_image, write_labels, BitDepth, GreyImage, LabelImage};
use sam_eval::{evaluate_label_dirs, EvalError, LabelEvalOptions, Progress};

/// A temporary folder with `gt/`, `pred/`, `images/` and options pointing at them.
macro_rules! setup {
    () => {{
        let tmp = tempfile::tempdir().unwrap();
        for d in ["gt", "pred", "images"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        let opts = LabelEvalOptions {
            gt_dir: tmp.path().join("gt"),
            pred_dir: tmp.path().join("pred"),
            out_dir: tmp.path().join("out"),
            image_dir: None,
            missing_as_empty: false,
            relabel_gt: false,
            worst: 10,
        };
        (tmp, opts)
    }};
}

fn no_progress(_: Progress) {}

/// 8×6 labels with one 3×3 object at (x, 1) with id `id` (no object when `id` is 0).
fn square(x: usize, id: u32) -> LabelImage {
    let mut data = vec![0u32; 8 * 6];
    for y in 1..4 {
        for xx in x..x + 3 {
            data[y * 8 + xx] = id;
        }
    }
    LabelImage::from_vec(6, 8, data).unwrap()
}

fn write(path: PathBuf, labels: &LabelImage) {
    write_labels(path, labels).unwrap();
}

#[test]
fn writes_csvs_json_and_overlays() {
    let (tmp, mut opts) = setup!();
    // a: perfect (mSA 1). b: shifted by one column, IoU 6/12 = 0.5 → SA50 1, others 0
    // (mSA 0.1). c: ground truth without prediction, scored as empty (mSA 0).
    write(opts.gt_dir.join("a.tif"), &square(1, 1));
    write(opts.pred_dir.join("a.tif"), &square(1, 40));
    write(opts.gt_dir.join("b.tif"), &square(1, 3));
    write(opts.pred_dir.join("b.tiff"), &square(2, 9));
    write(opts.gt_dir.join("c.tif"), &square(4, 2));
    write(opts.pred_dir.join("orphan.tif"), &square(4, 2));
    for stem in ["a", "b", "c"] {
        let grey =
            GreyImage::from_vec(6, 8, BitDepth::U8, (0..48).map(|v| v as f32).collect()).unwrap();
        write_image(
            opts.gt_dir
                .parent()
                .unwrap()
                .join(format!("images/{stem}.png")),
            &grey,
        )
        .unwrap();
    }
    opts.image_dir = Some(tmp.path().join("images"));
    opts.missing_as_empty = true;
    opts.worst = 2;

    let report = evaluate_label_dirs(&opts, &no_progress).unwrap();
    assert_eq!(report.images.len(), 3);
    assert_eq!(report.missing_predictions, vec!["c".to_string()]);
    assert_eq!(
        report.unpaired_predictions,
        vec![opts.pred_dir.join("orphan.tif")]
    );
    assert_eq!(report.worst, vec!["c".to_string(), "b".to_string()]);
    let b = &report.images[1];
    assert_eq!(b.name, "b");
    assert!((b.scores.msa - 0.1).abs() < 1e-15);

    // summary.csv: micro_sam's header, no index column, means of the per-image scores.
    let summary = std::fs::read_to_string(opts.out_dir.join("summary.csv")).unwrap();
    let mut lines = summary.lines();
    assert_eq!(
        lines.next(),
        Some("mSA,SA50,SA75,Precision,Recall,F1 Score")
    );
    let values: Vec<f64> = lines
        .next()
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let expected = [
        (1.0 + 0.1 + 0.0) / 3.0, // mSA
        (1.0 + 1.0 + 0.0) / 3.0, // SA50
        1.0 / 3.0,               // SA75
        2.0 / 3.0,               // precision
        2.0 / 3.0,               // recall
        2.0 / 3.0,               // F1
    ];
    for (e, g) in expected.iter().zip(&values) {
        assert!(
            (e - g).abs() < 1e-12,
            "summary.csv\nexpected: {expected:?}\n     got: {values:?}"
        );
    }
    // Pooled: at 0.5 TP 2, FP 0, FN 1 → SA 2/3; above, TP 1, FP 1, FN 2 → 1/4.
    let pooled = std::fs::read_to_string(opts.out_dir.join("summary_pooled.csv")).unwrap();
    let row: Vec<f64> = pooled
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(
        (row[0] - (2.0 / 3.0 + 9.0 * 0.25) / 10.0).abs() < 1e-12,
        "{row:?}"
    );

    let per_image = std::fs::read_to_string(opts.out_dir.join("per_image.csv")).unwrap();
    let header = per_image.lines().next().unwrap();
    assert!(header.starts_with("image,gt_file,pred_file,width,height,n_true,n_pred,mSA,SA50,SA55,"));
    assert!(header.ends_with(
        "SA95,Precision,Recall,F1 Score,TP50,FP50,FN50,mean_matched_IoU,foreground_Dice"
    ));
    assert_eq!(per_image.lines().count(), 4);

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(opts.out_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["summary"]["images"], 3);
    assert_eq!(json["images"][0]["name"], "a");

    assert_eq!(report.overlays.len(), 2);
    let overlay = image_rgb(&opts.out_dir.join("overlays/b.png"));
    // (1,1) is on gt b's outline only (prediction starts at x = 2): green.
    assert_eq!(overlay.get_pixel(1, 1).0, sam_eval::GT_COLOUR);
    // (4,2) is on the prediction's right edge: magenta.
    assert_eq!(overlay.get_pixel(4, 2).0, sam_eval::PRED_COLOUR);
}

fn image_rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

#[test]
fn missing_prediction_names_the_file() {
    let (_tmp, opts) = setup!();
    write(opts.gt_dir.join("x.tif"), &square(1, 1));
    let err = evaluate_label_dirs(&opts, &no_progress).unwrap_err();
    assert!(matches!(err, EvalError::MissingPrediction { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("x.tif") && msg.contains("--missing-as-empty"),
        "{msg}"
    );
    assert!(!err.is_usage());
}

#[test]
fn size_mismatch_names_both_files() {
    let (_tmp, opts) = setup!();
    write(opts.gt_dir.join("x.tif"), &square(1, 1));
    write(
        opts.pred_dir.join("x.tif"),
        &LabelImage::from_vec(5, 5, vec![0; 25]).unwrap(),
    );
    let err = evaluate_label_dirs(&opts, &no_progress).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EvalError::SizeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("gt/x.tif") && msg.contains("pred/x.tif"),
        "{msg}"
    );
    // shapes are (rows, cols): the ground truth is 6 rows of 8 columns
    assert!(
        msg.contains("(6, 8) (rows, cols)") && msg.contains("(5, 5)"),
        "{msg}"
    );
}

#[test]
fn float_and_negative_labels_are_errors_naming_the_file() {
    let (_tmp, opts) = setup!();
    write(opts.gt_dir.join("f.tif"), &square(1, 1));
    let mut enc =
        tiff::encoder::TiffEncoder::new(File::create(opts.pred_dir.join("f.tif")).unwrap())
            .unwrap();
    enc.write_image::<tiff::encoder::colortype::Gray32Float>(8, 6, &[0.5f32; 48])
        .unwrap();
    let msg = evaluate_label_dirs(&opts, &no_progress)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("pred/f.tif") && msg.contains("float"), "{msg}");

    std::fs::remove_file(opts.pred_dir.join("f.tif")).unwrap();
    let mut values = vec![0i32; 48];
    values[10] = -3;
    let mut enc =
        tiff::encoder::TiffEncoder::new(File::create(opts.pred_dir.join("f.tif")).unwrap())
            .unwrap();
    enc.write_image::<tiff::encoder::colortype::GrayI32>(8, 6, &values)
        .unwrap();
    let msg = evaluate_label_dirs(&opts, &no_progress)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("pred/f.tif") && msg.contains("-3"), "{msg}");
}

#[test]
fn usage_errors() {
    let (tmp, mut opts) = setup!();
    // Empty ground-truth folder.
    let err = evaluate_label_dirs(&opts, &no_progress).unwrap_err();
    assert!(matches!(err, EvalError::NoLabels(_)) && err.is_usage());
    // Missing folder.
    opts.pred_dir = tmp.path().join("nope");
    let err = evaluate_label_dirs(&opts, &no_progress).unwrap_err();
    assert!(err.is_usage());
    assert!(err.to_string().contains("nope"));
}

#[test]
fn duplicate_stems_are_an_error() {
    let (_tmp, opts) = setup!();
    write(opts.gt_dir.join("x.tif"), &square(1, 1));
    write(opts.pred_dir.join("x.tif"), &square(1, 1));
    sam_data::write_image(
        opts.pred_dir.join("x.png"),
        &GreyImage::from_vec(6, 8, BitDepth::U8, vec![0.0; 48]).unwrap(),
    )
    .unwrap();
    let err = evaluate_label_dirs(&opts, &no_progress).unwrap_err();
    assert!(matches!(err, EvalError::DuplicateStem { .. }), "{err}");
}

#[test]
fn relabel_gt_splits_disconnected_pieces_like_micro_sam() {
    let (_tmp, mut opts) = setup!();
    // One gt id painted as two separate 3x3 squares; the prediction has the two squares as two
    // objects. As one object: IoU(gt, each) = 9/18 = 0.5, TP 1 of 2 predictions at 0.5.
    // Relabelled: two objects, both matched exactly.
    let mut gt = square(0, 5);
    let right = square(5, 5);
    let mut pred = square(0, 1);
    for (i, &v) in right.as_slice().iter().enumerate() {
        if v != 0 {
            gt.as_mut_slice()[i] = 5;
            pred.as_mut_slice()[i] = 2;
        }
    }
    write(opts.gt_dir.join("x.tif"), &gt);
    write(opts.pred_dir.join("x.tif"), &pred);
    let r = evaluate_label_dirs(&opts, &no_progress).unwrap();
    assert_eq!(r.images[0].scores.n_true, 1);
    assert_eq!(r.images[0].scores.sa50, 0.5);
    opts.relabel_gt = true;
    let r = evaluate_label_dirs(&opts, &no_progress).unwrap();
    assert_eq!(r.images[0].scores.n_true, 2);
    assert_eq!(r.images[0].scores.msa, 1.0);
}

#[test]
fn issue_16_folders_that_cannot_be_meant_are_refused() {
    let (tmp, mut opts) = setup!();
    write(opts.gt_dir.join("x.tif"), &square(1, 1));
    write(opts.pred_dir.join("x.tif"), &square(2, 1));
    // The ground truth as predictions: every image would score 1.0.
    let mut same = opts.clone();
    same.pred_dir = tmp.path().join("gt/../gt");
    let err = evaluate_label_dirs(&same, &no_progress).unwrap_err();
    let msg = err.to_string();
    assert!(
        err.is_usage()
            && msg.contains("are the same folder: every image would be scored against itself"),
        "{msg}"
    );
    // Reports inside the ground truth or the images.
    opts.image_dir = Some(tmp.path().join("images"));
    for (out, want) in [
        ("gt/report", "lies inside the ground-truth folder"),
        ("gt", "is the ground-truth folder"),
        ("images/out", "lies inside the image folder"),
    ] {
        let mut o = opts.clone();
        o.out_dir = tmp.path().join(out);
        let err = evaluate_label_dirs(&o, &no_progress).unwrap_err();
        assert!(
            err.is_usage()
                && err.to_string().contains(want)
                && err
                    .to_string()
                    .contains("reports are never written into the data"),
            "{out}: {err}"
        );
    }
    assert!(!tmp.path().join("gt/report").exists());
    // An output that is a file.
    std::fs::write(tmp.path().join("out.txt"), "x").unwrap();
    opts.out_dir = tmp.path().join("out.txt");
    let err = evaluate_label_dirs(&opts, &no_progress).unwrap_err();
    assert!(
        err.is_usage() && err.to_string().contains("out.txt is a file; give a folder"),
        "{err}"
    );
}

#[test]
fn issue_16_a_label_stack_is_refused_not_scored_as_its_first_page() {
    let (_tmp, opts) = setup!();
    // Ground truth and prediction: the same 3-page stack, whose first page is a perfect match.
    for dir in [&opts.gt_dir, &opts.pred_dir] {
        let mut enc =
            tiff::encoder::TiffEncoder::new(File::create(dir.join("z.tif")).unwrap()).unwrap();
        for id in 1..=3u32 {
            enc.write_image::<tiff::encoder::colortype::Gray32>(
                8,
                6,
                square(id as usize, id).as_slice(),
            )
            .unwrap();
        }
    }
    let msg = evaluate_label_dirs(&opts, &no_progress)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("z.tif: a multi-page TIFF with 3 pages"),
        "{msg}"
    );
}
