//! The model's side of `scripts/gpu_check.sh`: CPU ↔ device parity of a seeded SAM, the SDPA
//! kernel its attention gets, and image-encoder throughput. Run on a GPU machine with
//! `--device cuda`; the script's rehearsal runs it with `--device cpu` and the tiny model.
//!
//! ```text
//! device_check parity  --device cuda [--model vit_b|tiny] [--json FILE]
//! device_check encoder --device cuda [--model vit_b|tiny] [--batches 1,4] [--iters 5] [--json FILE]
//! ```
//!
//! `parity` builds the model on the CPU from a fixed seed, copies it to the device and compares
//! the image embeddings and the box-prompted mask logits of one image: device fp32 with TF32
//! off against the CPU (relative error ≤ 1e-4), device bf16 autocast against the CPU (≤ 2e-2).
//! `encoder` reports images/s and peak device memory of the encoder forward in fp32, TF32
//! (CUDA only) and bf16. Both print a table and write JSON; the exit status is 1 when a
//! tolerance is missed.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use sam_model::{ImageEncoderConfig, Sam, SamConfig};
use serde_json::{json, Value};
use tch::{nn, Device, Kind, Tensor};

#[derive(Parser, Debug)]
#[command(about = "CPU/device parity, SDPA kernel and encoder throughput of a seeded SAM")]
struct Args {
    #[command(subcommand)]
    check: Check,
}

#[derive(Subcommand, Debug)]
enum Check {
    /// Device against CPU on the same weights and input.
    Parity(Common),
    /// Encoder images/s and peak memory per precision and batch size.
    Encoder {
        #[command(flatten)]
        common: Common,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        batches: Vec<i64>,
        /// Timed forwards per case (after one untimed).
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
}

#[derive(clap::Args, Debug)]
struct Common {
    /// `cuda` (GPU 0) or `cpu` (the rehearsal).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// `vit_b` (SAM's, 1024² input) or `tiny` (depth 2, 64 px).
    #[arg(long, value_enum, default_value = "vit-b")]
    model: Model,
    /// Where to write the results as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Model {
    VitB,
    Tiny,
}

impl Model {
    fn config(self) -> SamConfig {
        match self {
            Model::VitB => SamConfig::vit_b(),
            Model::Tiny => SamConfig::tiny(),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (common, result) = match &args.check {
        Check::Parity(common) => (common, parity(common)),
        Check::Encoder {
            common,
            batches,
            iters,
        } => (common, encoder(common, batches, *iters)),
    };
    match result {
        Ok((value, ok)) => {
            if let Some(path) = &common.json {
                if let Err(e) = std::fs::write(path, format!("{value:#}\n")) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn device_of(name: &str) -> Result<Device, String> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if sam_torch::cuda_is_available() => Ok(Device::Cuda(0)),
        "cuda" => Err("--device cuda: CUDA is not available to libtorch".into()),
        other => Err(format!("--device {other}: expected cuda or cpu")),
    }
}

/// A seeded model on `device` (weights drawn on the CPU, so every device gets the same ones).
fn seeded_model(model: Model, device: Device) -> Result<(nn::VarStore, Sam), String> {
    tch::manual_seed(0);
    let cpu = nn::VarStore::new(Device::Cpu);
    let sam = Sam::new(&cpu.root(), &model.config()).map_err(|e| e.to_string())?;
    // Zero-initialised relative-position tables would hide the bias path; give them values.
    // Drawn in name order: the variable map's own order changes from run to run.
    let mut tables: Vec<(String, Tensor)> = cpu
        .variables()
        .into_iter()
        .filter(|(name, _)| name.contains("rel_pos"))
        .collect();
    tables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, var) in &mut tables {
            var.copy_(&(Tensor::randn_like(var) * 0.02));
        }
    });
    if device == Device::Cpu {
        return Ok((cpu, sam));
    }
    let mut on_device = nn::VarStore::new(device);
    let sam_device = Sam::new(&on_device.root(), &model.config()).map_err(|e| e.to_string())?;
    on_device.copy(&cpu).map_err(|e| e.to_string())?;
    Ok((on_device, sam_device))
}

/// One forward: image embeddings and the box-prompted low-resolution mask logits.
fn forward(sam: &Sam, image: &Tensor, boxes: &Tensor) -> Result<(Tensor, Tensor), String> {
    tch::no_grad(|| {
        let emb = sam.image_encoder.forward(image);
        let (low, _iou) = sam
            .forward_prompts(&emb, None, Some(boxes), None, false)
            .map_err(|e| e.to_string())?;
        Ok((emb, low))
    })
}

/// max |a − b| / max |b|, in f64 on the CPU.
fn relative_error(got: &Tensor, reference: &Tensor) -> f64 {
    let got = got.to_device(Device::Cpu).to_kind(Kind::Double);
    let reference = reference.to_device(Device::Cpu).to_kind(Kind::Double);
    let scale = reference.abs().max().double_value(&[]).max(1e-12);
    (got - &reference).abs().max().double_value(&[]) / scale
}

fn set_tf32(on: bool) -> Result<(), String> {
    sam_torch::set_tf32(sam_torch::Tf32 {
        cublas: on,
        cudnn: on,
    })
    .map_err(|e| e.to_string())
}

fn parity(common: &Common) -> Result<(Value, bool), String> {
    let device = device_of(&common.device)?;
    let cfg = common.model.config();
    let side = cfg.image_encoder.img_size();
    tch::manual_seed(1);
    let image = Tensor::randn([1, 3, side, side], (Kind::Float, Device::Cpu));
    let s = side as f64;
    let boxes = Tensor::from_slice(&[0.2 * s, 0.25 * s, 0.7 * s, 0.8 * s]).view([1, 4]);

    let (_cpu_vs, cpu_sam) = seeded_model(common.model, Device::Cpu)?;
    let (emb_ref, low_ref) = forward(&cpu_sam, &image, &boxes.to_kind(Kind::Float))?;

    let (_vs, sam) = seeded_model(common.model, device)?;
    let image_d = image.to_device(device);
    let boxes_d = boxes.to_kind(Kind::Float).to_device(device);
    if device.is_cuda() {
        set_tf32(false)?;
    }
    let (emb32, low32) = forward(&sam, &image_d, &boxes_d)?;
    let (emb16, low16) =
        sam_torch::autocast(device, Kind::BFloat16, || forward(&sam, &image_d, &boxes_d))
            .map_err(|e| e.to_string())??;
    let rows = [
        ("fp32 embeddings", relative_error(&emb32, &emb_ref), 1e-4),
        ("fp32 mask logits", relative_error(&low32, &low_ref), 1e-4),
        ("bf16 embeddings", relative_error(&emb16, &emb_ref), 2e-2),
        ("bf16 mask logits", relative_error(&low16, &low_ref), 2e-2),
    ];
    let mut ok = true;
    let mut cases = Vec::new();
    println!("{:<18} {:>12} {:>10}", "case", "rel. error", "limit");
    for (name, err, limit) in rows {
        let pass = err.is_finite() && err <= limit;
        ok &= pass;
        println!(
            "{name:<18} {err:>12.3e} {limit:>10.0e} {}",
            if pass { "ok" } else { "FAIL" }
        );
        cases.push(json!({"case": name, "relative_error": err, "limit": limit, "ok": pass}));
    }
    let kernels = sdpa_kernels(&cfg, device);
    for (case, kernel) in &kernels {
        println!("sdpa {case}: {}", kernel.as_str().unwrap_or_default());
    }
    let value = json!({
        "check": "parity",
        "device": common.device,
        "model": format!("{:?}", common.model),
        "cases": cases,
        "sdpa_kernels": kernels.into_iter().collect::<serde_json::Map<String, Value>>(),
        "ok": ok,
    });
    Ok((value, ok))
}

/// Which fused kernel `scaled_dot_product_attention` picks for the encoder's global and
/// windowed attention with its additive relative-position bias, in fp32 and bf16.
fn sdpa_kernels(cfg: &SamConfig, device: Device) -> Vec<(String, Value)> {
    let ImageEncoderConfig::Vit(enc) = &cfg.image_encoder else {
        return Vec::new();
    };
    let heads = enc.num_heads;
    let head_dim = enc.embed_dim / heads;
    let tokens = enc.img_size / enc.patch_size;
    let window = enc.window_size.max(1);
    let windows = ((tokens + window - 1) / window).pow(2);
    let mut out = Vec::new();
    for (shape_name, batch, len) in [
        ("global", 1, tokens * tokens),
        ("window", windows, window * window),
    ] {
        for (kind_name, kind) in [("fp32", Kind::Float), ("bf16", Kind::BFloat16)] {
            let q = Tensor::randn([batch, heads, len, head_dim], (kind, device));
            let bias = Tensor::randn([batch, heads, len, len], (kind, device));
            let choice = Tensor::f_internal_fused_sdp_choice(
                &q,
                &q,
                &q,
                Some(&bias),
                0.0,
                false,
                None,
                false,
            );
            let name = match choice {
                Ok(0) => "math".to_string(),
                Ok(1) => "flash".to_string(),
                Ok(2) => "efficient".to_string(),
                Ok(3) => "cudnn".to_string(),
                Ok(other) => format!("backend {other}"),
                Err(e) => format!("error: {e}"),
            };
            out.push((format!("{shape_name} {kind_name}"), Value::String(name)));
        }
    }
    out
}

fn encoder(common: &Common, batches: &[i64], iters: usize) -> Result<(Value, bool), String> {
    let device = device_of(&common.device)?;
    let cfg = common.model.config();
    let side = cfg.image_encoder.img_size();
    let (_vs, sam) = seeded_model(common.model, device)?;
    let mut precisions = vec!["fp32", "bf16"];
    if device.is_cuda() {
        precisions.insert(1, "tf32");
    }
    println!(
        "{:<6} {:>6} {:>10} {:>16}",
        "prec.", "batch", "images/s", "peak memory MiB"
    );
    let mut rows = Vec::new();
    for &precision in &precisions {
        if device.is_cuda() {
            set_tf32(precision == "tf32")?;
        }
        for &batch in batches {
            let image = Tensor::randn([batch, 3, side, side], (Kind::Float, device));
            let run = || {
                tch::no_grad(|| {
                    if precision == "bf16" {
                        sam_torch::autocast(device, Kind::BFloat16, || {
                            sam.image_encoder.forward(&image)
                        })
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                    } else {
                        let _ = sam.image_encoder.forward(&image);
                        Ok(())
                    }
                })
            };
            run()?; // warm-up: kernel selection, allocator growth
            sync(device)?;
            if let Device::Cuda(i) = device {
                sam_torch::reset_peak_memory_stats(i).map_err(|e| e.to_string())?;
            }
            let t0 = Instant::now();
            for _ in 0..iters {
                run()?;
            }
            sync(device)?;
            let seconds = t0.elapsed().as_secs_f64();
            let images_per_s = (batch as usize * iters) as f64 / seconds;
            let peak_mib = match device {
                Device::Cuda(i) => sam_torch::cuda_memory_stats(i)
                    .map(|s| (s.peak_allocated >> 20) as f64)
                    .map_err(|e| e.to_string())?,
                _ => f64::NAN,
            };
            println!("{precision:<6} {batch:>6} {images_per_s:>10.2} {peak_mib:>16.0}");
            rows.push(json!({
                "precision": precision, "batch": batch, "images_per_s": images_per_s,
                "peak_memory_mib": if peak_mib.is_nan() { Value::Null } else { json!(peak_mib) },
            }));
        }
    }
    if device.is_cuda() {
        set_tf32(false)?;
    }
    let value = json!({
        "check": "encoder", "device": common.device, "model": format!("{:?}", common.model),
        "image_side": side, "iters": iters, "rows": rows, "ok": true,
    });
    Ok((value, true))
}

fn sync(device: Device) -> Result<(), String> {
    match device {
        Device::Cuda(i) => sam_torch::cuda_synchronize(i).map_err(|e| e.to_string()),
        _ => Ok(()),
    }
}
