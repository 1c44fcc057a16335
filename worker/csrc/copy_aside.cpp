// Device-to-host copies that overlap training (tch has no stream API). The training
// thread copies the state into device buffers laid out like it (outloud_mirror), a
// few large copies on the current stream (outloud_stage); the checkpoint thread then
// copies those to host memory on a side stream that waits for them and for nothing
// else (outloud_drain), while the training thread queues the next steps. On a CPU the
// state is copied to host buffers laid out like it at once (outloud_copy).
//
// Only c10's device-generic interface is used (streams, events, a stream guard), so
// this builds and links without CUDA's headers or runtime. Errors come back as text,
// never as a C++ exception across the Rust boundary.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdio>
#include <exception>
#include <map>
#include <memory>

namespace {
const c10::impl::DeviceGuardImplInterface *impl_of(const c10::Device &device) {
  return c10::impl::getDeviceGuardImpl(device.type());
}

// The whole storage under `t`, as bytes.
at::Tensor whole_storage(const at::Tensor &t) {
  const auto bytes = static_cast<int64_t>(t.storage().nbytes());
  return at::empty({0}, t.options().dtype(at::kByte)).set_(t.storage(), 0, {bytes}, {1});
}

// dst[i].copy_(src[i]) for all i, one copy per storage when every dst lies in a storage
// of the same size at the same offset as its src, and each storage of src maps to one
// of dst (buffers from outloud_mirror): the state's tensors are views of a few flat
// buffers, and a few large copies run at the memory's speed where hundreds of small
// ones would wait on their launches. Otherwise tensor by tensor.
void copy_by_storage(at::Tensor **dst, at::Tensor **src, size_t n) {
  std::map<const void *, std::pair<at::Tensor, at::Tensor>> storages;
  bool mirrored = true;
  for (size_t i = 0; i < n && mirrored; i++) {
    const void *key = src[i]->storage().unsafeGetStorageImpl();
    const auto [slot, fresh] = storages.try_emplace(key, *dst[i], *src[i]);
    mirrored = dst[i]->storage_offset() == src[i]->storage_offset() &&
               dst[i]->storage().nbytes() == src[i]->storage().nbytes() &&
               (fresh || slot->second.first.storage().is_alias_of(dst[i]->storage()));
  }
  if (!mirrored) {
    for (size_t i = 0; i < n; i++) {
      dst[i]->copy_(*src[i], /*non_blocking=*/true);
    }
    return;
  }
  for (auto &[key, pair] : storages) {
    whole_storage(pair.first).copy_(whole_storage(pair.second), /*non_blocking=*/true);
  }
}
}  // namespace

// Tensors laid out like src[i] (same storage offsets, sizes and strides) in new
// storages, one per distinct storage of src: on src's device, or in host memory when
// `on_host` (pinned when src is on a GPU). Writes the n new handles into `out`; answers 0, or 1 with `error`.
extern "C" int outloud_mirror(at::Tensor **src, size_t n, int on_host, at::Tensor **out,
                              char *error, size_t error_len) {
  try {
    std::map<const void *, at::Tensor> storages;
    for (size_t i = 0; i < n; i++) {
      const at::Tensor &t = *src[i];
      const void *key = t.storage().unsafeGetStorageImpl();
      auto found = storages.find(key);
      if (found == storages.end()) {
        auto options = at::TensorOptions().dtype(at::kByte);
        options = on_host ? options.device(at::kCPU).pinned_memory(t.is_cuda())
                          : options.device(t.device());
        const auto bytes = static_cast<int64_t>(t.storage().nbytes());
        found = storages.emplace(key, at::empty({bytes}, options)).first;
      }
      const at::Tensor &flat = found->second;
      at::Tensor view = at::empty({0}, t.options().device(flat.device()));
      view.set_(flat.storage(), t.storage_offset(), t.sizes(), t.strides());
      out[i] = new at::Tensor(std::move(view));
    }
    return 0;
  } catch (const std::exception &e) {
    std::snprintf(error, error_len, "%s", e.what());
    return 1;
  }
}

// dst[i].copy_(src[i]) (by storage, see above), waiting for the copies; answers 0, or
// 1 with `error`.
extern "C" int outloud_copy(at::Tensor **dst, at::Tensor **src, size_t n, char *error,
                            size_t error_len) {
  try {
    copy_by_storage(dst, src, n);
    const c10::Device device = src[0]->device();
    if (device.is_cuda()) {
      impl_of(device)->synchronizeStream(impl_of(device)->getStream(device));
    }
    return 0;
  } catch (const std::exception &e) {
    std::snprintf(error, error_len, "%s", e.what());
    return 1;
  }
}

// dst[i].copy_(src[i]) on the current stream (by storage, see above); answers
// the event recorded behind them, to hand to outloud_drain, or null with `error`.
extern "C" void *outloud_stage(at::Tensor **dst, at::Tensor **src, size_t n, char *error,
                               size_t error_len) {
  try {
    copy_by_storage(dst, src, n);
    const c10::Device device = src[0]->device();
    auto staged = std::make_unique<c10::Event>(device.type());
    staged->record(impl_of(device)->getStream(device));
    return staged.release();
  } catch (const std::exception &e) {
    std::snprintf(error, error_len, "%s", e.what());
    return nullptr;
  }
}

// host[i].copy_(staged[i]) on a side stream of their device once `staged` (from
// outloud_stage, freed here) has happened, and waits for the copies to end.
extern "C" int outloud_drain(void *staged, at::Tensor **host, at::Tensor **device_buffers,
                             size_t n, char *error, size_t error_len) {
  std::unique_ptr<c10::Event> ready(static_cast<c10::Event *>(staged));
  try {
    const c10::Device device = device_buffers[0]->device();
    const auto *impl = impl_of(device);
    const c10::Stream side = impl->getStreamFromGlobalPool(device, /*isHighPriority=*/false);
    ready->block(side);
    c10::StreamGuard on_side(side);
    copy_by_storage(host, device_buffers, n);
    impl->synchronizeStream(side);
    return 0;
  } catch (const std::exception &e) {
    std::snprintf(error, error_len, "%s", e.what());
    return 1;
  }
}

// Frees an event outloud_stage answered that is never drained.
extern "C" void outloud_staged_free(void *staged) {
  delete static_cast<c10::Event *>(staged);
}

// Waits until the work queued on the current stream of `t`'s device has ended (not
// other streams'): what the next training step waits behind, for benchmarks.
extern "C" int outloud_current_stream_wait(at::Tensor *t, char *error, size_t error_len) {
  try {
    const c10::Device device = t->device();
    impl_of(device)->synchronizeStream(impl_of(device)->getStream(device));
    return 0;
  } catch (const std::exception &e) {
    std::snprintf(error, error_len, "%s", e.what());
    return 1;
  }
}
