// The C++ bridge of sam-torch: the libtorch features tch does not bind.
//
// Every exported function is `extern "C"`, catches every C++ exception and reports it as a
// heap-allocated message (free it with `sam_torch_free_string`); a null pointer means success.
// Nothing here prints, exits or aborts.
//
// Sections: errors, autocast, CUDA device and memory, TF32, c10d store and process groups,
// autograd, multi-tensor optimiser kernels.

#include <ATen/ATen.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#ifdef SAM_TORCH_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef SAM_TORCH_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

char* dup_message(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.c_str(), message.size() + 1);
  }
  return out;
}

// Runs `body`, turning any exception into a message. c10::Error's what() carries a C++
// backtrace; what_without_backtrace() is the message a user can act on.
template <typename F>
char* guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error& e) {
    return dup_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return dup_message(e.what());
  } catch (...) {
    return dup_message("unknown C++ exception");
  }
}

c10::DeviceType device_type_of(int device) {
  switch (device) {
    case 0:
      return c10::DeviceType::CPU;
    case 1:
      return c10::DeviceType::CUDA;
    default:
      TORCH_CHECK(false, "unknown device type code ", device, " (expected 0 = CPU, 1 = CUDA)");
  }
}

}  // namespace

extern "C" {

// ---- errors ---------------------------------------------------------------------------------

void sam_torch_free_string(char* s) { std::free(s); }

// ---- autocast -------------------------------------------------------------------------------
// The state is thread-local, as in Python's torch.autocast.

char* sam_torch_autocast_is_enabled(int device, int* out) {
  return guarded([&] { *out = at::autocast::is_autocast_enabled(device_type_of(device)) ? 1 : 0; });
}

char* sam_torch_autocast_set_enabled(int device, int enabled) {
  return guarded([&] { at::autocast::set_autocast_enabled(device_type_of(device), enabled != 0); });
}

char* sam_torch_autocast_get_dtype(int device, int* out) {
  return guarded([&] {
    *out = static_cast<int>(at::autocast::get_autocast_dtype(device_type_of(device)));
  });
}

char* sam_torch_autocast_set_dtype(int device, int dtype) {
  return guarded([&] {
    at::autocast::set_autocast_dtype(device_type_of(device), static_cast<at::ScalarType>(dtype));
  });
}

char* sam_torch_autocast_cache_enabled(int* out) {
  return guarded([&] { *out = at::autocast::is_autocast_cache_enabled() ? 1 : 0; });
}

char* sam_torch_autocast_set_cache_enabled(int enabled) {
  return guarded([&] { at::autocast::set_autocast_cache_enabled(enabled != 0); });
}

char* sam_torch_autocast_increment_nesting(int* out) {
  return guarded([&] { *out = at::autocast::increment_nesting(); });
}

char* sam_torch_autocast_decrement_nesting(int* out) {
  return guarded([&] { *out = at::autocast::decrement_nesting(); });
}

char* sam_torch_autocast_clear_cache() {
  return guarded([&] { at::autocast::clear_cache(); });
}

// ---- CUDA device and memory -----------------------------------------------------------------

char* sam_torch_cuda_is_available(int* out) {
  return guarded([&] { *out = at::hasCUDA() ? 1 : 0; });
}

char* sam_torch_cuda_device_count(int* out) {
  return guarded([&] { *out = at::hasCUDA() ? static_cast<int>(at::getNumGPUs()) : 0; });
}

char* sam_torch_cuda_set_device(int index) {
  return guarded([&] {
    TORCH_CHECK(at::hasCUDA(), "CUDA is not available (no GPU or no CUDA driver)");
    const auto count = static_cast<int>(at::getNumGPUs());
    TORCH_CHECK(index >= 0 && index < count, "CUDA device index ", index,
                " out of range: this process sees ", count, " device(s)");
    c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)
        ->setDevice(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index)));
  });
}

char* sam_torch_cuda_current_device(int* out) {
  return guarded([&] {
    TORCH_CHECK(at::hasCUDA(), "CUDA is not available (no GPU or no CUDA driver)");
    *out = static_cast<int>(
        c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getDevice().index());
  });
}

char* sam_torch_cuda_synchronize(int index) {
  return guarded([&] {
    TORCH_CHECK(at::hasCUDA(), "CUDA is not available (no GPU or no CUDA driver)");
    c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)
        ->synchronizeDevice(static_cast<c10::DeviceIndex>(index));
  });
}

// Memory statistics of the caching allocator, aggregate over pools, in bytes:
// out[0] allocated now, out[1] peak allocated, out[2] reserved now, out[3] peak reserved.
char* sam_torch_cuda_memory_stats(int index, int64_t* out) {
  return guarded([&] {
    TORCH_CHECK(at::hasCUDA(), "CUDA is not available (no GPU or no CUDA driver)");
    const auto stats = c10::getDeviceAllocator(c10::DeviceType::CUDA)
                           ->getDeviceStats(static_cast<c10::DeviceIndex>(index));
    const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[agg].current;
    out[1] = stats.allocated_bytes[agg].peak;
    out[2] = stats.reserved_bytes[agg].current;
    out[3] = stats.reserved_bytes[agg].peak;
  });
}

char* sam_torch_cuda_reset_peak_memory_stats(int index) {
  return guarded([&] {
    TORCH_CHECK(at::hasCUDA(), "CUDA is not available (no GPU or no CUDA driver)");
    c10::getDeviceAllocator(c10::DeviceType::CUDA)
        ->resetPeakStats(static_cast<c10::DeviceIndex>(index));
  });
}

char* sam_torch_cuda_empty_cache() {
  return guarded([&] {
    TORCH_CHECK(at::hasCUDA(), "CUDA is not available (no GPU or no CUDA driver)");
    c10::getDeviceAllocator(c10::DeviceType::CUDA)->emptyCache();
  });
}

// ---- TF32 -----------------------------------------------------------------------------------

char* sam_torch_set_allow_tf32(int cublas, int cudnn) {
  return guarded([&] {
    at::globalContext().setAllowTF32CuBLAS(cublas != 0);
    at::globalContext().setAllowTF32CuDNN(cudnn != 0);
  });
}

char* sam_torch_get_allow_tf32(int* cublas, int* cudnn) {
  return guarded([&] {
    *cublas = at::globalContext().allowTF32CuBLAS() ? 1 : 0;
    *cudnn = at::globalContext().allowTF32CuDNN() ? 1 : 0;
  });
}

// ---- c10d: store --------------------------------------------------------------------------

struct SamStore {
  c10::intrusive_ptr<c10d::Store> store;
};

// Rank 0 (is_master) hosts the store; every rank connects to host:port. The master waits for
// `world` clients up to `timeout_ms`.
char* sam_torch_tcp_store_new(const char* host, int port, int world, int is_master,
                              int64_t timeout_ms, SamStore** out) {
  return guarded([&] {
    TORCH_CHECK(port > 0 && port < 65536, "port ", port, " out of range 1..65535");
    TORCH_CHECK(world >= 1, "world size must be at least 1, got ", world);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_master != 0;
    opts.numWorkers = static_cast<std::size_t>(world);
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new SamStore{std::move(store)};
  });
}

void sam_torch_store_free(SamStore* store) { delete store; }

char* sam_torch_store_set(SamStore* store, const char* key, const std::uint8_t* data,
                          std::size_t len) {
  return guarded([&] {
    store->store->set(std::string(key), std::vector<std::uint8_t>(data, data + len));
  });
}

// The value is returned in a malloc'ed buffer (free with sam_torch_free_string).
char* sam_torch_store_get(SamStore* store, const char* key, std::uint8_t** data,
                          std::size_t* len) {
  return guarded([&] {
    const auto value = store->store->get(std::string(key));
    auto* buf = static_cast<std::uint8_t*>(std::malloc(value.empty() ? 1 : value.size()));
    TORCH_CHECK(buf != nullptr, "out of memory copying a store value of ", value.size(), " bytes");
    if (!value.empty()) {
      std::memcpy(buf, value.data(), value.size());
    }
    *data = buf;
    *len = value.size();
  });
}

char* sam_torch_store_add(SamStore* store, const char* key, int64_t delta, int64_t* out) {
  return guarded([&] { *out = store->store->add(std::string(key), delta); });
}

// ---- c10d: process groups -------------------------------------------------------------------

struct SamGroup {
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int size;
  bool native_avg;  // NCCL averages itself; Gloo sums and we divide.
  std::chrono::milliseconds timeout;
};

char* sam_torch_pg_gloo_new(SamStore* store, const char* prefix, int rank, int size,
                            int64_t timeout_ms, const char* iface, const char* hostname,
                            int threads, SamGroup** out) {
  return guarded([&] {
#ifdef SAM_TORCH_HAVE_GLOO
    TORCH_CHECK(size >= 1 && rank >= 0 && rank < size, "rank ", rank,
                " out of range for world size ", size);
    const auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    if (iface != nullptr) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    } else if (hostname != nullptr) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    if (threads > 0) {
      opts->threads = threads;
    }
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, size, opts);
    *out = new SamGroup{pg, rank, size, false, timeout};
#else
    TORCH_CHECK(false,
                "sam-torch was built without Gloo: install Debian's libgloo-dev "
                "(scripts/setup.sh) and rebuild");
#endif
  });
}

char* sam_torch_pg_nccl_new(SamStore* store, const char* prefix, int rank, int size,
                            int64_t timeout_ms, SamGroup** out) {
  return guarded([&] {
#ifdef SAM_TORCH_HAVE_NCCL
    TORCH_CHECK(size >= 1 && rank >= 0 && rank < size, "rank ", rank,
                " out of range for world size ", size);
    TORCH_CHECK(at::hasCUDA(), "NCCL needs CUDA, but CUDA is not available on this machine");
    const auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, size, opts);
    *out = new SamGroup{pg, rank, size, true, timeout};
#else
    TORCH_CHECK(false,
                "sam-torch was built without NCCL: against a CPU-only libtorch, or with "
                "SAM_TORCH_NO_NCCL=1 (install a CUDA build of torch with scripts/setup.sh "
                "[--cuda 12.6|12.8|13.0], unset SAM_TORCH_NO_NCCL and rebuild)");
#endif
  });
}

void sam_torch_pg_free(SamGroup* group) {
  if (group == nullptr) {
    return;
  }
  try {
    group->backend->shutdown();
  } catch (...) {
    // Teardown after a failed peer may throw; the handle is released either way.
  }
  try {
    delete group;
  } catch (...) {
  }
}

char* sam_torch_pg_allreduce(SamGroup* group, at::Tensor* tensor, int op) {
  return guarded([&] {
    TORCH_CHECK(op >= 0 && op <= 4, "unknown reduce op code ", op);
    auto red = static_cast<c10d::ReduceOp::RedOpType>(op);
    const bool divide = red == c10d::ReduceOp::AVG && !group->native_avg;
    if (divide) {
      TORCH_CHECK(at::isFloatingType(tensor->scalar_type()),
                  "average needs a floating-point tensor, got ", tensor->scalar_type());
      red = c10d::ReduceOp::SUM;
    }
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp(red);
    opts.timeout = group->timeout;
    auto work = group->backend->allreduce(tensors, opts);
    work->wait();
    if (divide && group->size > 1) {
      tensor->div_(group->size);
    }
  });
}

char* sam_torch_pg_broadcast(SamGroup* group, at::Tensor* tensor, int root) {
  return guarded([&] {
    TORCH_CHECK(root >= 0 && root < group->size, "broadcast root ", root,
                " out of range for world size ", group->size);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = group->timeout;
    auto work = group->backend->broadcast(tensors, opts);
    work->wait();
  });
}

// `outs` receives `size` new tensors (owned by the caller, as tch tensors).
char* sam_torch_pg_allgather(SamGroup* group, const at::Tensor* tensor, at::Tensor** outs) {
  return guarded([&] {
    std::vector<at::Tensor> inputs{*tensor};
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int i = 0; i < group->size; ++i) {
      outputs[0].push_back(at::empty_like(*tensor, at::MemoryFormat::Contiguous));
    }
    c10d::AllgatherOptions opts;
    opts.timeout = group->timeout;
    auto work = group->backend->allgather(outputs, inputs, opts);
    work->wait();
    for (int i = 0; i < group->size; ++i) {
      outs[i] = new at::Tensor(outputs[0][i]);
    }
  });
}

char* sam_torch_pg_barrier(SamGroup* group) {
  return guarded([&] {
    c10d::BarrierOptions opts;
    opts.timeout = group->timeout;
    auto work = group->backend->barrier(opts);
    work->wait();
  });
}

}  // extern "C"

// ---- autograd --------------------------------------------------------------------------------

// Drops the gradient of `tensor` (Python's `param.grad = None`, what
// `optimizer.zero_grad(set_to_none=True)` does): the next backward allocates a fresh one,
// and a parameter that no backward reaches keeps none.
extern "C" char* sam_torch_clear_grad(at::Tensor* tensor) {
  return guarded([&] { tensor->mutable_grad().reset(); });
}

// ---- multi-tensor optimiser kernels ---------------------------------------------------------
// libtorch's `_foreach_*` operations and `_fused_adamw_`, which tch's generator skips. Lists
// arrive as arrays of `n` tensor handles; the copies made here share the callers' storage, so
// the in-place operations update the callers' tensors.

namespace {

std::vector<at::Tensor> tensor_list(at::Tensor* const* tensors, std::size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    out.push_back(*tensors[i]);
  }
  return out;
}

std::vector<at::Scalar> scalar_list(const double* values, std::size_t n) {
  return std::vector<at::Scalar>(values, values + n);
}

// Hands the results to the caller as new handles (owned by the caller, as tch tensors).
void hand_out(const std::vector<at::Tensor>& results, std::size_t n, at::Tensor** outs) {
  TORCH_CHECK(results.size() == n, "expected ", n, " results, got ", results.size());
  for (std::size_t i = 0; i < n; ++i) {
    outs[i] = new at::Tensor(results[i]);
  }
}

}  // namespace

extern "C" {

// AdamW over lists of one device (torch.optim.AdamW(fused=True) calls the same kernel per
// device and dtype group, after adding 1 to the steps itself). The CPU kernel walks raw memory
// (it reads a strided tensor in the wrong order) and each kernel takes one dtype: both are
// refused here rather than computed wrong.
char* sam_torch_fused_adamw_(at::Tensor* const* params, at::Tensor* const* grads,
                             at::Tensor* const* exp_avgs, at::Tensor* const* exp_avg_sqs,
                             at::Tensor* const* state_steps, std::size_t n, double lr,
                             double beta1, double beta2, double weight_decay, double eps) {
  return guarded([&] {
    auto p = tensor_list(params, n);
    auto g = tensor_list(grads, n);
    auto m = tensor_list(exp_avgs, n);
    auto v = tensor_list(exp_avg_sqs, n);
    auto s = tensor_list(state_steps, n);
    for (std::size_t i = 0; i < n; ++i) {
      for (const at::Tensor* t : {&g[i], &m[i], &v[i]}) {
        TORCH_CHECK(t->scalar_type() == p[i].scalar_type() && t->device() == p[i].device() &&
                        t->sizes() == p[i].sizes(),
                    "fused AdamW: tensor ", i, " of a list is ", t->scalar_type(), " ",
                    t->sizes(), " on ", t->device(), ", its parameter ", p[i].scalar_type(), " ",
                    p[i].sizes(), " on ", p[i].device());
      }
      for (const at::Tensor* t : {&p[i], &g[i], &m[i], &v[i]}) {
        TORCH_CHECK(t->is_contiguous(), "fused AdamW: tensor ", i,
                    " of a list is not contiguous");
      }
      TORCH_CHECK(s[i].scalar_type() == at::kFloat && s[i].numel() == 1 &&
                      s[i].device() == p[i].device(),
                  "fused AdamW: step ", i, " must be one float32 on its parameter's device");
    }
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/at::TensorList{}, s, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
  });
}

char* sam_torch_foreach_norm(at::Tensor* const* tensors, std::size_t n, double ord,
                             at::Tensor** outs) {
  return guarded([&] { hand_out(at::_foreach_norm(tensor_list(tensors, n), at::Scalar(ord)), n, outs); });
}

char* sam_torch_foreach_sqrt(at::Tensor* const* tensors, std::size_t n, at::Tensor** outs) {
  return guarded([&] { hand_out(at::_foreach_sqrt(tensor_list(tensors, n)), n, outs); });
}

char* sam_torch_foreach_add_scalar_(at::Tensor* const* tensors, std::size_t n, double value) {
  return guarded([&] { at::_foreach_add_(tensor_list(tensors, n), at::Scalar(value)); });
}

char* sam_torch_foreach_mul_scalar_(at::Tensor* const* tensors, std::size_t n, double value) {
  return guarded([&] { at::_foreach_mul_(tensor_list(tensors, n), at::Scalar(value)); });
}

char* sam_torch_foreach_mul_tensor_(at::Tensor* const* tensors, std::size_t n,
                                    const at::Tensor* value) {
  return guarded([&] { at::_foreach_mul_(tensor_list(tensors, n), *value); });
}

char* sam_torch_foreach_div_scalars_(at::Tensor* const* tensors, std::size_t n,
                                     const double* values) {
  return guarded([&] { at::_foreach_div_(tensor_list(tensors, n), scalar_list(values, n)); });
}

char* sam_torch_foreach_lerp_scalar_(at::Tensor* const* tensors, at::Tensor* const* ends,
                                     std::size_t n, double weight) {
  return guarded(
      [&] { at::_foreach_lerp_(tensor_list(tensors, n), tensor_list(ends, n), at::Scalar(weight)); });
}

char* sam_torch_foreach_addcmul_scalar_(at::Tensor* const* tensors, at::Tensor* const* tensor1,
                                        at::Tensor* const* tensor2, std::size_t n,
                                        double value) {
  return guarded([&] {
    at::_foreach_addcmul_(tensor_list(tensors, n), tensor_list(tensor1, n),
                          tensor_list(tensor2, n), at::Scalar(value));
  });
}

char* sam_torch_foreach_addcdiv_scalars_(at::Tensor* const* tensors, at::Tensor* const* tensor1,
                                         at::Tensor* const* tensor2, std::size_t n,
                                         const double* values) {
  return guarded([&] {
    at::_foreach_addcdiv_(tensor_list(tensors, n), tensor_list(tensor1, n),
                          tensor_list(tensor2, n), scalar_list(values, n));
  });
}

}  // extern "C"
