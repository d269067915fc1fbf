//! Distributed, hardware and SLURM sections, and the accelerator presets.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::Backbone;
use crate::training::Precision;

/// Collective-communication backend of c10d.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// NCCL on GPUs, Gloo on CPU.
    Auto,
    /// NCCL (GPUs only).
    Nccl,
    /// Gloo (CPU, or GPUs through host memory; slow).
    Gloo,
}

/// Multi-process training. Rank and world size come from SLURM or torchrun variables at run
/// time; these fields size the job and must agree with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DistributedConfig {
    /// Collective backend.
    pub backend: Backend,
    /// Nodes per job (1–2 on the cluster).
    pub nodes: u32,
    /// GPUs (training processes) per node (1–4 on the cluster).
    pub gpus_per_node: u32,
    /// TCP port of the rendezvous store on the first node.
    pub master_port: u16,
    /// Minutes a collective may wait before the job is declared hung.
    pub timeout_minutes: u32,
    /// The dtype gradients travel in when they are averaged over processes: `fp32`, or `bf16`
    /// for half the bytes (each gradient rounded to bf16 before the sum, the mean widened back
    /// to fp32).
    pub gradient_allreduce_dtype: GradientAllreduceDtype,
}

/// The dtype of the gradient all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GradientAllreduceDtype {
    /// float32: the mean of the ranks' gradients up to the order of the float32 sum.
    Fp32,
    /// bfloat16: half the bytes on the wire, bf16 rounding of each gradient and of the sum.
    Bf16,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            nodes: 1,
            gpus_per_node: 1,
            master_port: 29500,
            timeout_minutes: 30,
            gradient_allreduce_dtype: GradientAllreduceDtype::Fp32,
        }
    }
}

impl DistributedConfig {
    /// Number of training processes: nodes × GPUs per node.
    pub fn world_size(&self) -> u32 {
        self.nodes.saturating_mul(self.gpus_per_node)
    }
}

/// The accelerator a run is sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    /// NVIDIA A100, 80 GB.
    A100,
    /// NVIDIA A40, 48 GB.
    A40,
    /// CPU only (demos, tests).
    Cpu,
}

impl Accelerator {
    /// The name used in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::A100 => "a100",
            Accelerator::A40 => "a40",
            Accelerator::Cpu => "cpu",
        }
    }

    /// The preset limits for this accelerator.
    pub fn preset(self) -> AcceleratorPreset {
        match self {
            Accelerator::A100 => AcceleratorPreset {
                accelerator: self,
                memory_gb: 80,
                max_batch_size: [8, 4, 2, 1],
                max_num_workers: 8,
                partition: Some("a100"),
                seconds_per_sample: [0.12, 0.30, 0.75, 1.40],
                reason: "A100 80 GB: ViT-B fits 4 patches per GPU with 8 prompt \
                         sub-iterations; 8 loader threads per GPU keep the GPU fed",
            },
            Accelerator::A40 => AcceleratorPreset {
                accelerator: self,
                memory_gb: 48,
                max_batch_size: [4, 2, 1, 1],
                max_num_workers: 8,
                partition: Some("a40"),
                seconds_per_sample: [0.20, 0.50, 1.25, 2.30],
                reason: "A40 48 GB vs the A100's 80 GB: about half the activations fit, so \
                         ViT-B takes 2 patches per GPU; its bf16 throughput is ~60% of the A100's",
            },
            Accelerator::Cpu => AcceleratorPreset {
                accelerator: self,
                memory_gb: 0,
                max_batch_size: [4, 2, 1, 1],
                max_num_workers: 8,
                partition: None,
                seconds_per_sample: [6.0, 15.0, 40.0, 80.0],
                reason: "CPU: fp32 or bf16 autocast, for demos and tests with small models",
            },
        }
    }
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits and rough speeds of one accelerator, used by validation and the wall-time estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceleratorPreset {
    /// Which accelerator.
    pub accelerator: Accelerator,
    /// Memory per GPU in GB (0 for CPU).
    pub memory_gb: u32,
    /// Largest batch per process for vit_t, vit_b, vit_l, vit_h with the original
    /// architecture.
    pub max_batch_size: [u32; 4],
    /// Most loader worker threads per training process.
    pub max_num_workers: u32,
    /// Default SLURM partition.
    pub partition: Option<&'static str>,
    /// Rough seconds per training patch (forward + backward with 8 prompt sub-iterations)
    /// for vit_t, vit_b, vit_l, vit_h; used only for the wall-time estimate.
    pub seconds_per_sample: [f64; 4],
    /// Why the values are what they are.
    pub reason: &'static str,
}

impl AcceleratorPreset {
    /// The largest batch per process for a backbone.
    pub fn max_batch(&self, backbone: Backbone) -> u32 {
        self.max_batch_size[backbone_index(backbone)]
    }

    /// Rough seconds per training patch for a backbone.
    pub fn seconds_per_sample(&self, backbone: Backbone) -> f64 {
        self.seconds_per_sample[backbone_index(backbone)]
    }
}

fn backbone_index(b: Backbone) -> usize {
    match b {
        Backbone::VitT => 0,
        Backbone::VitB => 1,
        Backbone::VitL => 2,
        Backbone::VitH => 3,
    }
}

/// The hardware a run is sized for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HardwareConfig {
    /// Accelerator; selects the preset limits (batch size, loader workers, precision).
    pub accelerator: Accelerator,
    /// TF32 matrix products for fp32 work on a GPU (Ampere and newer): training in fp32,
    /// validation, `sam-eval` and `sam-infer`; `false` keeps strict fp32 there.
    pub tf32: bool,
}

impl Default for HardwareConfig {
    fn default() -> Self {
        Self {
            accelerator: Accelerator::A100,
            tf32: true,
        }
    }
}

impl HardwareConfig {
    /// Whether a precision runs on this accelerator. CPUs run fp32 and bf16 autocast (what
    /// micro_sam uses on a CPU); tf32 and fp16 need a GPU.
    pub fn supports(&self, precision: Precision) -> bool {
        match self.accelerator {
            Accelerator::Cpu => matches!(precision, Precision::Fp32 | Precision::Bf16),
            Accelerator::A100 | Accelerator::A40 => true,
        }
    }
}

/// SLURM resources per job, read by `scripts/submit_training_a100.sh`. One task per GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SlurmConfig {
    /// Partition; `null`: the accelerator preset's (`a100` or `a40`).
    pub partition: Option<String>,
    /// Account to charge; `null`: the user's default.
    pub account: Option<String>,
    /// Quality of service; `null`: the partition's default.
    pub qos: Option<String>,
    /// Job name; `null`: the experiment name.
    pub job_name: Option<String>,
    /// Wall-time limit, `HH:MM:SS` or `D-HH:MM:SS`; at most `56:00:00`.
    pub time_limit: String,
    /// CPU cores per task (one task per GPU); at least `data.num_workers + 1`.
    pub cpus_per_task: u32,
    /// Memory per node, e.g. `256G` (suffix K, M, G or T; at most 600G).
    pub memory: String,
    /// Seconds before the time limit at which SLURM sends SIGUSR1 so that training
    /// checkpoints and requeues.
    pub signal_lead_seconds: u32,
    /// Requeue the job after a time-limit stop; it resumes from `latest`.
    pub requeue: bool,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        Self {
            partition: None,
            account: None,
            qos: None,
            job_name: None,
            time_limit: "56:00:00".to_owned(),
            cpus_per_task: 9,
            memory: "256G".to_owned(),
            signal_lead_seconds: 600,
            requeue: true,
        }
    }
}

/// The longest SLURM wall time the cluster grants, in seconds (56 h).
pub const MAX_WALL_TIME_SECONDS: u64 = 56 * 3600;
/// GPUs per node on the cluster.
pub const MAX_GPUS_PER_NODE: u32 = 4;
/// Nodes per job on the cluster.
pub const MAX_NODES: u32 = 2;
/// Memory per node on the cluster, in GB.
pub const MAX_MEMORY_GB: u64 = 600;

/// Parse a SLURM time (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`) into
/// seconds. Returns a message on malformed input.
pub fn parse_slurm_time(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a SLURM time (HH:MM:SS or D-HH:MM:SS)");
    let num = |t: &str| -> Result<u64, String> {
        if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse::<u64>().map_err(|_| bad())
    };
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (Some(num(d)?), r),
        None => (None, s),
    };
    let parts = rest.split(':').map(num).collect::<Result<Vec<_>, _>>()?;
    let (h, m, sec) = match (days.is_some(), parts.as_slice()) {
        (false, [m]) => (0, *m, 0),
        (false, [m, s]) => (0, *m, *s),
        (false, [h, m, s]) => (*h, *m, *s),
        (true, [h]) => (*h, 0, 0),
        (true, [h, m]) => (*h, *m, 0),
        (true, [h, m, s]) => (*h, *m, *s),
        _ => return Err(bad()),
    };
    let hours_given = days.is_some() || parts.len() == 3;
    if (hours_given && m >= 60) || sec >= 60 {
        return Err(bad());
    }
    Ok(days.unwrap_or(0) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Parse a SLURM memory size (`256G`, `500000M`, plain numbers are MB) into GB.
pub fn parse_slurm_memory_gb(s: &str) -> Result<f64, String> {
    let bad = || format!("`{s}` is not a SLURM memory size (a number with suffix K, M, G or T)");
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "M"),
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let n: f64 = digits.parse::<u64>().map_err(|_| bad())? as f64;
    let gb = match unit {
        "K" | "k" => n / (1024.0 * 1024.0),
        "M" | "m" => n / 1024.0,
        "G" | "g" => n,
        "T" | "t" => n * 1024.0,
        _ => return Err(bad()),
    };
    Ok(gb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_times_parse_to_seconds() {
        assert_eq!(parse_slurm_time("56:00:00"), Ok(56 * 3600));
        assert_eq!(parse_slurm_time("2-08:00:00"), Ok(56 * 3600));
        assert_eq!(parse_slurm_time("1-00"), Ok(86_400));
        assert_eq!(parse_slurm_time("90"), Ok(5400));
        assert_eq!(parse_slurm_time("10:30"), Ok(630));
        assert_eq!(
            parse_slurm_time("2-08:30"),
            Ok(2 * 86_400 + 8 * 3600 + 30 * 60)
        );
        for bad in ["", "56h", "1:2:3:4", "12:61:00", "a-10:00:00", "10:00:75"] {
            assert!(parse_slurm_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slurm_memory_parses_to_gb() {
        assert_eq!(parse_slurm_memory_gb("256G"), Ok(256.0));
        assert_eq!(parse_slurm_memory_gb("1T"), Ok(1024.0));
        assert_eq!(parse_slurm_memory_gb("2048"), Ok(2.0));
        assert_eq!(parse_slurm_memory_gb("512M"), Ok(0.5));
        assert!(parse_slurm_memory_gb("lots").is_err());
        assert!(parse_slurm_memory_gb("12X").is_err());
    }

    #[test]
    fn a40_preset_is_smaller_than_a100() {
        let (a100, a40) = (Accelerator::A100.preset(), Accelerator::A40.preset());
        assert_eq!(a100.max_batch(Backbone::VitB), 4);
        assert_eq!(a40.max_batch(Backbone::VitB), 2);
        assert!(a40.reason.contains("48 GB"));
        assert_eq!(a100.max_num_workers, 8);
    }
}
