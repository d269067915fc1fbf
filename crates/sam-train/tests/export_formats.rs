//! `sam-train export --format torchscript` and `--format bioimageio`: the traced modules,
//! loaded in Python with `torch.jit.load`, reproduce this project's model, and the
//! bioimage.io package passes bioimageio.core's validation and test-model check.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use sam_model::{write_torch_checkpoint, SamConfig, SamModel, UnetrConfig};
use sam_train::{
    export_bioimageio, export_torchscript, torchscript_files as files, BioImageIoOptions,
    TorchScriptOptions, TrainError,
};
use tch::{Device, Kind, Tensor};

/// A tiny model with random weights (decoder batch-norm statistics too, so that they matter):
/// 256 px input with 16 px patches, or with `patch8` 128 px with 8 px patches, whose UNETR
/// output (16× the 16 px embedding grid) is twice the input side.
fn tiny_model(decoder: bool, patch8: bool) -> SamModel {
    tch::manual_seed(11);
    let mut sam = SamConfig::tiny();
    let mut unetr = UnetrConfig::tiny();
    if patch8 {
        if let sam_model::ImageEncoderConfig::Vit(vit) = &mut sam.image_encoder {
            vit.img_size = 128;
            vit.patch_size = 8;
        }
        sam.prompt_encoder.input_image_size = 128;
        unetr.img_size = 128;
    }
    let model = SamModel::new(&sam, decoder.then_some(&unetr), Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (name, mut t) in model.named_variables() {
            if name.ends_with("running_var") {
                t.copy_(&(Tensor::rand_like(&t) + 0.5));
            } else if name.ends_with("running_mean") {
                t.copy_(&(Tensor::randn_like(&t) * 0.1));
            }
        }
    });
    model
}

/// Writes `model` as a micro_sam-style `.pt` checkpoint.
fn write_checkpoint(model: &SamModel, path: &Path) {
    let (sam, dec) = SamModel::split_named(&model.named_variables());
    let detach = |v: Vec<(String, Tensor)>| -> Vec<(String, Tensor)> {
        v.into_iter().map(|(k, t)| (k, t.detach())).collect()
    };
    let dec = (!dec.is_empty()).then(|| detach(dec));
    write_torch_checkpoint(path, &detach(sam), dec.as_deref(), None).unwrap();
}

/// Runs a Python script of tests/python with the test environment and parses its JSON output.
fn python_json(script: &str, args: &[&Path]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(sam_testkit::venv_python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The modules of a tiny model with the decoder, traced for 3 points, give in Python what the
/// Rust model gives on other inputs than those traced: the encoder, both prompt modules
/// (single- and multi-mask outputs), the UNETR decoder and the whole AIS network.
#[test]
fn torchscript_modules_reproduce_the_model_in_python() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(true, false);
    let ckpt = dir.path().join("tiny.pt");
    write_checkpoint(&model, &ckpt);
    let out = dir.path().join("ts");
    let options = TorchScriptOptions {
        points: 3,
        ..Default::default()
    };
    let written = export_torchscript(&ckpt, &out, options).unwrap();
    let names: Vec<_> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    for f in [
        files::IMAGE_ENCODER,
        files::PROMPT_POINTS,
        files::PROMPT_BOX,
        files::UNETR_DECODER,
        files::AIS,
        files::MANIFEST,
    ] {
        assert!(names.iter().any(|n| n == f), "{f} missing in {names:?}");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(files::MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest["input_size"], 256);
    assert_eq!(
        manifest["modules"]["prompt_points"]["inputs"][1]["shape"],
        serde_json::json!([1, 3, 2])
    );
    assert_eq!(
        manifest["preprocessing"]["normalization"]["upper_percentile"],
        99.8
    );

    // Reference outputs of the Rust model on fresh inputs.
    tch::manual_seed(5);
    let sam = model.sam();
    let decoder = model.decoder().unwrap();
    let f = tch::no_grad(|| {
        let grey = Tensor::rand([1, 1, 256, 256], (Kind::Float, Device::Cpu));
        let image = sam
            .preprocess(&(&grey * 255.0).expand([1, 3, 256, 256], false))
            .unwrap();
        let emb = sam.image_encoder.forward(&image);
        let coords = Tensor::rand([1, 3, 2], (Kind::Float, Device::Cpu)) * 256.0;
        let labels = Tensor::from_slice(&[1.0f32, 0.0, 1.0]).view([1, 3]);
        let boxes = Tensor::from_slice(&[30.0f32, 40.0, 200.0, 150.0]).view([1, 4]);
        let pts = Some((&coords, &labels));
        let (ms, is) = sam.forward_prompts(&emb, pts, None, None, false).unwrap();
        let (mm, im) = sam.forward_prompts(&emb, pts, None, None, true).unwrap();
        let (bm, bi) = sam
            .forward_prompts(&emb, None, Some(&boxes), None, true)
            .unwrap();
        let unetr = decoder.forward_t(&emb, false).unwrap();
        vec![
            ("grey", grey),
            ("image", image),
            ("embeddings", emb.shallow_clone()),
            ("coords", coords),
            ("labels", labels),
            ("box", boxes),
            ("points_masks_single", ms),
            ("points_iou_single", is),
            ("points_masks_multi", mm),
            ("points_iou_multi", im),
            ("box_masks_multi", bm),
            ("box_iou_multi", bi),
            ("ais", unetr.shallow_clone()),
            ("unetr", unetr),
        ]
    });
    // Outputs must be informative: masks not constant, the decoder's maps not saturated.
    let spread = |t: &Tensor| (t.max() - t.min()).double_value(&[]);
    assert!(spread(&f[8].1) > 1e-3 && spread(&f[13].1) > 1e-3);
    let fixtures = dir.path().join("fixtures.safetensors");
    Tensor::write_safetensors(&f, &fixtures).unwrap();

    let diffs = python_json("check_torchscript.py", &[&out, &fixtures]);
    let diffs = diffs.as_object().unwrap();
    assert_eq!(diffs.len(), 9, "{diffs:?}");
    for (name, d) in diffs {
        let d = d.as_f64().unwrap();
        println!("max |torch.jit − Rust| {name}: {d:.3e}");
        assert!(d <= 1e-5, "{name}: max difference {d}");
    }
}

/// A checkpoint folder of a run: `runs/t/config.yaml` (with its own normalisation) above
/// `runs/t/checkpoints/ck/best/model.safetensors`.
fn run_folder(root: &Path, model: &SamModel) -> PathBuf {
    let run = root.join("runs/t");
    sam_testkit::ConfigBuilder::named("t")
        .with_decoder(true)
        .set("data.normalization.lower_percentile", 2.0)
        .set("data.normalization.upper_percentile", 99.5)
        .write(run.join("config.yaml"))
        .unwrap();
    let best = run.join("checkpoints/ck/best");
    std::fs::create_dir_all(&best).unwrap();
    let vars: Vec<(String, Tensor)> = model
        .named_variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach()))
        .collect();
    Tensor::write_safetensors(&vars, best.join("model.safetensors")).unwrap();
    best
}

/// The package of a checkpoint folder passes bioimageio.core's validation and test-model
/// check (its weights, with the declared percentile normalisation, reproduce the Rust model's
/// output on the test image, at the input size also for an encoder with 8 px patches), and
/// declares the run's normalisation.
#[test]
fn bioimageio_package_passes_bioimageio_core_test() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(true, true);
    let best = run_folder(dir.path(), &model);
    let out = dir.path().join("package");
    let options = BioImageIoOptions {
        authors: vec!["A. Person".into()],
        ..Default::default()
    };
    let rdf = export_bioimageio(&best, &out, &options).unwrap();
    for f in [
        "rdf.yaml",
        "ais.pt",
        "test_input.npy",
        "test_output.npy",
        "cover.png",
        "README.md",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let cover = image::open(out.join("cover.png")).unwrap();
    assert_eq!((cover.width(), cover.height()), (256, 128));

    // The same package as a zip file.
    let zip_path = dir.path().join("package.zip");
    assert_eq!(
        export_bioimageio(&best, &zip_path, &options).unwrap(),
        zip_path
    );
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
    let mut names: Vec<String> = archive.file_names().map(str::to_string).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "README.md",
            "ais.pt",
            "cover.png",
            "rdf.yaml",
            "test_input.npy",
            "test_output.npy"
        ]
    );
    let mut rdf_in_zip = String::new();
    std::io::Read::read_to_string(&mut archive.by_name("rdf.yaml").unwrap(), &mut rdf_in_zip)
        .unwrap();
    assert!(rdf_in_zip.contains("max_percentile: 99.5"), "{rdf_in_zip}");
    assert!(!dir.path().join("package.zip.parts").exists());
    let err = export_bioimageio(&best, &zip_path, &options).unwrap_err();
    assert!(
        err.is_usage() && err.to_string().contains("--force"),
        "{err}"
    );

    let result = python_json("check_bioimageio.py", &[&rdf, &zip_path]);
    assert_eq!(
        result["status"], "passed",
        "{result:#}\n(bioimageio.spec 0.5.12 needs pydantic < 2.14: scripts/setup.sh installs \
         the pinned scripts/requirements-test.txt)"
    );
    let diff = result["max_abs_diff"].as_f64().unwrap();
    println!("max |package weights − Rust| on the test image: {diff:.3e}");
    assert!(diff <= 1e-4, "{diff}");
    assert_eq!(result["zip_status"], "passed", "{result:#}");
    // The same package with its test output changed by 2 % keeps a valid format but fails
    // the reproduction check ("valid-format" instead of "passed").
    assert_eq!(result["perturbed_status"], "valid-format", "{result:#}");
    assert_eq!(result["format_version"], "0.5.12");
    // The loader adds `ensure_dtype` steps around the declared ones.
    let pre: Vec<&serde_json::Value> = result["preprocessing"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["id"] != "ensure_dtype")
        .collect();
    assert_eq!(pre.len(), 2, "{pre:?}");
    assert_eq!(pre[0]["id"], "scale_range", "{pre:?}");
    assert_eq!(pre[0]["kwargs"]["min_percentile"], 2.0, "{pre:?}");
    assert_eq!(pre[0]["kwargs"]["max_percentile"], 99.5, "{pre:?}");
    assert_eq!(pre[1]["id"], "clip", "{pre:?}");
    assert_eq!(pre[1]["kwargs"]["min"], 0.0, "{pre:?}");
    assert_eq!(pre[1]["kwargs"]["max"], 1.0, "{pre:?}");

    // Again into the same folder: refused without --force, replaced with it.
    let err = export_bioimageio(&best, &out, &options).unwrap_err();
    assert!(
        err.is_usage() && err.to_string().contains("--force"),
        "{err}"
    );
    let again = BioImageIoOptions {
        replace: true,
        ..options
    };
    export_bioimageio(&best, &out, &again).unwrap();
}

/// Refusals before anything is written: an output inside the checkpoint folder, an output
/// that is a file, no point, and a bioimage.io package of a model without the decoder.
#[test]
fn folder_exports_refuse_bad_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(false, false);
    let best = run_folder(dir.path(), &model);
    fn usage<T: std::fmt::Debug>(r: Result<T, TrainError>, part: &str) {
        let err = r.unwrap_err();
        assert!(err.is_usage(), "{err}");
        assert!(err.to_string().contains(part), "missing `{part}`: {err}");
    }
    let ts = TorchScriptOptions::default();
    usage(
        export_torchscript(&best, &best.join("ts"), ts),
        "inside the checkpoint",
    );
    usage(
        export_torchscript(&best, &best, ts),
        "inside the checkpoint",
    );
    let file = dir.path().join("a.txt");
    std::fs::write(&file, "x").unwrap();
    usage(export_torchscript(&best, &file, ts), "is a file");
    let none = TorchScriptOptions { points: 0, ..ts };
    usage(
        export_torchscript(&best, &dir.path().join("p"), none),
        "at least 1",
    );
    let pkg = dir.path().join("pkg");
    usage(
        export_bioimageio(&best, &pkg, &BioImageIoOptions::default()),
        "no instance-segmentation decoder",
    );
    assert!(!best.join("ts").exists() && !dir.path().join("p").exists());

    // Without the decoder, the torchscript export has the SAM modules only.
    let out = dir.path().join("sam-only");
    let written = export_torchscript(&best, &out, ts).unwrap();
    assert_eq!(written.len(), 4, "{written:?}");
    assert!(!out.join(files::AIS).exists());
    // The run's normalisation is recorded.
    let manifest = std::fs::read_to_string(out.join(files::MANIFEST)).unwrap();
    assert!(
        manifest.contains("99.5") && manifest.contains("config.yaml"),
        "{manifest}"
    );
}
