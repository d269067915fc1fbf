//! Host↔device traffic in one place, so that it can be counted and kept off the critical path.
//!
//! A GPU runs ahead of the host only as long as the host does not wait for it. Every read of a
//! device tensor's values into host memory waits for all queued work, and so does a copy of
//! pageable host memory to the device. The training step therefore reads its numbers through
//! [`read_f64s`] (one call per read, counted per thread by [`host_reads`]) and sends host-built
//! tensors with [`upload`], which copies from pinned memory without blocking on CUDA.
//!
//! ```
//! use tch::{Device, Kind, Tensor};
//! let before = sam_torch::host_reads();
//! let loss = Tensor::from_slice(&[0.25f32, 0.5]).sum(Kind::Float);
//! assert_eq!(sam_torch::read_f64(&loss).unwrap(), 0.75);
//! assert_eq!(sam_torch::host_reads() - before, 1);
//! let coords = sam_torch::upload(&Tensor::from_slice(&[3i64, 4]), Device::Cpu);
//! assert_eq!(coords.device(), Device::Cpu);
//! ```

use std::cell::Cell;

use tch::{Device, Kind, TchError, Tensor};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// The number of device→host reads made through this module by the calling thread so far
/// (on any device: a read on the CPU counts as the one it would be on a GPU).
pub fn host_reads() -> u64 {
    READS.with(Cell::get)
}

pub(crate) fn count_read() {
    READS.with(|r| r.set(r.get() + 1));
}

/// Every value of `t` as `f64`, in row-major order: one device→host read (it waits for the
/// work that produces `t`). Booleans read as 0 and 1.
pub fn read_f64s(t: &Tensor) -> Result<Vec<f64>, TchError> {
    count_read();
    let host = t
        .f_to_kind(Kind::Double)?
        .f_to_device(Device::Cpu)?
        .f_reshape([-1])?;
    Vec::<f64>::try_from(&host)
}

/// The value of a one-element tensor as `f64`: one device→host read.
pub fn read_f64(t: &Tensor) -> Result<f64, TchError> {
    let values = read_f64s(t)?;
    match values.as_slice() {
        [v] => Ok(*v),
        _ => Err(TchError::Shape(format!(
            "read_f64: a tensor of {} values, expected one",
            values.len()
        ))),
    }
}

/// `t` (a host tensor) on `device`. On CUDA the values are staged in pinned memory and copied
/// without blocking the host: the copy is ordered on the current stream before any kernel that
/// reads the result, and libtorch's pinned-memory allocator keeps the staging buffer until the
/// copy has run. Elsewhere the tensor is moved as usual (a no-op on the CPU).
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    if t.device() == device {
        return t.shallow_clone();
    }
    match device {
        Device::Cuda(_) if t.device() == Device::Cpu => {
            t.pin_memory(device)
                .to_device_(device, t.kind(), /* non_blocking */ true, false)
        }
        _ => t.to_device(device),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_counted_per_call_and_per_thread() {
        let start = host_reads();
        let t = Tensor::from_slice(&[1.5f32, -2.0, 4.0]).view([3, 1]);
        assert_eq!(read_f64s(&t).unwrap(), vec![1.5, -2.0, 4.0]);
        assert_eq!(read_f64s(&t.gt(0.0)).unwrap(), vec![1.0, 0.0, 1.0]);
        assert_eq!(read_f64(&t.sum(Kind::Float)).unwrap(), 3.5);
        assert_eq!(host_reads() - start, 3);
        // Another thread's reads are its own.
        std::thread::spawn(|| {
            let before = host_reads();
            read_f64(&Tensor::from(1.0f64)).unwrap();
            assert_eq!(host_reads() - before, 1);
        })
        .join()
        .unwrap();
        assert_eq!(host_reads() - start, 3);
    }

    #[test]
    fn a_read_of_several_values_as_one_is_an_error() {
        let err = read_f64(&Tensor::from_slice(&[1.0f32, 2.0])).unwrap_err();
        assert!(err.to_string().contains("2 values"), "{err}");
    }

    #[test]
    fn upload_to_the_same_device_shares_the_tensor() {
        let t = Tensor::from_slice(&[1i64, 2, 3]);
        let u = upload(&t, Device::Cpu);
        assert_eq!(u.data_ptr(), t.data_ptr());
        assert_eq!(u.kind(), Kind::Int64);
    }
}
