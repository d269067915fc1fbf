//! Hand-computed scores of small label images, and agreement with elf (micro_sam's metrics).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use sam_eval::{score_image, Contingency, ImageScores, Summary, SA_THRESHOLDS};

/// A `w × h` label image with the given rectangles `(id, x0, y0, x1, y1)` (exclusive ends)
/// painted in order.
fn paint(w: usize, h: usize, rects: &[(u32, usize, usize, usize, usize)]) -> Vec<u32> {
    let mut img = vec![0u32; w * h];
    for &(id, x0, y0, x1, y1) in rects {
        for y in y0..y1 {
            for x in x0..x1 {
                img[y * w + x] = id;
            }
        }
    }
    img
}

fn assert_close(what: &str, expected: f64, got: f64) {
    assert!(
        (expected - got).abs() < 1e-12,
        "{what}\nexpected: {expected}\n     got: {got}"
    );
}

/// SA at the ten thresholds given the number of thresholds (from 0.5 up) each TP count holds.
fn sa_list(sa_by_threshold: &[f64]) -> Vec<f64> {
    assert_eq!(sa_by_threshold.len(), 10);
    sa_by_threshold.to_vec()
}

fn assert_sa(s: &ImageScores, expected: &[f64]) {
    for (i, (&e, &g)) in expected.iter().zip(&s.sa).enumerate() {
        assert_close(&format!("SA at {}", SA_THRESHOLDS[i]), e, g);
    }
    assert_close("mSA", expected.iter().sum::<f64>() / 10.0, s.msa);
    assert_eq!(s.sa50, s.sa[0]);
    assert_eq!(s.sa75, s.sa[5]);
}

#[test]
fn perfect_match_with_other_ids() {
    let gt = paint(12, 8, &[(1, 0, 0, 4, 4), (2, 6, 2, 10, 7)]);
    let pred = paint(12, 8, &[(70, 0, 0, 4, 4), (9, 6, 2, 10, 7)]);
    let s = score_image(&gt, &pred).unwrap();
    assert_eq!((s.n_true, s.n_pred), (2, 2));
    assert_sa(&s, &[1.0; 10]);
    assert_eq!((s.precision, s.recall, s.f1), (1.0, 1.0, 1.0));
    assert_eq!(s.mean_matched_iou, Some(1.0));
    assert_eq!(s.foreground_dice, 1.0);
}

#[test]
fn single_object_iou_nine_tenths() {
    // gt 10×10; prediction the same square without one 10-pixel column: IoU 90/100.
    let gt = paint(12, 12, &[(1, 0, 0, 10, 10)]);
    let pred = paint(12, 12, &[(5, 0, 0, 9, 10)]);
    let s = score_image(&gt, &pred).unwrap();
    // 0.9 passes 0.5 … 0.85 (8 thresholds); numpy's "0.9" is 0.9000000000000004 > 0.9.
    let mut expected = [1.0; 10];
    expected[8] = 0.0;
    expected[9] = 0.0;
    assert_sa(&s, &expected);
    assert_eq!(s.mean_matched_iou, Some(0.9));
    assert_close("dice", 180.0 / 190.0, s.foreground_dice);
}

#[test]
fn one_split_into_unequal_parts() {
    // gt: object 1 (4×4 = 16 px) and object 2 (4×4), prediction splits object 1 into
    // 10 px (id 10) and 6 px (id 11) and gets object 2 right (id 12).
    // IoU(1,10) = 10/16 = 0.625, IoU(1,11) = 6/16, IoU(2,12) = 1.
    let gt = paint(10, 4, &[(1, 0, 0, 4, 4), (2, 6, 0, 10, 4)]);
    let mut pred = paint(10, 4, &[(10, 0, 0, 4, 4), (12, 6, 0, 10, 4)]);
    for (y, x) in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)] {
        pred[y * 10 + x] = 11;
    }
    let s = score_image(&gt, &pred).unwrap();
    // t ≤ 0.6000000000000001: TP 2, FP 1, FN 0 → 2/3. Above 0.625: TP 1, FP 2, FN 1 → 1/4.
    let third = 2.0 / 3.0;
    assert_sa(
        &s,
        &sa_list(&[
            third, third, third, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25,
        ]),
    );
    assert_close("precision", 2.0 / 3.0, s.precision);
    assert_close("recall", 1.0, s.recall);
    assert_close("f1", 4.0 / 5.0, s.f1);
    assert_eq!(s.mean_matched_iou, Some((1.0 + 0.625) / 2.0));
    assert_eq!(s.foreground_dice, 1.0);
}

#[test]
fn one_split_into_halves_matches_one_half() {
    // Object 1 (16 px) split into two 8 px halves: both IoU exactly 0.5, only one may match.
    let gt = paint(4, 4, &[(1, 0, 0, 4, 4)]);
    let pred = paint(4, 4, &[(3, 0, 0, 2, 4), (4, 2, 0, 4, 4)]);
    let s = score_image(&gt, &pred).unwrap();
    let mut expected = [0.0; 10];
    expected[0] = 1.0 / 2.0; // TP 1, FP 1, FN 0
    assert_sa(&s, &expected);
    assert_eq!((s.counts[0].tp, s.counts[0].fp, s.counts[0].fn_), (1, 1, 0));
    assert_eq!(s.precision, 0.5);
    assert_eq!(s.recall, 1.0);
    assert_close("f1", 2.0 / 3.0, s.f1);
    assert_eq!(s.mean_matched_iou, Some(0.5));
}

#[test]
fn one_merge_of_two_objects() {
    // Two touching 4×4 objects, predicted as one 8×4 object: IoU 16/32 = 0.5 with each.
    let gt = paint(8, 4, &[(1, 0, 0, 4, 4), (2, 4, 0, 8, 4)]);
    let pred = paint(8, 4, &[(5, 0, 0, 8, 4)]);
    let s = score_image(&gt, &pred).unwrap();
    let mut expected = [0.0; 10];
    expected[0] = 0.5; // TP 1, FP 0, FN 1
    assert_sa(&s, &expected);
    assert_eq!(s.precision, 1.0);
    assert_eq!(s.recall, 0.5);
    assert_close("f1", 2.0 / 3.0, s.f1);
    assert_eq!(s.foreground_dice, 1.0);
}

#[test]
fn shifted_square_around_the_thresholds() {
    // A 10×10 square shifted by k columns: IoU = 10(10−k) / 10(10+k) = (10−k)/(10+k).
    // k=0: 1 (10 thresholds); k=1: 0.818 (0.50…0.80: 7); k=2: 0.667 (0.50…0.65: 4);
    // k=3: 0.538 (0.50 only: 1); k=4: 0.429 (none).
    for (k, passing) in [(0usize, 10usize), (1, 7), (2, 4), (3, 1), (4, 0)] {
        let gt = paint(20, 10, &[(1, 0, 0, 10, 10)]);
        let pred = paint(20, 10, &[(2, k, 0, 10 + k, 10)]);
        let s = score_image(&gt, &pred).unwrap();
        let expected: Vec<f64> = (0..10)
            .map(|i| if i < passing { 1.0 } else { 0.0 })
            .collect();
        assert_sa(&s, &expected);
        let iou = (10.0 - k as f64) / (10.0 + k as f64);
        let c = Contingency::new(&gt, &pred).unwrap();
        assert_eq!(c.pairs()[0].iou, iou, "k = {k}");
        assert_eq!(s.mean_matched_iou, (passing > 0).then_some(iou), "k = {k}");
    }
}

#[test]
fn iou_exactly_three_quarters_misses_sa75_as_in_elf() {
    // gt 4 px, prediction 3 of them: IoU exactly 0.75. numpy's thresholds put "0.75" at
    // 0.7500000000000002 and "0.6" at 0.6000000000000001, so the IoU passes 0.50 … 0.70
    // (5 thresholds) and SA75 is 0, exactly as elf/micro_sam report it.
    let gt = paint(6, 1, &[(1, 0, 0, 4, 1)]);
    let pred = paint(6, 1, &[(2, 0, 0, 3, 1)]);
    let s = score_image(&gt, &pred).unwrap();
    assert_sa(&s, &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(s.sa75, 0.0);
}

#[test]
fn empty_cases() {
    let empty = vec![0u32; 30];
    let two = paint(10, 3, &[(4, 0, 0, 2, 2), (8, 5, 0, 7, 3)]);

    // Both empty: no objects, no matches. Count scores are 0 (elf: TP = 0 → 0), Dice is 1.
    let s = score_image(&empty, &empty).unwrap();
    assert_eq!((s.n_true, s.n_pred), (0, 0));
    assert_sa(&s, &[0.0; 10]);
    assert_eq!((s.precision, s.recall, s.f1), (0.0, 0.0, 0.0));
    assert_eq!(s.mean_matched_iou, None);
    assert_eq!(s.foreground_dice, 1.0);

    // Empty prediction: two false negatives.
    let s = score_image(&two, &empty).unwrap();
    assert_eq!((s.counts[0].tp, s.counts[0].fp, s.counts[0].fn_), (0, 0, 2));
    assert_sa(&s, &[0.0; 10]);
    assert_eq!(s.foreground_dice, 0.0);

    // Empty ground truth: two false positives.
    let s = score_image(&empty, &two).unwrap();
    assert_eq!((s.counts[9].tp, s.counts[9].fp, s.counts[9].fn_), (0, 2, 0));
    assert_eq!(s.recall, 0.0);
    assert_eq!(s.foreground_dice, 0.0);
}

#[test]
fn summary_mean_per_image_and_pooled() {
    // Image A: perfect, 1 object. Image B: 3 gt objects, prediction finds 1 of them exactly.
    let a_gt = paint(4, 4, &[(1, 0, 0, 2, 2)]);
    let b_gt = paint(9, 3, &[(1, 0, 0, 2, 2), (2, 3, 0, 5, 2), (3, 6, 0, 8, 2)]);
    let b_pred = paint(9, 3, &[(1, 0, 0, 2, 2)]);
    let a = score_image(&a_gt, &a_gt).unwrap();
    let b = score_image(&b_gt, &b_pred).unwrap();
    let s = Summary::from_images(&[a, b]).unwrap();
    assert_eq!(s.images, 2);
    // Per image: SA 1 and 1/3 at every threshold → mean 2/3; recall 1 and 1/3 → 2/3.
    assert_close("mean mSA", 2.0 / 3.0, s.mean_per_image.msa);
    assert_close("mean recall", 2.0 / 3.0, s.mean_per_image.recall);
    assert_close("mean precision", 1.0, s.mean_per_image.precision);
    // Pooled: TP 2, FP 0, FN 2 → SA 1/2, recall 1/2, F1 4/6.
    assert_close("pooled mSA", 0.5, s.pooled.msa);
    assert_close("pooled recall", 0.5, s.pooled.recall);
    assert_close("pooled f1", 4.0 / 6.0, s.pooled.f1);
    assert_eq!(s.pooled.mean_matched_iou, Some(1.0));
    // Dice pooled: |G| = 4 + 12, |P| = 4 + 4, both = 8 → 16/24.
    assert_close("pooled dice", 16.0 / 24.0, s.pooled.foreground_dice);
    assert_close(
        "mean dice",
        (1.0 + 8.0 / 16.0) / 2.0,
        s.mean_per_image.foreground_dice,
    );
    assert!(Summary::from_images(&[]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Reference: elf (python-elf 0.9.2)

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the seeded Python script into `target/test-fixtures/sam-eval-elf/` unless its output is
/// already there.
fn elf_fixtures() -> PathBuf {
    let root = repo_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("test-fixtures/sam-eval-elf");
    if dir.join("reference.json").is_file() {
        return dir;
    }
    let python = root.join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh to create the Python environment with python-elf",
        python.display()
    );
    let script = root.join("crates/sam-eval/tests/python/make_elf_reference.py");
    let status = Command::new(&python)
        .arg(&script)
        .arg(&dir)
        .status()
        .expect("run python");
    assert!(
        status.success(),
        "{} failed; is python-elf installed (scripts/requirements-test.txt)?",
        script.display()
    );
    dir
}

fn read_u32(path: &Path) -> Vec<u32> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn agrees_with_elf_on_random_label_images() {
    let dir = elf_fixtures();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let cases = reference.as_array().unwrap();
    assert!(cases.len() >= 20);
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let gt = read_u32(&dir.join(format!("{name}_gt.bin")));
        let pred = read_u32(&dir.join(format!("{name}_pred.bin")));
        let (h, w) = (
            case["height"].as_u64().unwrap(),
            case["width"].as_u64().unwrap(),
        );
        assert_eq!(gt.len() as u64, h * w, "{name}");
        let s = score_image(&gt, &pred).unwrap();
        let accuracies: Vec<f64> = case["accuracies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (i, (&e, &g)) in accuracies.iter().zip(&s.sa).enumerate() {
            assert!(
                (e - g).abs() <= 1e-9,
                "{name}: SA at threshold {i}\nexpected (elf): {e}\n           got: {g}"
            );
        }
        for (what, expected, got) in [
            ("mSA", f(case, "msa"), s.msa),
            ("precision", f(case, "precision"), s.precision),
            ("recall", f(case, "recall"), s.recall),
            ("f1", f(case, "f1"), s.f1),
            ("SA50 (matching)", f(case, "sa50"), s.sa50),
        ] {
            assert!(
                (expected - got).abs() <= 1e-9,
                "{name}: {what}\nexpected (elf): {expected}\n           got: {got}"
            );
        }
    }
}
