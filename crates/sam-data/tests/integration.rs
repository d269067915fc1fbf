//! Integration tests of sam-data: parity with torch_em's AIS targets, and folder augmentation.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use sam_data::{
    ais_targets, augment_folder, read_image, read_labels, synthesize, write_image, write_labels,
    AugmentJob, DataError, Manifest, SynthConfig,
};

/// A fresh temporary folder for one test, removed when the test ends.
macro_rules! tmpdir {
    () => {
        tempfile::Builder::new()
            .prefix("sam-data-test-")
            .tempdir()
            .expect("temp dir")
    };
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a fixture script with the repository's .venv Python into
/// `target/test-fixtures/<name>/` unless the outputs are already there.
fn fixture(name: &str, script: &str, outputs: &[&str]) -> PathBuf {
    let root = repo_root();
    let dir = root.join("target/test-fixtures").join(name);
    if outputs.iter().all(|o| dir.join(o).exists()) {
        return dir;
    }
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh to create the Python environment the reference fixtures need",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(&python)
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{} failed (run scripts/setup.sh?):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn ais_targets_match_torch_em_per_object_distance_transform() {
    let dir = fixture(
        "ais_targets",
        "make_ais_targets.py",
        &["labels.tif", "targets.bin"],
    );
    let labels = read_labels(dir.join("labels.tif")).unwrap();
    let bytes = std::fs::read(dir.join("targets.bin")).unwrap();
    let want: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let got = ais_targets(&labels, 25);
    assert_eq!(got.data.len(), want.len());
    let n = labels.cols() * labels.rows();
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.data.iter().zip(&want).enumerate() {
        let d = (g - w).abs();
        if d > worst.0 {
            worst = (d, i);
        }
    }
    let (c, p) = (worst.1 / n, worst.1 % n);
    assert!(
        worst.0 <= 1e-5,
        "max abs error {} at channel {c}, (x={}, y={}):\nexpected {}\ngot      {}",
        worst.0,
        p % labels.cols(),
        p / labels.cols(),
        want[worst.1],
        got.data[worst.1]
    );
}

fn write_dataset(root: &Path, n: usize, size: usize) {
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("labels")).unwrap();
    for i in 0..n {
        let s = synthesize(
            &SynthConfig {
                size,
                ..SynthConfig::default()
            },
            i as u64,
        );
        write_image(root.join(format!("images/img_{i}.tif")), &s.image).unwrap();
        write_labels(root.join(format!("labels/img_{i}.tif")), &s.labels).unwrap();
    }
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
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

#[test]
fn folder_augmentation_is_reproducible_and_never_touches_the_source() {
    let tmp = tmpdir!();
    let src = tmp.path().join("raw");
    write_dataset(&src, 2, 96);
    let before = (listing(&src.join("images")), listing(&src.join("labels")));

    let job = AugmentJob::from_folders(&src, tmp.path().join("a"), 3, 17);
    let summary = augment_folder(&job, &()).unwrap();
    assert_eq!((summary.sources, summary.outputs), (2, 8));
    let job_b = AugmentJob::from_folders(&src, tmp.path().join("b"), 3, 17);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| augment_folder(&job_b, &())).unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    assert_eq!(listing(&a.join("images")), listing(&b.join("images")));
    assert_eq!(listing(&a.join("labels")), listing(&b.join("labels")));
    assert_eq!(
        before,
        (listing(&src.join("images")), listing(&src.join("labels")))
    );

    // the manifest records every output with its source, seed and operations
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(a.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m.outputs.len(), 8);
    let e = &m.outputs[5];
    assert_eq!((e.source_index, e.copy), (1, 1));
    assert!(e.image.ends_with("img_1_aug001.tif") && e.source_image.ends_with("img_1.tif"));
    assert!(m
        .outputs
        .iter()
        .filter(|e| e.copy == 0)
        .all(|e| e.ops.is_empty()));
    // replaying the recorded ops on the source gives the written output
    let img = read_image(&e.source_image).unwrap();
    let lab = read_labels(&e.source_labels).unwrap();
    let (ri, rl) = sam_data::apply_ops(&img, &lab, &e.ops, job.config.min_object_size).unwrap();
    assert_eq!(read_labels(&e.labels).unwrap(), rl);
    let written = read_image(&e.image).unwrap();
    assert!(written
        .as_slice()
        .iter()
        .zip(ri.as_slice())
        .all(|(w, r)| (w - r.round().clamp(0.0, 65535.0)).abs() < 1e-3));
    // originals are copied unchanged
    assert_eq!(
        read_labels(a.join("labels/img_0.tif")).unwrap(),
        read_labels(src.join("labels/img_0.tif")).unwrap()
    );
}

#[test]
fn destination_rules() {
    let tmp = tmpdir!();
    let src = tmp.path().join("raw");
    write_dataset(&src, 1, 64);
    let out = tmp.path().join("out");
    let mut job = AugmentJob::from_folders(&src, &out, 1, 0);
    augment_folder(&job, &()).unwrap();
    // non-empty destination: refused, then replaced with overwrite
    std::fs::write(out.join("images/stale.tif"), b"old").unwrap();
    let err = augment_folder(&job, &()).unwrap_err();
    assert!(
        matches!(err, DataError::Destination { .. }) && err.to_string().contains("--overwrite"),
        "{err}"
    );
    job.overwrite = true;
    augment_folder(&job, &()).unwrap();
    assert!(!out.join("images/stale.tif").exists());
    // output inside the source
    let inside = AugmentJob::from_folders(&src, src.join("images/aug"), 1, 0);
    let err = augment_folder(&inside, &()).unwrap_err();
    assert!(
        err.to_string().contains("inside the source folder"),
        "{err}"
    );
    assert!(
        !src.join("images/aug").exists(),
        "a refused output must leave no folder in the source"
    );
    // images and labels into one folder
    let mut same = AugmentJob::from_folders(&src, tmp.path().join("same"), 1, 0);
    same.output_labels = same.output_images.clone();
    assert!(augment_folder(&same, &())
        .unwrap_err()
        .to_string()
        .contains("same folder"));
}

/// Writes a `pages`-page u16 TIFF (a 3-D stack as tifffile or Fiji write it); with
/// `thumbnail`, one more page marked reduced-resolution (`NewSubfileType` 1).
fn write_stack(path: &Path, pages: usize, thumbnail: bool) {
    use tiff::encoder::{colortype::Gray16, TiffEncoder};
    let file = std::fs::File::create(path).unwrap();
    let mut enc = TiffEncoder::new(std::io::BufWriter::new(file)).unwrap();
    for p in 0..pages {
        let data: Vec<u16> = (0..64 * 48)
            .map(|i| ((i * 7 + p * 1000) % 65000) as u16)
            .collect();
        enc.write_image::<Gray16>(64, 48, &data).unwrap();
    }
    if thumbnail {
        let mut img = enc.new_image::<Gray16>(16, 12).unwrap();
        img.encoder()
            .write_tag(tiff::tags::Tag::NewSubfileType, 1u32)
            .unwrap();
        img.write_data(&[7u16; 16 * 12]).unwrap();
    }
}

#[test]
fn issue_16_multi_page_tiffs_are_refused_with_name_and_page_count() {
    let dir = tmpdir!();
    let stack = dir.path().join("embryo_z.tif");
    write_stack(&stack, 3, false);
    let check = |e: DataError, what: &str| {
        let msg = e.to_string();
        assert!(
            matches!(e, DataError::Stack { pages: 3, .. })
                && msg.contains("embryo_z.tif")
                && msg.contains("multi-page TIFF with 3 pages")
                && msg.contains("only single 2-D images are read"),
            "{what}: {msg}"
        );
    };
    check(read_image(&stack).unwrap_err(), "read_image");
    check(read_labels(&stack).unwrap_err(), "read_labels");
    check(
        sam_data::image_dimensions(&stack).unwrap_err(),
        "image_dimensions",
    );
    check(
        sam_data::read_image_region(&stack, 0, 0, 8, 8).unwrap_err(),
        "read_image_region",
    );
    // A thumbnail page is not a stack: the image is read.
    let with_thumb = dir.path().join("plate.tif");
    write_stack(&with_thumb, 1, true);
    let img = read_image(&with_thumb).unwrap();
    assert_eq!((img.cols(), img.rows()), (64, 48));
    assert_eq!(sam_data::image_dimensions(&with_thumb).unwrap(), (48, 64));
    let region = sam_data::read_image_region(&with_thumb, 2, 3, 8, 8).unwrap();
    assert_eq!(region.as_slice(), img.crop(2, 3, 8, 8).as_slice());
}

#[test]
fn issue_16_a_file_whose_content_is_another_format_says_which() {
    let dir = tmpdir!();
    let png = dir.path().join("cells.png");
    write_image(
        &png,
        &sam_data::GreyImage::filled(8, 8, sam_data::BitDepth::U8, 9.0),
    )
    .unwrap();
    let renamed = dir.path().join("cells.tif");
    std::fs::rename(&png, &renamed).unwrap();
    for e in [
        read_image(&renamed).unwrap_err(),
        read_labels(&renamed).unwrap_err(),
        sam_data::image_dimensions(&renamed).unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(
            msg.contains(
                "cells.tif: the file is a PNG image, but its name ends in .tif: rename it to .png"
            ),
            "{msg}"
        );
        assert!(!msg.contains("corrupt"), "{msg}");
    }
    let jpeg = dir.path().join("photo.png");
    std::fs::write(
        &jpeg,
        [0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F'],
    )
    .unwrap();
    let msg = read_image(&jpeg).unwrap_err().to_string();
    assert!(
        msg.contains("photo.png: the file is a JPEG image")
            && msg.contains("save it as TIFF or PNG"),
        "{msg}"
    );
}
