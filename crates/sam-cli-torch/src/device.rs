//! `--device`: one parser for every executable that takes the flag.

use sam_cli::CliError;
use sam_model::Precision;
use sam_torch::{DeviceChoice, DeviceRequest};

/// `--device` as sam-torch's request: `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<DeviceRequest, CliError> {
    name.parse().map_err(|e| CliError::Device(Box::new(e)))
}

/// The device of `--device` for this process (local rank 0): a GPU that cannot be had is an
/// error that says why (libtorch build, NVIDIA driver, `CUDA_VISIBLE_DEVICES`), before any
/// work. Its `Display` is the line the executables print (`device: {choice}`).
pub fn select_device(name: &str) -> Result<DeviceChoice, CliError> {
    sam_torch::select_device(parse_device(name)?, 0).map_err(|e| CliError::Device(Box::new(e)))
}

/// `--precision` (`fp32`, `bf16`) as sam-model's [`Precision`]: clap's `value_parser` of the
/// flag in every executable that takes it, so that a bad value is a usage error naming the flag.
pub fn parse_precision(name: &str) -> Result<Precision, String> {
    name.parse()
        .map_err(|_| "expected fp32 or bf16".to_string())
}

/// The line the executables print once the device is chosen: the device and the precision of
/// the forward passes.
pub fn device_line(choice: &DeviceChoice, precision: Precision) -> String {
    format!("device: {choice}; precision: {precision}")
}

/// Switches TF32 matrix products for fp32 work on or off (`hardware.tf32`, on unless a config
/// turns it off) when `device` is a GPU; the CPU has no TF32 and is left alone. Returns whether
/// TF32 is on for the device.
pub fn apply_tf32(device: tch::Device, on: bool) -> Result<bool, CliError> {
    if !device.is_cuda() {
        return Ok(false);
    }
    sam_torch::set_tf32(sam_torch::Tf32 {
        cublas: on,
        cudnn: on,
    })
    .map_err(|e| CliError::Device(Box::new(e)))?;
    Ok(on)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert!(matches!(parse_device("cpu"), Ok(DeviceRequest::Cpu)));
        assert!(matches!(parse_device("auto"), Ok(DeviceRequest::Auto)));
        assert!(matches!(parse_device("cuda"), Ok(DeviceRequest::Cuda)));
        assert!(matches!(
            parse_device("cuda:1"),
            Ok(DeviceRequest::CudaIndex(1))
        ));
        let err = parse_device("gpu:0").unwrap_err();
        assert!(
            err.to_string().contains("--device: unknown device `gpu:0`"),
            "{err}"
        );
        assert_eq!(sam_cli::Failure::from(err).code(), sam_cli::EXIT_USAGE);
        assert_eq!(select_device("cpu").unwrap().device, tch::Device::Cpu);
    }

    #[test]
    fn precision_names() {
        assert_eq!(parse_precision("fp32"), Ok(Precision::Fp32));
        assert_eq!(parse_precision("bf16"), Ok(Precision::Bf16));
        assert_eq!(
            parse_precision("fp16").unwrap_err(),
            "expected fp32 or bf16"
        );
        let cpu = select_device("cpu").unwrap();
        let line = device_line(&cpu, Precision::Bf16);
        assert!(
            line.starts_with("device: cpu") && line.ends_with("; precision: bf16"),
            "{line}"
        );
    }

    #[test]
    fn tf32_is_left_alone_on_the_cpu() {
        let before = sam_torch::tf32().unwrap();
        assert!(!apply_tf32(tch::Device::Cpu, !before.cublas).unwrap());
        assert_eq!(sam_torch::tf32().unwrap(), before);
    }
}
