//! `report.html`: one page a person reads to judge an evaluation.
//!
//! The page is a single file without network access or external scripts: the styles and the
//! small script that sorts the per-image table are inline, the SA-over-threshold curve is an
//! inline SVG, and the overlay pictures are the PNG files beside it (`overlays/<stem>.png`,
//! linked by relative path, so the page stays small for 2048² images). Ground-truth outlines are
//! green and predicted ones magenta ([`crate::GT_COLOUR`], [`crate::PRED_COLOUR`]) over the
//! brightfield image as it is (dark objects on a bright background).
//!
//! When the page has loaded, its script marks `<body>` with what a reader (or a test driving
//! a headless browser) can check: `data-ready="1"`, `data-images-loaded` and
//! `data-images-broken` (overlay pictures that did and did not decode), `data-script-errors`
//! (uncaught errors) and `data-sorted-by` (the per-image table's sort column).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::EvalError;
use crate::labels::{ImageRecord, LabelReport, GT_COLOUR, PRED_COLOUR};
use crate::metrics::SA_THRESHOLDS;
use crate::summary::SummaryScores;

/// One model's aggregate scores in a comparison.
#[derive(Debug, Clone)]
pub struct ComparedModel {
    /// How the model is named on the page (e.g. `baseline: vit_b` or the checkpoint's name).
    pub label: String,
    /// Its mean-per-image scores on the test images.
    pub scores: SummaryScores,
}

/// Per image, the mSA of the model against the baseline's.
#[derive(Debug, Clone)]
pub struct ImageDelta {
    /// Image stem.
    pub name: String,
    /// The baseline's mSA.
    pub baseline_msa: f64,
    /// The evaluated model's mSA.
    pub msa: f64,
}

/// Two or more models scored on the same images with the same parameters.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// One row per model, the evaluated model first.
    pub models: Vec<ComparedModel>,
    /// Per-image deltas; the page lists them with the largest loss first.
    pub deltas: Vec<ImageDelta>,
}

/// What [`write_html_report`] puts on the page besides the label report.
#[derive(Debug, Clone, Default)]
pub struct HtmlContext {
    /// Page title, e.g. `Evaluation of final_models/demo.pt`.
    pub title: String,
    /// Lines of "what was evaluated how" (model, mode, parameters, folders), in order.
    pub facts: Vec<(String, String)>,
    /// The comparison with a baseline model, when one was evaluated.
    pub comparison: Option<Comparison>,
}

/// The columns of the per-image table: header, cell value of a record.
type Column = (&'static str, fn(&ImageRecord) -> Option<f64>);

/// The first two columns are counts.
const COUNT_COLUMNS: usize = 2;

const IMAGE_COLUMNS: [Column; 10] = [
    ("objects (GT)", |r| Some(r.scores.n_true as f64)),
    ("objects (pred.)", |r| Some(r.scores.n_pred as f64)),
    ("mSA", |r| Some(r.scores.msa)),
    ("SA50", |r| Some(r.scores.sa50)),
    ("SA75", |r| Some(r.scores.sa75)),
    ("Precision", |r| Some(r.scores.precision)),
    ("Recall", |r| Some(r.scores.recall)),
    ("F1", |r| Some(r.scores.f1)),
    ("mean IoU", |r| r.scores.mean_matched_iou),
    ("Dice", |r| Some(r.scores.foreground_dice)),
];

/// Writes `path` (normally `<out_dir>/report.html`) for `report`.
///
/// The file is written beside itself and renamed into place, so a reader never sees half a
/// page. Overlay pictures in `report.overlays` are linked relative to the page's folder.
///
/// # Errors
/// [`EvalError::Io`] when the file cannot be written.
pub fn write_html_report(
    path: &Path,
    report: &LabelReport,
    context: &HtmlContext,
) -> Result<(), EvalError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let html = render(dir, report, context);
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "report.html".into())
    ));
    fs::write(&tmp, html).map_err(|source| EvalError::Io {
        action: "cannot write",
        path: tmp.clone(),
        source,
    })?;
    fs::rename(&tmp, path).map_err(|source| EvalError::Io {
        action: "cannot write",
        path: path.to_path_buf(),
        source,
    })
}

/// The page as text.
fn render(dir: &Path, report: &LabelReport, context: &HtmlContext) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let title = if context.title.is_empty() {
        "Evaluation report"
    } else {
        &context.title
    };
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
    facts_section(&mut h, report, context);
    summary_section(&mut h, report);
    if let Some(c) = &context.comparison {
        comparison_section(&mut h, c);
    }
    curve_section(&mut h, report, context.comparison.as_ref());
    images_section(&mut h, report);
    overlays_section(&mut h, dir, report);
    let _ = write!(h, "<script>{SCRIPT}</script>\n</body>\n</html>\n");
    h
}

fn facts_section(h: &mut String, report: &LabelReport, context: &HtmlContext) {
    h.push_str("<table class=\"facts\">\n");
    let mut row = |k: &str, v: &str| {
        let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    };
    for (k, v) in &context.facts {
        row(k, v);
    }
    row("ground truth", &report.gt_dir.display().to_string());
    row("predictions", &report.pred_dir.display().to_string());
    row("images", &report.summary.images.to_string());
    if !report.missing_predictions.is_empty() {
        row(
            "scored as empty (no prediction)",
            &report.missing_predictions.join(", "),
        );
    }
    if !report.unpaired_predictions.is_empty() {
        let names: Vec<String> = report
            .unpaired_predictions
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        row("predictions without ground truth", &names.join(", "));
    }
    h.push_str("</table>\n");
}

const SUMMARY_HEADER: &str = "<tr><th></th><th>mSA</th><th>SA50</th><th>SA75</th>\
    <th>Precision</th><th>Recall</th><th>F1</th><th>mean IoU</th><th>Dice</th></tr>\n";

fn summary_row(h: &mut String, label: &str, s: &SummaryScores, class: &str) {
    let _ = write!(h, "<tr class=\"{class}\"><th>{}</th>", esc(label));
    for v in [
        Some(s.msa),
        Some(s.sa50),
        Some(s.sa75),
        Some(s.precision),
        Some(s.recall),
        Some(s.f1),
        s.mean_matched_iou,
        Some(s.foreground_dice),
    ] {
        let _ = write!(h, "<td>{}</td>", num(v));
    }
    h.push_str("</tr>\n");
}

fn summary_section(h: &mut String, report: &LabelReport) {
    h.push_str("<h2>Summary</h2>\n<table id=\"summary\" class=\"scores\">\n");
    h.push_str(SUMMARY_HEADER);
    summary_row(
        h,
        "mean per image (micro_sam)",
        &report.summary.mean_per_image,
        "",
    );
    summary_row(h, "pooled over objects", &report.summary.pooled, "");
    h.push_str(
        "</table>\n<p class=\"note\">Precision, recall and F1 at IoU 0.5; mSA is the mean of \
         SA = TP / (TP + FP + FN) over IoU 0.50, 0.55, …, 0.95.</p>\n",
    );
}

fn comparison_section(h: &mut String, c: &Comparison) {
    h.push_str("<h2>Compared with the baseline</h2>\n<table id=\"comparison\" class=\"scores\">\n");
    h.push_str(SUMMARY_HEADER);
    for (i, m) in c.models.iter().enumerate() {
        summary_row(h, &m.label, &m.scores, if i == 0 { "model" } else { "" });
    }
    h.push_str("</table>\n");
    if c.deltas.is_empty() {
        return;
    }
    let mut deltas: Vec<&ImageDelta> = c.deltas.iter().collect();
    deltas.sort_by(|a, b| (a.msa - a.baseline_msa).total_cmp(&(b.msa - b.baseline_msa)));
    let worse = deltas
        .iter()
        .filter(|d| d.msa < d.baseline_msa - 1e-12)
        .count();
    let _ = writeln!(
        h,
        "<p>{worse} of {} images got worse than the baseline (listed first).</p>\n\
         <table id=\"deltas\" class=\"scores\">\n\
         <tr><th>image</th><th>baseline mSA</th><th>mSA</th><th>change</th></tr>",
        deltas.len()
    );
    for d in deltas {
        let change = d.msa - d.baseline_msa;
        let class = if change < -1e-12 { "worse" } else { "" };
        let _ = writeln!(
            h,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{:+.3}</td></tr>",
            esc(&d.name),
            num(Some(d.baseline_msa)),
            num(Some(d.msa)),
            change
        );
    }
    h.push_str("</table>\n");
}

/// The SA-over-threshold curve as an inline SVG: one line per series.
fn curve_section(h: &mut String, report: &LabelReport, comparison: Option<&Comparison>) {
    let mut series: Vec<(String, &[f64])> = vec![
        (
            "mean per image".into(),
            report.summary.mean_per_image.sa.as_slice(),
        ),
        ("pooled".into(), report.summary.pooled.sa.as_slice()),
    ];
    if let Some(c) = comparison {
        for m in c.models.iter().skip(1) {
            series.push((
                format!("{} (mean per image)", m.label),
                m.scores.sa.as_slice(),
            ));
        }
    }
    const COLOURS: [&str; 5] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    let (w, ht, left, right, top, bottom) = (560.0, 320.0, 50.0, 20.0, 15.0, 45.0);
    let x = |t: f64| left + (t - 0.5) / 0.45 * (w - left - right);
    let y = |v: f64| top + (1.0 - v) * (ht - top - bottom);
    h.push_str("<h2>Segmentation accuracy over the IoU threshold</h2>\n");
    let _ = writeln!(
        h,
        "<svg id=\"sa-curve\" width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" \
         role=\"img\" aria-label=\"SA over IoU threshold\">"
    );
    for i in 0..=5 {
        let v = f64::from(i) / 5.0;
        let (x2, yv, xt, yt) = (w - right, y(v), left - 6.0, y(v) + 4.0);
        let _ = writeln!(
            h,
            "<line x1=\"{left}\" x2=\"{x2}\" y1=\"{yv:.1}\" y2=\"{yv:.1}\" class=\"grid\"/>\
             <text x=\"{xt}\" y=\"{yt:.1}\" class=\"tick\" text-anchor=\"end\">{v:.1}</text>"
        );
    }
    for t in SA_THRESHOLDS.iter().step_by(2) {
        let _ = writeln!(
            h,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"middle\">{t:.2}</text>",
            x(*t),
            ht - bottom + 16.0
        );
    }
    let _ = writeln!(
        h,
        "<text x=\"{:.1}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"middle\">IoU threshold</text>\
         <text x=\"14\" y=\"{:.1}\" class=\"axis\" text-anchor=\"middle\" \
         transform=\"rotate(-90 14 {:.1})\">SA</text>",
        (left + w - right) / 2.0,
        ht - 8.0,
        (top + ht - bottom) / 2.0,
        (top + ht - bottom) / 2.0
    );
    for (i, (label, sa)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = SA_THRESHOLDS
            .iter()
            .zip(sa.iter())
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = writeln!(
            h,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" \
             points=\"{}\"><title>{}</title></polyline>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"legend\" fill=\"{colour}\" \
             text-anchor=\"end\">{}</text>",
            points.join(" "),
            esc(label),
            w - right - 4.0,
            top + 14.0 + 15.0 * i as f64,
            esc(label)
        );
    }
    h.push_str("</svg>\n");
}

fn images_section(h: &mut String, report: &LabelReport) {
    h.push_str(
        "<h2>Per image</h2>\n<p class=\"note\">Worst first (lowest mSA); click a column to \
         sort by it.</p>\n<table id=\"images\" class=\"scores sortable\">\n<thead><tr>\
         <th data-kind=\"text\">image</th>",
    );
    for (name, _) in IMAGE_COLUMNS {
        let _ = write!(h, "<th data-kind=\"num\">{}</th>", esc(name));
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    let mut rows: Vec<&ImageRecord> = report.images.iter().collect();
    rows.sort_by(|a, b| a.scores.msa.total_cmp(&b.scores.msa));
    let overlaid: Vec<&str> = report.worst.iter().map(String::as_str).collect();
    for r in rows {
        let name = if overlaid.contains(&r.name.as_str()) {
            format!("<a href=\"#overlay-{}\">{}</a>", esc(&r.name), esc(&r.name))
        } else {
            esc(&r.name)
        };
        let _ = write!(h, "<tr><td data-v=\"{}\">{name}</td>", esc(&r.name));
        for (i, (_, value)) in IMAGE_COLUMNS.iter().enumerate() {
            let v = value(r);
            let _ = write!(
                h,
                "<td data-v=\"{}\">{}</td>",
                v.map_or(f64::NAN, |v| v),
                cell(v, i < COUNT_COLUMNS)
            );
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody>\n</table>\n");
}

fn overlays_section(h: &mut String, dir: &Path, report: &LabelReport) {
    if report.overlays.is_empty() {
        return;
    }
    let colour = |c: [u8; 3]| format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]);
    let _ = writeln!(
        h,
        "<h2>Overlays of the worst images</h2>\n<p class=\"note\">\
         <span style=\"color:{}\">■</span> ground truth, \
         <span style=\"color:{}\">■</span> prediction, on the image as it is.</p>\n\
         <div class=\"overlays\">",
        colour(GT_COLOUR),
        colour(PRED_COLOUR)
    );
    for (name, path) in report.worst.iter().zip(&report.overlays) {
        let record = report.images.iter().find(|r| &r.name == name);
        let caption = match record {
            Some(r) => format!(
                "{}: mSA {}, {} objects, {} predicted",
                name,
                num(Some(r.scores.msa)),
                r.scores.n_true,
                r.scores.n_pred
            ),
            None => name.clone(),
        };
        let src = relative(dir, path);
        let _ = writeln!(
            h,
            "<figure id=\"overlay-{}\"><a href=\"{1}\"><img src=\"{1}\" alt=\"{2}\" \
             loading=\"eager\"></a><figcaption>{2}</figcaption></figure>",
            esc(name),
            esc(&src),
            esc(&caption)
        );
    }
    h.push_str("</div>\n");
}

/// The URL of `path` from a page in `dir`: relative with `/` separators when it lies below
/// `dir` (the overlays do), else a `file://` URL; characters that mean something in a URL
/// are percent-encoded.
fn relative(dir: &Path, path: &Path) -> String {
    let (rel, absolute): (PathBuf, bool) = match path.strip_prefix(dir) {
        Ok(rel) => (rel.to_path_buf(), false),
        Err(_) => (path.to_path_buf(), path.is_absolute()),
    };
    let joined = rel
        .components()
        .filter(|c| !matches!(c, std::path::Component::RootDir))
        .map(|c| url_encode(&c.as_os_str().to_string_lossy()))
        .collect::<Vec<_>>()
        .join("/");
    if absolute {
        format!("file:///{joined}")
    } else {
        joined
    }
}

fn url_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A score with 3 decimals; `–` when undefined.
fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "–".into(),
    }
}

/// A cell of the per-image table: counts as integers, scores as [`num`].
fn cell(v: Option<f64>, count: bool) -> String {
    match v {
        Some(v) if count => format!("{v:.0}"),
        v => num(v),
    }
}

/// Text made safe for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
table.facts th { text-align: left; color: #555; font-weight: normal; }
table.facts td { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; background: #f3f3f3; }
table.sortable th.sorted-asc::after { content: ' ▲'; }
table.sortable th.sorted-desc::after { content: ' ▼'; }
tr.worse td { background: #fde8e8; }
tr.model th { font-weight: bold; }
.note { color: #555; font-size: 13px; }
svg .grid { stroke: #e5e5e5; } svg .tick { font-size: 11px; fill: #555; }
svg .axis { font-size: 12px; fill: #333; } svg .legend { font-size: 12px; }
.overlays { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; max-width: 420px; }
figure img { width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 13px; color: #333; }
";

/// Sorting by a column (numbers as numbers, undefined last) and the load marks on `<body>`.
const SCRIPT: &str = r#"
(function () {
  var errors = 0;
  window.addEventListener('error', function () {
    errors += 1;
    document.body.dataset.scriptErrors = String(errors);
  });
  function sortBy(table, col, th) {
    var body = table.tBodies[0];
    var asc = !th.classList.contains('sorted-asc');
    var numeric = th.dataset.kind === 'num';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      if (numeric) {
        x = parseFloat(x); y = parseFloat(y);
        if (isNaN(x) && isNaN(y)) return 0;
        if (isNaN(x)) return 1;
        if (isNaN(y)) return -1;
        return asc ? x - y : y - x;
      }
      return asc ? x.localeCompare(y) : y.localeCompare(x);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
      c.classList.remove('sorted-asc', 'sorted-desc');
    });
    th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
    document.body.dataset.sortedBy = th.textContent;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener('click', function () { sortBy(table, col, th); });
      if (th.textContent === 'mSA') { th.classList.add('sorted-asc'); }
    });
  });
  document.body.dataset.sortedBy = 'mSA';
  window.addEventListener('load', function () {
    var ok = 0, broken = 0;
    document.querySelectorAll('img').forEach(function (img) {
      if (img.complete && img.naturalWidth > 0) { ok += 1; } else { broken += 1; }
    });
    document.body.dataset.imagesLoaded = String(ok);
    document.body.dataset.imagesBroken = String(broken);
    document.body.dataset.scriptErrors = String(errors);
    document.body.dataset.ready = '1';
  });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_elements_and_attributes() {
        assert_eq!(esc("a<b>&\"c\"'"), "a&lt;b&gt;&amp;&quot;c&quot;&#39;");
    }

    #[test]
    fn scores_have_three_decimals_and_counts_none() {
        assert_eq!(num(Some(0.12345)), "0.123");
        assert_eq!(num(Some(1.0)), "1.000");
        assert_eq!(num(None), "–");
        assert_eq!(num(Some(f64::NAN)), "–");
        assert_eq!(cell(Some(12.0), true), "12");
        assert_eq!(cell(Some(0.5), false), "0.500");
    }

    #[test]
    fn overlays_are_linked_relative_to_the_page() {
        let dir = Path::new("/out/eval");
        assert_eq!(
            relative(dir, Path::new("/out/eval/overlays/a b#1.png")),
            "overlays/a%20b%231.png"
        );
        assert_eq!(
            relative(dir, Path::new("/else/x.png")),
            "file:///else/x.png"
        );
    }
}
