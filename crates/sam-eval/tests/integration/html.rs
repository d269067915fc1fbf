//! `report.html` rendered in a real browser: headless Chromium (Debian's `chromium`, which
//! `scripts/setup.sh` installs) loads the page of a small evaluation, takes a screenshot and
//! dumps the DOM after the page's script ran.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use sam_data::{write_image, write_labels, BitDepth, GreyImage, LabelImage};
use sam_eval::{
    evaluate_label_dirs, write_html_report, ComparedModel, Comparison, HtmlContext, ImageDelta,
    LabelEvalOptions, Progress,
};

const SIDE: usize = 96;

/// Labels with `count` 20×20 squares along a row, shifted right by `shift` pixels.
fn squares(count: usize, shift: usize) -> LabelImage {
    let mut data = vec![0u32; SIDE * SIDE];
    for k in 0..count {
        for y in 10 + 30 * (k / 3)..30 + 30 * (k / 3) {
            for x in 5 + 30 * (k % 3) + shift..25 + 30 * (k % 3) + shift {
                data[y * SIDE + x.min(SIDE - 1)] = k as u32 + 1;
            }
        }
    }
    LabelImage::from_vec(SIDE, SIDE, data).unwrap()
}

/// A brightfield picture of `labels`: bright background, dark objects.
fn brightfield(labels: &LabelImage) -> GreyImage {
    let pixels = labels
        .as_slice()
        .iter()
        .map(|&id| if id == 0 { 220.0 } else { 60.0 })
        .collect();
    GreyImage::from_vec(SIDE, SIDE, BitDepth::U8, pixels).unwrap()
}

/// An evaluation of three images (perfect, shifted, half missing) with overlays.
fn evaluation(root: &Path) -> (LabelEvalOptions, sam_eval::LabelReport) {
    for d in ["gt", "pred", "images"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (name, gt, pred) in [
        ("perfect", squares(6, 0), squares(6, 0)),
        ("shifted <&>", squares(6, 0), squares(6, 6)),
        ("missing", squares(6, 0), squares(3, 0)),
    ] {
        write_labels(root.join(format!("gt/{name}.tif")), &gt).unwrap();
        write_labels(root.join(format!("pred/{name}.tif")), &pred).unwrap();
        write_image(root.join(format!("images/{name}.png")), &brightfield(&gt)).unwrap();
    }
    let opts = LabelEvalOptions {
        gt_dir: root.join("gt"),
        pred_dir: root.join("pred"),
        out_dir: root.join("out"),
        image_dir: Some(root.join("images")),
        missing_as_empty: false,
        relabel_gt: false,
        worst: 2,
    };
    let report = evaluate_label_dirs(&opts, &|_: Progress| {}).unwrap();
    (opts, report)
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// Runs headless Chromium on `page` with `args`; returns (stdout, stderr).
fn browse(browser: &Path, page: &Path, args: &[String]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--allow-file-access-from-files",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed:\n{stderr}");
    (stdout, stderr)
}

/// The value of `data-NAME` on `<body>` in a DOM dump.
fn body_data<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let body = &dom[dom.find("<body")?..];
    let tag = &body[..body.find('>')?];
    let key = format!("data-{name}=\"");
    let start = tag.find(&key)? + key.len();
    Some(&tag[start..start + tag[start..].find('"')?])
}

#[test]
fn the_report_renders_in_headless_chromium_with_its_table_curve_and_overlays() {
    let tmp = tempfile::tempdir().unwrap();
    let (opts, report) = evaluation(tmp.path());
    let page = opts.out_dir.join("report.html");
    assert!(page.is_file(), "evaluate_label_dirs writes report.html");

    // A baseline comparison on the same page: the worse image first.
    let baseline = {
        let mut s = report.summary.mean_per_image.clone();
        s.msa = 0.5;
        s
    };
    let context = HtmlContext {
        title: "Evaluation of a test model".into(),
        facts: vec![("model".into(), "tiny.pt".into())],
        comparison: Some(Comparison {
            models: vec![
                ComparedModel {
                    label: "tiny.pt".into(),
                    scores: report.summary.mean_per_image.clone(),
                },
                ComparedModel {
                    label: "baseline".into(),
                    scores: baseline,
                },
            ],
            deltas: report
                .images
                .iter()
                .map(|r| ImageDelta {
                    name: r.name.clone(),
                    baseline_msa: 0.5,
                    msa: r.scores.msa,
                })
                .collect(),
        }),
    };
    write_html_report(&page, &report, &context).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no network"
    );
    assert!(!html.contains("<script src"), "no external scripts");
    assert!(html.contains("shifted &lt;&amp;&gt;"), "names are escaped");

    let Some(browser) = chromium() else {
        eprintln!(
            "SKIPPED: chromium is not installed (scripts/setup.sh installs Debian's chromium; \
             the CI has it), so report.html was not rendered"
        );
        return;
    };

    // The DOM after the page's script ran: ready, overlays decoded, no errors, table sorted.
    let (dom, stderr) = browse(&browser, &page, &["--dump-dom".into()]);
    assert_eq!(body_data(&dom, "ready"), Some("1"), "{dom}");
    assert_eq!(body_data(&dom, "images-loaded"), Some("2"), "{dom}");
    assert_eq!(body_data(&dom, "images-broken"), Some("0"), "{dom}");
    assert_eq!(body_data(&dom, "script-errors"), Some("0"), "{dom}");
    assert_eq!(body_data(&dom, "sorted-by"), Some("mSA"), "{dom}");
    for id in ["summary", "comparison", "deltas", "images", "sa-curve"] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "{id} missing");
    }
    // Worst first: the image with the lowest mSA is the table's first row.
    let worst = &report.worst[0];
    let table = &dom[dom.find("id=\"images\"").unwrap()..];
    let first_row = &table[table.find("<tbody>").unwrap()..];
    let first_row = &first_row[..first_row.find("</tr>").unwrap()];
    let escaped = worst
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(first_row.contains(&escaped), "{first_row}");
    for bad in [
        "Uncaught",
        ":ERROR:CONSOLE",
        "Not allowed to load local resource",
    ] {
        assert!(!stderr.contains(bad), "browser console: {stderr}");
    }

    // The screenshot: not blank, and the overlays' outline colours are on screen.
    let shot = tmp.path().join("shot.png");
    browse(
        &browser,
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,2600".into(),
            "--hide-scrollbars".into(),
        ],
    );
    let img = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1280, 2600));
    let pixels = img.pixels().count() as f64;
    let white = img.pixels().filter(|p| p.0 == [255, 255, 255]).count() as f64;
    assert!(
        white / pixels < 0.97,
        "the page looks blank ({white} white of {pixels})"
    );
    let near = |p: &image::Rgb<u8>, c: [u8; 3]| {
        p.0.iter()
            .zip(c)
            .all(|(&a, b)| (i32::from(a) - i32::from(b)).abs() <= 40)
    };
    let green = img
        .pixels()
        .filter(|p| near(p, sam_eval::GT_COLOUR))
        .count();
    let magenta = img
        .pixels()
        .filter(|p| near(p, sam_eval::PRED_COLOUR))
        .count();
    assert!(
        green > 100 && magenta > 100,
        "outlines on screen: green {green}, magenta {magenta}"
    );
}
