//! Training with image-encoder adapters (`model.peft`): what the checkpoints hold, resuming,
//! the base-model check, both export layouts, and the gradients with activation checkpointing.
//!
//! A test binary of its own, its tests one at a time: torch's random generator is one per
//! process, and a training run reseeds it before each step, so runs in parallel threads would
//! draw each other's numbers.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use sam_config::{ExperimentConfig, RunPaths};
use sam_model::{read_checkpoint, write_sam_state_dict, SamModel, PEFT_PREFIX};
use sam_testkit::ConfigBuilder;
use sam_train::{
    export_model, CheckpointStore, ExportOptions, PeftLayout, Slot, TrainError, TrainOutcome,
};
use tch::{Device, Kind, Tensor};

#[macro_use]
mod common;

use common::{latest_model, max_diff, run};

/// The tiny CPU run `t` (seed 3, checkpoint `ck`, no UNETR decoder) changed by `edit`.
fn config(edit: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> ExperimentConfig {
    common::config(false, edit)
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs the calling test alone in this binary.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Two training samples (64 px patches) of the images under `dir/data/train`.
fn fixed_batch(dir: &Path) -> Vec<sam_data::TrainingSample> {
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
    (0..2)
        .map(|_| data.sample(&sample_cfg, &mut rng).unwrap())
        .collect()
}

/// The gradients one `step_backward` leaves with `precision` (cleared before).
fn backward_grads(
    model: &SamModel,
    batch: &[sam_data::TrainingSample],
    iteration: u64,
    precision: sam_train::StepPrecision,
) -> Vec<(String, Tensor)> {
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
    let inputs = sam_train::StepInputs {
        sam: model.sam(),
        decoder: model.decoder(),
        samples: &refs,
        recipe: &recipe,
        seed: 3,
        iteration,
        global_index: &[0, 1],
        device: Device::Cpu,
        before_encoder_backward: None,
    };
    sam_train::step_backward(&inputs, precision).unwrap();
    model
        .named_variables()
        .into_iter()
        .filter(|(_, v)| v.grad().defined())
        .map(|(k, v)| (k, v.grad().copy()))
        .collect()
}

/// The tiny run with LoRA (rank 2) on the last of its 2 encoder blocks, starting from the base
/// weights in `<root>/base.pt`.
fn lora_config(root: &Path, epochs: u64) -> ExperimentConfig {
    let base = root.join("base.pt").to_string_lossy().into_owned();
    config(|c| {
        c.epochs(epochs)
            .set("training.checkpoint_every_iterations", 1)
            .set("model.checkpoint", base)
            .set_yaml("model.peft", "{method: lora, rank: 2, blocks: {last: 1}}")
    })
}

/// Writes `base.pt`: random SAM weights of the tiny model (torch's generator is shared by the
/// tests running in parallel: a test that needs the same base twice copies the file).
fn write_base(root: &Path, cfg: &ExperimentConfig) -> Vec<(String, Tensor)> {
    let mut plain = cfg.model.clone();
    plain.peft = None;
    let model = sam_train::new_model(&plain, Device::Cpu).unwrap();
    let mut vars = model.named_variables();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    write_sam_state_dict(root.join("base.pt"), &vars).unwrap();
    vars
}

fn embed(model: &SamModel, x: &Tensor) -> Tensor {
    tch::no_grad(|| model.sam().image_encoder.forward(x))
}

#[test]
fn lora_checkpoints_hold_trainable_weights_resume_exactly_and_export_both_layouts() {
    let _serial = serial();
    let a = setup!(3);
    let cfg = lora_config(a.path(), 2);
    let base = write_base(a.path(), &cfg);
    match run(&cfg, a.path(), false, None).unwrap() {
        TrainOutcome::Finished(s) => assert_eq!(s.iterations, 4),
        other => panic!("expected a finished run, got {other:?}"),
    }
    // The checkpoint: no base encoder weight, the adapters of block 1 only, the heads; the
    // optimiser state of trainable parameters only; the base named by its digest.
    let paths = RunPaths::new(a.path(), &cfg);
    let ck = CheckpointStore::new(&paths.checkpoint_dir)
        .load(Slot::Latest)
        .unwrap();
    let keys: Vec<&str> = ck.model.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.iter().all(|k| !k.starts_with("image_encoder.")),
        "{keys:?}"
    );
    let adapters: Vec<&&str> = keys.iter().filter(|k| k.starts_with(PEFT_PREFIX)).collect();
    assert_eq!(adapters.len(), 4, "{adapters:?}");
    assert!(adapters.iter().all(|k| k.contains("blocks.1.attn.qkv.w_")));
    assert!(keys.iter().any(|k| k.starts_with("mask_decoder.")));
    assert!(keys.iter().any(|k| k.starts_with("prompt_encoder.")));
    assert!(ck
        .optimizer
        .iter()
        .all(|(k, _)| !k.contains(".image_encoder.") || k.contains(PEFT_PREFIX)));
    assert!(ck.optimizer.iter().any(|(k, _)| k.contains(PEFT_PREFIX)));
    let digest = ck.state.base_model.clone().expect("base digest");
    assert_eq!(digest.len(), 64);
    // LoRA's B factors started at zero and trained.
    let b = &ck
        .model
        .iter()
        .find(|(k, _)| k.ends_with("w_b_linear_q.weight"))
        .unwrap()
        .1;
    assert!(b.abs().max().double_value(&[]) > 0.0);

    // Killed after 3 iterations and resumed: the same weights as the uninterrupted run.
    let b_repo = setup!(3);
    let cfg_b = lora_config(b_repo.path(), 2);
    std::fs::copy(a.path().join("base.pt"), b_repo.path().join("base.pt")).unwrap();
    assert!(matches!(
        run(&cfg_b, b_repo.path(), false, Some(3)).unwrap(),
        TrainOutcome::Interrupted(_)
    ));
    run(&cfg_b, b_repo.path(), true, None).unwrap();
    let d = max_diff(
        &latest_model(a.path(), &cfg),
        &latest_model(b_repo.path(), &cfg_b),
    );
    assert!(d <= 1e-6, "resumed run differs by {d}");

    // Exports: merged (a plain SAM state_dict, block 0 and the frozen weights of block 1 as in
    // the base, qkv of block 1 changed) and micro_sam's layout; both compute the same.
    let slot = paths.checkpoint_dir.join("latest");
    let merged_file = a.path().join("final_models/t_merged.pt");
    let peft_file = a.path().join("final_models/t_peft.pt");
    for (file, layout) in [
        (&merged_file, PeftLayout::Merged),
        (&peft_file, PeftLayout::MicroSam),
    ] {
        let options = ExportOptions {
            peft_layout: layout,
            ..Default::default()
        };
        export_model(&slot, file, options).unwrap();
    }
    let merged = read_checkpoint(&merged_file).unwrap().model_state;
    let get =
        |v: &[(String, Tensor)], k: &str| v.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
    for k in [
        "image_encoder.blocks.0.attn.qkv.weight",
        "image_encoder.blocks.1.mlp.lin1.weight",
        "image_encoder.patch_embed.proj.weight",
    ] {
        assert!(get(&merged, k).equal(&get(&base, k)), "{k} changed");
    }
    let k = "image_encoder.blocks.1.attn.qkv.weight";
    assert!(!get(&merged, k).equal(&get(&base, k)), "{k} has no update");
    let peft_state = read_checkpoint(&peft_file).unwrap().model_state;
    assert!(peft_state
        .iter()
        .any(|(k, _)| k == "image_encoder.blocks.1.attn.qkv.qkv_proj.weight"));
    let m1 = SamModel::load(&merged_file, Device::Cpu).unwrap();
    let m2 = SamModel::load(&peft_file, Device::Cpu).unwrap();
    assert!(m1.peft().is_none() && m2.peft().is_some());
    let x = Tensor::randn([1, 3, 128, 128], (Kind::Float, Device::Cpu));
    let d = (embed(&m1, &x) - embed(&m2, &x))
        .abs()
        .max()
        .double_value(&[]);
    assert!(d <= 1e-5, "merged and PEFT exports differ by {d}");
}

#[test]
fn resuming_onto_another_base_model_is_refused() {
    let _serial = serial();
    let dir = setup!(2);
    let cfg = lora_config(dir.path(), 2);
    let base = write_base(dir.path(), &cfg);
    assert!(matches!(
        run(&cfg, dir.path(), false, Some(1)).unwrap(),
        TrainOutcome::Interrupted(_)
    ));
    // Another base: one weight of the encoder changed.
    let other: Vec<(String, Tensor)> = base
        .iter()
        .map(|(k, t)| {
            let t = if k == "image_encoder.blocks.0.mlp.lin1.bias" {
                t.detach() + 0.01
            } else {
                t.detach()
            };
            (k.clone(), t)
        })
        .collect();
    write_sam_state_dict(dir.path().join("base.pt"), &other).unwrap();
    let err = run(&cfg, dir.path(), true, None).unwrap_err();
    assert!(matches!(err, TrainError::State(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("another base model"), "{msg}");
    // The export of that checkpoint, rebuilt from the run's config, is refused alike.
    let slot = RunPaths::new(dir.path(), &cfg)
        .checkpoint_dir
        .join("latest");
    let out = dir.path().join("final_models/t.pt");
    let err = export_model(&slot, &out, ExportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("another base model"), "{err}");
    assert!(!out.exists());
}

/// With LoRA on blocks 2 and 3 of a 4-block encoder, a step's gradients reach the adapters of
/// those blocks and the heads, never a base weight of the encoder; recomputing the global
/// blocks or every block (activation checkpointing) leaves the same gradients.
#[test]
fn lora_gradients_reach_only_adapters_and_heads_with_and_without_checkpointing() {
    let _serial = serial();
    use sam_config::ActivationCheckpointing as Ckpt;
    let dir = setup!(2);
    let batch = fixed_batch(dir.path());
    let cfg = config(|c| {
        c.epochs(1)
            .set("model.architecture.encoder_depth", 4)
            .set("model.architecture.encoder_global_attn_indexes", vec![1, 3])
            .set_yaml("model.peft", "{method: lora, rank: 2, blocks: [2, 3]}")
    });
    let model = common::seeded_model(13, &cfg);
    assert_eq!(model.sam().image_encoder.first_graph_block(), 2);
    // LoRA's B factors start at zero (A would get no gradient): draw them.
    for (k, v) in model.named_variables() {
        if k.contains("w_b_linear") {
            tch::no_grad(|| {
                let _ = v.shallow_clone().normal_(0.0, 0.1);
            });
        }
    }
    let plain = sam_train::StepPrecision::default();
    let reference = backward_grads(&model, &batch, 4, plain);
    let names: Vec<&str> = reference.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        names.iter().all(|k| !k.starts_with("image_encoder.")),
        "{names:?}"
    );
    let adapters: Vec<&&str> = names
        .iter()
        .filter(|k| k.starts_with(PEFT_PREFIX))
        .collect();
    assert_eq!(adapters.len(), 8, "{adapters:?}");
    assert!(names.iter().any(|k| k.starts_with("mask_decoder.")));
    for mode in [Ckpt::Global, Ckpt::All] {
        let ours = backward_grads(
            &model,
            &batch,
            4,
            sam_train::StepPrecision {
                activation_checkpointing: mode,
                ..plain
            },
        );
        assert_eq!(ours.len(), reference.len(), "{mode}");
        for ((name, r), (_, o)) in reference.iter().zip(&ours) {
            let diff = (o - r).abs().max().double_value(&[]);
            let size = r.abs().max().double_value(&[]).max(1e-12);
            assert!(
                diff <= 1e-6 * size + 1e-12,
                "{mode}: {name}: {diff:e} vs {size:e}"
            );
        }
    }
}
