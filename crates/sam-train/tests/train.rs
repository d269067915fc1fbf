//! End-to-end tests of the trainer on a tiny model and small synthetic images.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use sam_config::{ExperimentConfig, RunPaths};
use sam_train::{
    export_model, prepare_run, train, CheckpointStore, ExportOptions, Slot, TrainError,
    TrainOptions, TrainOutcome, TrainProgress, RUN_MARKER,
};
use tch::Tensor;

#[macro_use]
mod common;
mod optim_parity;

use common::{config, latest_model, max_diff, opts, run, seeded_model};

mod tensorboard_log;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn resume_after_kill_equals_uninterrupted_run() {
    let cfg = config(false, |c| {
        c.epochs(2).set("training.checkpoint_every_iterations", 1)
    });
    let a = setup!(3);
    match run(&cfg, a.path(), false, None).unwrap() {
        TrainOutcome::Finished(s) => assert_eq!(s.iterations, 4),
        other => panic!("expected a finished run, got {other:?}"),
    }
    let b = setup!(3);
    // "Killed" after 3 iterations (mid-epoch 2), then resumed.
    assert!(matches!(
        run(&cfg, b.path(), false, Some(3)).unwrap(),
        TrainOutcome::Interrupted(_)
    ));
    // The interrupted run has recorded its start only, the start of the uninterrupted one.
    let comparison =
        |root: &Path| std::fs::read_to_string(root.join("runs/t/logs/comparison.csv")).unwrap();
    let start_a = comparison(a.path())
        .lines()
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    let interrupted = comparison(b.path());
    assert_eq!(
        interrupted.trim_end(),
        start_a,
        "the start record of the interrupted run"
    );
    assert!(matches!(
        run(&cfg, b.path(), true, None).unwrap(),
        TrainOutcome::Finished(_)
    ));
    // The resume did not overwrite the start (it would record iteration 3) and added the end.
    let resumed = comparison(b.path());
    assert!(resumed.starts_with(&interrupted), "{resumed}");
    assert_eq!(resumed.lines().count(), 3, "{resumed}");
    assert_comparison_of_the_best_epoch(b.path());
    let d = max_diff(&latest_model(a.path(), &cfg), &latest_model(b.path(), &cfg));
    assert!(
        d <= 1e-6,
        "resumed run differs from the uninterrupted one by {d}"
    );
}

/// The rows of `runs/t/logs/<file>` as maps from column to value.
fn csv_rows(root: &Path, file: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(root.join("runs/t/logs").join(file)).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|x| {
            header
                .iter()
                .cloned()
                .zip(x.unwrap().iter().map(String::from))
                .collect()
        })
        .collect()
}

/// logs/comparison.csv of a finished run: a `start` row at iteration 0 and an `end` row with the
/// validation scores that metrics.csv holds for the exported (best) model: the first epoch
/// with the highest mSA, the higher Dice breaking ties. Returns the start and end mSA.
fn assert_comparison_of_the_best_epoch(root: &Path) -> (f64, f64) {
    let rows = csv_rows(root, "comparison.csv");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (start, end) = (&rows[0], &rows[1]);
    assert_eq!(
        (start["stage"].as_str(), start["epoch"].as_str()),
        ("start", "0")
    );
    assert_eq!(start["iteration"], "0");
    assert_eq!(end["stage"], "end");
    let epochs = csv_rows(root, "metrics.csv");
    let num =
        |r: &std::collections::HashMap<String, String>, k: &str| -> f64 { r[k].parse().unwrap() };
    let mut best = &epochs[0];
    for e in &epochs[1..] {
        let (m, bm) = (num(e, "val_msa"), num(best, "val_msa"));
        if m > bm || (m == bm && num(e, "val_dice") > num(best, "val_dice")) {
            best = e;
        }
    }
    for (ours, theirs) in [
        ("epoch", "epoch"),
        ("iteration", "iteration"),
        ("mSA", "val_msa"),
        ("SA50", "val_sa50"),
        ("box_iou", "val_box_iou"),
        ("dice", "val_dice"),
    ] {
        assert_eq!(end[ours], best[theirs], "{ours}: {rows:?} vs {epochs:?}");
    }
    (num(start, "mSA"), num(end, "mSA"))
}

/// Whether fine-tuning helped: logs/comparison.csv holds the validation of the starting model
/// (before the first step) and of the exported one, and the run ends with a line comparing
/// them. With a learning rate too small to move any weight the two are the same model, so the
/// start row must equal the end row: the start is the starting model, scored like every epoch.
#[test]
fn comparison_records_the_starting_and_the_exported_model() {
    let cfg = config(false, |c| c.epochs(1).set("training.lr", 1.0e-30));
    let dir = setup!(2);
    let paths = prepare_run(&cfg, dir.path(), false, false).unwrap().paths;
    let lines = Lines::default();
    let opts = TrainOptions {
        progress: &lines,
        ..opts(dir.path(), false, None)
    };
    assert!(matches!(
        train(&cfg, &paths, &opts).unwrap(),
        TrainOutcome::Finished(_)
    ));
    let (start, end) = assert_comparison_of_the_best_epoch(dir.path());
    let rows = csv_rows(dir.path(), "comparison.csv");
    for k in ["mSA", "SA50", "box_iou", "dice"] {
        assert_eq!(rows[0][k], rows[1][k], "{k}: {rows:?}");
    }
    let text = lines.text();
    let expected = format!(
        "validation mSA {start:.2} -> {end:.2} ({:+.2})",
        end - start
    );
    assert!(text.contains(&expected), "missing `{expected}` in:\n{text}");
}

#[test]
fn run_folder_has_the_documented_layout_and_export() {
    let cfg = config(true, |c| c.epochs(1));
    let dir = setup!(2);
    run(&cfg, dir.path(), false, None).unwrap();
    let run_dir = dir.path().join("runs/t");
    let mut rel: Vec<String> = files_under(&run_dir)
        .iter()
        .map(|p| p.strip_prefix(&run_dir).unwrap().display().to_string())
        .collect();
    // One TensorBoard event file, named after the time, host and process.
    let events: Vec<String> = rel
        .iter()
        .filter(|p| p.starts_with("logs/tensorboard/events.out.tfevents."))
        .cloned()
        .collect();
    assert_eq!(events.len(), 1, "{rel:?}");
    rel.retain(|p| !events.contains(p));
    let expected = [
        RUN_MARKER,
        "checkpoints/ck/best/model.safetensors",
        "checkpoints/ck/best/optimizer.safetensors",
        "checkpoints/ck/best/state.json",
        "checkpoints/ck/latest/model.safetensors",
        "checkpoints/ck/latest/optimizer.safetensors",
        "checkpoints/ck/latest/state.json",
        "config.yaml",
        "logs/comparison.csv",
        "logs/curves.png",
        "logs/metrics.csv",
    ];
    assert_eq!(rel, expected, "run folder layout");
    // The export is a micro_sam checkpoint with both parts.
    let ck = sam_model::read_checkpoint(dir.path().join("final_models/t.pt")).unwrap();
    assert!(ck
        .model_state
        .iter()
        .any(|(k, _)| k.starts_with("image_encoder.")));
    assert!(ck.decoder_state.is_some_and(|d| !d.is_empty()));
    export_refusals(dir.path());
}

/// Issue 16, harm 2: `sam-train export --checkpoint X --output X` overwrote its input (and
/// dropped the decoder). An export never writes its input, through any name, nor replaces a
/// file unasked. `root` holds a finished run of `config(true, ..)`.
fn export_refusals(root: &Path) {
    let best = root.join("runs/t/checkpoints/ck/best");
    let exported = root.join("final_models/t.pt");
    let snapshot = || {
        let mut all = files_under(&best);
        all.push(exported.clone());
        all.iter()
            .map(|p| (p.clone(), std::fs::read(p).unwrap()))
            .collect::<Vec<_>>()
    };
    let before = snapshot();
    let both = ExportOptions {
        with_decoder: true,
        replace: true,
        ..Default::default()
    };
    let refused = |source: &Path, output: &Path, options: ExportOptions, part: &str| {
        let err = export_model(source, output, options).unwrap_err();
        assert!(err.is_usage(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(part) && msg.contains(&output.display().to_string()),
            "missing `{part}` in: {msg}"
        );
    };
    let itself = "is the checkpoint being exported";
    refused(&exported, &exported, both, itself);
    refused(
        &exported,
        &root.join("final_models/../final_models/t.pt"),
        both,
        itself,
    );
    refused(
        &best,
        &best.join("model.safetensors"),
        both,
        "lies inside the checkpoint folder",
    );
    refused(
        &best,
        &best.join("new/model.pt"),
        both,
        "lies inside the checkpoint folder",
    );
    #[cfg(unix)]
    {
        let link = root.join("final_models/link.pt");
        std::os::unix::fs::symlink(&exported, &link).unwrap();
        refused(&exported, &link, both, itself);
        let linked_dir = root.join("linked_best");
        std::os::unix::fs::symlink(&best, &linked_dir).unwrap();
        refused(
            &best,
            &linked_dir.join("x.pt"),
            both,
            "lies inside the checkpoint folder",
        );
        let hard = root.join("final_models/hard.pt");
        std::fs::hard_link(&exported, &hard).unwrap();
        refused(&exported, &hard, both, itself);
    }
    // An existing file is replaced only when asked to.
    let keep = ExportOptions {
        with_decoder: true,
        replace: false,
        ..Default::default()
    };
    refused(&best, &exported, keep, "exists: pass --force to replace it");
    refused(&best, &root.join("final_models"), both, "is a folder");
    assert!(snapshot() == before, "a refused export changed a file");
    let copy = root.join("final_models/copy.pt");
    export_model(&best, &copy, keep).unwrap();
    refused(&best, &copy, keep, "exists");
    export_model(&best, &copy, both).unwrap();
    assert!(sam_model::read_checkpoint(&copy)
        .unwrap()
        .decoder_state
        .is_some());
}

/// Issue 16: a relative `model.checkpoint` is relative to the repository root, not to the
/// working directory (this test's is the crate folder, where the file is not).
#[test]
fn a_relative_model_checkpoint_is_read_from_the_repository_root() {
    let mut cfg = config(false, |c| c.set("training.iterations", 1));
    cfg.model.checkpoint = Some("models/init.pt".into());
    let dir = setup!(2);
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    let init = seeded_model(1, &cfg);
    let mut weights = init.named_variables();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    sam_model::write_sam_state_dict(dir.path().join("models/init.pt"), &weights).unwrap();
    assert!(!Path::new("models/init.pt").exists());
    run(&cfg, dir.path(), false, None).unwrap();
    // Frozen or not, the prompt encoder's random matrix is a buffer: it comes from the file.
    let key = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix";
    let want = &weights.iter().find(|(k, _)| k == key).unwrap().1;
    let got = &latest_model(dir.path(), &cfg)
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap()
        .1;
    assert!(want.equal(got), "{key} does not come from the file");
}

/// Issue 16: a checkpoint that does not fit the config printed every key (305 lines for a
/// vit_b file) and no hint. Now a few lines: counts, examples, what the file holds against
/// what the config builds, and what to set.
#[test]
fn a_checkpoint_that_does_not_fit_the_config_is_summarised_with_the_fix() {
    let small = config(false, |c| c.epochs(1));
    let mut wide = small.clone();
    if let Some(a) = wide.model.architecture.as_mut() {
        a.encoder_embed_dim = Some(48);
    }
    let dir = setup!(2);
    let other = seeded_model(1, &wide);
    let file = dir.path().join("wide.pt");
    sam_model::write_sam_state_dict(&file, &other.named_variables()).unwrap();
    let model = seeded_model(2, &small);
    let err = sam_train::load_initial(&model, &small.model, file.to_str().unwrap())
        .unwrap_err()
        .to_string();
    let check = |msg: &str| {
        assert!(msg.lines().count() <= 12, "too long:\n{msg}");
        for part in [
            "does not fit the model the config describes",
            "keys differ (",
            "with another shape",
            "for example:",
            "the model has [32",
            "The config builds vit_b with model.architecture's sizes (embed_dim 32",
            "The file holds custom_vit (embed_dim 48",
            "Fix: set model.architecture to the file's sizes",
            "encoder_embed_dim: 48",
        ] {
            assert!(msg.contains(part), "missing `{part}` in:\n{msg}");
        }
    };
    check(&err);
    assert!(err.contains(&file.display().to_string()), "{err}");

    // The run's own checkpoint against a changed config: the same summary, and the fix for
    // a resume.
    let paths = prepare_run(&wide, dir.path(), false, false).unwrap().paths;
    let state = sam_train::TrainState {
        epoch: 0,
        iteration: 1,
        best_metric: None,
        best_dice: None,
        scheduler: sam_train::LrScheduler::new(sam_train::ScheduleKind::Constant, 1e-3),
        early_stopping: sam_train::EarlyStopping::new(None),
        scaler: sam_train::ScalerState::default(),
        seed: 3,
        metric: None,
        finished: false,
        epoch_sums: sam_train::EpochSums::default(),
        nonfinite_streak: 0,
        intra_op_threads: None,
        input_size: None,
        base_model: None,
    };
    CheckpointStore::new(&paths.checkpoint_dir)
        .save(Slot::Latest, &other.named_variables(), &[], &state)
        .unwrap();
    let err = run(&small, dir.path(), true, None).unwrap_err().to_string();
    check(&err);
    assert!(
        err.contains("resume with the config it was started with")
            && err.contains("runs/<experiment>/config.yaml"),
        "{err}"
    );
}

#[test]
fn existing_run_folder_is_refused_and_untouched() {
    let cfg = config(false, |c| c.epochs(1));
    let dir = setup!(2);
    let paths = prepare_run(&cfg, dir.path(), false, false).unwrap().paths;
    std::fs::write(&paths.config, "x").unwrap();
    std::fs::write(paths.run_dir.join("notes.txt"), "keep me").unwrap();
    let before = files_under(&paths.run_dir);
    let err = prepare_run(&cfg, dir.path(), false, false).unwrap_err();
    // No checkpoint yet: both ways out are named, neither leads back here.
    assert!(matches!(err, TrainError::RunWithoutCheckpoint(_)), "{err}");
    for part in [
        "--resume",
        "from the beginning",
        "--overwrite",
        "nothing was changed",
    ] {
        assert!(err.to_string().contains(part), "missing `{part}` in: {err}");
    }
    assert_eq!(files_under(&paths.run_dir), before);
    assert_eq!(
        std::fs::read_to_string(paths.run_dir.join("notes.txt")).unwrap(),
        "keep me"
    );
}

/// A sink that keeps the trainer's messages.
#[derive(Default)]
struct Lines(std::sync::Mutex<Vec<String>>);

impl TrainProgress for Lines {
    fn message(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

impl Lines {
    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// Issue 16: after a kill before the first checkpoint, a plain rerun said "pass --resume" and
/// `--resume` said "start without --resume". Now `--resume` starts the run from the beginning
/// in the same folder and says so.
#[test]
fn resume_before_the_first_checkpoint_starts_over_in_the_same_folder() {
    let cfg = config(false, |c| c.epochs(1));
    let dir = setup!(2);
    // What a run killed during its first steps leaves: the folder, config.yaml, a log.
    let paths = prepare_run(&cfg, dir.path(), false, false).unwrap().paths;
    std::fs::write(&paths.config, "experiment_name: t\n").unwrap();
    std::fs::write(paths.logs_dir.join("train.log"), "iteration 1/2\n").unwrap();
    let err = prepare_run(&cfg, dir.path(), false, false).unwrap_err();
    assert!(
        err.to_string().contains("pass --resume to start it again"),
        "{err}"
    );
    let paths = prepare_run(&cfg, dir.path(), true, false).unwrap().paths;
    let lines = Lines::default();
    let opts = TrainOptions {
        progress: &lines,
        ..opts(dir.path(), true, None)
    };
    let outcome = train(&cfg, &paths, &opts).unwrap();
    assert!(matches!(outcome, TrainOutcome::Finished(_)), "{outcome:?}");
    let text = lines.text();
    assert!(
        text.contains("--resume: no checkpoint in")
            && text.contains("starting from the beginning in the same folder"),
        "{text}"
    );
    // The run is complete and its config is the real one again.
    assert!(std::fs::read_to_string(&paths.config)
        .unwrap()
        .contains("checkpoint_name: ck"));
    assert!(CheckpointStore::new(&paths.checkpoint_dir).exists(Slot::Latest));
    // A resume of a run that never started starts it too.
    let other = setup!(2);
    let paths = prepare_run(&cfg, other.path(), true, false).unwrap().paths;
    assert!(paths.run_dir.join(RUN_MARKER).is_file());
}

/// A folder with files that are not a run's: `image.tif`, `sub/label.tif`.
fn fill_foreign(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("image.tif"), "data").unwrap();
    std::fs::write(dir.join("sub/label.tif"), "labels").unwrap();
    files_under(dir)
}

/// Issue 16, harm 1: with `output_base_dir: data` and `experiment_name: train`, the run
/// folder is the training data, and `--overwrite` deleted it. A folder without the run
/// marker is refused in every mode, named, with the fix, and left as it was.
#[test]
fn overwrite_never_deletes_a_folder_it_did_not_create() {
    let mut cfg = config(false, |c| c.epochs(1));
    cfg.output_base_dir = "data".into();
    cfg.experiment_name = "train".into();
    let dir = setup!(2);
    let data = dir.path().join("data/train");
    let before = files_under(&data);
    for (resume, overwrite) in [(false, true), (false, false), (true, false)] {
        let err = prepare_run(&cfg, dir.path(), resume, overwrite).unwrap_err();
        assert!(
            matches!(err, TrainError::NotARunFolder { .. }) && err.is_usage(),
            "{err}"
        );
        let msg = err.to_string();
        for part in [
            data.display().to_string().as_str(),
            "is not a run folder of sam-train",
            RUN_MARKER,
            "--overwrite included",
            "output_base_dir or experiment_name",
            "nothing was changed",
        ] {
            assert!(msg.contains(part), "missing `{part}` in: {msg}");
        }
        assert_eq!(
            files_under(&data),
            before,
            "resume {resume}, overwrite {overwrite}"
        );
    }
    // A file where the run folder would be is refused as well.
    let cfg = config(false, |c| c.epochs(1));
    std::fs::create_dir_all(dir.path().join("runs")).unwrap();
    std::fs::write(dir.path().join("runs/t"), "a file").unwrap();
    let err = prepare_run(&cfg, dir.path(), false, true).unwrap_err();
    assert!(err.to_string().contains("it is a file"), "{err}");
    assert!(dir.path().join("runs/t").is_file());
}

/// Issue 16, harm 1: with `runs/<exp>` a symbolic link to another folder, `--overwrite`
/// deleted that folder's files. Links are removed as links; their targets stay whole.
#[cfg(unix)]
#[test]
fn overwrite_removes_links_never_their_targets() {
    use std::os::unix::fs::symlink;
    let cfg = config(false, |c| c.epochs(1));
    let dir = setup!(2);
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("elsewhere");
    let kept = fill_foreign(&target);
    // The run folder itself is a link.
    std::fs::create_dir_all(dir.path().join("runs")).unwrap();
    let run_dir = dir.path().join("runs/t");
    symlink(&target, &run_dir).unwrap();
    // Without --overwrite the target is not a run: refused.
    assert!(matches!(
        prepare_run(&cfg, dir.path(), false, false),
        Err(TrainError::NotARunFolder { .. })
    ));
    let prepared = prepare_run(&cfg, dir.path(), false, true).unwrap();
    assert_eq!(files_under(&target), kept, "the link's target lost files");
    let meta = std::fs::symlink_metadata(&run_dir).unwrap();
    assert!(meta.is_dir() && !meta.file_type().is_symlink());
    assert!(run_dir.join(RUN_MARKER).is_file());
    let note = prepared.notes.join("\n");
    assert!(
        note.contains("was a symbolic link to")
            && note.contains(&format!(
                "removed the link (nothing in {} was touched)",
                target.display()
            )),
        "{note}"
    );

    // Links inside a run folder: to a folder, to a file, and a logs/ entry.
    let paths = prepared.paths;
    std::fs::write(&paths.config, "x").unwrap();
    symlink(&target, paths.checkpoint_dir.join("latest")).unwrap();
    symlink(target.join("image.tif"), run_dir.join("linked.tif")).unwrap();
    symlink(target.join("sub"), paths.logs_dir.join("more")).unwrap();
    prepare_run(&cfg, dir.path(), false, true).unwrap();
    assert_eq!(files_under(&target), kept, "a link's target lost files");
    assert_eq!(
        files_under(&run_dir),
        vec![run_dir.join(RUN_MARKER)],
        "the links were not removed"
    );
}

/// Runs made before the marker existed are recognised by their exact layout, so that
/// `--overwrite` and `--resume` keep working for them; anything more is not a run.
#[test]
fn runs_of_earlier_versions_are_recognised_by_their_layout() {
    let cfg = config(false, |c| c.epochs(1));
    let dir = setup!(2);
    let run_dir = dir.path().join("runs/t");
    let make_old_run = || {
        std::fs::create_dir_all(run_dir.join("checkpoints/ck/latest")).unwrap();
        std::fs::create_dir_all(run_dir.join("logs")).unwrap();
        std::fs::write(run_dir.join("config.yaml"), "experiment_name: t\nseed: 3\n").unwrap();
        std::fs::write(run_dir.join("checkpoints/ck/latest/model.safetensors"), "x").unwrap();
        std::fs::write(run_dir.join("logs/train.log"), "old").unwrap();
        std::fs::write(run_dir.join("logs/slurm-3.out"), "job 3").unwrap();
    };
    make_old_run();
    std::fs::create_dir_all(run_dir.join("evaluation")).unwrap();
    std::fs::write(run_dir.join("evaluation/summary.csv"), "mSA").unwrap();
    let prepared = prepare_run(&cfg, dir.path(), false, true).unwrap();
    let note = prepared.notes.join(" ");
    assert!(
        note.contains(
            "is a run folder of an earlier sam-train (config.yaml, checkpoints/, logs/, no"
        ),
        "{note}"
    );
    assert_eq!(
        files_under(&run_dir),
        vec![run_dir.join(RUN_MARKER), run_dir.join("logs/slurm-3.out")]
    );
    // One file more, or a config of another experiment: not recognised, refused.
    std::fs::remove_dir_all(&run_dir).unwrap();
    make_old_run();
    std::fs::write(run_dir.join("notes.txt"), "mine").unwrap();
    assert!(matches!(
        prepare_run(&cfg, dir.path(), false, true),
        Err(TrainError::NotARunFolder { .. })
    ));
    std::fs::remove_file(run_dir.join("notes.txt")).unwrap();
    std::fs::write(run_dir.join("config.yaml"), "experiment_name: other\n").unwrap();
    assert!(matches!(
        prepare_run(&cfg, dir.path(), false, true),
        Err(TrainError::NotARunFolder { .. })
    ));
    assert!(run_dir.join("logs/train.log").is_file());
}

#[test]
fn freezing_keeps_frozen_weights_bit_identical() {
    let mut cfg = config(false, |c| c.epochs(1));
    cfg.model.freeze = vec!["image_encoder".into(), "prompt_encoder".into()];
    let dir = setup!(2);
    // Rank-0 initial weights: the same seed builds the same random model.
    let seed = sam_data::derive_seed(cfg.seed, &[0]) as i64 & i64::MAX;
    let mut initial =
        sam_model::seeded(seed, || sam_train::new_model(&cfg.model, tch::Device::Cpu))
            .unwrap()
            .named_variables();
    initial.sort_by(|a, b| a.0.cmp(&b.0));
    run(&cfg, dir.path(), false, None).unwrap();
    let after = latest_model(dir.path(), &cfg);
    let mut changed_decoder = false;
    for ((name, a), (_, b)) in initial.iter().zip(&after) {
        let same = a.equal(b);
        if name.starts_with("image_encoder") || name.starts_with("prompt_encoder") {
            assert!(same, "frozen {name} changed");
        } else if name.starts_with("mask_decoder") && !same {
            changed_decoder = true;
        }
    }
    assert!(changed_decoder, "the unfrozen mask decoder did not train");
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let mut cfg = config(false, |c| {
        c.epochs(6)
            .set("training.checkpoint_every_iterations", 1)
            .set("training.weight_decay", 0.0)
    });
    // Far outside what validation accepts: the first steps blow the weights up.
    cfg.training.lr = 1.0e30;
    let dir = setup!(2);
    let err = run(&cfg, dir.path(), false, None).unwrap_err();
    let TrainError::NonFinite {
        first_iteration,
        steps,
        ..
    } = err
    else {
        panic!("expected NonFinite, got {err}")
    };
    // The bad steps were skipped, not applied: the weights stayed as they were and every
    // later step failed too, until the configured number in a row.
    assert_eq!(steps, cfg.training.max_nonfinite_steps);
    assert!(err.to_string().contains("last good checkpoint"), "{err}");
    let state = CheckpointStore::new(RunPaths::new(dir.path(), &cfg).checkpoint_dir)
        .load(Slot::Latest)
        .unwrap()
        .state;
    assert_eq!(
        state.iteration, first_iteration,
        "latest holds the state before the first bad step"
    );
    assert_eq!(state.nonfinite_streak, 0);
    let finite = latest_model(dir.path(), &cfg)
        .iter()
        .all(|(_, t)| t.isfinite().all().int64_value(&[]) == 1);
    assert!(finite, "the kept checkpoint has non-finite weights");
}

#[test]
fn loss_goes_down_on_a_fixed_batch() {
    let dir = setup!(2);
    let (batch, model) = fixed_batch(dir.path());
    let losses = train_on(&model, &batch, 0.0, |inputs| {
        // One graph, back-propagated at once.
        let loss = sam_train::step_loss(inputs).unwrap();
        loss.total.backward();
        loss.total.double_value(&[])
    });
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(
        last < 0.7 * first,
        "loss did not go down on a fixed batch: {losses:?}"
    );
}

/// 25 AdamW steps (lr 3e-3) of `step` on `batch`, the same iteration number every time (the
/// same objects and prompts): the losses `step` returns.
fn train_on(
    model: &sam_model::SamModel,
    batch: &[sam_data::TrainingSample],
    mask_prob: f64,
    step: impl Fn(&sam_train::StepInputs<'_>) -> f64,
) -> Vec<f64> {
    let refs: Vec<_> = batch.iter().collect();
    let mut optim = sam_train::AdamW::new(
        model.named_variables(),
        sam_train::AdamWConfig {
            lr: 3e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        },
    );
    let recipe = sam_train::RecipeConfig {
        n_objects_per_batch: 3,
        n_sub_iteration: 2,
        mask_prob,
        box_distortion: 0.0,
        focal_weight: 0.0,
    };
    let mut losses = Vec::new();
    for _ in 0..25 {
        optim.zero_grad().unwrap();
        losses.push(step(&sam_train::StepInputs {
            sam: model.sam(),
            decoder: model.decoder(),
            samples: &refs,
            recipe: &recipe,
            seed: 1,
            iteration: 1,
            global_index: &[0, 1],
            device: tch::Device::Cpu,
            before_encoder_backward: None,
        }));
        optim.step().unwrap();
    }
    losses
}

/// Issue 19, `model.encoder_input: native`: the tiny model (built for 256 px) learns from its
/// 64 px patches fed at their own size, 16× fewer tokens, and the run records the side in its
/// checkpoints and its export, from which inference builds the model at that side.
#[test]
fn native_encoder_input_trains_at_the_patch_side_and_records_it() {
    let dir = setup!(2);
    let (batch, mut model) = fixed_batch(dir.path());
    model.set_input_size(64).unwrap();
    let refs: Vec<_> = batch.iter().collect();
    let (x, input) = sam_train::model_input(model.sam(), &refs, tch::Device::Cpu).unwrap();
    assert_eq!((x.size(), input), (vec![2, 3, 64, 64], (64, 64)));
    let losses = train_on(&model, &batch, 0.5, |inputs| {
        let precision = sam_train::StepPrecision::default();
        let loss = sam_train::step_backward(inputs, precision).unwrap();
        loss.read().unwrap().total
    });
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(
        last < 0.7 * first,
        "loss did not go down at the native side: {losses:?}"
    );

    // A whole run: the side is in the checkpoints and the export.
    let cfg = config(true, |c| c.epochs(1).set("model.encoder_input", "native"));
    assert_eq!(sam_train::native_input_size(&cfg), Some(64));
    run(&cfg, dir.path(), false, None).unwrap();
    let state = std::fs::read_to_string(dir.path().join("runs/t/checkpoints/ck/latest/state.json"))
        .unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["input_size"], 64);
    let export = dir.path().join("final_models/t.pt");
    assert_eq!(
        sam_model::read_checkpoint(&export).unwrap().input_size,
        Some(64)
    );
    let loaded = sam_model::SamModel::load(&export, tch::Device::Cpu).unwrap();
    assert!(loaded.sam().is_native_input());
    assert_eq!(loaded.sam().img_size(), 64);
    assert!(
        loaded.describe().contains("fed at 64 px"),
        "{}",
        loaded.describe()
    );
    // The default feeds patches resized to the model input and records nothing.
    assert_eq!(sam_train::native_input_size(&config(true, |c| c)), None);
}

/// A fixed batch of two 64 px patches with AIS targets and a fresh model with the decoder.
fn fixed_batch(dir: &Path) -> (Vec<sam_data::TrainingSample>, sam_model::SamModel) {
    let cfg = config(true, |c| c.epochs(1));
    let root = dir.join("data/train");
    let pairs = sam_data::pair_by_stem(root.join("images"), root.join("labels")).unwrap();
    let data = sam_data::Dataset::open(&pairs).unwrap();
    let sample_cfg = sam_data::SampleConfig {
        patch: sam_data::PatchConfig {
            height: 64,
            width: 64,
            min_object_size: 10,
            ..sam_data::PatchConfig::default()
        },
        min_object_size: 10,
        with_targets: true,
        ..sam_data::SampleConfig::default()
    };
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
    let batch: Vec<_> = (0..2)
        .map(|_| data.sample(&sample_cfg, &mut rng).unwrap())
        .collect();
    let model = seeded_model(11, &cfg);
    (batch, model)
}

fn grads(model: &sam_model::SamModel) -> Vec<(String, Tensor)> {
    model
        .named_variables()
        .into_iter()
        .filter(|(_, v)| v.grad().defined())
        .map(|(k, v)| (k, v.grad().copy()))
        .collect()
}

#[test]
fn round_by_round_backward_equals_one_graph() {
    let dir = setup!(2);
    let (batch, mut model) = fixed_batch(dir.path());
    let refs: Vec<_> = batch.iter().collect();
    // Mask input on (p = 1) so that later rounds read earlier rounds' logits, 3 rounds, both
    // start prompts (iterations 4 and 5).
    let recipe = sam_train::RecipeConfig {
        n_objects_per_batch: 3,
        n_sub_iteration: 3,
        mask_prob: 1.0,
        box_distortion: 0.1,
        focal_weight: 0.5,
    };
    let cpu = tch::Device::Cpu;
    for iteration in [4, 5] {
        let zero = |m: &mut sam_model::SamModel| {
            for (_, mut v) in m.named_variables() {
                v.zero_grad();
            }
        };
        zero(&mut model);
        let sam = model.sam();
        let dec = model.decoder();
        let graph = sam_train::step_loss(&sam_train::StepInputs {
            sam,
            decoder: dec,
            samples: &refs,
            recipe: &recipe,
            seed: 3,
            iteration,
            global_index: &[0, 1],
            device: cpu,
            before_encoder_backward: None,
        })
        .unwrap();
        graph.total.backward();
        let reference = grads(&model);
        zero(&mut model);
        let sam = model.sam();
        let dec = model.decoder();
        let precision = sam_train::StepPrecision {
            loss_scale: 4.0,
            ..Default::default()
        };
        // Called once, with the encoder's output, when the heads' gradients are there and
        // before the encoder has any (where distributed training starts sending gradients).
        let calls = std::cell::Cell::new(0);
        let before = |root: Option<&Tensor>| -> Result<(), sam_train::TrainError> {
            calls.set(calls.get() + 1);
            assert!(root.is_some_and(Tensor::requires_grad), "no encoder output");
            let now = grads(&model);
            let nonzero = |prefix: &str| {
                now.iter()
                    .any(|(k, g)| k.starts_with(prefix) && g.abs().max().double_value(&[]) > 0.0)
            };
            assert!(
                !nonzero("image_encoder."),
                "the encoder's backward ran first"
            );
            assert!(nonzero("mask_decoder."), "the heads' gradients are missing");
            Ok(())
        };
        let inputs = sam_train::StepInputs {
            sam,
            decoder: dec,
            samples: &refs,
            recipe: &recipe,
            seed: 3,
            iteration,
            global_index: &[0, 1],
            device: cpu,
            before_encoder_backward: Some(&before),
        };
        let eager = sam_train::step_backward(&inputs, precision).unwrap();
        assert_eq!(calls.get(), 1);
        let ours = grads(&model);
        let rel = (eager.total.double_value(&[]) - graph.total.double_value(&[])).abs()
            / graph.total.double_value(&[]);
        assert!(rel < 1e-6, "loss {} vs {}", eager.total, graph.total);
        let (e, g) = (eager.read().unwrap(), graph.read().unwrap());
        assert_eq!(
            (e.dice, e.iou_mse, e.decoder),
            (g.dice, g.iou_mse, g.decoder)
        );
        // The same tensors got gradients, the encoder's among them.
        let names = |g: &[(String, Tensor)]| g.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(names(&ours), names(&reference));
        assert!(ours.iter().any(|(k, _)| k.starts_with("image_encoder.")));
        assert!(
            ours.iter().any(|(k, _)| k.starts_with("decoder.")),
            "{:?}",
            names(&ours)
        );
        for ((name, r), (_, o)) in reference.iter().zip(&ours) {
            // The loss was scaled by 4: so are the gradients.
            let diff = (o / 4.0 - r).abs().max().double_value(&[]);
            let size = r.abs().max().double_value(&[]).max(1e-12);
            assert!(
                diff <= 1e-5 * size + 1e-9,
                "{name}: max |Δ| {diff:e} vs max |g| {size:e} (iteration {iteration})"
            );
        }
    }
}

/// A fixed batch of two 64 px patches and a fresh model whose encoder has four blocks, the
/// second and the fourth with global attention.
fn four_block_model(
    dir: &Path,
    decoder: bool,
) -> (Vec<sam_data::TrainingSample>, sam_model::SamModel) {
    let (batch, _) = fixed_batch(dir);
    let cfg = config(decoder, |c| {
        c.epochs(1)
            .set("model.architecture.encoder_depth", 4)
            .set("model.architecture.encoder_global_attn_indexes", vec![1, 3])
    });
    let model = seeded_model(13, &cfg);
    (batch, model)
}

/// The gradients `step_backward` leaves with `precision`, and what the encoder had when
/// `before_encoder_backward` was called (it must be called once, before any encoder gradient).
fn backward_grads(
    model: &sam_model::SamModel,
    batch: &[sam_data::TrainingSample],
    iteration: u64,
    precision: sam_train::StepPrecision,
) -> Vec<(String, Tensor)> {
    // Cleared to none: only what this step reaches has a gradient after it.
    for (_, v) in model.named_variables() {
        sam_torch::clear_grad(&v).unwrap();
    }
    let refs: Vec<_> = batch.iter().collect();
    let recipe = sam_train::RecipeConfig {
        n_objects_per_batch: 3,
        n_sub_iteration: 2,
        mask_prob: 1.0,
        box_distortion: 0.1,
        focal_weight: 0.0,
    };
    let calls = std::cell::Cell::new(0);
    let before = |root: Option<&Tensor>| -> Result<(), sam_train::TrainError> {
        calls.set(calls.get() + 1);
        assert!(root.is_some_and(Tensor::requires_grad), "no encoder root");
        let early = grads(model)
            .into_iter()
            .any(|(k, g)| k.starts_with("image_encoder.") && g.abs().max().double_value(&[]) > 0.0);
        assert!(
            !early,
            "the encoder's backward ran before the reducer was armed"
        );
        Ok(())
    };
    let inputs = sam_train::StepInputs {
        sam: model.sam(),
        decoder: model.decoder(),
        samples: &refs,
        recipe: &recipe,
        seed: 3,
        iteration,
        global_index: &[0, 1],
        device: tch::Device::Cpu,
        before_encoder_backward: Some(&before),
    };
    sam_train::step_backward(&inputs, precision).unwrap();
    assert_eq!(calls.get(), 1);
    grads(model)
}

/// Issue 19: recomputing the global-attention blocks, or every block, in the backward leaves
/// the gradients of the plain backward on every trainable parameter (encoder and heads), with
/// and without the UNETR decoder, with the whole encoder trained or its first two blocks frozen
/// (no gradient flows into the first recomputed block), and under bf16 autocast. The
/// recomputation runs the kernels of the forward, so on CPU the gradients are the same bits.
#[test]
fn activation_checkpointing_leaves_the_plain_backward_gradients() {
    use sam_config::ActivationCheckpointing as Ckpt;
    let dir = setup!(2);
    let compare =
        |reference: &[(String, Tensor)], ours: &[(String, Tensor)], tol: f64, what: &str| {
            let names =
                |g: &[(String, Tensor)]| g.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
            assert_eq!(names(ours), names(reference), "{what}");
            for ((name, r), (_, o)) in reference.iter().zip(ours) {
                let diff = (o - r).abs().max().double_value(&[]);
                let size = r.abs().max().double_value(&[]).max(1e-12);
                assert!(
                    diff <= tol * size + 1e-12,
                    "{what}: {name}: max |Δ| {diff:e} vs max |g| {size:e}"
                );
            }
        };
    for decoder in [false, true] {
        let (batch, model) = four_block_model(dir.path(), decoder);
        for frozen_prefix in [false, true] {
            if frozen_prefix {
                for (name, v) in model.named_variables() {
                    let prefix = ["patch_embed", "pos_embed", "blocks.0.", "blocks.1."]
                        .iter()
                        .any(|p| name.starts_with(&format!("image_encoder.{p}")));
                    if prefix {
                        let _ = v.set_requires_grad(false);
                    }
                }
            }
            for iteration in [4, 5] {
                let plain = sam_train::StepPrecision::default();
                let reference = backward_grads(&model, &batch, iteration, plain);
                let encoder = |g: &[(String, Tensor)], block: &str| {
                    g.iter()
                        .any(|(k, _)| k.starts_with(&format!("image_encoder.blocks.{block}")))
                };
                assert_eq!(encoder(&reference, "0."), !frozen_prefix);
                assert!(encoder(&reference, "3."));
                assert!(reference
                    .iter()
                    .any(|(k, _)| k.starts_with("mask_decoder.")));
                assert_eq!(
                    reference.iter().any(|(k, _)| k.starts_with("decoder.")),
                    decoder
                );
                for mode in [Ckpt::Global, Ckpt::All] {
                    let precision = sam_train::StepPrecision {
                        activation_checkpointing: mode,
                        ..plain
                    };
                    let ours = backward_grads(&model, &batch, iteration, precision);
                    let what = format!(
                        "{mode}, decoder {decoder}, frozen prefix {frozen_prefix}, iteration \
                         {iteration}"
                    );
                    compare(&reference, &ours, 1e-6, &what);
                }
            }
        }
        if !decoder {
            continue;
        }
        // bf16 autocast (with the decoder: slow on CPU, once is enough): the recomputed blocks
        // run under the forward's autocast, so they reproduce its values and the gradients
        // match the plain bf16 backward.
        let bf16 = sam_train::StepPrecision {
            autocast: Some(tch::Kind::BFloat16),
            ..Default::default()
        };
        let reference = backward_grads(&model, &batch, 4, bf16);
        let ours = backward_grads(
            &model,
            &batch,
            4,
            sam_train::StepPrecision {
                activation_checkpointing: Ckpt::All,
                ..bf16
            },
        );
        compare(&reference, &ours, 1e-6, "bf16");
    }
}

/// Issue 19: two micro-batches of 2 per optimiser step train the weights one batch of 4 per
/// step trains (their random draws are those of their slices of the batch of 4), also with
/// every encoder block recomputed; the iterations count optimiser steps, and a run stopped
/// after 2 of them resumes to the same weights. A batch of 2 per step
/// ends elsewhere: the comparison can tell runs apart. Without the decoder, whose batch norms
/// see each micro-batch's statistics.
#[test]
fn gradient_accumulation_trains_as_the_larger_batch() {
    let cfg = |batch: u64, accumulation: u32, ckpt: &str| {
        config(false, |c| {
            c.batch_size(batch)
                .set("training.iterations", 3)
                .set("training.gradient_accumulation", accumulation)
                .set("training.activation_checkpointing", ckpt)
                .set("training.n_sub_iteration", 2)
                .set("training.eps", 1.0e-3)
        })
    };
    let train = |cfg: &ExperimentConfig| {
        let dir = setup!(2);
        run(cfg, dir.path(), false, None).unwrap();
        let state = CheckpointStore::new(RunPaths::new(dir.path(), cfg).checkpoint_dir)
            .load(Slot::Latest)
            .unwrap()
            .state;
        assert_eq!(state.iteration, 3, "iterations are optimiser steps");
        latest_model(dir.path(), cfg)
    };
    let whole = train(&cfg(4, 1, "none"));
    let micro = train(&cfg(2, 2, "none"));
    let d = max_diff(&whole, &micro);
    assert!(d <= 1e-6, "2 × 2 vs 4: max |Δw| {d:e}");
    // Stopped after 2 optimiser steps and resumed: the same weights.
    let micro_cfg = cfg(2, 2, "none");
    let dir = setup!(2);
    assert!(matches!(
        run(&micro_cfg, dir.path(), false, Some(2)).unwrap(),
        TrainOutcome::Interrupted(_)
    ));
    run(&micro_cfg, dir.path(), true, None).unwrap();
    let d = max_diff(&micro, &latest_model(dir.path(), &micro_cfg));
    assert!(d <= 1e-6, "resumed 2 × 2 vs uninterrupted: max |Δw| {d:e}");
    let recomputed = train(&cfg(2, 2, "all"));
    let d = max_diff(&whole, &recomputed);
    assert!(d <= 1e-6, "2 × 2 recomputed vs 4: max |Δw| {d:e}");
    let half = train(&cfg(2, 1, "none"));
    let d = max_diff(&whole, &half);
    assert!(d > 1e-4, "a batch of 2 changed the weights by only {d:e}");
}

#[test]
fn slurm_output_files_alone_do_not_make_a_run_and_survive_overwrite() {
    let cfg = config(false, |c| c.epochs(1));
    let dir = setup!(2);
    let logs = dir.path().join("runs/t/logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("slurm-17.out"), "job 17").unwrap();
    // An evaluation of a pretrained model done before training does not make a run either.
    let evaluation = dir.path().join("runs/t/evaluation");
    std::fs::create_dir_all(&evaluation).unwrap();
    std::fs::write(evaluation.join("summary.csv"), "mSA").unwrap();
    // Not a run yet: a fresh start is allowed.
    let paths = prepare_run(&cfg, dir.path(), false, false).unwrap().paths;
    assert!(evaluation.join("summary.csv").is_file());
    std::fs::write(&paths.config, "x").unwrap();
    std::fs::write(logs.join("train.log"), "old").unwrap();
    // Now it is a run: refused without flags; --overwrite clears it but keeps the SLURM file.
    assert!(matches!(
        prepare_run(&cfg, dir.path(), false, false),
        Err(TrainError::RunWithoutCheckpoint(_))
    ));
    prepare_run(&cfg, dir.path(), false, true).unwrap();
    assert!(!paths.config.exists());
    assert!(!logs.join("train.log").exists());
    assert!(paths.run_dir.join(RUN_MARKER).is_file());
    assert_eq!(
        std::fs::read_to_string(logs.join("slurm-17.out")).unwrap(),
        "job 17"
    );
}

/// Issue 15: gradients are cleared (set to none), not zeroed, so a parameter that a step does
/// not reach gets no AdamW update — no weight decay, no momentum — exactly as
/// `torch.optim.AdamW` after `zero_grad()` (whose default is `set_to_none=True`).
#[test]
fn unreached_parameter_gets_no_adamw_update_as_in_torch() {
    let python = sam_testkit::venv_python();
    // Step 1 reaches a and b, step 2 only a, step 3 both again.
    let script = r#"
import json, torch
a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
b = torch.tensor([0.3, -0.7], dtype=torch.float64, requires_grad=True)
opt = torch.optim.AdamW([a, b], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
for step in range(3):
    opt.zero_grad()
    loss = (a ** 2).sum()
    if step != 1:
        loss = loss + (b ** 3).sum()
    loss.backward()
    opt.step()
print(json.dumps([a.tolist(), b.tolist()]))
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Vec<Vec<f64>> = serde_json::from_slice(&out.stdout).unwrap();

    let a = Tensor::from_slice(&[1.0f64, -2.0, 0.5]).set_requires_grad(true);
    let b = Tensor::from_slice(&[0.3f64, -0.7]).set_requires_grad(true);
    let mut opt = sam_train::AdamW::new(
        vec![
            ("a".into(), a.shallow_clone()),
            ("b".into(), b.shallow_clone()),
        ],
        sam_train::AdamWConfig {
            lr: 0.1,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.1,
        },
    );
    for step in 0..3 {
        opt.zero_grad().unwrap();
        let mut loss = a.square().sum(tch::Kind::Double);
        if step != 1 {
            loss += b.pow_tensor_scalar(3).sum(tch::Kind::Double);
        }
        loss.backward();
        if step == 1 {
            assert!(!b.grad().defined(), "b must have no gradient in step 2");
        }
        opt.step().unwrap();
    }
    for (name, got, want) in [("a", &a, &want[0]), ("b", &b, &want[1])] {
        let got: Vec<f64> = Vec::try_from(&got.detach()).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() < 1e-12,
                "{name}: expected {want:?}\n   got {got:?}"
            );
        }
    }
}

/// A step reads from the device a fixed, small number of times (each read waits for the
/// device to finish its queue): not once per object, prompting round, image or parameter
/// tensor. The counts of two runs that differ in all of those are the same.
#[test]
fn host_reads_per_step_do_not_grow_with_objects_rounds_or_parameters() {
    let reads = |decoder: bool, objects: i64, rounds: i64, batch: i64, clip: Option<f64>| {
        let cfg = config(decoder, |c| {
            let c = c
                .epochs(1)
                .set("training.n_objects_per_batch", objects)
                .set("training.n_sub_iteration", rounds)
                .set("training.batch_size", batch);
            match clip {
                Some(norm) => c.set("training.grad_clip_norm", norm),
                None => c,
            }
        });
        let dir = setup!(4);
        match run(&cfg, dir.path(), false, None).unwrap() {
            TrainOutcome::Finished(s) => {
                assert!(s.iterations >= 2, "{s:?}");
                s.timing.max_host_reads_per_step
            }
            other => panic!("expected a finished run, got {other:?}"),
        }
    };
    let small = reads(false, 1, 1, 1, None);
    let large = reads(true, 6, 4, 2, Some(1.0));
    eprintln!("host reads per step: {small} (small run), {large} (large run)");
    assert_eq!(small, large, "host reads per step: {small} vs {large}");
    assert!((1..=10).contains(&small), "{small} host reads per step");
}

/// The code of a training step's forward and backward reads nothing from the device behind the
/// counter's back: no `double_value`, `int64_value`, `try_from` or `to_device` outside the
/// tests of the step's modules and of the model's forward modules (reads go through
/// `sam_torch::read_f64s`, uploads through `sam_torch::upload`).
#[test]
fn the_step_reads_from_the_device_only_through_the_counting_helper() {
    let root = sam_testkit::workspace_root();
    let files = [
        "crates/sam-train/src/step.rs",
        "crates/sam-train/src/losses.rs",
        "crates/sam-train/src/corrective.rs",
        "crates/sam-model/src/image_encoder.rs",
        "crates/sam-model/src/prompt_encoder.rs",
        "crates/sam-model/src/mask_decoder.rs",
        "crates/sam-model/src/transformer.rs",
        "crates/sam-model/src/unetr.rs",
        "crates/sam-model/src/common.rs",
    ];
    let forbidden = ["double_value(", "int64_value(", "try_from(", "to_device("];
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (number, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for f in forbidden {
                if line.contains(f) {
                    found.push(format!("{file}:{}: {}", number + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "device reads or blocking copies:\n{}",
        found.join("\n")
    );
}
