// The C++ bridge of sam-torch: the libtorch features tch does not bind.
//
// Every exported function is `extern "C"`, catches every C++ exception and reports it as a
// heap-allocated message (free it with `sam_torch_free_string`); a null pointer means success.
// Nothing here prints, exits or aborts.
//
// Sections: errors, autocast, CUDA device and memory, TF32, c10d store and process groups,
// autograd, gradient reducer, multi-tensor optimiser kernels.

#include <ATen/ATen.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/csrc/autograd/variable.h>

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

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
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

// ---- gradient reducer --------------------------------------------------------------------------
// Data-parallel gradient averaging that overlaps the backward, as DDP's c10d::Reducer does, for
// a training step whose last backward is known in advance:
//
// - The parameters are laid out once, at the first arming, in flat buckets of the wire dtype:
//   first the parameters whose gradients are already final at arming time, then the others in
//   the order the last backward will finish them (the reverse of their order in the forward,
//   read from the sequence numbers of the autograd graph). Rank 0's layout is broadcast, so
//   every rank has the same buckets whatever its graph.
// - `arm(root)` starts a step's reduction right before the backward from `root`: the buckets of
//   parameters that backward cannot reach are sent at once; the others are sent from
//   post-accumulate-grad hooks as their last parameter's gradient lands. Buckets are always sent
//   in index order (c10d pairs the collectives of the ranks by their order), each as one
//   asynchronous all-reduce (sum), its gradients copied in once.
// - `finish()` sends what is left (parameters without a gradient contribute zeros), all-reduces
//   the "has a gradient" flags (max), waits every collective and hands the averages to `.grad`:
//   a view of the bucket when the wire dtype is the parameter's, a converted copy otherwise.
//   A parameter without a gradient on any rank keeps none.
//
// NCCL: an all-reduce waits for the calling thread's current stream (where the copy into the
// bucket was queued) and `wait()` makes the finishing thread's current stream wait for the
// collective, so the optimiser, queued after on that stream, reads finished averages without a
// host synchronisation; reading the flags back is the one host synchronisation of a step.

namespace {

// What a bucket's launch happened during, for tests: arming, a hook (the backward), finish.
enum LaunchPoint : int { kNotLaunched = -1, kAtArm = 0, kInBackward = 1, kAtFinish = 2 };

struct ReducerBucket {
  std::vector<std::size_t> members;  // parameter indices, in layout order
  std::vector<int64_t> offsets;      // element offset of each member in `flat`
  at::Tensor flat;                   // wire dtype, on the parameters' device
  std::size_t pending = 0;           // members whose gradient is not final yet this step
  c10::intrusive_ptr<c10d::Work> work;
  int launched = kNotLaunched;
};

struct ReducerState {
  std::mutex mutex;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank = 0;
  int world = 1;
  std::chrono::milliseconds timeout{0};
  std::vector<at::Tensor> params;
  std::unordered_map<const c10::TensorImpl*, std::size_t> index_of;
  at::ScalarType wire = at::kFloat;
  int64_t bucket_elements = 1;
  std::vector<ReducerBucket> buckets;  // empty until the first arming
  std::vector<std::size_t> bucket_of;  // parameter -> bucket
  std::vector<char> final_grad;        // per parameter: its gradient is final this step
  std::vector<float> local_defined;    // per parameter: it had a gradient when sent
  std::size_t next_launch = 0;         // buckets [0, next_launch) are sent
  bool armed = false;
  std::string hook_error;  // the first failure inside a hook (hooks must not throw)
};

// The parameters the backward from `root` reaches (the variables of the AccumulateGrad nodes
// of its graph) and, for each, the smallest sequence number among the nodes that feed it: the
// engine runs nodes from the highest sequence number down, so the larger that number, the
// earlier the parameter's gradient is final.
void reached_parameters(const ReducerState& s, const at::Tensor& root, std::vector<char>& late,
                        std::vector<uint64_t>& key) {
  using torch::autograd::AccumulateGrad;
  using torch::autograd::Node;
  const auto mark = [&](const at::Tensor& variable, uint64_t seq) {
    const auto it = s.index_of.find(variable.unsafeGetTensorImpl());
    if (it != s.index_of.end()) {
      late[it->second] = 1;
      key[it->second] = std::min(key[it->second], seq);
    }
  };
  const auto root_fn = root.grad_fn();
  if (!root_fn) {
    if (root.requires_grad()) {
      mark(root, std::numeric_limits<uint64_t>::max());
    }
    return;
  }
  std::vector<Node*> stack{root_fn.get()};
  std::unordered_set<Node*> seen{root_fn.get()};
  while (!stack.empty()) {
    Node* node = stack.back();
    stack.pop_back();
    for (const auto& edge : node->next_edges()) {
      Node* next = edge.function.get();
      if (next == nullptr) {
        continue;
      }
      if (auto* acc = dynamic_cast<AccumulateGrad*>(next)) {
        mark(acc->variable, node->sequence_nr());
      } else if (seen.insert(next).second) {
        stack.push_back(next);
      }
    }
  }
}

// Lays out the buckets (first arming): `late` and `key` are this rank's view of the step;
// rank 0's order is broadcast and used everywhere. Called with the mutex held.
void build_layout(ReducerState& s, const std::vector<char>& late,
                  const std::vector<uint64_t>& key) {
  const std::size_t n = s.params.size();
  std::vector<int64_t> order;
  order.reserve(n + 1);
  order.push_back(0);  // slot 0: how many lead parameters (final at arming) come first
  for (std::size_t i = 0; i < n; ++i) {
    if (!late[i]) {
      order.push_back(static_cast<int64_t>(i));
    }
  }
  order[0] = static_cast<int64_t>(order.size() - 1);
  std::vector<std::size_t> rest;
  for (std::size_t i = 0; i < n; ++i) {
    if (late[i]) {
      rest.push_back(i);
    }
  }
  std::stable_sort(rest.begin(), rest.end(),
                   [&](std::size_t a, std::size_t b) { return key[a] > key[b]; });
  for (std::size_t i : rest) {
    order.push_back(static_cast<int64_t>(i));
  }
  const auto device = s.params[0].device();
  auto shared = at::tensor(order, at::TensorOptions().dtype(at::kLong)).to(device);
  if (s.world > 1) {
    std::vector<at::Tensor> tensors{shared};
    c10d::BroadcastOptions opts;
    opts.rootRank = 0;
    opts.timeout = s.timeout;
    s.backend->broadcast(tensors, opts)->wait();
  }
  const auto got = shared.to(at::kCPU);
  const int64_t* g = got.data_ptr<int64_t>();
  const auto lead = static_cast<std::size_t>(g[0]);
  std::vector<char> seen(n, 0);
  for (std::size_t k = 1; k <= n; ++k) {
    TORCH_CHECK(g[k] >= 0 && static_cast<std::size_t>(g[k]) < n && !seen[g[k]],
                "gradient reducer: rank 0's bucket layout does not fit this rank's ", n,
                " parameters (do all ranks train the same parameters?)");
    seen[g[k]] = 1;
  }
  TORCH_CHECK(lead <= n, "gradient reducer: rank 0's bucket layout is corrupt");
  s.buckets.clear();
  s.bucket_of.assign(n, 0);
  int64_t filled = 0;
  for (std::size_t k = 0; k < n; ++k) {
    const auto p = static_cast<std::size_t>(g[k + 1]);
    const int64_t numel = s.params[p].numel();
    // A new bucket when the current one is full, and between the lead parameters and the
    // rest, so that the lead buckets leave at arming time.
    if (s.buckets.empty() || k == lead ||
        (filled > 0 && filled + numel > s.bucket_elements)) {
      s.buckets.emplace_back();
      filled = 0;
    }
    auto& b = s.buckets.back();
    b.members.push_back(p);
    b.offsets.push_back(filled);
    s.bucket_of[p] = s.buckets.size() - 1;
    filled += numel;
  }
  for (auto& b : s.buckets) {
    int64_t total = 0;
    for (std::size_t p : b.members) {
      total += s.params[p].numel();
    }
    b.flat = at::zeros({total}, at::TensorOptions().dtype(s.wire).device(device));
  }
}

// Copies bucket k's gradients in (zeros where none) and starts its all-reduce. Mutex held.
void launch(ReducerState& s, std::size_t k, int point) {
  auto& b = s.buckets[k];
  at::NoGradGuard no_grad;
  for (std::size_t j = 0; j < b.members.size(); ++j) {
    const std::size_t p = b.members[j];
    const auto& param = s.params[p];
    auto slot = b.flat.narrow(0, b.offsets[j], param.numel()).view(param.sizes());
    const auto& grad = param.grad();
    if (grad.defined()) {
      // Also right when the gradient already is this slot (accumulated into last step's view).
      if (!grad.is_alias_of(slot) || grad.storage_offset() != slot.storage_offset()) {
        slot.copy_(grad);
      }
      s.local_defined[p] = 1.0f;
    } else {
      slot.zero_();
      s.local_defined[p] = 0.0f;
    }
  }
  std::vector<at::Tensor> tensors{b.flat};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp(c10d::ReduceOp::SUM);
  opts.timeout = s.timeout;
  b.work = s.backend->allreduce(tensors, opts);
  b.launched = point;
}

// Sends every bucket, in order, whose gradients are all final. Mutex held.
void launch_ready(ReducerState& s, int point) {
  while (s.next_launch < s.buckets.size() && s.buckets[s.next_launch].pending == 0) {
    launch(s, s.next_launch, point);
    ++s.next_launch;
  }
}

struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  std::weak_ptr<ReducerState> state;
  std::size_t index;

  ReadyHook(std::weak_ptr<ReducerState> state, std::size_t index)
      : state(std::move(state)), index(index) {}

  void operator()(const torch::autograd::Variable& /*tensor*/) override {
    auto s = state.lock();
    if (!s) {
      return;  // the reducer is gone
    }
    std::lock_guard<std::mutex> lock(s->mutex);
    if (!s->armed || !s->hook_error.empty()) {
      return;  // a backward outside the armed window (the heads' rounds, another step)
    }
    try {
      auto& b = s->buckets[s->bucket_of[index]];
      if (s->final_grad[index]) {
        // Never expected: a gradient that changes after it was declared final would
        // otherwise be averaged stale, silently.
        if (b.launched != kNotLaunched) {
          s->hook_error = "gradient reducer: parameter " + std::to_string(index) +
                          " received a gradient after its bucket was sent";
        }
        return;
      }
      s->final_grad[index] = 1;
      --b.pending;
      launch_ready(*s, kInBackward);
    } catch (const c10::Error& e) {
      s->hook_error = e.what_without_backtrace();
    } catch (const std::exception& e) {
      s->hook_error = e.what();
    }
  }
};

// Arms a step (mutex held): the layout on the first call, then the per-step bookkeeping;
// the buckets already final leave, recorded as sent at `point`.
void arm_locked(ReducerState& s, const at::Tensor* root, int point) {
  TORCH_CHECK(!s.armed,
              "gradient reducer: armed twice without finish() (a step's reduction was not "
              "completed)");
  const std::size_t n = s.params.size();
  std::vector<char> late(n, 0);
  std::vector<uint64_t> key(n, std::numeric_limits<uint64_t>::max());
  if (root != nullptr && root->defined()) {
    reached_parameters(s, *root, late, key);
  }
  if (s.buckets.empty()) {
    build_layout(s, late, key);
  }
  s.hook_error.clear();
  s.final_grad.assign(n, 1);
  s.local_defined.assign(n, 0.0f);
  for (auto& b : s.buckets) {
    b.pending = 0;
    b.work.reset();
    b.launched = kNotLaunched;
    for (std::size_t p : b.members) {
      if (late[p]) {
        s.final_grad[p] = 0;
        ++b.pending;
      }
    }
  }
  s.next_launch = 0;
  s.armed = true;
  launch_ready(s, point);
}

}  // namespace

struct SamReducer {
  std::shared_ptr<ReducerState> state;
};

extern "C" {

// A reducer over `n` parameters (leaf tensors that require grad, all on one device, the same
// list in the same order on every rank) with buckets of at most `bucket_bytes` of `wire_dtype`
// (a c10 ScalarType code: float or bfloat16). Installs a post-accumulate-grad hook on each
// parameter, replacing any earlier one.
char* sam_torch_reducer_new(SamGroup* group, at::Tensor* const* params, std::size_t n,
                            int64_t bucket_bytes, int wire_dtype, SamReducer** out) {
  return guarded([&] {
    TORCH_CHECK(n > 0, "gradient reducer: no parameters");
    TORCH_CHECK(bucket_bytes > 0, "gradient reducer: bucket size must be positive, got ",
                bucket_bytes);
    const auto wire = static_cast<at::ScalarType>(wire_dtype);
    TORCH_CHECK(wire == at::kFloat || wire == at::kBFloat16,
                "gradient reducer: the wire dtype must be float32 or bfloat16, got ", wire);
    auto s = std::make_shared<ReducerState>();
    s->backend = group->backend;
    s->rank = group->rank;
    s->world = group->size;
    s->timeout = group->timeout;
    s->wire = wire;
    s->bucket_elements =
        std::max<int64_t>(1, bucket_bytes / static_cast<int64_t>(c10::elementSize(wire)));
    const auto device = params[0]->device();
    for (std::size_t i = 0; i < n; ++i) {
      const at::Tensor& p = *params[i];
      TORCH_CHECK(p.defined() && p.is_leaf() && p.requires_grad(), "gradient reducer: tensor ",
                  i, " is not a leaf that requires grad");
      TORCH_CHECK(p.device() == device, "gradient reducer: tensor ", i, " is on ", p.device(),
                  ", tensor 0 on ", device);
      TORCH_CHECK(at::isFloatingType(p.scalar_type()), "gradient reducer: tensor ", i, " is ",
                  p.scalar_type());
      TORCH_CHECK(s->index_of.emplace(p.unsafeGetTensorImpl(), i).second,
                  "gradient reducer: tensor ", i, " is listed twice");
      s->params.push_back(p);
    }
    for (std::size_t i = 0; i < n; ++i) {
      torch::autograd::impl::set_post_acc_grad_hooks(
          s->params[i], std::make_unique<ReadyHook>(std::weak_ptr<ReducerState>(s), i));
    }
    *out = new SamReducer{std::move(s)};
  });
}

void sam_torch_reducer_free(SamReducer* reducer) {
  if (reducer == nullptr) {
    return;
  }
  try {
    // The hooks stay on the parameters and find the state gone. In-flight collectives hold
    // their own references to the buckets.
    delete reducer;
  } catch (...) {
  }
}

// Arms a step right before the backward from `root` (null: no backward follows; every
// gradient is final now).
char* sam_torch_reducer_arm(SamReducer* reducer, const at::Tensor* root) {
  return guarded([&] {
    auto& s = *reducer->state;
    std::lock_guard<std::mutex> lock(s.mutex);
    arm_locked(s, root, kAtArm);
  });
}

// Completes the step's reduction (arming first if the step never did).
char* sam_torch_reducer_finish(SamReducer* reducer) {
  return guarded([&] {
    auto& s = *reducer->state;
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!s.armed) {
      arm_locked(s, nullptr, kAtFinish);
    }
    // Disarmed whatever happens below: the next step starts afresh.
    struct Disarm {
      ReducerState& s;
      ~Disarm() { s.armed = false; }
    } disarm{s};
    TORCH_CHECK(s.hook_error.empty(), s.hook_error);
    for (auto& b : s.buckets) {
      b.pending = 0;  // no gradient will come after the backward
    }
    launch_ready(s, kAtFinish);
    const auto device = s.params[0].device();
    auto flags = at::tensor(s.local_defined, at::TensorOptions().dtype(at::kFloat)).to(device);
    std::vector<at::Tensor> flag_list{flags};
    c10d::AllreduceOptions max_opts;
    max_opts.reduceOp = c10d::ReduceOp(c10d::ReduceOp::MAX);
    max_opts.timeout = s.timeout;
    auto flag_work = s.backend->allreduce(flag_list, max_opts);
    for (auto& b : s.buckets) {
      b.work->wait();
    }
    flag_work->wait();
    const auto any = flags.to(at::kCPU);
    const float* anyp = any.data_ptr<float>();
    at::NoGradGuard no_grad;
    for (auto& b : s.buckets) {
      // fp32 buckets are averaged in place; narrower ones after widening.
      const bool averaged = b.flat.scalar_type() == at::kFloat;
      if (s.world > 1 && averaged) {
        b.flat.div_(s.world);
      }
      for (std::size_t j = 0; j < b.members.size(); ++j) {
        const std::size_t p = b.members[j];
        auto& param = s.params[p];
        if (anyp[p] == 0.0f) {
          continue;  // no gradient on any rank: none here either
        }
        auto slot = b.flat.narrow(0, b.offsets[j], param.numel()).view(param.sizes());
        if (slot.scalar_type() == param.scalar_type()) {
          if (s.world > 1 && !averaged) {
            slot.div_(s.world);
          }
          param.mutable_grad() = slot;
        } else {
          auto avg = slot.to(param.scalar_type());
          if (s.world > 1 && !averaged) {
            avg.div_(s.world);
          }
          param.mutable_grad() = avg;
        }
      }
    }
  });
}

// Where each bucket of the last step was sent from (LaunchPoint codes), and each bucket's
// number of parameters: `points` and `sizes` have room for `capacity` entries; `count`
// receives the number of buckets (0 before the first arming).
char* sam_torch_reducer_report(SamReducer* reducer, int* points, int64_t* sizes,
                               std::size_t capacity, std::size_t* count) {
  return guarded([&] {
    auto& s = *reducer->state;
    std::lock_guard<std::mutex> lock(s.mutex);
    *count = s.buckets.size();
    for (std::size_t k = 0; k < s.buckets.size() && k < capacity; ++k) {
      points[k] = s.buckets[k].launched;
      sizes[k] = static_cast<int64_t>(s.buckets[k].members.size());
    }
  });
}

}  // extern "C"

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
