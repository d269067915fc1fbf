//! Parity of [`sam_train::AdamW`] with `torch.optim.AdamW(fused=True)` and
//! `torch.nn.utils.clip_grad_norm_(foreach=True)`: `tests/python/optim_parity.py` runs three
//! clipped steps on parameters shaped like vit_b SAM's (one of them float64, one without a
//! gradient in step 2) and saves inputs and results; we run the same steps on the same inputs.
//! The file is generated once into `target/test-fixtures/sam-train-optim/` and again when the
//! script changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sam_train::{AdamW, AdamWConfig};
use tch::{Kind, Tensor};

/// Largest difference allowed, relative to the largest magnitude of the expected tensor.
const TOL: f64 = 1e-6;
/// The parameter without a gradient in step 2 (`SKIP` of the script).
const SKIP: &str = "image_encoder.neck.1.weight";

/// The reference file, generated once and again when the script changes.
fn fixture() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/optim_parity.py");
        sam_testkit::script_fixtures("sam-train-optim", &script, |_| Vec::new())
            .join("optim_parity.safetensors")
    })
}

/// The gradient of step `step` (0-based) from the stored one, by the script's exact rule.
fn grad_at(step: usize, g: &Tensor) -> Tensor {
    match step {
        0 => g.copy(),
        1 => {
            let dims: Vec<i64> = (0..g.dim() as i64).collect();
            g.flip(dims) * -0.5
        }
        _ => g * 0.125,
    }
}

/// Max |got - want| and max |want|, in f64.
fn diff_and_scale(got: &Tensor, want: &Tensor) -> (f64, f64) {
    let (got, want) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
    let diff = (&got - &want).abs().max().double_value(&[]);
    (diff, want.abs().max().double_value(&[]))
}

#[test]
fn adamw_and_clipping_match_torch_fused_on_vit_b_shapes() {
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(fixture())
        .unwrap()
        .into_iter()
        .collect();
    let get = |key: &str| {
        tensors
            .get(key)
            .unwrap_or_else(|| panic!("the fixture has no `{key}`"))
    };
    let mut names: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_prefix("param.").map(str::to_owned))
        .collect();
    names.sort();
    assert!(names.iter().any(|n| n == SKIP), "{names:?}");
    let vars: Vec<(String, Tensor)> = names
        .iter()
        .map(|n| {
            let var = get(&format!("param.{n}")).copy().set_requires_grad(true);
            (n.clone(), var)
        })
        .collect();
    let kinds: Vec<Kind> = vars.iter().map(|(_, v)| v.kind()).collect();
    assert!(kinds.contains(&Kind::Float) && kinds.contains(&Kind::Double));

    let mut opt = AdamW::new(
        vars.iter()
            .map(|(n, v)| (n.clone(), v.shallow_clone()))
            .collect(),
        AdamWConfig {
            lr: 1e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        },
    );
    let mut norms = Vec::new();
    for step in 0..3 {
        opt.zero_grad().unwrap();
        for (name, var) in &vars {
            if step == 1 && name == SKIP {
                continue;
            }
            // d/dp sum(p * g) = g, exactly.
            let g = grad_at(step, get(&format!("grad.{name}")));
            (var * g).sum(var.kind()).backward();
        }
        norms.push(opt.clip_grad_norm(1.0).unwrap().double_value(&[]));
        opt.step().unwrap();
    }

    let mut report = Vec::new();
    let mut failures = Vec::new();
    let want_norms: Vec<f64> = Vec::try_from(get("expect.norm")).unwrap();
    for (got, want) in norms.iter().zip(&want_norms) {
        let diff = (got - want).abs();
        report.push(format!("norm {got} (torch {want}): diff {diff:.3e}"));
        if diff > TOL * want.abs() {
            failures.push(format!("clip norm: expected {want}, got {got}"));
        }
    }
    let state: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    for (name, var) in &vars {
        for (what, got) in [
            ("param", var.detach()),
            ("exp_avg", state[&format!("exp_avg.{name}")].shallow_clone()),
            (
                "exp_avg_sq",
                state[&format!("exp_avg_sq.{name}")].shallow_clone(),
            ),
        ] {
            let want = get(&format!("expect.{what}.{name}"));
            assert_eq!(got.kind(), want.kind(), "{what}.{name} dtype");
            let (diff, scale) = diff_and_scale(&got, want);
            report.push(format!(
                "{what}.{name}: max diff {diff:.3e} (scale {scale:.3e})"
            ));
            if diff > TOL * scale {
                failures.push(format!(
                    "{what}.{name}: max |ours - torch| = {diff:e}, over {TOL} x {scale:e}"
                ));
            }
        }
        let steps = state[&format!("step.{name}")].int64_value(&[0]);
        let want = get(&format!("expect.step.{name}")).double_value(&[0]);
        assert_eq!(steps as f64, want, "step count of {name}");
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
