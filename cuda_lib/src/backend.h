// Internal interface between the C API layer (api.cpp) and the backends (CPU, CUDA).
// The API layer validates every argument before calling a backend; backends report failures by
// throwing et::Error, which the API layer turns into a status and et_last_error().
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

#include "et.h"
#include "model.h"

namespace et {

class Error : public std::runtime_error {
 public:
  Error(et_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  et_status status() const { return status_; }

 private:
  et_status status_;
};

// A validated ragged batch; all pointers are host memory.
struct Batch {
  int32_t batch = 0;
  const int32_t* lengths = nullptr;      // [batch]
  const int32_t* token_ids = nullptr;    // [total_tokens], packed
  const int32_t* segment_ids = nullptr;  // [total_tokens] or nullptr (all zero)
  int64_t total_tokens = 0;
  int32_t max_len = 0;
  uint32_t flags = 0;                    // ET_FORWARD_*
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual et_backend kind() const = 0;
  virtual et_precision precision() const = 0;
  virtual std::string device_name() const = 0;
  // logits: [batch, labels]; hidden: [total_tokens, hidden] or nullptr.
  virtual void forward(const Batch& batch, float* logits, float* hidden) = 0;
  // warmup untimed runs, then iters timed runs written to ms_per_iter.
  virtual void benchmark(const Batch& batch, int warmup, int iters, float* ms_per_iter) = 0;
};

std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<const Model> model, const et_options& opts);

#ifdef ET_WITH_CUDA
// Defined in src/cuda/; only linked into CUDA builds.
std::unique_ptr<Backend> make_cuda_backend(std::shared_ptr<const Model> model, const et_options& opts);
bool cuda_device_present();
#endif

}  // namespace et
