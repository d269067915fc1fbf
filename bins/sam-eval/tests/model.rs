//! End-to-end runs of `sam-eval model` with a tiny random-weight checkpoint on small synthetic
//! images in a temporary repository (configs/, dat/, final_models/).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sam_infer::{segment_auto, AisParams, AutoMode, AutoOptions, InferenceModel, TileSpec};
use sam_testkit::{ConfigBuilder, SynthDataset, SynthImage, TempRepo};
use sam_testkit_model::TinyCheckpoint;
use tch::Device;

/// A fresh temporary repository per test.
macro_rules! setup {
    ($decoder:expr) => {
        make_repo($decoder)
    };
}

/// The experiment `t` with its test images in `test_images`: validation on `dat/val`, small
/// grid-search ranges, three rounds of iterative prompting, AMG with 4 points per side.
fn config(test_images: &str) -> ConfigBuilder {
    ConfigBuilder::named("t")
        .checkpoint_name("t")
        .seed(3)
        .validation_dirs("dat/val/images", "dat/val/labels")
        .test_dirs(test_images, "dat/test/labels")
        .set_yaml(
            "evaluation.grid_search.center_distance_threshold",
            "{start: 0.4, stop: 0.6, step: 0.2}",
        )
        .set_yaml(
            "evaluation.grid_search.boundary_distance_threshold",
            "{start: 0.4, stop: 0.6, step: 0.2}",
        )
        .set_yaml(
            "evaluation.grid_search.distance_smoothing",
            "{start: 1.0, stop: 1.0, step: 0.5}",
        )
        .set_yaml("evaluation.grid_search.min_size", "[0, 20]")
        .set_yaml(
            "evaluation.grid_search.pred_iou_thresh",
            "{start: 0.0, stop: 0.5, step: 0.5}",
        )
        .set_yaml(
            "evaluation.grid_search.stability_score_thresh",
            "{start: 0.0, stop: 0.5, step: 0.5}",
        )
        .set("evaluation.iterative_prompting.n_iterations", 3)
        .set("evaluation.iterative_prompting.start_with", "both")
        .set("evaluation.write_overlays", true)
        .set("inference.mode", "auto")
        .set_yaml("inference.tile_shape", "null")
        .set_yaml("inference.halo", "[0, 0]")
        .set("inference.amg.points_per_side", 4)
        // No default baseline (the config's starting model); the comparison tests set one.
        .set_yaml("model.checkpoint", "null")
}

/// A repository with the tiny model (with or without the UNETR decoder) as
/// `final_models/t.pt`, two test and two validation images of different sizes with dense
/// objects, and `configs/t.yaml`.
fn make_repo(with_decoder: bool) -> TempRepo {
    let repo = TempRepo::new().unwrap();
    repo.create_dir("final_models").unwrap();
    TinyCheckpoint::new()
        .with_decoder(with_decoder)
        .write(repo.join("final_models/t.pt"))
        .unwrap();
    SynthDataset::new(repo.join("dat"))
        .synth_config(sam_data::SynthConfig {
            cells_per_512: 300.0,
            ..Default::default()
        })
        .split_of(
            "test",
            [
                SynthImage::new("t1.tif", 80, 1),
                SynthImage::new("t2.tif", 96, 2),
            ],
        )
        .split_of(
            "val",
            [
                SynthImage::new("v1.tif", 64, 3),
                SynthImage::new("v2.tif", 80, 4),
            ],
        )
        .write()
        .unwrap();
    write_config(repo.path(), "dat/test/images");
    repo
}

fn write_config(root: &Path, test_images: &str) {
    config(test_images)
        .write(root.join("configs/t.yaml"))
        .unwrap();
}

fn sam_eval(root: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sam-eval"))
        .current_dir(root)
        .env_remove("SAM_TRAINER_ROOT")
        .env("MICROSAM_CACHEDIR", root.join("cache"))
        .args([
            "model",
            "--config",
            "configs/t.yaml",
            "--device",
            "cpu",
            "--quiet",
        ])
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn eval_dir(root: &Path) -> PathBuf {
    root.join("runs/t/evaluation")
}

/// Header and rows of a CSV file.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|x| x.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

fn in_unit_interval(v: &str) -> f64 {
    let x: f64 = v.parse().unwrap();
    assert!((0.0..=1.0).contains(&x), "{v} not in [0, 1]");
    x
}

fn report(root: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(eval_dir(root).join("report.json")).unwrap())
        .unwrap()
}

/// The options the config above gives, with `ais` thresholds.
fn auto_options(ais: AisParams) -> AutoOptions {
    AutoOptions {
        mode: AutoMode::Auto,
        tiles: TileSpec {
            tile_shape: None,
            halo: (0, 0),
        },
        batch_size: 1,
        ais,
        amg: Default::default(),
        apg: Default::default(),
        normalization: Default::default(),
        overwrite: true,
        write_overlay: false,
        write_csv: false,
        embedding_cache: None,
    }
}

/// Mean mSA of `model` with `ais` over the images of `dat/<set>`, segmented and scored here.
fn rescore(model: &InferenceModel, root: &Path, set: &str, ais: AisParams) -> f64 {
    let d = root.join("dat").join(set);
    let pairs = sam_data::pair_by_stem(d.join("images"), d.join("labels")).unwrap();
    let opts = auto_options(ais);
    let msa: Vec<f64> = pairs
        .iter()
        .map(|p| {
            let (_, plane) = sam_infer::load_image(&p.image, &opts.normalization).unwrap();
            let seg = segment_auto(model, &plane, &opts, &mut |_| {}).unwrap();
            let gt = sam_data::read_labels(&p.labels).unwrap();
            sam_eval::score_image(gt.as_slice(), seg.labels.as_slice())
                .unwrap()
                .msa
        })
        .collect();
    msa.iter().sum::<f64>() / msa.len() as f64
}

#[test]
fn writes_reports_and_keeps_an_existing_evaluation() {
    let t = setup!(true);
    let root = t.path();
    let o = sam_eval(root, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = eval_dir(root);

    let (header, rows) = read_csv(&dir.join("summary.csv"));
    assert_eq!(
        header,
        ["mSA", "SA50", "SA75", "Precision", "Recall", "F1 Score"]
    );
    assert_eq!(rows.len(), 1);
    rows[0].iter().for_each(|v| {
        in_unit_interval(v);
    });

    // Per-image scores are those of the written predictions, and the predictions are what
    // sam-infer gives with the config's (default) AIS parameters.
    let model = InferenceModel::load(&root.join("final_models/t.pt"), Device::Cpu).unwrap();
    let opts = auto_options(AisParams::default());
    let (header, rows) = read_csv(&dir.join("per_image.csv"));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let stem = &row[col("image")];
        let pred =
            sam_data::read_labels(dir.join("predictions").join(format!("{stem}.tif"))).unwrap();
        let gt = sam_data::read_labels(root.join(format!("dat/test/labels/{stem}.tif"))).unwrap();
        let (_, plane) = sam_infer::load_image(
            &root.join(format!("dat/test/images/{stem}.tif")),
            &opts.normalization,
        )
        .unwrap();
        let seg = segment_auto(&model, &plane, &opts, &mut |_| {}).unwrap();
        assert_eq!(pred.as_slice(), seg.labels.as_slice(), "{stem}");
        let s = sam_eval::score_image(gt.as_slice(), pred.as_slice()).unwrap();
        assert_eq!(in_unit_interval(&row[col("mSA")]), s.msa, "{stem}");
        for c in ["SA50", "SA75", "Precision", "Recall", "F1 Score"] {
            in_unit_interval(&row[col(c)]);
        }
        assert_eq!(row[col("n_true")], gt.ids().len().to_string());
    }
    let r = report(root);
    assert_eq!(r["mode"], "ais");
    assert_eq!(r["test"]["summary"]["images"], 2);
    assert!(r["grid_search"].is_null());
    assert!(dir.join("summary_pooled.csv").is_file());
    assert!(dir.join("overlays/t1.png").is_file());
    // The page names the model and mode and links the overlay it drew.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<th>mode</th><td>ais (fp32)</td>"), "{html}");
    assert!(html.contains("src=\"overlays/t1.png\""), "{html}");

    // An existing evaluation is kept unless --overwrite.
    let before = std::fs::read_to_string(dir.join("report.json")).unwrap();
    let o = sam_eval(root, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("already holds an evaluation") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("report.json")).unwrap(),
        before
    );
    let o = sam_eval(root, &["--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn grid_search_picks_the_best_validation_msa() {
    let t = setup!(true);
    let root = t.path();
    let o = sam_eval(root, &["--grid-search"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(root);
    let g = &r["grid_search"];
    assert_eq!(g["validation_images"], serde_json::json!(["v1", "v2"]));
    let tried = g["tried"].as_array().unwrap();
    assert_eq!(tried.len(), 2 * 2 * 2, "centre × boundary × min_size");
    let best = g["best"].as_u64().unwrap() as usize;
    let msa: Vec<f64> = tried.iter().map(|p| p["msa"].as_f64().unwrap()).collect();
    let max = msa.iter().copied().fold(f64::MIN, f64::max);
    assert_eq!(msa[best], max);
    assert_eq!(
        msa.iter().position(|&m| m == max),
        Some(best),
        "first of equals"
    );

    // Every recorded validation mSA is what a full segmentation with those parameters scores.
    let model = InferenceModel::load(&root.join("final_models/t.pt"), Device::Cpu).unwrap();
    let params = |p: &serde_json::Value| AisParams {
        center_distance_threshold: p["center_distance_threshold"].as_f64().unwrap() as f32,
        boundary_distance_threshold: p["boundary_distance_threshold"].as_f64().unwrap() as f32,
        distance_smoothing: p["distance_smoothing"].as_f64().unwrap() as f32,
        min_size: p["min_size"].as_u64().unwrap(),
        ..AisParams::default()
    };
    for (p, &recorded) in tried.iter().zip(&msa) {
        assert_eq!(p["params"]["mode"], "ais");
        let again = rescore(&model, root, "val", params(&p["params"]));
        assert!((again - recorded).abs() < 1e-12, "{p}: re-scored {again}");
    }
    // The test images were segmented with the chosen parameters.
    let chosen = params(&tried[best]["params"]);
    let used = &r["ais"];
    assert_eq!(
        used["center_distance_threshold"].as_f64().unwrap() as f32,
        chosen.center_distance_threshold
    );
    assert_eq!(used["min_size"].as_u64().unwrap(), chosen.min_size);
    let (_, rows) = read_csv(&eval_dir(root).join("summary.csv"));
    let test_msa: f64 = rows[0][0].parse().unwrap();
    assert!((test_msa - rescore(&model, root, "test", chosen)).abs() < 1e-12);
}

#[test]
fn iterative_prompting_writes_one_row_per_round_and_amg_without_decoder() {
    let t = setup!(false);
    let root = t.path();
    let o = sam_eval(root, &["--iterative-prompting", "--grid-search"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = eval_dir(root);
    for start in ["box", "point"] {
        let (header, rows) = read_csv(&dir.join(format!("iterative_prompting_{start}.csv")));
        assert_eq!(
            header,
            [
                "iteration",
                "mSA",
                "SA50",
                "SA75",
                "Precision",
                "Recall",
                "F1 Score"
            ]
        );
        assert_eq!(rows.len(), 3, "n_iterations rows");
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row[0], i.to_string());
            row[1..].iter().for_each(|v| {
                in_unit_interval(v);
            });
        }
    }
    let r = report(root);
    assert_eq!(r["mode"], "amg");
    let it = r["iterative_prompting"].as_array().unwrap();
    assert_eq!(it.len(), 2);
    assert_eq!(it[0]["start"], "box");
    assert_eq!(it[0]["rounds"].as_array().unwrap().len(), 3);
    // Without a decoder the grid search tunes the AMG thresholds.
    let tried = r["grid_search"]["tried"].as_array().unwrap();
    assert_eq!(tried.len(), 4);
    assert!(tried.iter().all(|p| p["params"]["mode"] == "amg"));
}

#[test]
fn missing_checkpoint_or_test_folder_is_a_usage_error() {
    let t = setup!(false);
    let root = t.path();
    let ckpt = root.join("final_models/t.pt");
    let kept = root.join("kept.pt");
    std::fs::rename(&ckpt, &kept).unwrap();
    let o = sam_eval(root, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("final_models/t.pt") && e.contains("export_path"),
        "{e}"
    );

    let o = sam_eval(root, &["--checkpoint", "no/such.pt"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no/such.pt"), "{}", stderr(&o));

    std::fs::rename(&kept, &ckpt).unwrap();
    write_config(root, "dat/nope/images");
    let o = sam_eval(root, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("evaluation.test_images_dir") && e.contains("dat/nope/images"),
        "{e}"
    );
    assert!(!eval_dir(root).exists());
}

/// Issue 15: `--device cuda` where libtorch sees no GPU is a usage error before any work: exit
/// 2 with the reason (libtorch build, NVIDIA driver, CUDA_VISIBLE_DEVICES, nvidia-smi), no
/// panic, no model loaded, nothing written. `CUDA_VISIBLE_DEVICES=-1` hides every GPU, so this
/// holds on GPU machines too.
#[test]
fn cuda_without_a_usable_gpu_is_a_usage_error_before_any_work() {
    let t = setup!(true);
    let root = t.path();
    for device in ["cuda", "cuda:0"] {
        let o = Command::new(env!("CARGO_BIN_EXE_sam-eval"))
            .current_dir(root)
            .env_remove("SAM_TRAINER_ROOT")
            .env("MICROSAM_CACHEDIR", root.join("cache"))
            .env("CUDA_VISIBLE_DEVICES", "-1")
            .args(["model", "--config", "configs/t.yaml", "--quiet"])
            .args(["--device", device])
            .output()
            .unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{device}: {e}");
        for part in [
            &format!("--device: `{device}` needs a GPU, but libtorch sees none"),
            "NVIDIA driver",
            "CUDA_VISIBLE_DEVICES=\"-1\"",
            "`nvidia-smi`",
            "libtorch: ",
        ] {
            assert!(e.contains(part), "{device}: missing `{part}` in:\n{e}");
        }
        assert!(!e.contains("panicked") && !e.contains("model:"), "{e}");
        assert!(!root.join("runs").exists(), "{device}: runs/ was created");
        assert!(!eval_dir(root).exists());
    }
}

/// Issue 16: a label image of the wrong size used to be found only after the predictions of
/// the images before it were written, and the rerun was then refused as "an evaluation
/// exists". Every pair is checked first; the fixed folder then evaluates without --overwrite,
/// from any folder of the repository, with `--checkpoint NAME` found in the root's
/// final_models/.
#[test]
fn issue_16_every_pair_is_checked_before_any_prediction_is_written() {
    let t = setup!(true);
    let root = t.path();
    let t2 = root.join("dat/test/labels/t2.tif");
    let good = std::fs::read(&t2).unwrap();
    sam_data::write_labels(&t2, &sam_data::LabelImage::zeros(50, 50)).unwrap();
    let o = sam_eval(root, &[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("size mismatch") && e.contains("t2.tif") && e.contains("(50, 50)"),
        "{e}"
    );
    assert!(!eval_dir(root).join("predictions").exists(), "{e}");
    std::fs::write(&t2, good).unwrap();
    std::fs::create_dir_all(root.join("scripts")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sam-eval"))
        .current_dir(root.join("scripts"))
        .env_remove("SAM_TRAINER_ROOT")
        .env("MICROSAM_CACHEDIR", root.join("cache"))
        .args([
            "model",
            "--config",
            "../configs/t.yaml",
            "--checkpoint",
            "t",
            "--device",
            "cpu",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(eval_dir(root).join("predictions/t2.tif").is_file());
}

/// Foreground IoU of two label images (pixels with any object).
fn foreground_iou(a: &[u32], b: &[u32]) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (x, y) in a.iter().zip(b) {
        inter += u64::from(*x != 0 && *y != 0);
        union += u64::from(*x != 0 || *y != 0);
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Issue 18: `--precision bf16` evaluates with the forward passes under bf16 autocast: the
/// same files as fp32, predictions that agree up to object edges, the precision printed with
/// the device and recorded in report.json; a bad value is a usage error naming the flag.
#[test]
fn issue_18_bf16_precision_is_recorded_and_agrees_with_fp32() {
    let t = setup!(true);
    let root = t.path();
    let dir = eval_dir(root);
    let o = sam_eval(root, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("; precision: fp32"), "{}", stderr(&o));
    assert_eq!(report(root)["precision"], "fp32");
    let read = |stem: &str| {
        sam_data::read_labels(dir.join("predictions").join(format!("{stem}.tif"))).unwrap()
    };
    let fp32 = [read("t1"), read("t2")];

    let o = sam_eval(
        root,
        &[
            "--precision",
            "bf16",
            "--overwrite",
            "--iterative-prompting",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("; precision: bf16"), "{}", stderr(&o));
    let r = report(root);
    assert_eq!(r["precision"], "bf16");
    assert_eq!(r["iterative_prompting"].as_array().unwrap().len(), 2);
    for (stem, a) in ["t1", "t2"].into_iter().zip(&fp32) {
        let b = read(stem);
        let iou = foreground_iou(a.as_slice(), b.as_slice());
        eprintln!("{stem}: bf16 vs fp32 foreground IoU {iou:.4}");
        assert!(iou >= 0.9, "{stem}: foreground IoU {iou}");
    }

    let o = sam_eval(root, &["--precision", "half"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("--precision") && e.contains("half"), "{e}");
    let help = Command::new(env!("CARGO_BIN_EXE_sam-eval"))
        .args(["model", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--precision <PRECISION>") && help.contains("[default: fp32]"),
        "{help}"
    );
}

#[test]
fn apg_grid_search_records_every_combination_and_uses_the_best() {
    let t = setup!(true);
    let root = t.path();
    config("dat/test/images")
        .set("inference.mode", "apg")
        .set_yaml(
            "evaluation.grid_search.nms_threshold",
            "{start: 0.5, stop: 0.9, step: 0.4}",
        )
        .write(root.join("configs/t.yaml"))
        .unwrap();
    let o = sam_eval(root, &["--grid-search"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(root);
    assert_eq!(r["mode"], "apg");
    let g = &r["grid_search"];
    let tried = g["tried"].as_array().unwrap();
    assert_eq!(
        tried.len(),
        2 * 2 * 2 * 2 * 2,
        "centre × boundary × min_size × nms_threshold × intersection_over_min"
    );
    assert!(tried.iter().all(|p| p["params"]["mode"] == "apg"));
    let best = &tried[g["best"].as_u64().unwrap() as usize]["params"];
    // The test images were segmented with the chosen parameters, and scored as a full APG run
    // with them scores.
    let used = &r["apg"];
    for key in [
        "center_distance_threshold",
        "boundary_distance_threshold",
        "nms_threshold",
    ] {
        assert_eq!(
            used[key].as_f64().unwrap() as f32,
            best[key].as_f64().unwrap() as f32,
            "{key}"
        );
    }
    assert_eq!(used["min_size"], best["min_size"]);
    assert_eq!(used["intersection_over_min"], best["intersection_over_min"]);
    let model = InferenceModel::load(&root.join("final_models/t.pt"), Device::Cpu).unwrap();
    let mut opts = auto_options(AisParams::default());
    opts.mode = AutoMode::Apg;
    opts.apg = serde_json::from_value(used.clone()).unwrap();
    let d = root.join("dat/test");
    let pairs = sam_data::pair_by_stem(d.join("images"), d.join("labels")).unwrap();
    let msa: Vec<f64> = pairs
        .iter()
        .map(|p| {
            let (_, plane) = sam_infer::load_image(&p.image, &opts.normalization).unwrap();
            let seg = segment_auto(&model, &plane, &opts, &mut |_| {}).unwrap();
            assert_eq!(seg.mode, AutoMode::Apg);
            let gt = sam_data::read_labels(&p.labels).unwrap();
            sam_eval::score_image(gt.as_slice(), seg.labels.as_slice())
                .unwrap()
                .msa
        })
        .collect();
    let (_, rows) = read_csv(&eval_dir(root).join("summary.csv"));
    let test_msa: f64 = rows[0][0].parse().unwrap();
    assert!((test_msa - msa.iter().sum::<f64>() / msa.len() as f64).abs() < 1e-12);
}

/// With --grid-search and a baseline, the baseline runs the parameters the grid chose for the
/// model: here APG's, with an NMS threshold range that leaves out the default 0.9.
#[test]
fn the_baseline_runs_the_apg_parameters_the_grid_search_chose() {
    let t = setup!(true);
    let root = t.path();
    write_other_model(root, "b", true);
    config("dat/test/images")
        .set("inference.mode", "apg")
        .set_yaml(
            "evaluation.grid_search.nms_threshold",
            "{start: 0.5, stop: 0.6, step: 0.1}",
        )
        .write(root.join("configs/t.yaml"))
        .unwrap();
    let o = sam_eval(root, &["--grid-search", "--baseline", "b"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = report(root);
    let baseline: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(eval_dir(root).join("baseline/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(baseline["mode"], "apg");
    let nms = model["apg"]["nms_threshold"].as_f64().unwrap();
    assert!(nms < 0.65, "the grid's choice, not the default: {nms}");
    assert_eq!(baseline["apg"], model["apg"]);
}

/// With --iterative-prompting and a baseline, iterative prompting runs for both models: the
/// baseline's CSV files in `baseline/` are those of the baseline evaluated alone, and
/// iterative_prompting_deltas.csv holds both per start and round with the change. Evaluating
/// without a baseline and --overwrite removes that file too.
#[test]
fn iterative_prompting_runs_for_the_baseline_too() {
    let t = setup!(false);
    let root = t.path();
    write_other_model(root, "b", false);
    config("dat/test/images")
        .write(root.join("configs/t.yaml"))
        .unwrap();
    let dir = eval_dir(root);
    let o = sam_eval(
        root,
        &[
            "--checkpoint",
            "b",
            "--no-baseline",
            "--iterative-prompting",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let alone: Vec<_> = ["box", "point"]
        .map(|s| read_csv(&dir.join(format!("iterative_prompting_{s}.csv"))))
        .into();

    let o = sam_eval(
        root,
        &["--baseline", "b", "--iterative-prompting", "--overwrite"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let console = stdout(&o);
    let deltas = csv_maps(&dir.join("iterative_prompting_deltas.csv"));
    assert_eq!(deltas.len(), 2 * 3, "two starts × three rounds: {deltas:?}");
    for (start, alone) in ["box", "point"].into_iter().zip(&alone) {
        let baseline = read_csv(&dir.join(format!("baseline/iterative_prompting_{start}.csv")));
        assert_eq!(&baseline, alone, "{start}: the baseline as evaluated alone");
        let model = csv_maps(&dir.join(format!("iterative_prompting_{start}.csv")));
        let baseline = csv_maps(&dir.join(format!("baseline/iterative_prompting_{start}.csv")));
        let rows: Vec<_> = deltas.iter().filter(|d| d["start"] == start).collect();
        assert_eq!(rows.len(), 3);
        for (i, d) in rows.iter().enumerate() {
            assert_eq!(d["iteration"], i.to_string());
            for c in COLUMNS {
                let num = |k: &str| d[&format!("{c} {k}")].parse::<f64>().unwrap();
                let b: f64 = baseline[i][c].parse().unwrap();
                let m: f64 = model[i][c].parse().unwrap();
                assert_eq!((num("baseline"), num("model")), (b, m), "{start} {i} {c}");
                assert_eq!(num("delta"), m - b, "{start} {i} {c}");
            }
        }
        let last = rows[2];
        assert!(
            console.contains(&format!(
                "iterative prompting ({start}), round 2: mSA {:.4} (baseline) -> {:.4} (model)",
                last["mSA baseline"].parse::<f64>().unwrap(),
                last["mSA model"].parse::<f64>().unwrap()
            )),
            "{console}"
        );
    }
    assert!(
        console.contains("iterative_prompting_deltas.csv"),
        "{console}"
    );

    let o = sam_eval(root, &["--no-baseline", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!dir.join("iterative_prompting_deltas.csv").exists());
}

/// Another tiny model (seed 11, where the default is 7) as `final_models/<name>.pt`.
fn write_other_model(root: &Path, name: &str, with_decoder: bool) {
    TinyCheckpoint::new()
        .with_decoder(with_decoder)
        .seed(11)
        .write(root.join(format!("final_models/{name}.pt")))
        .unwrap();
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A CSV file as rows of (column, value) maps.
fn csv_maps(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let (header, rows) = read_csv(path);
    rows.into_iter()
        .map(|r| header.iter().cloned().zip(r).collect())
        .collect()
}

const COLUMNS: [&str; 6] = ["mSA", "SA50", "SA75", "Precision", "Recall", "F1 Score"];

/// `sam-eval model --baseline`: comparison.csv holds the summary.csv of each model evaluated
/// alone, per_image_deltas.csv each image's per_image.csv scores of both and their
/// difference, the images where the model got worse first (in the file, the console and the
/// overlay names). Evaluating without a baseline and --overwrite removes the comparison.
///
/// Random tiny models segment nothing like the synthetic cells, so the ground truth is made
/// of their own predictions: t1 as the model segments it, t2 as the baseline does. The model
/// is then better on t1 and worse on t2.
#[test]
fn baseline_comparison_equals_separate_evaluations_worse_images_first() {
    let t = setup!(true);
    let root = t.path();
    write_other_model(root, "b", true);
    // AMG keeping every mask (random decoders predict low IoUs and unstable masks).
    config("dat/test/images")
        .set("inference.mode", "amg")
        .set("inference.amg.pred_iou_thresh", 0.0)
        .set("inference.amg.stability_score_thresh", 0.0)
        .write(root.join("configs/t.yaml"))
        .unwrap();
    let dir = eval_dir(root);
    let predict = |checkpoint: &str, stem: &str| {
        let o = sam_eval(
            root,
            &["--checkpoint", checkpoint, "--no-baseline", "--overwrite"],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        sam_data::read_labels(dir.join(format!("predictions/{stem}.tif"))).unwrap()
    };
    let (t1, t2) = (predict("t", "t1"), predict("b", "t2"));
    eprintln!("objects: t1 {}, t2 {}", t1.ids().len(), t2.ids().len());
    assert!(
        !t1.ids().is_empty() && !t2.ids().is_empty(),
        "empty predictions"
    );
    sam_data::write_labels(root.join("dat/test/labels/t1.tif"), &t1).unwrap();
    sam_data::write_labels(root.join("dat/test/labels/t2.tif"), &t2).unwrap();

    let o = sam_eval(root, &["--baseline", "b", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (header, _) = read_csv(&dir.join("comparison.csv"));
    let mut expected = vec!["model", "checkpoint", "mode", "images"];
    expected.extend(COLUMNS);
    assert_eq!(header, expected);
    let comparison = csv_maps(&dir.join("comparison.csv"));
    let deltas = csv_maps(&dir.join("per_image_deltas.csv"));
    let console = stdout(&o);
    // The model's report.html has the comparison, the image that got worse first.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let table = &html[html.find("id=\"deltas\"").expect("the deltas table")..];
    let table = &table[..table.find("</table>").unwrap()];
    let (t2, t1) = (table.find("<td>t2</td>"), table.find("<td>t1</td>"));
    assert!(t2.is_some() && t1.is_some() && t2 < t1, "{table}");
    assert!(
        html.contains("1 of 2 images got worse than the baseline"),
        "{html}"
    );
    let overlays: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("comparison_overlays"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(comparison.len(), 2);
    assert_eq!(comparison[0]["model"], "baseline");
    assert_eq!(comparison[1]["model"], "model");
    let canonical = |p: &str| {
        std::fs::canonicalize(root.join(p))
            .unwrap()
            .display()
            .to_string()
    };
    assert_eq!(comparison[0]["checkpoint"], canonical("final_models/b.pt"));
    assert_eq!(comparison[1]["checkpoint"], canonical("final_models/t.pt"));
    assert!(comparison
        .iter()
        .all(|r| r["mode"] == "amg" && r["images"] == "2"));

    // Each model alone, as a user would run it.
    let mut alone = Vec::new();
    for extra in [["--checkpoint", "b"], ["--checkpoint", "t"]] {
        let o = sam_eval(root, &[extra[0], extra[1], "--no-baseline", "--overwrite"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            !dir.join("comparison.csv").exists(),
            "stale comparison kept"
        );
        assert!(
            !dir.join("per_image_deltas.csv").exists(),
            "stale deltas kept"
        );
        let summary = csv_maps(&dir.join("summary.csv")).remove(0);
        let per_image = csv_maps(&dir.join("per_image.csv"));
        alone.push((summary, per_image));
    }
    for ((summary, _), row) in alone.iter().zip(&comparison) {
        for c in COLUMNS {
            assert_eq!(row[c], summary[c], "{} {c}", row["model"]);
        }
    }
    let score = |per_image: &[std::collections::HashMap<String, String>], image: &str, c: &str| {
        let r = per_image.iter().find(|r| r["image"] == image).unwrap();
        r[c].parse::<f64>().unwrap()
    };
    assert_eq!(deltas.len(), 2);
    let order: Vec<&str> = deltas.iter().map(|d| d["image"].as_str()).collect();
    assert_eq!(order, ["t2", "t1"], "{deltas:?}");
    assert_eq!(deltas[0]["mSA baseline"], "1");
    assert_eq!(deltas[1]["mSA model"], "1");
    let mut previous = f64::NEG_INFINITY;
    for d in &deltas {
        let image = d["image"].as_str();
        for c in COLUMNS {
            let b = score(&alone[0].1, image, c);
            let m = score(&alone[1].1, image, c);
            let num = |k: &str| d[&format!("{c} {k}")].parse::<f64>().unwrap();
            assert_eq!((num("baseline"), num("model")), (b, m), "{image} {c}");
            assert_eq!(num("delta"), m - b, "{image} {c}");
        }
        let delta = d["mSA delta"].parse::<f64>().unwrap();
        assert!(delta >= previous, "not sorted by mSA delta: {deltas:?}");
        previous = delta;
    }
    // The console lists the images that got worse in that order; the overlays are numbered
    // in it.
    let worse: Vec<&str> = deltas
        .iter()
        .filter(|d| d["mSA delta"].parse::<f64>().unwrap() < 0.0)
        .map(|d| d["image"].as_str())
        .collect();
    eprintln!("{console}");
    assert_eq!(worse, ["t2"], "{deltas:?}");
    assert!(
        console.contains("1 of 2 test images got worse")
            && console.contains(&format!(
                "  t2: 1.0000 -> {:.4} ({:+.4})",
                score(&alone[1].1, "t2", "mSA"),
                score(&alone[1].1, "t2", "mSA") - 1.0
            ))
            && !console.contains("  t1: "),
        "{console}"
    );
    let mut expected = Vec::new();
    for (i, d) in deltas.iter().enumerate() {
        for which in ["baseline", "model"] {
            expected.push(format!("{:02}_{}_{which}.png", i + 1, d["image"]));
        }
    }
    assert_eq!(overlays, expected);
}

/// The default baseline is the config's model.checkpoint (the model training started from);
/// --no-baseline turns it off. A baseline that cannot be found is a usage error naming it and
/// the fix before anything is written; one that cannot run the model's mode is refused when
/// named, and left out with a warning when it is the default.
#[test]
fn default_baseline_from_the_config_and_baselines_that_cannot_be_used() {
    let t = setup!(true);
    let root = t.path();
    let set_start = |checkpoint: &str| {
        config("dat/test/images")
            .set("model.checkpoint", checkpoint)
            .write(root.join("configs/t.yaml"))
            .unwrap();
    };
    // Missing: before any work, nothing written.
    set_start("final_models/gone.pt");
    let o = sam_eval(root, &[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("model.checkpoint")
            && e.contains("final_models/gone.pt` cannot be found")
            && e.contains("--no-baseline"),
        "{e}"
    );
    assert!(
        !e.lines().any(|l| l.starts_with("model: ")),
        "model loaded: {e}"
    );
    let o = sam_eval(root, &["--baseline", "nope"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("--baseline `nope` cannot be found") && e.contains("final_models"),
        "{e}"
    );
    assert!(!eval_dir(root).exists(), "{e}");

    // A baseline without the decoder cannot run AIS as the model does.
    write_other_model(root, "nodec", false);
    let o = sam_eval(root, &["--baseline", "nodec"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("inference.mode") && e.contains("amg"), "{e}");
    assert!(!eval_dir(root).exists(), "{e}");
    set_start("final_models/nodec.pt");
    let o = sam_eval(root, &[]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("warning: not compared") && e.contains("nodec.pt"),
        "{e}"
    );
    assert!(!eval_dir(root).join("comparison.csv").exists());

    // The config's starting model is the default baseline; --no-baseline turns it off.
    write_other_model(root, "b", true);
    set_start("final_models/b.pt");
    let o = sam_eval(root, &["--overwrite", "--no-baseline"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!eval_dir(root).join("comparison.csv").exists());
    let o = sam_eval(root, &["--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let comparison = csv_maps(&eval_dir(root).join("comparison.csv"));
    assert_eq!(
        comparison[0]["checkpoint"],
        std::fs::canonicalize(root.join("final_models/b.pt"))
            .unwrap()
            .display()
            .to_string()
    );
    assert!(stdout(&o).contains("(baseline) -> "), "{}", stdout(&o));
    // A comparison is an evaluation: kept unless --overwrite.
    let o = sam_eval(root, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
