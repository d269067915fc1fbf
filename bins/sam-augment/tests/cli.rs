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
