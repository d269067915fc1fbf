//! End-to-end runs of the `sam-infer` executable with a tiny random-weight model.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sam_model::write_sam_state_dict;
use sam_testkit::{SynthDataset, SynthImage};
use sam_testkit_model::TinyCheckpoint;

/// A fresh temporary folder per test.
macro_rules! setup {
    () => {
        tempfile::tempdir().unwrap()
    };
}

/// The tiny random-weight model in `dir`: `tiny_ais.pt` with the UNETR decoder, else
/// `tiny_sam.pt`.
fn tiny_checkpoint(dir: &Path, with_decoder: bool) -> PathBuf {
    let path = dir.join(if with_decoder {
        "tiny_ais.pt"
    } else {
        "tiny_sam.pt"
    });
    TinyCheckpoint::new()
        .with_decoder(with_decoder)
        .write(&path)
        .unwrap();
    path
}

/// The tiny random-weight model with the UNETR decoder drawn with `seed`, written to `path`.
fn seeded_checkpoint(path: &Path, seed: i64) -> PathBuf {
    TinyCheckpoint::new()
        .with_decoder(true)
        .seed(seed)
        .write(path)
        .unwrap();
    path.to_path_buf()
}

/// A folder of synthetic images (no labels) named and sized as given, image `i` drawn with
/// seed `i`.
fn images(dir: &Path, names: &[(&str, usize)]) -> PathBuf {
    let images = names
        .iter()
        .enumerate()
        .map(|(i, &(name, size))| SynthImage::new(name, size, i as u64));
    let data = SynthDataset::new(dir)
        .without_labels()
        .split_of("input", images);
    data.write().unwrap();
    data.images_dir("input")
}

fn sam_infer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sam-infer"))
        .args(args)
        .output()
        .unwrap()
}

/// `sam-infer auto` with `ckpt` on the CPU, from `input` into `out`; more flags can be pushed.
fn auto_args<'a>(ckpt: &'a Path, input: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "auto",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]
}

/// `sam-infer prompts` with `ckpt` on the CPU, `prompts` on `image`, into `out`.
fn prompts_args<'a>(
    ckpt: &'a Path,
    image: &'a Path,
    prompts: &'a Path,
    out: &'a Path,
) -> Vec<&'a str> {
    vec![
        "prompts",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--input",
        image.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn auto_ais_writes_labels_overlay_csv_and_skips_existing() {
    let t = setup!();
    // Whether a random-weight decoder gives blobs depends on the draw: with seed 7 it gives
    // none on these images, with seed 8 dozens. The seed is the fixture's, not luck: the kit
    // draws the weights under a lock (before it, other tests' draws from libtorch's shared
    // generator landed between this one's, and the weights changed from run to run).
    let ckpt = seeded_checkpoint(&t.path().join("tiny_ais.pt"), 8);
    // 300 px > the tiny model's 256 px input: tiled with 128-px tiles and a 32-px halo.
    let input = images(t.path(), &[("a.tif", 300), ("b.png", 200)]);
    let out = t.path().join("out");
    let mut args = auto_args(&ckpt, &input, &out);
    args.extend([
        "--tile-shape",
        "128",
        "128",
        "--halo",
        "32",
        "32",
        "--batch-size",
        "2",
    ]);
    let o = sam_infer(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("a.tif:") && err.contains("ais, 9 tile(s)"),
        "{err}"
    );
    assert!(
        err.contains("b.png:") && err.contains("ais, 1 tile(s)"),
        "{err}"
    );
    for stem in ["a", "b"] {
        let labels = sam_data::read_labels(out.join("labels").join(format!("{stem}.tif"))).unwrap();
        let ids = labels.ids();
        // The random-weight decoder still gives blobs, so the watershed finds objects.
        assert!(!ids.is_empty(), "{stem}: no objects");
        assert_eq!(
            ids,
            (1..=ids.len() as u32).collect::<Vec<_>>(),
            "ids are consecutive"
        );
        assert!(out.join("overlays").join(format!("{stem}.png")).is_file());
        let csv = std::fs::read_to_string(out.join("objects").join(format!("{stem}.csv"))).unwrap();
        assert!(
            csv.starts_with("id,area,centroid_y,centroid_x,bbox_y0,bbox_x0,bbox_y1,bbox_x1,score")
        );
        assert_eq!(csv.lines().count(), ids.len() + 1);
    }
    let a = sam_data::read_labels(out.join("labels/a.tif")).unwrap();
    assert_eq!(a.shape(), (300, 300));
    // Second run: existing outputs are kept. Blank b's labels to see whether they are rewritten.
    let b_labels = out.join("labels/b.tif");
    sam_data::write_labels(&b_labels, &sam_data::LabelImage::zeros(200, 200)).unwrap();
    let o = sam_infer(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0 segmented, 2 skipped"),
        "{}",
        stderr(&o)
    );
    assert!(sam_data::read_labels(&b_labels).unwrap().ids().is_empty());
    // With --overwrite both are segmented again and b gets its objects back.
    let mut again = args.clone();
    again.push("--overwrite");
    let o = sam_infer(&again);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("2 segmented, 0 skipped"),
        "{}",
        stderr(&o)
    );
    assert!(!sam_data::read_labels(&b_labels).unwrap().ids().is_empty());
}

#[test]
fn auto_falls_back_to_amg_without_decoder_and_ais_is_refused() {
    let t = setup!();
    let ckpt = tiny_checkpoint(t.path(), false);
    let input = images(t.path(), &[("c.tif", 96)]);
    let out = t.path().join("out");
    let mut base = auto_args(&ckpt, &input, &out);
    base.extend([
        "--points-per-side",
        "4",
        "--pred-iou-thresh",
        "0",
        "--stability-score-thresh",
        "0",
    ]);
    let o = sam_infer(&base);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("amg, 1 tile(s)"), "{}", stderr(&o));
    assert!(out.join("labels/c.tif").is_file());
    let mut ais = base.clone();
    ais.extend(["--mode", "ais", "--overwrite"]);
    let o = sam_infer(&ais);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--mode amg"), "{}", stderr(&o));
}

#[test]
fn auto_apg_runs_tiled_as_the_library_does_and_needs_a_decoder() {
    let t = setup!();
    let ckpt = tiny_checkpoint(t.path(), true);
    // 320 px on the tiny model's 256 px input: 2 × 2 tiles of 160 with a halo of 32.
    let input = images(t.path(), &[("a.tif", 320)]);
    let out = t.path().join("out");
    let mut args = auto_args(&ckpt, &input, &out);
    args.extend([
        "--mode",
        "apg",
        "--tile-shape",
        "160",
        "160",
        "--halo",
        "32",
        "32",
        "--min-size",
        "5",
    ]);
    let o = sam_infer(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("apg, 4 tile(s)"), "{}", stderr(&o));
    let written = sam_data::read_labels(out.join("labels/a.tif")).unwrap();
    // The same run through the library with the options the config defaults give.
    let mut inf = sam_config::InferenceConfig {
        mode: sam_config::InferenceMode::Apg,
        tile_shape: Some([160, 160]),
        halo: [32, 32],
        ..Default::default()
    };
    inf.apg.min_size = 5;
    let opts =
        sam_cli_torch::auto_options(&inf, &sam_config::NormalizationConfig::default()).unwrap();
    let model = sam_infer::InferenceModel::load(&ckpt, tch::Device::Cpu).unwrap();
    let (_, plane) = sam_infer::load_image(&input.join("a.tif"), &opts.normalization).unwrap();
    let seg = sam_infer::segment_auto(&model, &plane, &opts, &mut |_| {}).unwrap();
    assert_eq!(seg.mode, sam_infer::AutoMode::Apg);
    assert_eq!(seg.tiles, 4);
    assert_eq!(written.as_slice(), seg.labels.as_slice());

    // Without the decoder, APG is refused before any work, pointing to AMG.
    let plain = tiny_checkpoint(t.path(), false);
    let out2 = t.path().join("out2");
    let mut args = auto_args(&plain, &input, &out2);
    args.extend(["--mode", "apg"]);
    let o = sam_infer(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("mode apg needs"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--mode amg"), "{}", stderr(&o));
}

#[test]
fn prompts_segment_and_bad_files_are_reported() {
    let t = setup!();
    let ckpt = tiny_checkpoint(t.path(), false);
    let input = images(t.path(), &[("cells.tif", 128)]);
    let img = input.join("cells.tif");
    let out = t.path().join("out");
    let run = |prompts: &str, name: &str| {
        let p = t.path().join(name);
        std::fs::write(&p, prompts).unwrap();
        let mut args = prompts_args(&ckpt, &img, &p, &out);
        args.push("--overwrite");
        sam_infer(&args)
    };
    let o = run("image,object,kind,x,y,x2,y2,label\ncells.tif,1,point,30,40,,,1\ncells.tif,2,box,60,60,100,110,\n", "ok.csv");
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("cells.tif: 2 objects (prompts"), "{e}");
    let labels = sam_data::read_labels(out.join("labels/cells.tif")).unwrap();
    // One label per prompt set, ids = the position of the set in the file.
    assert_eq!(labels.ids(), vec![1, 2]);
    let csv = std::fs::read_to_string(out.join("objects/cells.csv")).unwrap();
    assert_eq!(csv.lines().count(), labels.ids().len() + 1);

    // A bad file stops the run before anything is written, even with --overwrite.
    std::fs::remove_dir_all(&out).unwrap();
    let o = run("object,kind,x,y\n1,point,300,4\n", "far.csv");
    assert_eq!(o.status.code(), Some(2));
    assert!(!out.join("labels/cells.tif").exists());
    let e = stderr(&o);
    assert!(
        e.contains("far.csv:2") && e.contains("x=300") && e.contains("outside"),
        "{e}"
    );

    let o = run(
        r#"[{"image": "other.tif", "points": [[1, 1]]}]"#,
        "other.json",
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("unknown image `other.tif`") && e.contains("cells.tif"),
        "{e}"
    );
}

#[test]
fn missing_checkpoint_is_a_usage_error() {
    let t = setup!();
    let input = images(t.path(), &[("d.tif", 64)]);
    let out = t.path().join("o");
    let o = sam_infer(&auto_args(Path::new("no/such/model.pt"), &input, &out));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("model.pt"), "{}", stderr(&o));
}

/// Issue 15: `--device cuda` where libtorch sees no GPU is a usage error before any work:
/// exit 2 with the reason (libtorch build, NVIDIA driver, CUDA_VISIBLE_DEVICES, nvidia-smi),
/// no panic, nothing written. `CUDA_VISIBLE_DEVICES=-1` hides every GPU, so this holds on GPU
/// machines too; the prompts file does not exist, so it is not read before the device check.
#[test]
fn cuda_without_a_usable_gpu_is_a_usage_error_before_any_work() {
    let t = setup!();
    let ckpt = tiny_checkpoint(t.path(), false);
    let input = images(t.path(), &[("a.tif", 64)]);
    let out = t.path().join("out");
    let (ckpt, input, out_s) = (
        ckpt.to_str().unwrap(),
        input.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let no_prompts = t.path().join("no_such_prompts.csv");
    let runs: [Vec<&str>; 3] = [
        vec!["auto", "--device", "cuda"],
        vec!["auto", "--device", "cuda:1"],
        vec![
            "prompts",
            "--device",
            "cuda",
            "--prompts",
            no_prompts.to_str().unwrap(),
        ],
    ];
    for run in runs {
        let mut args = run.clone();
        args.extend(["--checkpoint", ckpt, "--input", input, "--output", out_s]);
        let o = Command::new(env!("CARGO_BIN_EXE_sam-infer"))
            .args(&args)
            .env("CUDA_VISIBLE_DEVICES", "-1")
            .output()
            .unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        for part in [
            "--device: `",
            "needs a GPU, but libtorch sees none",
            "NVIDIA driver",
            "CUDA_VISIBLE_DEVICES=\"-1\"",
            "`nvidia-smi`",
            "libtorch: ",
        ] {
            assert!(e.contains(part), "{args:?}: missing `{part}` in:\n{e}");
        }
        assert!(!e.contains("panicked") && !e.contains("model:"), "{e}");
        assert!(!out.exists(), "{args:?} created {}", out.display());
    }
}

/// A stack of `pages` grey pages, as tifffile or Fiji write a z-stack.
fn write_stack(path: &Path, pages: usize, size: u32) {
    use tiff::encoder::{colortype::Gray8, TiffEncoder};
    let mut enc = TiffEncoder::new(std::fs::File::create(path).unwrap()).unwrap();
    for p in 0..pages {
        let data: Vec<u8> = (0..size * size)
            .map(|i| ((i + p as u32 * 9) % 251) as u8)
            .collect();
        enc.write_image::<Gray8>(size, size, &data).unwrap();
    }
}

#[test]
fn issue_16_same_stem_inputs_stacks_and_unread_formats_are_named() {
    let t = setup!();
    let ckpt = tiny_checkpoint(t.path(), true);
    let input = images(t.path(), &[("a.png", 64), ("a.tif", 64)]);
    let out = t.path().join("out");
    // Same stem: refused before any work, as sam-augment refuses it.
    let o = sam_infer(&auto_args(&ckpt, &input, &out));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("a.png and ")
            && e.contains("a.tif share the stem \"a\"")
            && e.contains("keep one file per stem"),
        "{e}"
    );
    assert!(!out.exists());
    // A JPEG beside a TIFF is named, not skipped silently; a JPEG alone is refused.
    std::fs::remove_file(input.join("a.png")).unwrap();
    std::fs::write(input.join("b.jpg"), [0xFF, 0xD8, 0xFF, 0xE0]).unwrap();
    let o = sam_infer(&auto_args(&ckpt, &input, &out));
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("warning: 1 image file(s) in formats that are not read are left out (e.g. ")
            && e.contains("b.jpg): save them as TIFF or PNG"),
        "{e}"
    );
    let jpg = input.join("b.jpg");
    let o = sam_infer(&auto_args(&ckpt, &jpg, &out));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("b.jpg: `.jpg` images are not read: save it as TIFF or PNG"),
        "{}",
        stderr(&o)
    );
    // A 3-D stack is refused, not segmented as its first page.
    let stack = t.path().join("z_stack.tif");
    write_stack(&stack, 5, 64);
    let out2 = t.path().join("out2");
    let o = sam_infer(&auto_args(&ckpt, &stack, &out2));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("z_stack.tif: FAILED:") && e.contains("a multi-page TIFF with 5 pages"),
        "{e}"
    );
    assert!(!out2.join("labels/z_stack.tif").exists());
}

#[test]
fn issue_16_outputs_of_another_checkpoint_are_not_kept_silently() {
    let t = setup!();
    let first = tiny_checkpoint(t.path(), true);
    let second = seeded_checkpoint(&t.path().join("second.pt"), 8);
    let input = images(t.path(), &[("a.tif", 64)]);
    let out = t.path().join("out");
    let o = sam_infer(&auto_args(&first, &input, &out));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sam_infer(&auto_args(&second, &input, &out));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    let record = std::fs::read_to_string(out.join("model.json")).unwrap();
    assert!(
        record.contains("tiny_ais.pt") && record.contains("\"sha256\""),
        "{record}"
    );
    assert!(
        e.contains("holds the outputs of ")
            && e.contains("tiny_ais.pt (sha256 ")
            && e.contains("not of ")
            && e.contains("second.pt")
            && e.contains("pass --overwrite to redo every image with this model"),
        "{e}"
    );
    // The same bytes elsewhere are the same model.
    let copy = t.path().join("copy_of_first.pt");
    std::fs::copy(&first, &copy).unwrap();
    let o = sam_infer(&auto_args(&copy, &input, &out));
    assert!(
        o.status.success() && stderr(&o).contains("1 skipped"),
        "{}",
        stderr(&o)
    );
    let mut again = auto_args(&second, &input, &out);
    again.push("--overwrite");
    let o = sam_infer(&again);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(out.join("model.json"))
        .unwrap()
        .contains("second.pt"));
    // An output that is a file is named as such.
    let file = t.path().join("out.txt");
    std::fs::write(&file, "x").unwrap();
    let o = sam_infer(&auto_args(&second, &input, &file));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("out.txt: is a file, but the output is a folder") && !e.contains("os error"),
        "{e}"
    );
}

#[test]
fn issue_16_checkpoint_names_resolve_against_the_repository_root() {
    let t = setup!();
    let root = t.path().join("repo");
    for d in ["configs", "dat", "final_models", "scripts"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let ckpt = tiny_checkpoint(t.path(), true);
    std::fs::copy(&ckpt, root.join("final_models/tiny.pt")).unwrap();
    let input = images(t.path(), &[("a.tif", 64)]);
    for (spec, out) in [("tiny", "o1"), ("final_models/tiny.pt", "o2")] {
        let out = t.path().join(out);
        let o = Command::new(env!("CARGO_BIN_EXE_sam-infer"))
            .args(auto_args(Path::new(spec), &input, &out))
            .current_dir(root.join("scripts"))
            .env_remove("SAM_TRAINER_ROOT")
            .output()
            .unwrap();
        let e = stderr(&o);
        assert!(o.status.success(), "{spec}: {e}");
        assert!(e.contains("final_models/tiny.pt"), "{spec}: {e}");
    }
}

#[test]
fn issue_16_a_model_shrinking_the_image_is_warned_about() {
    let t = setup!();
    let ckpt = tiny_checkpoint(t.path(), true);
    let input = images(t.path(), &[("big.tif", 400)]);
    let out = t.path().join("out");
    let mut args = auto_args(&ckpt, &input, &out);
    args.push("--no-tiling");
    let o = sam_infer(&args);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains(
            "big.tif (400x400) is shrunk 1.6× (400 px blocks into the model's 256 px input)"
        ) && e.contains("use --tile-shape 192 192 --halo 32 32"),
        "{e}"
    );
    // The default tiling (768 + 2 × 128) does not fit the 256 px model either.
    let mut args = auto_args(&ckpt, &input, &out);
    args.push("--overwrite");
    let e = stderr(&sam_infer(&args));
    assert!(e.contains("is shrunk 1.6×"), "{e}");
    // A tiling that fits is not warned about.
    args.extend(["--tile-shape", "192", "192", "--halo", "32", "32"]);
    let e = stderr(&sam_infer(&args));
    assert!(!e.contains("shrunk"), "{e}");
}

/// Issue 19: a model trained with `model.encoder_input: native` (its export records the 128 px
/// side) runs at that side, and images larger than it are tiled to fit it instead of shrunk.
#[test]
fn a_native_input_model_runs_at_its_side_with_tiles_that_fit() {
    let t = setup!();
    let (sam, decoder) = TinyCheckpoint::new()
        .with_decoder(true)
        .seed(8)
        .named_tensors()
        .unwrap();
    let path = t.path().join("native.pt");
    sam_model::write_torch_checkpoint(&path, &sam, decoder.as_deref(), Some(128)).unwrap();
    let input = images(t.path(), &[("a.tif", 300)]);
    let out = t.path().join("out");
    let o = sam_infer(&auto_args(&path, &input, &out));
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("fed at 128 px"), "{e}");
    assert!(
        e.contains("(128 px input)") && e.contains("tiles with a halo of"),
        "{e}"
    );
    assert!(!e.contains("shrunk"), "{e}");
    let labels = sam_data::read_labels(out.join("labels/a.tif")).unwrap();
    assert_eq!((labels.rows(), labels.cols()), (300, 300));
}

#[test]
fn issue_16_a_checkpoint_with_nan_weights_is_refused() {
    let t = setup!();
    let (mut state, _) = TinyCheckpoint::new().named_tensors().unwrap();
    let (key, tensor) = state
        .iter_mut()
        .find(|(k, _)| k.starts_with("mask_decoder.") && k.ends_with(".weight"))
        .unwrap();
    let key = key.clone();
    *tensor = tensor.full_like(f64::NAN);
    let path = t.path().join("diverged.pt");
    write_sam_state_dict(&path, &state).unwrap();
    let input = images(t.path(), &[("a.tif", 64)]);
    let out = t.path().join("out");
    let o = sam_infer(&auto_args(&path, &input, &out));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!("diverged.pt: entry `{key}` holds ")) && e.contains("non-finite"),
        "{e}"
    );
    assert!(!out.join("labels/a.tif").exists());
}

/// Foreground IoU of two label images (pixels with any object), and whether both have any.
fn foreground_iou(a: &sam_data::LabelImage, b: &sam_data::LabelImage) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (x, y) in a.as_slice().iter().zip(b.as_slice()) {
        inter += u64::from(*x != 0 && *y != 0);
        union += u64::from(*x != 0 || *y != 0);
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Files under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for sub in ["labels", "overlays", "objects"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            found.push(Path::new(sub).join(e.unwrap().file_name()));
        }
    }
    found.sort();
    found
}

/// Issue 18: `--precision bf16` runs the forward passes under bf16 autocast (CPU here) and
/// writes the files an fp32 run writes, with the same objects up to their edges; the
/// embedding cache keeps the two precisions apart; the precision is printed with the device.
#[test]
fn issue_18_bf16_precision_writes_what_fp32_writes() {
    let t = setup!();
    let ckpt = seeded_checkpoint(&t.path().join("tiny_ais.pt"), 8);
    let input = images(t.path(), &[("a.tif", 200)]);
    let cache = t.path().join("cache");
    let run = |precision: &str| {
        let out = t.path().join(precision);
        let mut args = auto_args(&ckpt, &input, &out);
        args.extend(["--precision", precision, "--embedding-cache"]);
        args.push(cache.to_str().unwrap());
        let o = sam_infer(&args);
        let e = stderr(&o);
        assert!(o.status.success(), "{e}");
        assert!(e.contains(&format!("; precision: {precision}")), "{e}");
        out
    };
    let (fp32, bf16) = (run("fp32"), run("bf16"));
    assert_eq!(files_under(&fp32), files_under(&bf16));
    let a = sam_data::read_labels(fp32.join("labels/a.tif")).unwrap();
    let b = sam_data::read_labels(bf16.join("labels/a.tif")).unwrap();
    assert!(!a.ids().is_empty(), "the fp32 run found no objects");
    let iou = foreground_iou(&a, &b);
    eprintln!(
        "bf16 vs fp32 AIS: foreground IoU {iou:.4}, {} vs {} objects",
        a.ids().len(),
        b.ids().len()
    );
    assert!(iou >= 0.9, "foreground IoU {iou}");
    // One cache file per precision: the fp32 run's embeddings are not read by the bf16 run.
    let cached: Vec<_> = walk(&cache);
    assert_eq!(cached.len(), 2, "{cached:?}");

    // Prompted segmentation: the same masks up to their edges.
    let prompts = t.path().join("p.csv");
    std::fs::write(
        &prompts,
        "image,object,kind,x,y,x2,y2,label\na.tif,1,box,20,30,120,140,\na.tif,2,point,150,60,,,1\n",
    )
    .unwrap();
    let prompted = |precision: &str| {
        let out = t.path().join(format!("prompts_{precision}"));
        let image = input.join("a.tif");
        let mut args = prompts_args(&ckpt, &image, &prompts, &out);
        args.extend(["--precision", precision]);
        let o = sam_infer(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        sam_data::read_labels(out.join("labels/a.tif")).unwrap()
    };
    let (a, b) = (prompted("fp32"), prompted("bf16"));
    let iou = foreground_iou(&a, &b);
    eprintln!("bf16 vs fp32 prompts: foreground IoU {iou:.4}");
    assert!(iou >= 0.9, "foreground IoU {iou}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

/// Issue 18: `--precision` is in the help of both subcommands, and a value other than fp32 or
/// bf16 is a usage error that names the flag.
#[test]
fn issue_18_precision_flag_help_and_bad_values() {
    for sub in ["auto", "prompts"] {
        let o = sam_infer(&[sub, "--help"]);
        let help = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(o.status.success());
        assert!(
            help.contains("--precision <PRECISION>") && help.contains("[default: fp32]"),
            "{sub}: {help}"
        );
        let o = sam_infer(&[
            sub,
            "--precision",
            "fp16",
            "--checkpoint",
            "m.pt",
            "--input",
            "i",
            "--output",
            "o",
            "--prompts",
            "p.csv",
        ]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(
            e.contains("--precision") && e.contains("fp16") && e.contains("expected fp32 or bf16"),
            "{e}"
        );
    }
}
