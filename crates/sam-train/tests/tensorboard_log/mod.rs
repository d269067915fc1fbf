//! The run's TensorBoard log, read back with the `tensorboard` package's own readers
//! (tests/python/read_tensorboard.py): the same numbers as metrics.csv at the same steps, the
//! log-line numbers, decodable image panels, and no step twice after a resume.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

use sam_config::ExperimentConfig;
use sam_train::{prepare_run, train, StopFlag, TrainOptions, TrainOutcome, TrainProgress};
use serde_json::Value;

use super::config;

/// metrics.csv columns and their TensorBoard tags, as README "TensorBoard" documents them
/// (`iteration` is the step).
const COLUMN_TAGS: [(&str, &str); 10] = [
    ("epoch", "train/epoch"),
    ("lr", "train/lr"),
    ("train_loss", "train/loss"),
    ("train_dice_loss", "train/dice_loss"),
    ("train_decoder_loss", "train/decoder_loss"),
    ("val_dice", "validation/dice"),
    ("val_box_iou", "validation/box_iou"),
    ("val_msa", "validation/msa"),
    ("val_sa50", "validation/sa50"),
    ("seconds", "time/epoch_seconds"),
];

/// Records the (iteration, loss, lr) of every step the trainer reports.
#[derive(Default)]
struct Steps(Mutex<Vec<(u64, f64, f64)>>);

impl TrainProgress for Steps {
    fn step(&self, iteration: u64, loss: f64, lr: f64) {
        self.0.lock().unwrap().push((iteration, loss, lr));
    }
}

fn run_with(
    cfg: &ExperimentConfig,
    root: &Path,
    resume: bool,
    limit: Option<u64>,
    progress: &dyn TrainProgress,
) -> TrainOutcome {
    let paths = prepare_run(cfg, root, resume, false).unwrap().paths;
    let opts = TrainOptions {
        root: root.to_path_buf(),
        resume,
        overwrite: false,
        stop: StopFlag::new(),
        progress,
        collective: None,
        max_iterations_this_run: limit,
    };
    train(cfg, &paths, &opts).unwrap()
}

/// What read_tensorboard.py prints for `logdir`.
fn read_board(logdir: &Path) -> Value {
    let script =
        sam_testkit::workspace_root().join("crates/sam-train/tests/python/read_tensorboard.py");
    let out = std::process::Command::new(sam_testkit::venv_python())
        .arg(&script)
        .arg(logdir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "read_tensorboard.py failed (is the `tensorboard` package in .venv? \
         scripts/requirements-test.txt):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The metrics.csv header and rows, as strings.
fn metrics_csv(run_dir: &Path) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let mut reader = csv::Reader::from_path(run_dir.join("logs/metrics.csv")).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| {
            header
                .iter()
                .cloned()
                .zip(r.unwrap().iter().map(String::from))
                .collect()
        })
        .collect();
    (header, rows)
}

/// `[[step, value], ...]` of a scalar tag in TensorBoard's merged view.
fn series(board: &Value, tag: &str) -> Vec<(u64, f64)> {
    board["accumulator"]["scalars"][tag]
        .as_array()
        .unwrap_or_else(|| panic!("TensorBoard has no scalar tag {tag}"))
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

/// Every metrics.csv row is in TensorBoard at its iteration, each column under its tag, with
/// the CSV's value as f32 (TensorBoard's scalar type); no other step has those tags.
fn assert_board_matches_csv(board: &Value, run_dir: &Path) {
    let (header, rows) = metrics_csv(run_dir);
    let mut columns: Vec<&str> = COLUMN_TAGS.iter().map(|(c, _)| *c).collect();
    columns.push("iteration");
    assert_eq!(
        header.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        columns.into_iter().collect::<BTreeSet<_>>(),
        "metrics.csv columns and their TensorBoard tags (COLUMN_TAGS, README) must match"
    );
    assert!(!rows.is_empty());
    for (column, tag) in COLUMN_TAGS {
        let got = series(board, tag);
        let want: Vec<(u64, f64)> = rows
            .iter()
            .map(|r| {
                let step: u64 = r["iteration"].parse().unwrap();
                let value: f64 = r[column].parse().unwrap();
                (step, f64::from(value as f32))
            })
            .collect();
        assert_eq!(got, want, "{tag} (metrics.csv column {column})");
    }
}

/// No (file, tag, step) and no (tag, step) across files appears twice; each file starts with
/// the file version. Returns the steps of each file's summary events.
fn assert_no_duplicates(board: &Value) -> Vec<BTreeSet<u64>> {
    let mut seen = BTreeSet::new();
    let mut steps_per_file = Vec::new();
    for file in board["files"].as_array().unwrap() {
        let events = file["events"].as_array().unwrap();
        assert_eq!(
            events[0]["file_version"], "brain.Event:2",
            "{}",
            file["name"]
        );
        let mut steps = BTreeSet::new();
        for e in &events[1..] {
            let step = e["step"].as_u64().unwrap();
            steps.insert(step);
            for kind in ["scalars", "images"] {
                for tag in e[kind].as_object().unwrap().keys() {
                    assert!(
                        seen.insert((tag.clone(), step)),
                        "{tag} at step {step} is logged twice (file {})",
                        file["name"]
                    );
                }
            }
        }
        steps_per_file.push(steps);
    }
    steps_per_file
}

#[test]
fn tensorboard_log_holds_the_metrics_rows_log_lines_and_image_panels() {
    let cfg = config(true, |c| {
        c.epochs(2).set("training.tensorboard_images_every", 2)
    });
    let dir = setup!(3);
    let steps = Steps::default();
    run_with(&cfg, dir.path(), false, None, &steps);
    let run_dir = dir.path().join("runs/t");
    let board = read_board(&run_dir.join("logs/tensorboard"));
    assert_eq!(board["files"].as_array().unwrap().len(), 1);
    assert_no_duplicates(&board);
    assert_board_matches_csv(&board, &run_dir);

    // A log line every iteration (the tiny config): the step's loss and lr as the trainer
    // reported them, and the throughput (no device memory on the CPU).
    let steps = steps.0.into_inner().unwrap();
    assert_eq!(steps.len(), 4);
    let f32s = |v: Vec<(u64, f64, f64)>, pick: fn(&(u64, f64, f64)) -> f64| {
        v.iter()
            .map(|s| (s.0, f64::from(pick(s) as f32)))
            .collect::<Vec<_>>()
    };
    assert_eq!(series(&board, "step/loss"), f32s(steps.clone(), |s| s.1));
    assert_eq!(series(&board, "step/lr"), f32s(steps.clone(), |s| s.2));
    for tag in [
        "step/dice_loss",
        "step/iou_mse_loss",
        "step/decoder_loss",
        "throughput/images_per_second",
        "throughput/seconds_per_step",
    ] {
        let s = series(&board, tag);
        assert_eq!(
            s.iter().map(|p| p.0).collect::<Vec<_>>(),
            [1, 2, 3, 4],
            "{tag}"
        );
        assert!(
            s.iter().all(|p| p.1.is_finite() && p.1 >= 0.0),
            "{tag}: {s:?}"
        );
    }
    assert!(series(&board, "step/decoder_loss")
        .iter()
        .any(|p| p.1 > 0.0));
    // Images per second = global batch (2) / seconds per step.
    let (ips, sps) = (
        series(&board, "throughput/images_per_second"),
        series(&board, "throughput/seconds_per_step"),
    );
    for (a, b) in ips.iter().zip(&sps) {
        assert!((a.1 * b.1 - 2.0).abs() < 1e-3, "{a:?} × {b:?}");
    }
    assert!(board["accumulator"]["scalars"]
        .get("memory/peak_allocated_mib")
        .is_none());

    // Image panels at iterations 2 and 4: input | target | prediction tiles of the 64 px
    // patch with 4 px between them, decoded as RGB PNGs of that size.
    let panel_width = 3 * 64 + 2 * sam_train::PANEL_GAP as u64;
    let images = board["accumulator"]["images"][sam_train::PANEL_TAG]
        .as_array()
        .unwrap();
    let got: Vec<Value> = images.clone();
    let want: Vec<Value> = [2, 4]
        .iter()
        .map(|s| serde_json::json!([s, panel_width, 64, panel_width, 64, "RGB"]))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn tensorboard_log_never_holds_a_step_twice_after_resumes() {
    // Panels every iteration, checkpoints after each one.
    let cfg = config(false, |c| {
        c.epochs(2)
            .set("training.tensorboard_images_every", 1)
            .set("training.checkpoint_every_iterations", 1)
    });
    let dir = setup!(3);
    let run_dir = dir.path().join("runs/t");
    let latest = run_dir.join("checkpoints/ck/latest");
    let saved = dir.path().join("latest-at-1");
    let quiet = Steps::default();
    // Run 1: iteration 1, checkpointed.
    run_with(&cfg, dir.path(), false, Some(1), &quiet);
    std::fs::create_dir(&saved).unwrap();
    for f in std::fs::read_dir(&latest).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, saved.join(f.file_name().unwrap())).unwrap();
    }
    // Run 2 logs iterations 2 and 3 (and the epoch-1 row at 2), then is "killed" with its
    // checkpoints lost: `latest` goes back to iteration 1.
    run_with(&cfg, dir.path(), true, Some(2), &quiet);
    for f in std::fs::read_dir(&saved).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, latest.join(f.file_name().unwrap())).unwrap();
    }
    // Run 3 resumes from iteration 1 and finishes; it logs 2, 3 and 4 again.
    assert!(matches!(
        run_with(&cfg, dir.path(), true, None, &quiet),
        TrainOutcome::Finished(_)
    ));

    let board = read_board(&run_dir.join("logs/tensorboard"));
    let per_file = assert_no_duplicates(&board);
    assert_eq!(per_file.len(), 3, "one event file per run");
    assert_eq!(per_file[0], BTreeSet::from([1]));
    assert_eq!(
        per_file[1],
        BTreeSet::new(),
        "run 2's steps after 1 were discarded"
    );
    assert_eq!(per_file[2], BTreeSet::from([2, 3, 4]));
    assert_board_matches_csv(&board, &run_dir);
    let steps: Vec<u64> = series(&board, "step/loss").iter().map(|p| p.0).collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    let panels: Vec<u64> = board["accumulator"]["images"][sam_train::PANEL_TAG]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    assert_eq!(panels, [1, 2, 3, 4]);
}
