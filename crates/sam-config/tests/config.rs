//! Integration tests: shipped configs, every class of config error, path checks, run paths.

use std::path::{Path, PathBuf};

use sam_config::{
    json_schema, load_config_with, parse_config, ConfigError, Diagnostic, ExperimentConfig,
    RunPaths, Severity, ValidateOptions,
};
use sam_testkit::{ConfigBuilder, TempRepo};

/// A fresh temporary repository root (with `configs/` and `dat/`), removed on drop.
macro_rules! temp_root {
    () => {
        TempRepo::new().expect("temp root")
    };
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn no_paths() -> ValidateOptions {
    ValidateOptions::without_path_checks()
}

/// The minimal valid config: the four required keys, one line each. Sections appended to it
/// start on line 5.
fn minimal() -> String {
    ConfigBuilder::new().yaml()
}

/// Parse text that must fail; return its errors.
fn errors_of(text: &str) -> Vec<Diagnostic> {
    match parse_config(text, Some(Path::new("cfg.yaml")), &no_paths()) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(ConfigError::Invalid { errors, .. }) => errors,
        Err(other) => panic!("unexpected error kind: {other}"),
    }
}

/// The one error whose key is `key`; its rendered line must name the file, line and key.
fn find<'a>(errors: &'a [Diagnostic], key: &str) -> &'a Diagnostic {
    errors
        .iter()
        .find(|d| d.problem.key == key)
        .unwrap_or_else(|| {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("no error for `{key}`; got:\n{}", all.join("\n"))
        })
}

#[test]
fn every_shipped_config_validates() {
    let dir = repo_root().join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        n += 1;
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.starts_with("# yaml-language-server: $schema=./schema.json\n"),
            "{} must start with the schema line",
            path.display()
        );
        match load_config_with(&path, &no_paths()) {
            Ok(loaded) => {
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                assert_eq!(loaded.config.experiment_name, stem, "{}", path.display());
            }
            Err(e) => panic!("{} does not validate:\n{e}", path.display()),
        }
    }
    assert!(n >= 5, "expected at least 5 shipped configs, found {n}");
}

#[test]
fn committed_schema_equals_generated_schema() {
    let path = repo_root().join("configs/schema.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("configs/schema.json"))
            .expect("schema.json is JSON");
    assert!(
        committed == json_schema(),
        "configs/schema.json is stale: run `sam-train schema > configs/schema.json`"
    );
}

#[test]
fn shipped_presets_differ_between_a100_and_a40() {
    let load = |name: &str| {
        load_config_with(repo_root().join("configs").join(name), &no_paths())
            .expect(name)
            .config
    };
    let (a100, a40) = (
        load("full_sam_vit_b_a100.yaml"),
        load("full_sam_vit_b_a40.yaml"),
    );
    assert_eq!(a100.training.batch_size, 4);
    assert_eq!(a40.training.batch_size, 2);
    assert!(a100.data.num_workers <= 8);
    let demo = load("demo_cpu.yaml");
    assert_eq!(demo.training.precision, sam_config::Precision::Fp32);
    assert!(demo.model.checkpoint.is_none() && demo.model.with_segmentation_decoder);
    assert_eq!(demo.model.resolved_architecture().encoder_embed_dim, 64);
}

#[test]
fn unknown_keys_are_named_with_line_and_suggestion() {
    let head = minimal();
    let text =
        format!("{head}training:\n  lr: 1.0e-5\n  batch_sise: 2\nmodle:\n  backbone: vit_b\n");
    let errors = errors_of(&text);
    let d = find(&errors, "training.batch_sise");
    assert_eq!((d.line, d.column), (7, 3));
    assert_eq!(d.problem.suggestion.as_deref(), Some("batch_size"));
    assert!(
        d.to_string()
            .starts_with("cfg.yaml:7:3: training.batch_sise: unknown key"),
        "{d}"
    );
    let d = find(&errors, "modle");
    assert_eq!(d.line, 8);
    assert!(d.to_string().contains("(did you mean `model`?)"), "{d}");
}

#[test]
fn wrong_types_are_named_with_line() {
    let head = minimal();
    let text = format!(
        "{head}training:\n  lr: fast\n  epochs: [1]\nmodel:\n  backbone: vit_q\n  freeze: image_encoder\n"
    );
    let errors = errors_of(&text);
    let lr = find(&errors, "training.lr");
    assert_eq!((lr.line, lr.column), (6, 7));
    assert!(lr.problem.message.contains("expected a number"), "{lr}");
    assert!(lr.problem.message.contains("\"fast\""), "{lr}");
    let epochs = find(&errors, "training.epochs");
    assert_eq!(epochs.line, 7);
    let backbone = find(&errors, "model.backbone");
    assert_eq!(backbone.line, 9);
    assert!(backbone.problem.message.contains("`vit_b`"), "{backbone}");
    assert!(backbone.problem.suggestion.is_some(), "{backbone}");
    let freeze = find(&errors, "model.freeze");
    assert_eq!(freeze.line, 10);
    assert!(
        freeze.problem.message.contains("expected a list"),
        "{freeze}"
    );
}

#[test]
fn missing_required_fields_are_named() {
    let text = ConfigBuilder::new()
        .remove("checkpoint_name")
        .remove("export_path")
        .set("training.lr", 1.0e-5)
        .yaml();
    let errors = errors_of(&text);
    for key in ["checkpoint_name", "export_path"] {
        let d = find(&errors, key);
        assert!(d.problem.message.contains("missing required key"), "{d}");
        assert!(d.to_string().starts_with("cfg.yaml:1:1: "), "{d}");
    }
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn out_of_range_values_are_named_with_line() {
    let head = minimal();
    let text = format!(
        "{head}training:\n  lr: -1.0\n  mask_prob: 1.5\ndata:\n  normalization:\n    \
         lower_percentile: 99.0\n    upper_percentile: 2.0\ndistributed:\n  gpus_per_node: 8\n\
         slurm:\n  time_limit: \"72:00:00\"\n"
    );
    let errors = errors_of(&text);
    let lr = find(&errors, "training.lr");
    assert_eq!(lr.line, 6);
    assert!(lr.problem.message.contains("greater than 0") && lr.problem.message.contains("-1"));
    assert_eq!(find(&errors, "training.mask_prob").line, 7);
    let p = find(&errors, "data.normalization.upper_percentile");
    assert_eq!(p.line, 11);
    assert!(p.problem.message.contains("lower_percentile"), "{p}");
    let g = find(&errors, "distributed.gpus_per_node");
    assert_eq!(g.line, 13);
    assert!(g.problem.message.contains("at most 4"), "{g}");
    let t = find(&errors, "slurm.time_limit");
    assert_eq!(t.line, 15);
    assert!(t.problem.message.contains("56:00:00"), "{t}");
}

#[test]
fn inconsistent_values_are_named_with_line() {
    let text = "experiment_name: exp\noutput_base_dir: runs\ncheckpoint_name: ckpt\n\
                export_path: models/other.pt\nmodel:\n  backbone: vit_l\n  checkpoint: vit_b\n\
                data:\n  patch_shape: [4096, 512]\nhardware:\n  accelerator: cpu\n\
                training:\n  precision: fp16\n";
    let errors = errors_of(text);
    let export: Vec<&Diagnostic> = errors
        .iter()
        .filter(|d| d.problem.key == "export_path")
        .collect();
    assert_eq!(
        export.len(),
        2,
        "under final_models/ and containing the name: {export:?}"
    );
    assert!(export.iter().all(|d| d.line == 4));
    let ck = find(&errors, "model.checkpoint");
    assert_eq!(ck.line, 7);
    assert!(ck.problem.message.contains("vit_l"), "{ck}");
    let patch = find(&errors, "data.patch_shape[0]");
    assert_eq!(patch.line, 9, "{patch}");
    let prec = find(&errors, "training.precision");
    assert_eq!(prec.line, 13);
    assert!(prec.problem.message.contains("cpu"), "{prec}");
}

#[test]
fn every_problem_of_every_kind_is_reported_in_one_run() {
    let head = minimal();
    // Two unknown keys and two wrong types in different sections: all four reported.
    let text = format!(
        "{head}training:\n  lrr: 1\n  batch_size: many\ninference:\n  halo: x\n  mdoe: ais\n"
    );
    let errors = errors_of(&text);
    for key in [
        "training.lrr",
        "training.batch_size",
        "inference.halo",
        "inference.mdoe",
    ] {
        find(&errors, key);
    }
    let lines: Vec<usize> = errors.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![6, 7, 9, 10], "sorted by line");
    // Semantic problems are collected too.
    let text = format!("{head}training:\n  lr: 0\n  batch_size: 0\n  n_sub_iteration: 0\n");
    let errors = errors_of(&text);
    for key in [
        "training.lr",
        "training.batch_size",
        "training.n_sub_iteration",
    ] {
        find(&errors, key);
    }
}

#[test]
fn yaml_syntax_errors_have_line_and_column() {
    let head = minimal();
    let text = format!("{head}training:\n  lr: [1\n  batch_size: 2\n");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].line >= 6, "{}", errors[0]);
    assert!(
        errors[0].to_string().starts_with("cfg.yaml:"),
        "{}",
        errors[0]
    );
}

#[test]
fn missing_data_folders_are_errors_unless_path_checks_are_off() {
    let root = temp_root!();
    let text = ConfigBuilder::new()
        .train_dirs("dat/imgs", "dat/lbls")
        .yaml();
    let opts = ValidateOptions {
        check_paths: true,
        root: Some(root.path().to_path_buf()),
    };
    let errors = match parse_config(&text, None, &opts) {
        Err(ConfigError::Invalid { errors, .. }) => errors,
        other => panic!("expected missing folders, got {other:?}"),
    };
    let d = find(&errors, "data.train_images_dir");
    assert_eq!(d.line, 6);
    assert!(d.problem.message.contains("does not exist"), "{d}");
    find(&errors, "data.train_labels_dir");

    // With the folders (and an image) present, the config loads; test folders only warn.
    std::fs::create_dir_all(root.path().join("dat/imgs")).expect("mkdir");
    std::fs::create_dir_all(root.path().join("dat/lbls")).expect("mkdir");
    std::fs::write(root.path().join("dat/imgs/a.tif"), b"").expect("write");
    let loaded = parse_config(&text, None, &opts).expect("valid with folders");
    assert!(loaded
        .warnings
        .iter()
        .any(|w| w.problem.key == "evaluation.test_images_dir" && w.severity == Severity::Warning));
    assert!(parse_config(&text, None, &no_paths()).is_ok());
}

#[test]
fn wall_time_estimate_warns_loudly_above_56_hours() {
    let text = ConfigBuilder::new()
        .set("model.backbone", "vit_h")
        .set("model.checkpoint", "vit_h")
        .batch_size(1)
        .set("training.iterations", 400000)
        .yaml();
    let loaded = parse_config(&text, None, &no_paths()).expect("valid");
    let w = loaded
        .warnings
        .iter()
        .find(|w| w.problem.message.contains("EXCEEDS THE 56 h SLURM LIMIT"))
        .expect("a loud wall-time warning");
    assert_eq!(w.problem.key, "training");
    assert_eq!(w.line, 8);
    assert!(loaded.wall_time.expect("estimate").hours > 56.0);
}

#[test]
fn resolved_config_round_trips_through_yaml() {
    let path = repo_root().join("configs/demo_cpu.yaml");
    let cfg = load_config_with(&path, &no_paths()).expect("demo").config;
    let yaml = cfg.to_yaml().expect("yaml");
    let back = parse_config(&yaml, None, &no_paths())
        .expect("saved config reloads")
        .config;
    assert_eq!(back, cfg);
}

#[test]
fn run_paths_follow_the_documented_layout() {
    let root = temp_root!();
    let cfg: ExperimentConfig = parse_config(&minimal(), None, &no_paths())
        .expect("valid")
        .config;
    let p = RunPaths::new(root.path(), &cfg);
    let r = root.path();
    assert_eq!(p.run_dir, r.join("runs/exp"));
    assert_eq!(p.config, r.join("runs/exp/config.yaml"));
    assert_eq!(p.checkpoint_dir, r.join("runs/exp/checkpoints/ckpt"));
    assert_eq!(p.logs_dir, r.join("runs/exp/logs"));
    assert_eq!(p.export_path, r.join("final_models/exp.pt"));
    assert_eq!(p.resolve(Path::new("/abs/x")), PathBuf::from("/abs/x"));
    // The root is found from any folder below it.
    let deep = r.join("scripts/slurm");
    std::fs::create_dir_all(&deep).expect("mkdir");
    assert_eq!(sam_config::find_root_from(&deep).as_deref(), Some(r));
    assert_eq!(sam_config::find_root_from(Path::new("/")), None);
}

#[test]
fn structural_and_semantic_problems_are_reported_together() {
    let text = "experiment_name: x\noutput_base_dir: runs\ncheckpoint_name: c\n\
                export_path: final_models/y.pt\ntraining:\n  batch_sise: 2\n  lr: fast\n  \
                mask_prob: 2.0\nslurm:\n  time_limit: \"72:00:00\"\n";
    let errors = errors_of(text);
    let keys: Vec<&str> = errors.iter().map(|d| d.problem.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "export_path",
            "training.batch_sise",
            "training.lr",
            "training.mask_prob",
            "slurm.time_limit"
        ],
        "{errors:#?}"
    );
    let lines: Vec<usize> = errors.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![4, 6, 7, 8, 10]);
}

#[test]
fn errors_inside_optional_values_and_enums_are_precise() {
    let head = minimal();
    let text = format!(
        "{head}model:\n  architecture:\n    encoder_dpth: 2\ninference:\n  tile_shape: [512]\n\
         training:\n  precision: bf61\n  epochs: null\n  iterations: null\n"
    );
    let errors = errors_of(&text);
    let d = find(&errors, "model.architecture.encoder_dpth");
    assert_eq!((d.line, d.column), (7, 5));
    assert_eq!(d.problem.suggestion.as_deref(), Some("encoder_depth"));
    let d = find(&errors, "inference.tile_shape");
    assert_eq!(d.line, 9);
    assert!(d.problem.message.contains("2 items, found 1"), "{d}");
    let d = find(&errors, "training.precision");
    assert_eq!(d.line, 11);
    assert!(d.problem.message.contains("`bf16`"), "{d}");
    assert_eq!(d.problem.suggestion.as_deref(), Some("bf16"));
    // The semantic rule is reported in the same run.
    let d = find(&errors, "training.epochs");
    assert!(d.problem.message.contains("`iterations`"), "{d}");
    assert_eq!(d.line, 12);
}

#[test]
fn empty_and_non_mapping_documents_are_explained() {
    let head = minimal();
    let errors = errors_of("# only a comment\n");
    assert!(errors[0].problem.message.contains("empty"), "{}", errors[0]);
    let errors = errors_of("- a\n- b\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].problem.message.contains("expected a mapping"),
        "{}",
        errors[0]
    );
    let errors = errors_of(&format!("{head}seed: 1\nseed: 2\n"));
    assert!(
        errors[0].problem.message.contains("duplicate"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].line, 6, "{}", errors[0]);
    assert_eq!(errors[0].problem.key, "seed");
}

#[test]
fn root_comes_from_explicit_path_then_environment() {
    // The only test in this binary that reads the environment variable.
    let root = temp_root!();
    std::env::set_var(sam_config::ROOT_ENV_VAR, root.path());
    let from_env = sam_config::find_root(None).expect("root from env");
    let explicit = sam_config::find_root(Some(Path::new("/elsewhere"))).expect("explicit");
    std::env::remove_var(sam_config::ROOT_ENV_VAR);
    assert_eq!(from_env, root.path());
    assert_eq!(explicit, PathBuf::from("/elsewhere"));
}

#[test]
fn cpu_runs_fp32_and_bf16_but_not_fp16_or_tf32() {
    let config = |precision: &str| {
        ConfigBuilder::new()
            .checkpoint_name("exp")
            .set("hardware.accelerator", "cpu")
            .set("training.device", "cpu")
            .set("training.precision", precision)
            .yaml()
    };
    for ok in ["fp32", "bf16"] {
        let text = config(ok);
        if let Err(e) = parse_config(&text, Some(Path::new("cfg.yaml")), &no_paths()) {
            panic!("{ok} on CPU was refused: {e}");
        }
    }
    for gpu_only in ["fp16", "tf32"] {
        let errors = errors_of(&config(gpu_only));
        let p = find(&errors, "training.precision");
        assert!(p.problem.message.contains("needs a GPU"), "{p}");
    }
}

#[test]
fn vit_t_rejects_vit_sizes_and_takes_only_decoder_features() {
    let head = minimal();
    // TinyViT's input size and prompt width are fixed: overriding them used to be accepted and
    // silently ignored.
    let text = format!(
        "{head}model:\n  backbone: vit_t\n  architecture:\n    image_size: 512\n    \
         prompt_embed_dim: 64\n    encoder_depth: 2\n    decoder_features: 0\n"
    );
    let errors = errors_of(&text);
    for key in ["image_size", "prompt_embed_dim", "encoder_depth"] {
        let d = find(&errors, &format!("model.architecture.{key}"));
        assert!(d.problem.message.contains("decoder_features"), "{d}");
    }
    find(&errors, "model.architecture.decoder_features");
    // a valid decoder width alone is no error of the architecture section
    let text = format!(
        "{head}model:\n  backbone: vit_t\n  architecture:\n    decoder_features: 16\n\
         training:\n  lr: -1\n"
    );
    let errors = errors_of(&text);
    assert!(
        errors
            .iter()
            .all(|d| !d.problem.key.starts_with("model.architecture")),
        "{errors:#?}"
    );
}

#[test]
fn memory_options_parse_and_are_checked() {
    let head = minimal();
    let text = format!(
        "{head}training:\n  gradient_accumulation: 4\n  activation_checkpointing: global\n"
    );
    let cfg = parse_config(&text, Some(Path::new("cfg.yaml")), &no_paths())
        .expect("valid config")
        .config;
    assert_eq!(cfg.training.gradient_accumulation, 4);
    assert_eq!(
        cfg.training.activation_checkpointing,
        sam_config::ActivationCheckpointing::Global
    );
    // Defaults: one micro-batch per step, nothing recomputed.
    let cfg = parse_config(&head, Some(Path::new("cfg.yaml")), &no_paths())
        .expect("valid config")
        .config;
    assert_eq!(cfg.training.gradient_accumulation, 1);
    assert_eq!(
        cfg.training.activation_checkpointing,
        sam_config::ActivationCheckpointing::None
    );
    let errors = errors_of(&format!("{head}training:\n  gradient_accumulation: 0\n"));
    find(&errors, "training.gradient_accumulation");
    let errors = errors_of(&format!(
        "{head}training:\n  activation_checkpointing: some\n"
    ));
    find(&errors, "training.activation_checkpointing");
    // TinyViT has no ViT blocks to recompute.
    let errors = errors_of(&format!(
        "{head}model:\n  backbone: vit_t\ntraining:\n  activation_checkpointing: all\n"
    ));
    let d = find(&errors, "training.activation_checkpointing");
    assert!(d.problem.message.contains("vit_t"), "{d}");
}

#[test]
fn native_encoder_input_is_for_vit_backbones_and_bad_values_say_what_is_allowed() {
    let head = minimal();
    let errors = errors_of(&format!(
        "{head}model:\n  backbone: vit_t\n  encoder_input: native\n"
    ));
    let d = find(&errors, "model.encoder_input");
    assert!(d.problem.message.contains("ViT encoders only"), "{d}");
    let ok = format!("{head}model:\n  backbone: vit_b\n  encoder_input: native\n");
    if let Err(e) = parse_config(&ok, Some(Path::new("cfg.yaml")), &no_paths()) {
        panic!("native on vit_b was refused: {e}");
    }
    let err = match parse_config(
        &format!("{head}model:\n  encoder_input: 512\n"),
        Some(Path::new("cfg.yaml")),
        &no_paths(),
    ) {
        Ok(_) => panic!("encoder_input: 512 was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("encoder_input") && err.contains("native"),
        "{err}"
    );
}

/// Every error of `text` with key `output_base_dir`, rendered.
fn output_dir_errors(text: &str, options: &ValidateOptions) -> Vec<String> {
    match parse_config(text, Some(Path::new("cfg.yaml")), options) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .diagnostics()
            .iter()
            .filter(|d| d.problem.key == "output_base_dir")
            .map(ToString::to_string)
            .collect(),
    }
}

#[test]
fn issue_16_output_folder_may_not_be_contain_or_lie_inside_data_model_or_config_folders() {
    let with_base = |base: &str| {
        ConfigBuilder::new()
            .output_base_dir(base)
            .set("model.checkpoint", "weights/sam.pth")
            .yaml()
    };
    for (base, relation, other) in [
        (
            ".",
            "contains",
            "`dat/augmented_training_data/images` (data.train_images_dir)",
        ),
        (
            "/",
            "contains",
            "`dat/augmented_training_data/images` (data.train_images_dir)",
        ),
        (
            "dat",
            "contains",
            "`dat/augmented_training_data/images` (data.train_images_dir)",
        ),
        ("runs/../dat", "contains", "(data.train_images_dir)"),
        (
            "dat/training_data/images",
            "is",
            "(augmentation.source_images_dir)",
        ),
        (
            "dat/training_data/images/runs",
            "lies inside",
            "(augmentation.source_images_dir)",
        ),
        (
            "dat/other",
            "lies inside",
            "the repository's data folder `dat`",
        ),
        ("weights", "is", "the folder of model.checkpoint `weights`"),
        (
            "final_models",
            "is",
            "the folder of export_path `final_models`",
        ),
        (
            "configs/runs",
            "lies inside",
            "the repository's config folder `configs`",
        ),
    ] {
        let errors = output_dir_errors(&with_base(base), &no_paths());
        assert_eq!(errors.len(), 1, "{base}: {errors:?}");
        let e = &errors[0];
        assert!(
            e.starts_with(&format!("cfg.yaml:2:1: output_base_dir: `{base}`"))
                && e.contains(&format!(" {relation} "))
                && e.contains(other)
                && e.contains(
                    "with --overwrite, deleted there; use a folder of its own such as `runs`"
                ),
            "{base}: {e}"
        );
    }
    for base in ["runs", "/scratch/runs", "results/runs"] {
        assert_eq!(
            output_dir_errors(&with_base(base), &no_paths()),
            Vec::<String>::new()
        );
    }

    // Through a symlink, when the file system is checked: `runs` -> `dat`.
    let root = temp_root!();
    std::os::unix::fs::symlink(root.path().join("dat"), root.path().join("runs")).expect("link");
    let opts = ValidateOptions {
        check_paths: true,
        root: Some(root.path().to_path_buf()),
    };
    let errors = output_dir_errors(&with_base("runs"), &opts);
    assert!(
        errors.len() == 1 && errors[0].contains("contains `dat/augmented_training_data/images`"),
        "{errors:?}"
    );
    assert_eq!(
        output_dir_errors(&with_base("runs"), &no_paths()),
        Vec::<String>::new()
    );

    // The config file's own folder; not the copy a run keeps of its config.
    let exp_dir = root.path().join("experiments");
    std::fs::create_dir_all(&exp_dir).expect("mkdir");
    std::fs::write(exp_dir.join("exp.yaml"), with_base("experiments")).expect("write");
    let opts = ValidateOptions {
        check_paths: false,
        root: Some(root.path().to_path_buf()),
    };
    let err = load_config_with(exp_dir.join("exp.yaml"), &opts).expect_err("refused");
    assert!(
        err.to_string()
            .contains("is the folder of this config file"),
        "{err}"
    );
    let saved = root.path().join("results/exp");
    std::fs::create_dir_all(&saved).expect("mkdir");
    std::fs::write(saved.join("config.yaml"), with_base("results")).expect("write");
    load_config_with(saved.join("config.yaml"), &opts).expect("a run's own config.yaml loads");
}

#[test]
fn issue_16_type_errors_name_the_type_and_the_value_once() {
    let head = minimal();
    for (body, key, want) in [
        (
            "training:\n  betas: null\n",
            "training.betas",
            "expected a list, found null",
        ),
        (
            "training:\n  batch_size: null\n",
            "training.batch_size",
            "expected an integer, found null",
        ),
        (
            "model:\n  freeze: [[a]]\n",
            "model.freeze[0]",
            "expected a string, found a list of 1 item",
        ),
        (
            "data:\n  image_shape: 5\n",
            "data.image_shape",
            "expected a list, found an integer 5",
        ),
    ] {
        let errors = errors_of(&format!("{head}{body}"));
        let d = find(&errors, key);
        assert!(d.problem.message.ends_with(want), "{d}");
        for doubled in ["null null", "a list a list", "an integer an integer"] {
            assert!(!d.to_string().contains(doubled), "{d}");
        }
    }
}

#[test]
fn issue_16_nan_and_inf_are_reported_once() {
    let head = minimal();
    for (value, shown) in [(".nan", "NaN"), (".inf", "inf"), ("-.inf", "-inf")] {
        let errors = errors_of(&format!("{head}training:\n  lr: {value}\n"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].to_string(),
            format!("cfg.yaml:6:7: training.lr: expected a finite number, found {shown}")
        );
    }
}

#[test]
fn issue_16_tabs_and_huge_numbers_are_named_plainly() {
    let head = minimal();
    let errors = errors_of(&format!("{head}training:\n\tlr: 1.0e-5\n"));
    assert_eq!(
        errors[0].to_string(),
        "cfg.yaml:6:1: line 6 is indented with a tab character; YAML indents with spaces only: \
         replace the tab with spaces"
    );
    let errors = errors_of(&format!(
        "{head}training:\n  batch_size: 99999999999999999999999\n"
    ));
    let text = errors[0].to_string();
    assert!(
        text.starts_with(
            "cfg.yaml:6:15: training.batch_size: the number 99999999999999999999999 is too large"
        ) && text.contains("no config value can exceed 18446744073709551615")
            && !text.contains("u128"),
        "{text}"
    );
}

#[test]
fn issue_16_a_relative_checkpoint_resolves_against_the_root() {
    let root = temp_root!();
    root.create_dir("final_models").expect("mkdir");
    std::fs::write(root.path().join("final_models/base.pt"), b"x").expect("write");
    let cfg = root
        .write_config(
            "configs/exp.yaml",
            &ConfigBuilder::new().set("model.checkpoint", "final_models/base.pt"),
        )
        .expect("write");
    let opts = ValidateOptions {
        check_paths: false,
        root: Some(root.path().to_path_buf()),
    };
    let loaded = load_config_with(&cfg, &opts).expect("valid");
    assert_eq!(loaded.root.as_deref(), Some(root.path()));
    assert_eq!(
        loaded.config.model.checkpoint,
        Some(
            root.path()
                .join("final_models/base.pt")
                .display()
                .to_string()
        )
    );
    // A micro_sam model name stays a name.
    ConfigBuilder::new()
        .set("model.checkpoint", "vit_b")
        .write(&cfg)
        .expect("write");
    let loaded = load_config_with(&cfg, &opts).expect("valid");
    assert_eq!(loaded.config.model.checkpoint.as_deref(), Some("vit_b"));
    let paths = RunPaths::new(root.path(), &loaded.config);
    assert_eq!(
        paths.model_checkpoint(&loaded.config.model).as_deref(),
        Some("vit_b")
    );
}

#[test]
fn issue_16_command_line_values_go_through_the_config_rules() {
    let head = minimal();
    let mut inference = sam_config::InferenceConfig::default();
    assert!(inference.validate().is_ok());
    inference.ais.foreground_threshold = 5.0;
    inference.amg.points_per_side = 0;
    let report = inference.validate();
    let rendered: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        rendered,
        vec![
            "inference.ais.foreground_threshold: must be between 0 and 1, found 5",
            "inference.amg.points_per_side: must be at least 1, found 0",
        ]
    );
    let mut augmentation = sam_config::AugmentationConfig {
        copies_per_image: 0,
        include_original: false,
        ..Default::default()
    };
    let report = augmentation.validate();
    assert_eq!(report.errors[0].key, "augmentation.copies_per_image");
    assert!(report.errors[0].message.contains("would write nothing"));
    augmentation.include_original = true;
    assert!(augmentation.validate().is_ok());
    let norm = sam_config::NormalizationConfig {
        lower_percentile: 99.0,
        upper_percentile: 1.0,
        clip: true,
    };
    assert_eq!(
        norm.validate().errors[0].to_string(),
        "data.normalization.upper_percentile: must be greater than lower_percentile (99), found 1"
    );
    // The config's own check is the same one.
    let errors = errors_of(&format!(
        "{head}inference:\n  ais:\n    foreground_threshold: 5\n"
    ));
    find(&errors, "inference.ais.foreground_threshold");
    let errors = errors_of(&format!("{head}inference:\n  amg:\n    crop_n_layers: 1\n"));
    assert!(
        find(&errors, "inference.amg.crop_n_layers")
            .problem
            .message
            .starts_with("must be 0 (image crops are not implemented"),
        "{errors:?}"
    );
    let errors = errors_of(&format!("{head}data:\n  min_objects_per_patch: 0\n"));
    assert!(
        find(&errors, "data.min_objects_per_patch")
            .problem
            .message
            .contains("images without objects are skipped with a warning"),
        "{errors:?}"
    );
}

/// `model.peft`: the three forms of `blocks`, and what validation refuses with the key named.
#[test]
fn peft_blocks_parse_and_bad_peft_settings_are_named() {
    let parse = |peft: &str| {
        let text = format!("{}model:\n  backbone: vit_b\n  peft: {peft}\n", minimal());
        parse_config(&text, Some(Path::new("cfg.yaml")), &no_paths())
    };
    for (peft, blocks) in [
        ("{method: lora, rank: 4}", (0..12).collect::<Vec<u32>>()),
        ("{method: lora, rank: 4, blocks: all}", (0..12).collect()),
        ("{method: fact, rank: 2, blocks: [11, 3, 3]}", vec![3, 11]),
        ("{method: ssf, blocks: {last: 2}}", vec![10, 11]),
    ] {
        let loaded = parse(peft).unwrap_or_else(|e| panic!("{peft}: {e}"));
        let p = loaded.config.model.active_peft().expect(peft);
        assert_eq!(p.blocks.resolve(12), blocks, "{peft}");
    }
    let none = parse("{method: none}").expect("method: none");
    assert!(none.config.model.active_peft().is_none());
    // SSF has no rank: a given one is a warning, not an error.
    let ssf = parse("{method: ssf, rank: 4}").expect("ssf with a rank");
    assert!(ssf
        .warnings
        .iter()
        .any(|w| w.problem.key == "model.peft.rank"));

    let error_of = |peft: &str, key: &str, part: &str| {
        let text = format!("{}model:\n  backbone: vit_b\n  peft: {peft}\n", minimal());
        let errors = errors_of(&text);
        let d = find(&errors, key);
        assert!(d.problem.message.contains(part), "{peft}: {d}");
    };
    error_of("{method: lora}", "model.peft.rank", "needs a rank ≥ 1");
    error_of(
        "{method: fact, rank: 0}",
        "model.peft.rank",
        "needs a rank ≥ 1",
    );
    error_of(
        "{method: lora, rank: 4, blocks: [12]}",
        "model.peft.blocks",
        "block 12 does not exist",
    );
    error_of(
        "{method: lora, rank: 4, blocks: {last: 13}}",
        "model.peft.blocks",
        "between 1 and",
    );
    error_of(
        "{method: lora, rank: 4, blocks: []}",
        "model.peft.blocks",
        "lists no block",
    );
    error_of(
        "{method: lora, rank: 4, alpha: 0}",
        "model.peft.alpha",
        "must be > 0",
    );
    error_of("{method: lorra, rank: 4}", "model.peft", "`lora`");
    let text = format!(
        "{}model:\n  backbone: vit_b\n  freeze: [image_encoder]\n  peft: {{method: lora, rank: 4}}\n",
        minimal()
    );
    let errors = errors_of(&text);
    assert!(find(&errors, "model.freeze")
        .problem
        .message
        .contains("model.peft"));
    let text = format!(
        "{}model:\n  backbone: vit_t\n  checkpoint: vit_t\n  peft: {{method: lora, rank: 4}}\n",
        minimal()
    );
    assert!(find(&errors_of(&text), "model.peft")
        .problem
        .message
        .contains("vit_t"));
}

/// `inference.mode: apg` and `inference.apg`: micro_sam's defaults, the decoder rule, ranges and
/// the APG grid-search values.
#[test]
fn apg_section_defaults_rules_and_grid_values() {
    let head = minimal();
    let inf = sam_config::InferenceConfig::default();
    assert_eq!(inf.apg.min_size, 25);
    assert_eq!(inf.apg.nms_threshold, 0.9);
    assert_eq!(inf.apg.batch_size, 32);
    let errors = errors_of(&format!(
        "{head}model:\n  with_segmentation_decoder: false\ninference:\n  mode: apg\n  apg:\n    \
         nms_threshold: 1.5\n    batch_size: 0\n    mask_threshold: .nan\n"
    ));
    assert!(
        find(&errors, "inference.mode")
            .problem
            .message
            .starts_with("apg needs the segmentation decoder"),
        "{errors:?}"
    );
    find(&errors, "inference.apg.nms_threshold");
    find(&errors, "inference.apg.batch_size");
    find(&errors, "inference.apg.mask_threshold");
    let errors = errors_of(&format!(
        "{head}evaluation:\n  grid_search:\n    intersection_over_min: []\n    nms_threshold: \
         {{start: 0.5, stop: 1.5, step: 0.1}}\n"
    ));
    find(&errors, "evaluation.grid_search.intersection_over_min");
    find(&errors, "evaluation.grid_search.nms_threshold.stop");
    let g = sam_config::GridSearchConfig::default();
    assert_eq!(g.nms_threshold.values(), vec![0.5, 0.6, 0.7, 0.8, 0.9]);
    assert_eq!(g.intersection_over_min, vec![true, false]);
}
