//! End-to-end tests of the `sam-augment` executable.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Output};

use sam_testkit::ConfigBuilder;

/// A fresh temporary folder for one test, removed when the test ends.
macro_rules! tmpdir {
    () => {
        tempfile::Builder::new()
            .prefix("sam-augment-cli-")
            .tempdir()
            .expect("temp dir")
    };
}

fn sam_augment(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sam-augment"))
        .args(args)
        .output()
        .expect("run sam-augment")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The minimal config of experiment `demo` that augments `data/{images,labels}` into
/// `out/{images,labels}`.
fn augmentation_config(data: &Path, out: &Path) -> ConfigBuilder {
    let (d, o) = (p(data), p(out));
    ConfigBuilder::named("demo")
        .set("augmentation.source_images_dir", format!("{d}/images"))
        .set("augmentation.source_labels_dir", format!("{d}/labels"))
        .set("augmentation.output_images_dir", format!("{o}/images"))
        .set("augmentation.output_labels_dir", format!("{o}/labels"))
}

#[test]
fn help_explains_every_subcommand() {
    for args in [&["--help"][..], &["run", "--help"], &["synth", "--help"]] {
        let o = sam_augment(args);
        assert!(o.status.success(), "{}", text(&o));
        let t = text(&o);
        assert!(t.contains("Usage"), "{t}");
    }
    let t = text(&sam_augment(&["synth", "--help"]));
    assert!(
        t.contains("--count") && t.contains("[default: 2048]"),
        "{t}"
    );
}

#[test]
fn synth_then_run_is_deterministic_and_safe() {
    let tmp = tmpdir!();
    let data = tmp.path().join("raw");
    let o = sam_augment(&[
        "synth",
        "--out",
        p(&data),
        "--count",
        "3",
        "--size",
        "96",
        "--seed",
        "5",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(files(&data.join("images")).len(), 3);
    assert_eq!(files(&data.join("labels")).len(), 3);
    // same seed, same bytes
    let again = tmp.path().join("raw2");
    assert!(sam_augment(&[
        "synth",
        "--out",
        p(&again),
        "--count",
        "3",
        "--size",
        "96",
        "--seed",
        "5"
    ])
    .status
    .success());
    assert_eq!(files(&data.join("images")), files(&again.join("images")));
    assert_eq!(files(&data.join("labels")), files(&again.join("labels")));
    let source = (files(&data.join("images")), files(&data.join("labels")));

    let (a, b) = (tmp.path().join("aug_a"), tmp.path().join("aug_b"));
    let o = sam_augment(&[
        "run",
        "--input",
        p(&data),
        "--output",
        p(&a),
        "--copies",
        "2",
        "--seed",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("3 source pairs -> 9 pairs"),
        "{}",
        text(&o)
    );
    let o = sam_augment(&[
        "run",
        "--input",
        p(&data),
        "--output",
        p(&b),
        "--copies",
        "2",
        "--seed",
        "1",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(files(&a.join("images")), files(&b.join("images")));
    assert_eq!(files(&a.join("labels")), files(&b.join("labels")));
    assert!(a.join("manifest.json").exists());
    // a different seed gives different copies
    let c = tmp.path().join("aug_c");
    assert!(sam_augment(&[
        "run",
        "--input",
        p(&data),
        "--output",
        p(&c),
        "--copies",
        "2",
        "--seed",
        "2"
    ])
    .status
    .success());
    assert_ne!(files(&a.join("images")), files(&c.join("images")));
    // the source is untouched
    assert_eq!(
        source,
        (files(&data.join("images")), files(&data.join("labels")))
    );
    // a non-empty destination is refused (usage error) unless --overwrite
    let o = sam_augment(&[
        "run",
        "--input",
        p(&data),
        "--output",
        p(&a),
        "--copies",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--overwrite"), "{}", text(&o));
    let o = sam_augment(&[
        "run",
        "--input",
        p(&data),
        "--output",
        p(&a),
        "--copies",
        "1",
        "--overwrite",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(files(&a.join("images")).len(), 6);
    // no temporary files left anywhere
    assert!(files(&a.join("images"))
        .iter()
        .all(|(n, _)| !n.starts_with('.')));
}

#[test]
fn bad_inputs_fail_with_the_file_named() {
    let tmp = tmpdir!();
    let data = tmp.path().join("raw");
    assert!(
        sam_augment(&["synth", "--out", p(&data), "--count", "2", "--size", "64"])
            .status
            .success()
    );
    // a truncated label file: exit 1, the file named
    let bad = data.join("labels/synth_001.tif");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    let o = sam_augment(&[
        "run",
        "--input",
        p(&data),
        "--output",
        p(&tmp.path().join("o1")),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("synth_001.tif"), "{}", text(&o));
    assert!(files(&tmp.path().join("o1/images"))
        .iter()
        .all(|(n, _)| !n.starts_with('.')));
    // an unpaired image: exit 2, the file named
    std::fs::remove_file(&bad).unwrap();
    let o = sam_augment(&[
        "run",
        "--input",
        p(&data),
        "--output",
        p(&tmp.path().join("o2")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("synth_001.tif (no labels)"),
        "{}",
        text(&o)
    );
    // an empty input folder: exit 2
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("images")).unwrap();
    std::fs::create_dir_all(empty.join("labels")).unwrap();
    let o = sam_augment(&[
        "run",
        "--input",
        p(&empty),
        "--output",
        p(&tmp.path().join("o3")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no image files found"), "{}", text(&o));
    // output inside the source: exit 2, nothing created there
    let o = sam_augment(&[
        "run",
        "--input",
        p(&data),
        "--output",
        p(&data.join("images/out")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!data.join("images/out").exists());
    // usage errors from clap: exit 2
    assert_eq!(sam_augment(&["run", "--input", "x"]).status.code(), Some(2));
}

#[test]
fn config_path_reads_the_augmentation_section() {
    let tmp = tmpdir!();
    let data = tmp.path().join("raw");
    assert!(
        sam_augment(&["synth", "--out", p(&data), "--count", "2", "--size", "64"])
            .status
            .success()
    );
    let out = tmp.path().join("aug");
    let config = tmp.path().join("exp.yaml");
    augmentation_config(&data, &out)
        .checkpoint_name("demo_ckpt")
        .seed(7)
        .train_dirs(
            &format!("{}/images", p(&data)),
            &format!("{}/labels", p(&data)),
        )
        .set("augmentation.copies_per_image", 3)
        .write(&config)
        .unwrap();
    let o = sam_augment(&["run", "--config", p(&config)]);
    assert!(o.status.success(), "{}", text(&o));
    // 2 originals + 2 x 3 copies, seed from the config
    assert_eq!(files(&out.join("images")).len(), 8);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["job"]["seed"], 7);
    assert_eq!(manifest["job"]["copies"], 3);
    // a broken config is a usage error naming the file
    ConfigBuilder::named("demo")
        .set("augmentation.copies_per_image", "many")
        .write(&config)
        .unwrap();
    let o = sam_augment(&["run", "--config", p(&config)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("exp.yaml"), "{}", text(&o));
}

/// Issue 16: `--copies 0 --no-originals` used to succeed with nothing written, although the
/// config validator forbids the same settings; the flags now go through that rule.
#[test]
fn issue_16_nothing_to_write_is_refused_as_the_config_refuses_it() {
    let tmp = tmpdir!();
    let data = tmp.path().join("raw");
    assert!(
        sam_augment(&["synth", "--out", p(&data), "--count", "1", "--size", "64"])
            .status
            .success()
    );
    let out = tmp.path().join("aug");
    let o = sam_augment(&[
        "run",
        "--input",
        p(&data),
        "--output",
        p(&out),
        "--copies",
        "0",
        "--no-originals",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(
            "--copies / --no-originals: is 0 and include_original is false: augmentation would \
             write nothing (the rule of augmentation.copies_per_image in a config)"
        ),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
    // The same through a config whose own values are fine.
    let config = tmp.path().join("exp.yaml");
    augmentation_config(&data, &out)
        .checkpoint_name("c")
        .write(&config)
        .unwrap();
    let o = sam_augment(&[
        "run",
        "--config",
        p(&config),
        "--copies",
        "0",
        "--no-originals",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("augmentation would write nothing"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
    // An output that is a file is named as such, not as "Not a directory (os error 20)".
    let file = tmp.path().join("out.txt");
    std::fs::write(&file, "x").unwrap();
    for args in [
        vec!["run", "--input", p(&data), "--output", p(&file)],
        vec!["synth", "--out", p(&file), "--count", "1", "--size", "64"],
    ] {
        let o = sam_augment(&args);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains("out.txt is a file, but this must be a folder")
                && !text(&o).contains("os error"),
            "{}",
            text(&o)
        );
    }
    // Copies 0 with the originals is a plain copy, and allowed.
    let o = sam_augment(&["run", "--config", p(&config), "--copies", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(files(&out.join("images")).len(), 1);
}

// ---- sam-augment check -------------------------------------------------------------------

/// A hand-made brightfield pair of 48x48 pixels: a textured background around 200, dark
/// objects (around 60) where the labels are non-zero.
fn dark_pair(labels: &sam_data::LabelImage) -> sam_data::GreyImage {
    let (rows, cols) = labels.shape();
    let data = (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            let texture = ((r * 7 + c * 3) % 20) as f32;
            if labels.as_slice()[i] != 0 {
                50.0 + texture / 2.0
            } else {
                190.0 + texture
            }
        })
        .collect();
    sam_data::GreyImage::from_vec(rows, cols, sam_data::BitDepth::U8, data).unwrap()
}

/// Labels of 48x48 pixels with each `(id, top, left, height, width)` rectangle filled.
fn rects(objects: &[(u32, usize, usize, usize, usize)]) -> sam_data::LabelImage {
    let mut l = sam_data::LabelImage::zeros(48, 48);
    for &(id, top, left, h, w) in objects {
        for r in top..top + h {
            for c in left..left + w {
                l.set(r, c, id);
            }
        }
    }
    l
}

/// Three clean pairs `c0..c2` in `dir/{images,labels}`: four 6x6 objects each, inside the
/// image, one piece each.
fn clean_dataset(dir: &Path) {
    for d in ["images", "labels"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    for i in 0..3 {
        let l = rects(&[
            (1, 5 + i, 5, 6, 6),
            (2, 5, 30, 6, 6),
            (3, 30, 8, 6, 6),
            (7, 28 + i, 28, 6, 6), // ids need not be consecutive
        ]);
        write_pair(dir, &format!("c{i}"), &dark_pair(&l), &l);
    }
}

fn write_pair(dir: &Path, stem: &str, image: &sam_data::GreyImage, labels: &sam_data::LabelImage) {
    sam_data::write_image(dir.join("images").join(format!("{stem}.tif")), image).unwrap();
    sam_data::write_labels(dir.join("labels").join(format!("{stem}.tif")), labels).unwrap();
}

/// Runs `sam-augment check` on `dir/{images,labels}` with 32x32 patches, at least 1 object
/// of 10 pixels, and `extra` flags; returns the exit status, the console and the JSON report.
fn check(dir: &Path, extra: &[&str]) -> (i32, String, serde_json::Value) {
    let json = dir.join("report.json");
    let _ = std::fs::remove_file(&json);
    let (images, labels) = (dir.join("images"), dir.join("labels"));
    let mut args = vec!["check", "--images", p(&images), "--labels", p(&labels)];
    for default in [
        &["--patch-shape", "32", "32"][..],
        &["--min-objects", "1"],
        &["--min-object-size", "10"],
        &["--json", p(&json)],
    ] {
        if !extra.contains(&default[0]) {
            args.extend_from_slice(default);
        }
    }
    args.extend_from_slice(extra);
    let o = sam_augment(&args);
    let report = std::fs::read_to_string(&json)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(serde_json::Value::Null);
    (o.status.code().unwrap_or(-1), text(&o), report)
}

/// The findings of the first checked set, as (severity, kind, file name) triples.
fn findings(report: &serde_json::Value) -> Vec<(String, String, String)> {
    report["sets"][0]["check"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let file = f["file"]
                .as_str()
                .map(|s| {
                    Path::new(s)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .unwrap_or_default();
            (
                f["severity"].as_str().unwrap().to_owned(),
                f["kind"].as_str().unwrap().to_owned(),
                file,
            )
        })
        .collect()
}

fn has(report: &serde_json::Value, severity: &str, kind: &str, file: &str) -> bool {
    findings(report)
        .iter()
        .any(|(s, k, f)| s == severity && k == kind && f == file)
}

/// The record of stem `stem` in the first set.
fn record<'a>(report: &'a serde_json::Value, stem: &str) -> &'a serde_json::Value {
    report["sets"][0]["check"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stem"] == stem)
        .unwrap()
}

#[test]
fn check_of_clean_data_exits_0_without_warnings() {
    let tmp = tmpdir!();
    clean_dataset(tmp.path());
    let (code, out, report) = check(tmp.path(), &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(findings(&report), vec![], "{out}");
    assert_eq!(
        (report["errors"].as_u64(), report["warnings"].as_u64()),
        (Some(0), Some(0))
    );
    let summary = &report["sets"][0]["check"]["summary"];
    assert_eq!(summary["pairs"], 3);
    assert_eq!(summary["objects"], 12);
    assert_eq!(summary["bit_depths"]["u8"], 3);
    assert_eq!(summary["shapes"]["48x48"], 3);
    assert_eq!(summary["bright_object_images"], 0);
    let c0 = record(&report, "c0");
    assert_eq!(c0["label_stats"]["objects"], 4);
    assert_eq!(c0["label_stats"]["max_id"], 7);
    assert_eq!(c0["label_stats"]["sizes"]["median"], 36.0);
    assert_eq!(c0["image_stats"]["pixel_type"], "u8");
    // Dark objects: the ring is the bright background.
    let contrast = &c0["contrast"];
    assert!(contrast["difference"].as_f64().unwrap() > 0.8, "{contrast}");
    // 17 x 17 positions of a 32x32 patch; every one holds an object.
    assert_eq!(c0["patches"]["total"], 289);
    assert_eq!(c0["patches"]["valid"], 289);
    assert!(out.contains("0 error(s), 0 warning(s)"), "{out}");
}

/// Every error of the data is found in one run: nothing stops at the first.
#[test]
fn check_reports_every_error_at_once_and_exits_1() {
    let tmp = tmpdir!();
    let dir = tmp.path();
    clean_dataset(dir);
    let l = rects(&[(1, 5, 5, 6, 6)]);
    let img = dark_pair(&l);
    // an image without labels, labels without an image
    sam_data::write_image(dir.join("images/lonely.tif"), &img).unwrap();
    sam_data::write_labels(dir.join("labels/orphan.tif"), &l).unwrap();
    // image and labels of different sizes
    sam_data::write_image(dir.join("images/wide.tif"), &img).unwrap();
    sam_data::write_labels(
        dir.join("labels/wide.tif"),
        &sam_data::LabelImage::zeros(48, 40),
    )
    .unwrap();
    // a truncated image
    write_pair(dir, "cut", &img, &l);
    let bytes = std::fs::read(dir.join("images/cut.tif")).unwrap();
    std::fs::write(dir.join("images/cut.tif"), &bytes[..bytes.len() / 2]).unwrap();
    // a PNG that is no PNG
    std::fs::write(dir.join("images/junk.png"), b"not an image").unwrap();
    sam_data::write_labels(dir.join("labels/junk.tif"), &l).unwrap();
    // a two-page TIFF stack
    {
        let f = std::fs::File::create(dir.join("images/stack.tif")).unwrap();
        let mut enc = tiff::encoder::TiffEncoder::new(f).unwrap();
        let page = vec![100u8; 48 * 48];
        for _ in 0..2 {
            enc.write_image::<tiff::encoder::colortype::Gray8>(48, 48, &page)
                .unwrap();
        }
        sam_data::write_labels(dir.join("labels/stack.tif"), &l).unwrap();
    }
    // two label files of one stem
    std::fs::copy(dir.join("labels/c1.tif"), dir.join("labels/c1.tiff")).unwrap();
    // and a file that is not read
    std::fs::write(dir.join("images/notes.txt"), b"x").unwrap();

    let (code, out, report) = check(dir, &[]);
    assert_eq!(code, 1, "{out}");
    for (severity, kind, file) in [
        ("error", "unpaired_image", "lonely.tif"),
        ("error", "unpaired_labels", "orphan.tif"),
        ("error", "size_mismatch", "wide.tif"),
        ("error", "unreadable", "cut.tif"),
        ("error", "unreadable", "junk.png"),
        ("error", "multi_page", "stack.tif"),
        ("error", "duplicate_stem", "c1.tiff"),
        ("note", "ignored_files", "images"),
    ] {
        assert!(
            has(&report, severity, kind, file),
            "{severity} {kind} {file}: {:#?}\n{out}",
            findings(&report)
        );
    }
    assert_eq!(report["errors"], 7, "{out}");
    let summary = &report["sets"][0]["check"]["summary"];
    assert_eq!(summary["errors"], 7);
    // the stack's message gives its pages, the console names each file
    assert!(out.contains("multi-page TIFF with 2 pages"), "{out}");
    for f in [
        "lonely.tif",
        "orphan.tif",
        "wide.tif",
        "cut.tif",
        "junk.png",
    ] {
        assert!(out.contains(f), "{f}: {out}");
    }
    // What could be read was still analysed: the unpaired image's contents, the pairs.
    assert_eq!(record(&report, "lonely")["image_stats"]["rows"], 48);
    assert_eq!(record(&report, "orphan")["label_stats"]["objects"], 1);
    assert_eq!(record(&report, "c2")["patches"]["valid"], 289);
}

#[test]
fn check_flags_images_whose_objects_are_brighter() {
    let tmp = tmpdir!();
    let dir = tmp.path();
    clean_dataset(dir);
    // c1 inverted: bright objects on a dark background (fluorescence-like)
    let l = sam_data::read_labels(dir.join("labels/c1.tif")).unwrap();
    let mut img = dark_pair(&l);
    img.as_mut_slice().iter_mut().for_each(|v| *v = 255.0 - *v);
    sam_data::write_image(dir.join("images/c1.tif"), &img).unwrap();
    let (code, out, report) = check(dir, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        findings(&report),
        vec![("warning".into(), "bright_objects".into(), "c1.tif".into())],
        "{out}"
    );
    let c = &record(&report, "c1")["contrast"];
    assert!(c["difference"].as_f64().unwrap() < -0.8, "{c}");
    assert!(c["object_mean"].as_f64().unwrap() > c["ring_mean"].as_f64().unwrap());
    let summary = &report["sets"][0]["check"]["summary"];
    assert_eq!(summary["bright_object_images"], 1);
    assert!((summary["bright_object_share"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12);
    // --deny-warnings turns the warning into a failure
    assert_eq!(check(dir, &["--deny-warnings"]).0, 1);

    // All of them inverted: the folder as a whole is flagged too.
    for i in [0, 2] {
        let path = dir.join(format!("images/c{i}.tif"));
        let mut img = sam_data::read_image(&path).unwrap();
        img.as_mut_slice().iter_mut().for_each(|v| *v = 255.0 - *v);
        sam_data::write_image(&path, &img).unwrap();
    }
    let (code, out, report) = check(dir, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        has(&report, "warning", "mostly_bright_objects", ""),
        "{out}"
    );
    assert_eq!(
        report["sets"][0]["check"]["summary"]["bright_object_share"],
        1.0
    );
}

#[test]
fn check_reports_label_problems() {
    let tmp = tmpdir!();
    let dir = tmp.path();
    clean_dataset(dir);
    // id 4 in two pieces, id 5 on the border, id 6 of 4 pixels (below 10)
    let l = rects(&[
        (1, 5, 5, 6, 6),
        (4, 20, 20, 4, 4),
        (4, 30, 30, 4, 4),
        (5, 0, 40, 6, 6),
        (6, 40, 10, 2, 2),
    ]);
    write_pair(dir, "mixed", &dark_pair(&l), &l);
    // no objects at all
    let empty = sam_data::LabelImage::zeros(48, 48);
    write_pair(
        dir,
        "empty",
        &dark_pair(&rects(&[(1, 10, 10, 8, 8)])),
        &empty,
    );
    let (code, out, report) = check(dir, &[]);
    assert_eq!(code, 0, "warnings only: {out}");
    for (severity, kind, file) in [
        ("warning", "multi_piece_objects", "mixed.tif"),
        ("warning", "small_objects", "mixed.tif"),
        ("warning", "empty_labels", "empty.tif"),
        ("warning", "no_valid_patch", "empty.tif"),
        ("note", "border_objects", ""),
    ] {
        assert!(
            has(&report, severity, kind, file),
            "{severity} {kind} {file}: {:#?}",
            findings(&report)
        );
    }
    assert_eq!(report["errors"], 0);
    assert_eq!(report["warnings"], 4, "{:#?}", findings(&report));
    let m = &record(&report, "mixed")["label_stats"];
    assert_eq!(m["objects"], 4);
    assert_eq!(m["multi_piece_objects"], 1);
    assert_eq!(m["small_objects"], 1);
    assert_eq!(m["border_objects"], 1);
    assert_eq!(m["sizes"]["min"], 4.0);
    assert_eq!(m["sizes"]["max"], 36.0);
    let summary = &report["sets"][0]["check"]["summary"];
    assert_eq!(summary["empty_label_images"], 1);
    assert_eq!(summary["images_without_valid_patch"], 1);
    assert_eq!(summary["small_objects"], 1);
    assert!(out.contains("ids 4"), "{out}");
    assert!(out.contains("smaller than 10 pixels"), "{out}");
    assert_eq!(record(&report, "empty")["patches"]["valid"], 0);
    // The small object is below the size of 2: not flagged.
    let (_, _, report) = check(dir, &["--min-object-size", "2"]);
    assert!(!has(&report, "warning", "small_objects", "mixed.tif"));
}

#[test]
fn check_names_images_that_never_give_a_patch() {
    let tmp = tmpdir!();
    let dir = tmp.path();
    clean_dataset(dir);
    // Two objects in opposite corners: no 32x32 patch holds both.
    let l = rects(&[(1, 2, 2, 5, 5), (2, 40, 40, 5, 5)]);
    write_pair(dir, "apart", &dark_pair(&l), &l);
    let (code, out, report) = check(dir, &["--min-objects", "2"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        has(&report, "warning", "no_valid_patch", "apart.tif"),
        "{out}"
    );
    assert!(
        !has(&report, "warning", "no_valid_patch", "c0.tif"),
        "{out}"
    );
    assert_eq!(record(&report, "apart")["patches"]["valid"], 0);
    assert_eq!(record(&report, "apart")["patches"]["total"], 289);
    assert!(
        out.contains("apart.tif: no 32x32 patch holds 2 object(s)"),
        "{out}"
    );
    // Nothing gives 5 objects: training cannot start, an error.
    let (code, out, report) = check(dir, &["--min-objects", "5"]);
    assert_eq!(code, 1, "{out}");
    assert!(has(&report, "error", "no_usable_image", ""), "{out}");
    // A patch larger than the images: an error naming each.
    let (code, out, report) = check(dir, &["--patch-shape", "64", "32"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        has(&report, "error", "smaller_than_patch", "apart.tif"),
        "{out}"
    );
}

#[test]
fn check_with_a_config_uses_its_settings_and_estimates_the_cost() {
    let repo = sam_testkit::TempRepo::new().unwrap();
    let data = repo.create_dir("dat/train").unwrap();
    clean_dataset(&data);
    let cfg = ConfigBuilder::named("chk")
        .train_dirs("dat/train/images", "dat/train/labels")
        .set("data.image_shape", vec![48, 40])
        .set("data.patch_shape", vec![32, 32])
        .set("data.min_object_size", 37) // the 36-pixel objects are small
        .set("data.min_objects_per_patch", 1);
    let config = repo.write_config("configs/chk.yaml", &cfg).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sam-augment"))
        .args(["check", "--config", p(&config)])
        .current_dir(repo.path())
        .output()
        .unwrap();
    // No patch holds an object of 37 pixels: training could not start.
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // The default report path: beside the run folder, not in it.
    let json = repo.join("runs/chk.data_check.json");
    assert!(text(&o).contains("chk.data_check.json"), "{}", text(&o));
    assert!(!repo.join("runs/chk").exists());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["sets"][0]["name"], "training");
    let options = &report["sets"][0]["check"]["options"];
    assert_eq!(options["patch"]["min_object_size"], 37);
    assert_eq!(options["expected_shape"], serde_json::json!([48, 40]));
    assert!(has(&report, "warning", "small_objects", "c0.tif"));
    assert!(has(&report, "warning", "shape_differs", "c0.tif"));
    assert!(has(&report, "error", "no_usable_image", ""));
    assert_eq!(report["errors"], 1);
    // The estimate is the validator's.
    let options = sam_config::ValidateOptions {
        root: Some(repo.path().to_path_buf()),
        ..Default::default()
    };
    let loaded = sam_config::load_config_with(&config, &options).unwrap();
    let wall = loaded.wall_time.unwrap();
    let e = &report["estimate"];
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
    assert!(close(e["hours"].as_f64().unwrap(), wall.hours), "{e}");
    assert_eq!(e["train_images"], 3);
    assert_eq!(e["images_counted"], true);
    let memory = loaded.config.estimate_peak_memory();
    let gib = memory.peak_bytes as f64 / (1u64 << 30) as f64;
    assert!(close(e["peak_memory_gib"].as_f64().unwrap(), gib), "{e}");
    assert!(text(&o).contains("estimate (as `sam-train validate`)"));
}

#[test]
fn check_usage_errors_exit_2() {
    let tmp = tmpdir!();
    clean_dataset(tmp.path());
    let missing = tmp.path().join("nope");
    let o = sam_augment(&[
        "check",
        "--images",
        p(&missing),
        "--labels",
        p(&tmp.path().join("labels")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("nope"), "{}", text(&o));
    // the report may not go into the data
    let (code, out, _) = check(
        tmp.path(),
        &["--json", p(&tmp.path().join("labels/report.json"))],
    );
    assert_eq!(code, 2, "{out}");
    assert!(!tmp.path().join("labels/report.json").exists());
    // bad settings
    assert_eq!(check(tmp.path(), &["--percentiles", "90", "10"]).0, 2);
    assert_eq!(check(tmp.path(), &["--patch-shape", "0", "32"]).0, 2);
    // an invalid config
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "experiment_name: x\n").unwrap();
    let o = sam_augment(&["check", "--config", p(&bad)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // --config and folder settings exclude each other; one of them is needed
    assert_eq!(
        sam_augment(&["check", "--config", p(&bad), "--min-objects", "3"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(sam_augment(&["check"]).status.code(), Some(2));
}

/// The demo's data steps (scripts/demo.sh, fewer images): synthesise, augment with
/// configs/demo_cpu.yaml, check with it. The demo's data passes without a warning.
#[test]
fn check_passes_on_the_demo_data() {
    let repo = sam_testkit::TempRepo::new().unwrap();
    let root = sam_testkit::workspace_root();
    std::fs::copy(
        root.join("configs/demo_cpu.yaml"),
        repo.join("configs/demo_cpu.yaml"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_sam-augment"))
            .args(args)
            .current_dir(repo.path())
            .output()
            .unwrap();
        (o.status.code(), text(&o))
    };
    for (out, count, seed) in [
        ("dat/demo/raw", "8", "1"),
        ("dat/demo/val", "3", "2"),
        ("dat/demo/test", "4", "3"),
    ] {
        let (code, out) = run(&[
            "synth",
            "--out",
            out,
            "--count",
            count,
            "--size",
            "128",
            "--seed",
            seed,
            "--cells-per-512",
            "160",
        ]);
        assert_eq!(code, Some(0), "{out}");
    }
    let (code, out) = run(&["run", "--config", "configs/demo_cpu.yaml"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&["check", "--config", "configs/demo_cpu.yaml"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 error(s), 0 warning(s)"), "{out}");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("runs/demo_cpu.data_check.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = report["sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["training", "validation"]);
    // 8 sources with 2 copies each and the originals
    assert_eq!(report["sets"][0]["check"]["summary"]["pairs"], 24);
    assert_eq!(
        report["sets"][0]["check"]["summary"]["bright_object_images"],
        0
    );
    assert_eq!(report["estimate"]["train_images"], 24);
}
