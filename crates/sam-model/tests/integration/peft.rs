//! Parameter-efficient fine-tuning (LoRA, FacT, SSF) against micro_sam's `PEFT_Sam`.
//!
//! `tests/python/make_peft.py make` wraps a tiny random segment_anything SAM (3 encoder blocks)
//! with micro_sam's surgery (rank 2 on blocks 1 and 2, random adapter weights) and saves its
//! PEFT state_dict and the encoder's output for a fixed image under
//! `target/test-fixtures/sam-model-peft/` (again when the script changes).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sam_model::{
    write_sam_state_dict, AttentionMode, ImageEncoderConfig, LoadMode, PeftMethod, PeftSpec,
    SamConfig, SamModel, StateDict,
};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-5;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/make_peft.py")
}

fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| sam_testkit::script_fixtures("sam-model-peft", &script(), |_| Vec::new()))
}

fn read(name: &str) -> StateDict {
    let mut v = Tensor::read_safetensors(fixtures().join(name)).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn io(method: &str) -> HashMap<String, Tensor> {
    read(&format!("peft_{method}_io.safetensors"))
        .into_iter()
        .collect()
}

/// The fixture's architecture: `SamConfig::tiny()` with 3 encoder blocks.
fn config(mode: AttentionMode) -> SamConfig {
    let mut cfg = SamConfig::tiny().with_attention(mode);
    if let ImageEncoderConfig::Vit(e) = &mut cfg.image_encoder {
        e.depth = 3;
    }
    cfg
}

/// The fixture's spec (SSF has no rank: read back as 0).
fn spec(method: PeftMethod) -> PeftSpec {
    let rank = if method == PeftMethod::Ssf { 0 } else { 2 };
    PeftSpec::new(method, rank, vec![1, 2])
}

const METHODS: [(&str, PeftMethod); 3] = [
    ("lora", PeftMethod::Lora),
    ("fact", PeftMethod::Fact),
    ("ssf", PeftMethod::Ssf),
];

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn embed(model: &SamModel, image: &Tensor) -> Tensor {
    tch::no_grad(|| model.sam().image_encoder.forward(image))
}

/// Base weights and adapters loaded separately (the layout split by our reader) into a model
/// built from the config: the encoder gives micro_sam's output with both attention kernels.
#[test]
fn adapted_encoder_matches_micro_sam_for_every_method() {
    for (name, method) in METHODS {
        let state = read(&format!("peft_{name}.safetensors"));
        let (base, adapters, found) = sam_model::peft::from_micro_sam_layout(&state)
            .unwrap()
            .expect("a PEFT layout");
        assert_eq!(found, spec(method), "{name}: spec read from the keys");
        let io = io(name);
        for mode in [AttentionMode::Math, AttentionMode::Sdpa] {
            let model = SamModel::new(&config(mode), None, Device::Cpu)
                .unwrap()
                .with_peft(&spec(method))
                .unwrap();
            model.load_state(&base, None, LoadMode::Strict).unwrap();
            model.load_peft(&adapters).unwrap();
            let d = max_diff(&embed(&model, &io["image"]), &io["embeddings"]);
            assert!(d <= TOL, "{name} {mode:?}: max abs error {d:e}");
        }
        // Without the adapters the output differs: the fixture exercises them.
        let plain = SamModel::new(&config(AttentionMode::Math), None, Device::Cpu).unwrap();
        plain.load_state(&base, None, LoadMode::Strict).unwrap();
        let d = max_diff(&embed(&plain, &io["image"]), &io["embeddings"]);
        assert!(d > 1e-2, "{name}: adapters change the output only by {d:e}");
    }
}

/// A micro_sam PEFT checkpoint file loads by itself: architecture and adapters inferred.
#[test]
fn micro_sam_peft_files_load_with_their_adapters() {
    for (name, method) in METHODS {
        let model = SamModel::load(
            fixtures().join(format!("peft_{name}.safetensors")),
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(model.peft(), Some(&spec(method)), "{name}");
        let io = io(name);
        let d = max_diff(&embed(&model, &io["image"]), &io["embeddings"]);
        assert!(d <= TOL, "{name}: max abs error {d:e}");
    }
}

/// The merged state_dict (adapters folded into the weights) in a plain model gives the
/// adapted model's output; our exports in both layouts load strictly in Python
/// (segment_anything's Sam, micro_sam's PEFT_Sam) and give micro_sam's output there too.
#[test]
fn merged_and_peft_exports_give_the_same_outputs_here_and_in_python() {
    let dir = tempfile::tempdir().unwrap();
    for (name, _) in METHODS {
        let io = io(name);
        let model = SamModel::load(
            fixtures().join(format!("peft_{name}.safetensors")),
            Device::Cpu,
        )
        .unwrap();
        let merged = model.merged_sam_state();
        assert!(merged
            .iter()
            .all(|(k, _)| !k.contains("qkv_proj") && !k.contains(".layer.")));
        let plain = SamModel::new(&config(AttentionMode::Math), None, Device::Cpu).unwrap();
        plain.load_state(&merged, None, LoadMode::Strict).unwrap();
        let d = max_diff(&embed(&plain, &io["image"]), &io["embeddings"]);
        assert!(d <= TOL, "{name}: merged model, max abs error {d:e}");

        let merged_file = dir.path().join(format!("{name}_merged.pt"));
        let peft_file = dir.path().join(format!("{name}_peft.pt"));
        write_sam_state_dict(&merged_file, &merged).unwrap();
        write_sam_state_dict(&peft_file, &model.micro_sam_peft_state().unwrap()).unwrap();
        let out = Command::new(sam_testkit::venv_python())
            .arg(script())
            .arg("check")
            .arg(name)
            .arg(fixtures().join(format!("peft_{name}_io.safetensors")))
            .arg(&merged_file)
            .arg(&peft_file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: python check failed\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let diffs: HashMap<&str, f64> = stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k, v.trim().parse().unwrap()))
            .collect();
        for layout in ["merged", "peft"] {
            let d = diffs[layout];
            assert!(
                d <= TOL,
                "{name}: {layout} export in Python, max abs error {d:e}"
            );
        }
    }
}

/// In a training forward the patch embedding and the blocks before the first adapted one run
/// outside the autograd graph: even a weight there that asks for gradients gets none, while
/// the adapters and the weights of later blocks do. The encoder's own weights are frozen.
#[test]
fn blocks_before_the_first_adapted_one_are_outside_the_graph() {
    tch::manual_seed(0);
    let model = SamModel::new(&config(AttentionMode::Math), None, Device::Cpu)
        .unwrap()
        .with_peft(&PeftSpec::new(PeftMethod::Lora, 2, vec![1, 2]))
        .unwrap();
    assert_eq!(model.sam().image_encoder.first_graph_block(), 1);
    let vars = model.named_variables();
    let var = |k: &str| vars.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
    assert!(vars
        .iter()
        .filter(|(k, _)| k.starts_with("image_encoder."))
        .all(|(_, v)| !v.requires_grad()));
    // Adapters train; LoRA's B starts at zero, so A's gradient is zero at first: set B.
    for b in ["w_b_linear_q", "w_b_linear_v"] {
        let b = var(&format!("peft.image_encoder.blocks.1.attn.qkv.{b}.weight"));
        tch::no_grad(|| {
            let _ = b.shallow_clone().normal_(0.0, 0.1);
        });
    }
    let w0 = var("image_encoder.blocks.0.mlp.lin1.weight").set_requires_grad(true);
    let w1 = var("image_encoder.blocks.1.mlp.lin1.weight").set_requires_grad(true);
    let x = Tensor::randn([1, 3, 256, 256], (Kind::Float, Device::Cpu));
    let y = model.sam().image_encoder.forward_training(&x);
    y.square().sum(Kind::Float).backward();
    assert!(!w0.grad().defined(), "block 0 was in the graph");
    assert!(w1.grad().defined(), "block 1 was not in the graph");
    for k in [
        "w_a_linear_q",
        "w_b_linear_q",
        "w_a_linear_v",
        "w_b_linear_v",
    ] {
        let g = var(&format!("peft.image_encoder.blocks.1.attn.qkv.{k}.weight")).grad();
        assert!(
            g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{k}"
        );
    }
}

/// FacT's dropout is active in a training forward and off in inference.
#[test]
fn fact_dropout_acts_only_in_training() {
    tch::manual_seed(1);
    let model = SamModel::new(&config(AttentionMode::Math), None, Device::Cpu)
        .unwrap()
        .with_peft(&PeftSpec::new(PeftMethod::Fact, 2, vec![2]))
        .unwrap();
    let enc = &model.sam().image_encoder;
    let x = Tensor::randn([1, 3, 256, 256], (Kind::Float, Device::Cpu));
    let (a, b) = tch::no_grad(|| (enc.forward(&x), enc.forward(&x)));
    assert_eq!(max_diff(&a, &b), 0.0);
    let (c, d) = tch::no_grad(|| (enc.forward_training(&x), enc.forward_training(&x)));
    assert!(max_diff(&c, &d) > 0.0);
}

/// Specs that build nothing are refused with the field named.
#[test]
fn bad_specs_are_refused() {
    let build = |s: PeftSpec| {
        SamModel::new(&config(AttentionMode::Math), None, Device::Cpu)
            .unwrap()
            .with_peft(&s)
            .unwrap_err()
            .to_string()
    };
    assert!(build(PeftSpec::new(PeftMethod::Lora, 0, vec![1])).contains("peft.rank"));
    assert!(build(PeftSpec::new(PeftMethod::Lora, 2, vec![3])).contains("peft.blocks"));
    let tiny_vit = SamModel::new(&SamConfig::vit_t(), None, Device::Cpu).unwrap();
    assert!(tiny_vit
        .with_peft(&PeftSpec::new(PeftMethod::Ssf, 0, vec![0]))
        .unwrap_err()
        .to_string()
        .contains("TinyViT"));
}

/// micro_sam's LoRA has alpha 1: a model with another alpha, written in micro_sam's layout
/// and read back (alpha 1), computes the same.
#[test]
fn lora_alpha_is_folded_into_the_micro_sam_layout() {
    let state = read("peft_lora.safetensors");
    let (base, adapters, _) = sam_model::peft::from_micro_sam_layout(&state)
        .unwrap()
        .unwrap();
    let spec = PeftSpec {
        alpha: 2.5,
        ..spec(PeftMethod::Lora)
    };
    let model = SamModel::new(&config(AttentionMode::Math), None, Device::Cpu)
        .unwrap()
        .with_peft(&spec)
        .unwrap();
    model.load_state(&base, None, LoadMode::Strict).unwrap();
    model.load_peft(&adapters).unwrap();
    let layout = model.micro_sam_peft_state().unwrap();
    let (base2, adapters2, spec2) = sam_model::peft::from_micro_sam_layout(&layout)
        .unwrap()
        .unwrap();
    assert_eq!(spec2.alpha, 1.0);
    let back = SamModel::new(&config(AttentionMode::Math), None, Device::Cpu)
        .unwrap()
        .with_peft(&spec2)
        .unwrap();
    back.load_state(&base2, None, LoadMode::Strict).unwrap();
    back.load_peft(&adapters2).unwrap();
    let x = &io("lora")["image"];
    let d = max_diff(&embed(&model, x), &embed(&back, x));
    assert!(d <= TOL, "max abs error {d:e}");
    // And alpha acts: the output differs from alpha 1's.
    let d1 = max_diff(&embed(&model, x), &io("lora")["embeddings"]);
    assert!(d1 > 1e-3, "alpha changed the output by {d1:e} only");
}
