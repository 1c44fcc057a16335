// One call into ATen that tch does not bind: the fused AdamW step (`torch._fused_adamw_`,
// what `torch.optim.AdamW(fused=True)` runs). A single multi-tensor kernel reads each
// parameter, gradient and moment once and writes them once, where separate tensor
// operations would pass over the buffers about nine times. CPU and CUDA both have it.
//
// The tensors are tch's own handles (`C_tensor` is an `at::Tensor`). Errors come back as
// text, never as a C++ exception across the Rust boundary.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adamw.h>

#include <cstdio>
#include <exception>
#include <optional>

extern "C" int outloud_fused_adamw(at::Tensor *param, at::Tensor *grad, at::Tensor *exp_avg,
                                   at::Tensor *exp_avg_sq, at::Tensor *step,
                                   at::Tensor *grad_scale, double lr, double beta1,
                                   double beta2, double weight_decay, double eps, char *error,
                                   size_t error_len) {
  try {
    std::optional<at::Tensor> scale;
    if (grad_scale != nullptr) {
      scale = *grad_scale;
    }
    at::_fused_adamw_({*param}, {*grad}, {*exp_avg}, {*exp_avg_sq}, {}, {*step}, lr, beta1,
                      beta2, weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false, scale,
                      std::nullopt);
    return 0;
  } catch (const std::exception &e) {
    std::snprintf(error, error_len, "%s", e.what());
    return 1;
  }
}
