//! CUDA device selection, caching-allocator memory statistics and TF32 switches.
//!
//! On a machine without a usable GPU, [`cuda_is_available`] is `false`, [`cuda_device_count`]
//! is 0 and the other device functions return an error saying so. [`select_device`] turns a
//! device name from a config or a flag (`auto`, `cpu`, `cuda`, `cuda:N`) into the device of a
//! process, or into a [`DeviceError`] that says why there is no GPU.
use std::ffi::{c_char, c_int, c_void, CStr};
use std::fmt;
use std::str::FromStr;

use tch::Device;

use crate::error::Error;
use crate::ffi::{self, take};

fn index_arg(op: &'static str, index: usize) -> Result<c_int, Error> {
    c_int::try_from(index).map_err(|_| Error::Torch {
        op,
        message: format!("CUDA device index {index} does not fit a C int"),
    })
}

/// Whether libtorch sees a CUDA driver and at least one GPU.
pub fn cuda_is_available() -> bool {
    let mut out: c_int = 0;
    // SAFETY: `out` is a valid local.
    take("cuda_is_available", unsafe {
        ffi::sam_torch_cuda_is_available(&mut out)
    })
    .is_ok()
        && out != 0
}

/// Number of GPUs this process sees (after `CUDA_VISIBLE_DEVICES`); 0 without CUDA.
pub fn cuda_device_count() -> usize {
    let mut out: c_int = 0;
    // SAFETY: `out` is a valid local.
    match take("cuda_device_count", unsafe {
        ffi::sam_torch_cuda_device_count(&mut out)
    }) {
        Ok(()) => usize::try_from(out).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Makes GPU `index` the current CUDA device of the calling thread (what
/// `torch.cuda.set_device(local_rank)` does); NCCL process groups and `Device::Cuda(index)`
/// allocations then use it.
pub fn set_cuda_device(index: usize) -> Result<(), Error> {
    let index = index_arg("set_cuda_device", index)?;
    // SAFETY: plain value argument.
    take("set_cuda_device", unsafe {
        ffi::sam_torch_cuda_set_device(index)
    })
}

/// The current CUDA device of the calling thread.
pub fn current_cuda_device() -> Result<usize, Error> {
    let mut out: c_int = 0;
    // SAFETY: `out` is a valid local.
    take("current_cuda_device", unsafe {
        ffi::sam_torch_cuda_current_device(&mut out)
    })?;
    Ok(usize::try_from(out).unwrap_or(0))
}

/// Waits until all work queued on GPU `index` has finished.
pub fn cuda_synchronize(index: usize) -> Result<(), Error> {
    let index = index_arg("cuda_synchronize", index)?;
    // SAFETY: plain value argument.
    take("cuda_synchronize", unsafe {
        ffi::sam_torch_cuda_synchronize(index)
    })
}

/// Memory held by libtorch's CUDA caching allocator on one GPU, in bytes (all pools), as
/// `torch.cuda.memory_allocated` / `max_memory_allocated` / `memory_reserved` /
/// `max_memory_reserved` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaMemoryStats {
    /// Bytes in live tensors now.
    pub allocated: u64,
    /// Most bytes in live tensors since start or the last [`reset_peak_memory_stats`].
    pub peak_allocated: u64,
    /// Bytes reserved from the driver by the allocator now.
    pub reserved: u64,
    /// Most bytes reserved since start or the last [`reset_peak_memory_stats`].
    pub peak_reserved: u64,
}

/// Caching-allocator statistics of GPU `index`.
pub fn cuda_memory_stats(index: usize) -> Result<CudaMemoryStats, Error> {
    let c_index = index_arg("cuda_memory_stats", index)?;
    check_index("cuda_memory_stats", index)?;
    let mut out = [0i64; 4];
    // SAFETY: `out` has the 4 slots the bridge writes.
    take("cuda_memory_stats", unsafe {
        ffi::sam_torch_cuda_memory_stats(c_index, out.as_mut_ptr())
    })?;
    let b = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(CudaMemoryStats {
        allocated: b(out[0]),
        peak_allocated: b(out[1]),
        reserved: b(out[2]),
        peak_reserved: b(out[3]),
    })
}

/// The name of CUDA device `index` as the NVIDIA driver reports it (e.g. `NVIDIA A100-SXM4-80GB`,
/// `NVIDIA H100 80GB HBM3`), for logs and peak-throughput tables; `None` without a driver or
/// such a device. Device indices are the ones libtorch uses (both count the GPUs that
/// `CUDA_VISIBLE_DEVICES` leaves visible, in the same order).
pub fn cuda_device_name(index: usize) -> Option<String> {
    driver::device_name(c_int::try_from(index).ok()?)
}

/// Total memory of CUDA device `index` in bytes as the NVIDIA driver reports it
/// (`cuDeviceTotalMem`); `None` without a driver or such a device. Device indices as in
/// [`cuda_device_name`].
pub fn cuda_total_memory(index: usize) -> Option<u64> {
    driver::total_memory(c_int::try_from(index).ok()?)
}

/// Resets the peaks of [`cuda_memory_stats`] for GPU `index` to the current values.
pub fn reset_peak_memory_stats(index: usize) -> Result<(), Error> {
    let c_index = index_arg("reset_peak_memory_stats", index)?;
    check_index("reset_peak_memory_stats", index)?;
    // SAFETY: plain value argument.
    take("reset_peak_memory_stats", unsafe {
        ffi::sam_torch_cuda_reset_peak_memory_stats(c_index)
    })
}

/// Returns the caching allocator's unused cached blocks to the driver.
pub fn empty_cuda_cache() -> Result<(), Error> {
    // SAFETY: no arguments.
    take("empty_cuda_cache", unsafe {
        ffi::sam_torch_cuda_empty_cache()
    })
}

fn check_index(op: &'static str, index: usize) -> Result<(), Error> {
    let count = cuda_device_count();
    if !cuda_is_available() {
        return Err(Error::Torch {
            op,
            message: "CUDA is not available (no GPU or no CUDA driver)".into(),
        });
    }
    if index >= count {
        return Err(Error::Torch {
            op,
            message: format!(
                "CUDA device index {index} out of range: this process sees {count} device(s)"
            ),
        });
    }
    Ok(())
}

/// Where TF32 tensor cores may be used for fp32 work on Ampere and newer GPUs
/// (`torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.allow_tf32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tf32 {
    /// fp32 matrix products in cuBLAS.
    pub cublas: bool,
    /// fp32 convolutions in cuDNN.
    pub cudnn: bool,
}

/// Sets the process-wide TF32 switches. Harmless without a GPU.
pub fn set_tf32(tf32: Tf32) -> Result<(), Error> {
    // SAFETY: plain value arguments.
    take("set_tf32", unsafe {
        ffi::sam_torch_set_allow_tf32(c_int::from(tf32.cublas), c_int::from(tf32.cudnn))
    })
}

/// The process-wide TF32 switches.
pub fn tf32() -> Result<Tf32, Error> {
    let (mut cublas, mut cudnn): (c_int, c_int) = (0, 0);
    // SAFETY: out-pointers are valid locals.
    take("tf32", unsafe {
        ffi::sam_torch_get_allow_tf32(&mut cublas, &mut cudnn)
    })?;
    Ok(Tf32 {
        cublas: cublas != 0,
        cudnn: cudnn != 0,
    })
}

/// A device named in a config (`training.device`) or on the command line (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// A GPU when libtorch sees one (the local rank's), else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// A GPU, required: the local rank's, `local_rank % device_count`.
    Cuda,
    /// GPU `N` exactly (`cuda:N`), counted among the GPUs this process sees.
    CudaIndex(usize),
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Auto => f.write_str("auto"),
            DeviceRequest::Cpu => f.write_str("cpu"),
            DeviceRequest::Cuda => f.write_str("cuda"),
            DeviceRequest::CudaIndex(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceRequest {
    type Err = DeviceError;

    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceRequest::CudaIndex)
                .ok_or_else(|| DeviceError::UnknownName {
                    name: other.to_owned(),
                }),
        }
    }
}

/// A CUDA version, as `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CudaVersion {
    /// e.g. 13.
    pub major: u32,
    /// e.g. 0.
    pub minor: u32,
}

impl CudaVersion {
    /// From CUDA's integer form (`1000 * major + 10 * minor`: 13000, 12060).
    pub fn from_int(v: i64) -> Option<Self> {
        (v > 0).then(|| CudaVersion {
            major: u32::try_from(v / 1000).unwrap_or(0),
            minor: u32::try_from(v % 1000 / 10).unwrap_or(0),
        })
    }

    /// The NVIDIA driver a libtorch built for this CUDA version needs (Linux x86_64, from
    /// NVIDIA's CUDA Toolkit release notes and its minor-version-compatibility table).
    pub fn driver_needed(self) -> &'static str {
        match (self.major, self.minor) {
            (13, _) => ">= 580",
            (12, 8) => ">= 570.26; >= 525.60.13 through CUDA minor-version compatibility",
            (12, 6) => ">= 560.28.03; >= 525.60.13 through CUDA minor-version compatibility",
            (12, _) => ">= 525.60.13",
            _ => "see NVIDIA's CUDA Toolkit release notes",
        }
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What this process knows about its GPUs: what device resolution decides from, and what an
/// error tells the user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CudaStatus {
    /// GPUs libtorch sees (after `CUDA_VISIBLE_DEVICES`); 0 without a usable GPU.
    pub device_count: usize,
    /// The CUDA version the linked libtorch was built for; `None`: a CPU-only build.
    pub torch_cuda: Option<CudaVersion>,
    /// The newest CUDA version the installed NVIDIA driver supports (`cuDriverGetVersion`);
    /// `None`: no driver found (`libcuda.so.1` cannot be loaded) or not probed.
    pub driver_cuda: Option<CudaVersion>,
    /// The NVIDIA driver's version (e.g. `550.54.15`, from NVML), when known.
    pub driver_version: Option<String>,
    /// Whether the driver was probed (only done to explain a missing GPU).
    pub driver_probed: bool,
    /// `CUDA_VISIBLE_DEVICES`; `None` when unset.
    pub visible_devices: Option<String>,
    /// `SLURM_JOB_ID`, inside a SLURM job.
    pub slurm_job: Option<String>,
}

impl CudaStatus {
    /// This process: libtorch's device count and CUDA build, and the environment. The driver
    /// is not probed (see [`CudaStatus::probe_driver`]).
    pub fn current() -> Self {
        let torch_cuda = if tch::utils::has_cudart() {
            CudaVersion::from_int(tch::utils::version_cudart())
        } else {
            None
        };
        CudaStatus {
            device_count: cuda_device_count(),
            torch_cuda,
            driver_cuda: None,
            driver_version: None,
            driver_probed: false,
            visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            slurm_job: std::env::var("SLURM_JOB_ID").ok(),
        }
    }

    /// Adds what the NVIDIA driver says about itself: the CUDA version it supports
    /// (`libcuda.so.1`) and its version (`libnvidia-ml.so.1`), each when it can be loaded.
    pub fn probe_driver(mut self) -> Self {
        self.driver_cuda = driver::cuda_version().and_then(CudaVersion::from_int);
        self.driver_version = driver::nvml_version();
        self.driver_probed = true;
        self
    }

    /// Why this process has no GPU, as far as it can tell, with the fix.
    fn diagnosis(&self) -> String {
        let hidden = matches!(
            self.visible_devices.as_deref().map(str::trim),
            Some("" | "-1" | "none" | "NoDevFiles")
        );
        let Some(torch) = self.torch_cuda else {
            return "the linked libtorch is a CPU-only build: install a CUDA build of torch \
                    (scripts/setup.sh [--cuda 12.6|12.8|13.0]) and rebuild"
                .to_owned();
        };
        match self.driver_cuda {
            None if self.driver_probed => {
                "no NVIDIA driver was found (libcuda.so.1 cannot be loaded): run on a GPU node \
                 with the NVIDIA driver installed"
                    .to_owned()
            }
            Some(driver) if driver.major < 12 => format!(
                "the NVIDIA driver{} supports CUDA up to {driver}; every torch 2.11 build needs \
                 CUDA 12 or newer: update the driver (>= 525.60.13 for the CUDA 12 builds)",
                self.driver_version
                    .as_ref()
                    .map_or(String::new(), |v| format!(" {v}")),
            ),
            Some(driver) if driver.major < torch.major => format!(
                "the NVIDIA driver{} supports CUDA up to {driver}, older than the CUDA {torch} \
                 this libtorch is built for: install the torch build for CUDA 12 \
                 (scripts/setup.sh --cuda 12.6, then rebuild) or update the driver ({})",
                self.driver_version
                    .as_ref()
                    .map_or(String::new(), |v| format!(" {v}")),
                torch.driver_needed()
            ),
            _ if hidden => format!(
                "CUDA_VISIBLE_DEVICES={:?} hides every GPU from this process",
                self.visible_devices.as_deref().unwrap_or_default()
            ),
            _ => format!(
                "the NVIDIA driver is installed but this process sees no GPU{}",
                if self.slurm_job.is_some() {
                    " (in a SLURM job: ask for one, e.g. --gres=gpu:1 or --gpus-per-task=1)"
                } else {
                    ""
                }
            ),
        }
    }
}

impl fmt::Display for CudaStatus {
    /// The facts: libtorch's CUDA build, the driver, `CUDA_VISIBLE_DEVICES`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.torch_cuda {
            Some(v) => write!(
                f,
                "libtorch: built for CUDA {v} (needs NVIDIA driver {})",
                v.driver_needed()
            )?,
            None => f.write_str("libtorch: CPU-only build")?,
        }
        match (&self.driver_version, self.driver_cuda) {
            (Some(ver), Some(cuda)) => write!(f, "; NVIDIA driver: {ver} (CUDA {cuda})")?,
            (None, Some(cuda)) => write!(f, "; NVIDIA driver: supports CUDA {cuda}")?,
            (Some(ver), None) => write!(f, "; NVIDIA driver: {ver}")?,
            (None, None) if self.driver_probed => f.write_str("; NVIDIA driver: not found")?,
            (None, None) => {}
        }
        match &self.visible_devices {
            Some(v) => write!(f, "; CUDA_VISIBLE_DEVICES={v:?}"),
            None => f.write_str("; CUDA_VISIBLE_DEVICES unset"),
        }
    }
}

/// A device that [`select_device`] / [`resolve_device`] chose, with what it was chosen from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceChoice {
    /// The device.
    pub device: Device,
    /// What was asked for.
    pub request: DeviceRequest,
    /// GPUs the process sees.
    pub visible_gpus: usize,
    /// The local rank the GPU was chosen for.
    pub local_rank: usize,
}

impl fmt::Display for DeviceChoice {
    /// e.g. `cuda:1 (cuda: local rank 3 of 2 visible GPUs)`, `cpu (auto: no GPU visible)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.device, self.request) {
            (Device::Cuda(i), DeviceRequest::CudaIndex(_)) => {
                write!(f, "cuda:{i} (of {} visible GPUs)", self.visible_gpus)
            }
            (Device::Cuda(i), r) => write!(
                f,
                "cuda:{i} ({r}: local rank {} on {} visible GPUs)",
                self.local_rank, self.visible_gpus
            ),
            (_, DeviceRequest::Auto) => f.write_str("cpu (auto: libtorch sees no GPU)"),
            _ => f.write_str("cpu"),
        }
    }
}

/// Why a device cannot be had. Each is a usage error: the request cannot be met here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// Not a device name.
    #[error("unknown device `{name}`: expected auto, cpu, cuda or cuda:N")]
    UnknownName {
        /// What was given.
        name: String,
    },
    /// A GPU was required and libtorch sees none.
    #[error(
        "`{request}` needs a GPU, but libtorch sees none: {}. {status}. Check with \
         `nvidia-smi` (it lists the GPUs of this machine and the NVIDIA driver version), or \
         use device auto or cpu",
        status.diagnosis()
    )]
    NoGpu {
        /// What was asked for.
        request: DeviceRequest,
        /// What the process knows about CUDA.
        status: Box<CudaStatus>,
    },
    /// `cuda:N` beyond the GPUs the process sees.
    #[error(
        "`cuda:{index}` asks for GPU {index}, but this process sees {count} GPU(s), numbered \
         from 0 after CUDA_VISIBLE_DEVICES ({}); use cuda (the local rank's GPU) or \
         cuda:0..cuda:{}",
        visible.as_deref().map_or("unset".to_owned(), |v| format!("{v:?}")),
        count.saturating_sub(1)
    )]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// GPUs the process sees.
        count: usize,
        /// `CUDA_VISIBLE_DEVICES`.
        visible: Option<String>,
    },
}

/// Resolves `request` for the process of `local_rank` from `status` (pure; see
/// [`select_device`]). `cuda` and `auto` give GPU `local_rank % device_count`: under SLURM with
/// one GPU bound per task every task sees its GPU as device 0, under torchrun every process
/// sees all of the node's GPUs.
pub fn resolve_device(
    request: DeviceRequest,
    local_rank: usize,
    status: &CudaStatus,
) -> Result<DeviceChoice, DeviceError> {
    let count = status.device_count;
    let device = match request {
        DeviceRequest::Cpu => Device::Cpu,
        DeviceRequest::Auto if count == 0 => Device::Cpu,
        DeviceRequest::Auto | DeviceRequest::Cuda if count > 0 => Device::Cuda(local_rank % count),
        DeviceRequest::CudaIndex(index) if index < count => Device::Cuda(index),
        DeviceRequest::CudaIndex(index) if count > 0 => {
            return Err(DeviceError::IndexOutOfRange {
                index,
                count,
                visible: status.visible_devices.clone(),
            })
        }
        DeviceRequest::Auto | DeviceRequest::Cuda | DeviceRequest::CudaIndex(_) => {
            return Err(DeviceError::NoGpu {
                request,
                status: Box::new(status.clone()),
            })
        }
    };
    Ok(DeviceChoice {
        device,
        request,
        visible_gpus: count,
        local_rank,
    })
}

/// The device of this process for `request` and its local rank (0 outside distributed runs),
/// from what libtorch sees now. A GPU request that cannot be met is an error that names the
/// libtorch build, the NVIDIA driver and `CUDA_VISIBLE_DEVICES`, never a panic later.
pub fn select_device(
    request: DeviceRequest,
    local_rank: usize,
) -> Result<DeviceChoice, DeviceError> {
    let status = CudaStatus::current();
    match resolve_device(request, local_rank, &status) {
        Err(DeviceError::NoGpu { request, .. }) => Err(DeviceError::NoGpu {
            request,
            status: Box::new(status.probe_driver()),
        }),
        other => other,
    }
}

/// The NVIDIA driver's own answers, loaded at run time (the driver is not a link dependency:
/// the same binary runs on CPU machines).
mod driver {
    use super::{c_char, c_int, c_void, CStr};

    extern "C" {
        fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }
    const RTLD_NOW: c_int = 2;

    /// A symbol of a shared library, loading the library if needed (never unloaded).
    fn symbol(library: &CStr, name: &CStr) -> Option<*mut c_void> {
        // SAFETY: both are NUL-terminated C strings; dlopen of a driver library runs only its
        // initialisers, as libtorch's own CUDA initialisation does.
        let handle = unsafe { dlopen(library.as_ptr(), RTLD_NOW) };
        if handle.is_null() {
            return None;
        }
        // SAFETY: `handle` came from dlopen; `name` is NUL-terminated.
        let sym = unsafe { dlsym(handle, name.as_ptr()) };
        (!sym.is_null()).then_some(sym)
    }

    /// `cuDriverGetVersion`: the newest CUDA version the driver supports (e.g. 12040).
    pub(super) fn cuda_version() -> Option<i64> {
        let sym = symbol(c"libcuda.so.1", c"cuDriverGetVersion")?;
        // SAFETY: the CUDA driver API declares `CUresult cuDriverGetVersion(int*)`.
        let get: unsafe extern "C" fn(*mut c_int) -> c_int = unsafe { std::mem::transmute(sym) };
        let mut version: c_int = 0;
        // SAFETY: `version` is a valid out-pointer; the call needs no cuInit.
        (unsafe { get(&mut version) } == 0).then_some(i64::from(version))
    }

    /// `cuDeviceGetName` of device `ordinal` (after `cuInit(0)`): e.g. `NVIDIA A100-SXM4-80GB`.
    pub(super) fn device_name(ordinal: c_int) -> Option<String> {
        let lib = c"libcuda.so.1";
        let init = symbol(lib, c"cuInit")?;
        let get = symbol(lib, c"cuDeviceGet")?;
        let name = symbol(lib, c"cuDeviceGetName")?;
        // SAFETY: the CUDA driver API declares `CUresult cuInit(unsigned int)`,
        // `CUresult cuDeviceGet(CUdevice*, int)` (CUdevice is an int) and
        // `CUresult cuDeviceGetName(char*, int, CUdevice)`.
        let (init, get, name) = unsafe {
            (
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u32) -> c_int>(init),
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_int, c_int) -> c_int>(
                    get,
                ),
                std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int,
                >(name),
            )
        };
        // SAFETY: cuInit may be called any number of times (libtorch has called it already
        // when a GPU is in use); `device` is a valid out-pointer; the buffer's length is passed.
        unsafe {
            if init(0) != 0 {
                return None;
            }
            let mut device: c_int = 0;
            if get(&mut device, ordinal) != 0 {
                return None;
            }
            let mut buf = [0 as c_char; 256];
            if name(buf.as_mut_ptr(), 256, device) != 0 {
                return None;
            }
            let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).collect();
            CStr::from_bytes_until_nul(&bytes)
                .ok()
                .map(|s| s.to_string_lossy().into_owned())
        }
    }

    /// `cuDeviceTotalMem_v2` of device `ordinal` (after `cuInit(0)`), in bytes.
    pub(super) fn total_memory(ordinal: c_int) -> Option<u64> {
        let lib = c"libcuda.so.1";
        let init = symbol(lib, c"cuInit")?;
        let get = symbol(lib, c"cuDeviceGet")?;
        let total = symbol(lib, c"cuDeviceTotalMem_v2")?;
        // SAFETY: the CUDA driver API declares `CUresult cuInit(unsigned int)`,
        // `CUresult cuDeviceGet(CUdevice*, int)` (CUdevice is an int) and
        // `CUresult cuDeviceTotalMem_v2(size_t*, CUdevice)`.
        let (init, get, total) = unsafe {
            (
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u32) -> c_int>(init),
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_int, c_int) -> c_int>(
                    get,
                ),
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut usize, c_int) -> c_int>(
                    total,
                ),
            )
        };
        // SAFETY: cuInit may be called any number of times; `device` and `bytes` are valid
        // out-pointers.
        unsafe {
            if init(0) != 0 {
                return None;
            }
            let mut device: c_int = 0;
            if get(&mut device, ordinal) != 0 {
                return None;
            }
            let mut bytes: usize = 0;
            if total(&mut bytes, device) != 0 {
                return None;
            }
            u64::try_from(bytes).ok()
        }
    }

    /// `nvmlSystemGetDriverVersion`: the driver's version string (e.g. `550.54.15`).
    pub(super) fn nvml_version() -> Option<String> {
        let lib = c"libnvidia-ml.so.1";
        let init = symbol(lib, c"nvmlInit_v2")?;
        let get = symbol(lib, c"nvmlSystemGetDriverVersion")?;
        let shutdown = symbol(lib, c"nvmlShutdown")?;
        // SAFETY: NVML declares `nvmlReturn_t nvmlInit_v2(void)`, `nvmlReturn_t
        // nvmlSystemGetDriverVersion(char*, unsigned int)` and `nvmlReturn_t nvmlShutdown(void)`.
        let (init, get, shutdown) = unsafe {
            (
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(init),
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_char, u32) -> c_int>(
                    get,
                ),
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(shutdown),
            )
        };
        // SAFETY: plain calls; the buffer is 80 bytes and its length is passed
        // (NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE is 80); shutdown pairs the successful init.
        unsafe {
            if init() != 0 {
                return None;
            }
            let mut buf = [0 as c_char; 80];
            let ok = get(buf.as_mut_ptr(), 80) == 0;
            shutdown();
            if !ok {
                return None;
            }
            // Bytes up to the first NUL, whether or not NVML wrote one.
            let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).collect();
            CStr::from_bytes_until_nul(&bytes)
                .ok()
                .map(|s| s.to_string_lossy().into_owned())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn device_names_exist_exactly_for_visible_gpus() {
        let n = cuda_device_count();
        assert!(cuda_device_name(n + 3).is_none());
        if n > 0 {
            let name = cuda_device_name(0).unwrap();
            assert!(!name.is_empty());
        }
    }

    #[test]
    fn cuda_queries_agree_with_tch() {
        assert_eq!(cuda_is_available(), tch::Cuda::is_available());
        assert_eq!(
            cuda_device_count(),
            usize::try_from(tch::Cuda::device_count()).unwrap()
        );
    }

    #[test]
    fn out_of_range_device_is_an_error_not_an_abort() {
        let n = cuda_device_count();
        let err = set_cuda_device(n + 3).unwrap_err();
        assert!(err.to_string().contains("set_cuda_device"), "{err}");
        assert!(cuda_memory_stats(n + 3).is_err());
        assert!(reset_peak_memory_stats(n + 3).is_err());
    }

    fn status(device_count: usize) -> CudaStatus {
        CudaStatus {
            device_count,
            torch_cuda: Some(CudaVersion {
                major: 13,
                minor: 0,
            }),
            ..CudaStatus::default()
        }
    }

    fn device(request: DeviceRequest, local_rank: usize, count: usize) -> Device {
        resolve_device(request, local_rank, &status(count))
            .unwrap()
            .device
    }

    #[test]
    fn device_names_parse() {
        assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceRequest::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda));
        assert_eq!("cuda:3".parse(), Ok(DeviceRequest::CudaIndex(3)));
        for bad in ["gpu", "cuda:", "cuda:-1", "CUDA", ""] {
            let err = bad.parse::<DeviceRequest>().unwrap_err();
            assert!(
                err.to_string()
                    .contains("expected auto, cpu, cuda or cuda:N"),
                "{err}"
            );
        }
        for r in ["auto", "cpu", "cuda", "cuda:2"] {
            assert_eq!(r.parse::<DeviceRequest>().unwrap().to_string(), r);
        }
    }

    #[test]
    fn the_gpu_of_a_rank_is_local_rank_modulo_the_visible_gpus() {
        // torchrun: every process of a 4-GPU node sees 4 GPUs.
        for rank in 0..4 {
            assert_eq!(device(DeviceRequest::Cuda, rank, 4), Device::Cuda(rank));
        }
        // SLURM binding one GPU per task: every task sees its GPU as device 0.
        for rank in 0..4 {
            assert_eq!(device(DeviceRequest::Cuda, rank, 1), Device::Cuda(0));
        }
        // More ranks than GPUs share them round-robin.
        assert_eq!(device(DeviceRequest::Cuda, 5, 2), Device::Cuda(1));
        assert_eq!(device(DeviceRequest::Auto, 3, 2), Device::Cuda(1));
        // An explicit index is taken as given, whatever the rank.
        assert_eq!(device(DeviceRequest::CudaIndex(1), 0, 2), Device::Cuda(1));
        assert_eq!(device(DeviceRequest::Cpu, 3, 2), Device::Cpu);
    }

    #[test]
    fn auto_falls_back_to_the_cpu_and_says_so() {
        let choice = resolve_device(DeviceRequest::Auto, 1, &status(0)).unwrap();
        assert_eq!(choice.device, Device::Cpu);
        assert_eq!(choice.to_string(), "cpu (auto: libtorch sees no GPU)");
        let choice = resolve_device(DeviceRequest::Auto, 3, &status(2)).unwrap();
        assert_eq!(
            choice.to_string(),
            "cuda:1 (auto: local rank 3 on 2 visible GPUs)"
        );
    }

    #[test]
    fn cuda_without_a_gpu_is_an_error_that_says_why() {
        let mut st = status(0);
        st.driver_probed = true;
        st.visible_devices = Some("0,1".into());
        let err = resolve_device(DeviceRequest::Cuda, 0, &st).unwrap_err();
        let msg = err.to_string();
        for part in [
            "`cuda` needs a GPU, but libtorch sees none",
            "no NVIDIA driver was found (libcuda.so.1 cannot be loaded)",
            "libtorch: built for CUDA 13.0 (needs NVIDIA driver >= 580)",
            "NVIDIA driver: not found",
            "CUDA_VISIBLE_DEVICES=\"0,1\"",
            "`nvidia-smi`",
        ] {
            assert!(msg.contains(part), "missing `{part}` in: {msg}");
        }
        assert!(matches!(
            resolve_device(DeviceRequest::CudaIndex(0), 0, &st),
            Err(DeviceError::NoGpu { .. })
        ));
    }

    #[test]
    fn each_cause_of_a_missing_gpu_has_its_own_fix() {
        let why = |st: CudaStatus| {
            resolve_device(DeviceRequest::Cuda, 0, &st)
                .unwrap_err()
                .to_string()
        };
        // A CPU-only libtorch.
        let msg = why(CudaStatus::default());
        assert!(
            msg.contains("CPU-only build") && msg.contains("scripts/setup.sh"),
            "{msg}"
        );
        assert!(msg.contains("CUDA_VISIBLE_DEVICES unset"), "{msg}");
        // A CUDA 12.4 driver under the CUDA 13 wheel.
        let msg = why(CudaStatus {
            driver_cuda: Some(CudaVersion {
                major: 12,
                minor: 4,
            }),
            driver_version: Some("550.54.15".into()),
            driver_probed: true,
            ..status(0)
        });
        for part in [
            "the NVIDIA driver 550.54.15 supports CUDA up to 12.4",
            "scripts/setup.sh --cuda 12.6",
            "NVIDIA driver: 550.54.15 (CUDA 12.4)",
        ] {
            assert!(msg.contains(part), "missing `{part}` in: {msg}");
        }
        // A CUDA 11 driver: no torch 2.11 build fits.
        let msg = why(CudaStatus {
            driver_cuda: Some(CudaVersion {
                major: 11,
                minor: 4,
            }),
            driver_probed: true,
            ..status(0)
        });
        assert!(msg.contains("update the driver"), "{msg}");
        // GPUs hidden by CUDA_VISIBLE_DEVICES.
        let driver_ok = CudaStatus {
            driver_cuda: Some(CudaVersion {
                major: 13,
                minor: 0,
            }),
            driver_probed: true,
            ..status(0)
        };
        let msg = why(CudaStatus {
            visible_devices: Some(String::new()),
            ..driver_ok.clone()
        });
        assert!(
            msg.contains("CUDA_VISIBLE_DEVICES=\"\" hides every GPU"),
            "{msg}"
        );
        // A driver but no GPU in a SLURM job that asked for none.
        let msg = why(CudaStatus {
            slurm_job: Some("42".into()),
            ..driver_ok
        });
        assert!(msg.contains("--gres=gpu:1"), "{msg}");
    }

    #[test]
    fn an_index_beyond_the_visible_gpus_is_an_error() {
        let mut st = status(2);
        st.visible_devices = Some("2,3".into());
        let err = resolve_device(DeviceRequest::CudaIndex(2), 0, &st).unwrap_err();
        assert_eq!(
            err,
            DeviceError::IndexOutOfRange {
                index: 2,
                count: 2,
                visible: Some("2,3".into())
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("sees 2 GPU(s)") && msg.contains("cuda:0..cuda:1"),
            "{msg}"
        );
        assert!(msg.contains("\"2,3\""), "{msg}");
    }

    #[test]
    fn this_process_resolves_consistently_with_libtorch() {
        let n = cuda_device_count();
        let st = CudaStatus::current();
        assert_eq!(st.device_count, n);
        assert_eq!(st.torch_cuda.is_some(), tch::utils::has_cudart());
        match select_device(DeviceRequest::Cuda, 5) {
            Ok(c) => assert_eq!(c.device, Device::Cuda(5 % n)),
            Err(e) => {
                assert_eq!(n, 0);
                let msg = e.to_string();
                assert!(msg.contains("CUDA_VISIBLE_DEVICES"), "{msg}");
                assert!(msg.contains("NVIDIA driver"), "{msg}");
            }
        }
        assert_eq!(
            select_device(DeviceRequest::Cpu, 0).unwrap().device,
            Device::Cpu
        );
    }

    #[test]
    fn cuda_versions_from_integers() {
        assert_eq!(
            CudaVersion::from_int(13000),
            Some(CudaVersion {
                major: 13,
                minor: 0
            })
        );
        assert_eq!(
            CudaVersion::from_int(12060),
            Some(CudaVersion {
                major: 12,
                minor: 6
            })
        );
        assert_eq!(CudaVersion::from_int(0), None);
    }

    #[test]
    fn tf32_switches_round_trip() {
        let before = tf32().unwrap();
        for want in [
            Tf32 {
                cublas: true,
                cudnn: false,
            },
            Tf32 {
                cublas: false,
                cudnn: true,
            },
        ] {
            set_tf32(want).unwrap();
            assert_eq!(tf32().unwrap(), want);
        }
        set_tf32(before).unwrap();
    }
}
