// The C API of include/et.h: argument validation, backend selection, error statuses.
// No exception crosses this boundary; every failure becomes a status plus a thread-local message.

// Only the functions declared in et.h are exported from libet.so (everything else is hidden).
#pragma GCC visibility push(default)
#include "et.h"
#pragma GCC visibility pop

#include <memory>
#include <new>
#include <string>

#include "backend.h"
#include "manifest.h"

struct et_model {
  std::shared_ptr<const et::Model> model;
  std::unique_ptr<et::Backend> backend;
  std::string backend_name;
  std::string device_name;
  et_model_info info{};
};

namespace {

thread_local std::string g_last_error;

et_status set_error(et_status status, const std::string& message) {
  g_last_error = message;
  return status;
}

// Runs fn, turning every exception into a status and message.
template <typename Fn>
et_status guarded(const char* where, Fn&& fn) {
  try {
    g_last_error.clear();
    fn();
    return ET_OK;
  } catch (const et::Error& e) {
    return set_error(e.status(), e.what());
  } catch (const std::bad_alloc&) {
    return set_error(ET_ERR_OUT_OF_MEMORY, std::string(where) + ": out of host memory");
  } catch (const std::exception& e) {
    return set_error(ET_ERR_BACKEND, std::string(where) + ": " + e.what());
  } catch (...) {
    return set_error(ET_ERR_BACKEND, std::string(where) + ": unknown internal error");
  }
}

[[noreturn]] void invalid(const std::string& message) { throw et::Error(ET_ERR_INVALID_ARGUMENT, message); }

void count_linear(const et::Linear& lin, et_model_info& info) {
  info.kept_params += lin.stored_params();
  info.total_params += int64_t(lin.out) * lin.in;
  if (lin.tiled()) {
    info.kept_tiles += int64_t(lin.kept.size());
    info.total_tiles += int64_t(lin.out / lin.tile_r) * (lin.in / lin.tile_c);
  }
}

et_model_info make_info(const et::Model& m, const et::Backend& backend) {
  et_model_info info{};
  const et::ModelConfig& c = m.cfg;
  info.layers = c.layers;
  info.hidden = c.hidden;
  info.heads = c.heads;
  info.intermediate = c.intermediate;
  info.vocab = c.vocab;
  info.max_positions = c.max_positions;
  info.type_vocab = c.type_vocab;
  info.labels = c.labels;
  info.backend = backend.kind();
  info.precision = backend.precision();
  for (const et::Layer& L : m.layers) {
    info.pruned_heads += int32_t(L.pruned_heads.size());
    for (const et::Linear* lin : {&L.q, &L.k, &L.v, &L.o, &L.ffn1, &L.ffn2}) count_linear(*lin, info);
  }
  return info;
}

std::unique_ptr<et::Backend> make_backend(std::shared_ptr<const et::Model> model, const et_options& opts) {
  switch (opts.backend) {
    case ET_BACKEND_CPU:
      return et::make_cpu_backend(std::move(model), opts);
    case ET_BACKEND_CUDA:
#ifdef ET_WITH_CUDA
      return et::make_cuda_backend(std::move(model), opts);
#else
      throw et::Error(ET_ERR_BACKEND, "the CUDA backend was requested but this build of libet has no CUDA backend");
#endif
    case ET_BACKEND_AUTO:
#ifdef ET_WITH_CUDA
      if (et::cuda_device_present()) return et::make_cuda_backend(std::move(model), opts);
#endif
      return et::make_cpu_backend(std::move(model), opts);
    default:
      invalid("options.backend = " + std::to_string(opts.backend) + " is not an et_backend (0 auto, 1 cpu, 2 cuda)");
  }
}

// Checks a forward/benchmark request and returns it as an et::Batch.
et::Batch validate_batch(const et_model* model, int32_t batch, const int32_t* lengths, const int32_t* token_ids,
                         const int32_t* segment_ids, uint32_t flags) {
  if (!model) invalid("model is NULL");
  if (batch <= 0) invalid("batch = " + std::to_string(batch) + " (must be >= 1)");
  if (!lengths) invalid("lengths is NULL");
  if (!token_ids) invalid("token_ids is NULL");
  const uint32_t known = ET_FORWARD_PADDED | ET_FORWARD_NO_GRAPH;
  if (flags & ~known) invalid("unknown flag bits " + std::to_string(flags & ~known));
  const et::ModelConfig& c = model->model->cfg;
  et::Batch b;
  b.batch = batch;
  b.lengths = lengths;
  b.token_ids = token_ids;
  b.segment_ids = segment_ids;
  b.flags = flags;
  for (int32_t i = 0; i < batch; ++i) {
    const int32_t len = lengths[i];
    if (len < 1 || len > c.max_positions)
      invalid("lengths[" + std::to_string(i) + "] = " + std::to_string(len) + " is outside 1.." +
              std::to_string(c.max_positions) + " (max_positions)");
    b.total_tokens += len;
    if (len > b.max_len) b.max_len = len;
  }
  for (int64_t t = 0; t < b.total_tokens; ++t) {
    const int32_t id = token_ids[t];
    if (id < 0 || id >= c.vocab)
      invalid("token_ids[" + std::to_string(t) + "] = " + std::to_string(id) + " is outside 0.." +
              std::to_string(c.vocab - 1) + " (vocab size " + std::to_string(c.vocab) + ")");
  }
  if (segment_ids) {
    for (int64_t t = 0; t < b.total_tokens; ++t) {
      const int32_t s = segment_ids[t];
      if (s < 0 || s >= c.type_vocab)
        invalid("segment_ids[" + std::to_string(t) + "] = " + std::to_string(s) + " is outside 0.." +
                std::to_string(c.type_vocab - 1) + " (type_vocab " + std::to_string(c.type_vocab) + ")");
    }
  }
  return b;
}

}  // namespace

extern "C" {

void et_options_default(et_options* opts) {
  if (!opts) return;
  opts->backend = ET_BACKEND_AUTO;
  opts->device = 0;
  opts->precision = ET_PRECISION_DEFAULT;
  opts->threads = 0;
}

et_status et_model_load(const char* manifest_path, const char* npy_dir, const et_options* opts,
                        et_model** out_model) {
  return guarded("et_model_load", [&] {
    if (!out_model) invalid("out_model is NULL");
    *out_model = nullptr;
    if (!manifest_path) invalid("manifest_path is NULL");
    et_options o;
    et_options_default(&o);
    if (opts) o = *opts;
    if (o.threads < 0) invalid("options.threads = " + std::to_string(o.threads) + " (must be >= 0)");
    if (o.device < 0) invalid("options.device = " + std::to_string(o.device) + " (must be >= 0)");
    if (o.precision < ET_PRECISION_DEFAULT || o.precision > ET_PRECISION_BF16)
      invalid("options.precision = " + std::to_string(o.precision) + " is not an et_precision");
    auto model = std::make_shared<const et::Model>(et::load_model(manifest_path, npy_dir ? npy_dir : ""));
    auto handle = std::make_unique<et_model>();
    handle->backend = make_backend(model, o);
    handle->model = std::move(model);
    handle->backend_name = handle->backend->kind() == ET_BACKEND_CUDA ? "cuda" : "cpu";
    handle->device_name = handle->backend->device_name();
    handle->info = make_info(*handle->model, *handle->backend);
    *out_model = handle.release();
  });
}

et_status et_model_free(et_model* model) {
  return guarded("et_model_free", [&] { delete model; });
}

et_status et_model_get_info(const et_model* model, et_model_info* out_info) {
  return guarded("et_model_get_info", [&] {
    if (!model) invalid("model is NULL");
    if (!out_info) invalid("out_info is NULL");
    *out_info = model->info;
  });
}

et_status et_forward(et_model* model, int32_t batch, const int32_t* lengths, const int32_t* token_ids,
                     const int32_t* segment_ids, uint32_t flags, float* logits, float* hidden) {
  return guarded("et_forward", [&] {
    const et::Batch b = validate_batch(model, batch, lengths, token_ids, segment_ids, flags);
    if (!logits) invalid("logits is NULL");
    model->backend->forward(b, logits, hidden);
  });
}

et_status et_benchmark(et_model* model, int32_t batch, const int32_t* lengths, const int32_t* token_ids,
                       const int32_t* segment_ids, uint32_t flags, int32_t warmup, int32_t iters,
                       float* ms_per_iter) {
  return guarded("et_benchmark", [&] {
    const et::Batch b = validate_batch(model, batch, lengths, token_ids, segment_ids, flags);
    if (warmup < 0) invalid("warmup = " + std::to_string(warmup) + " (must be >= 0)");
    if (iters < 1) invalid("iters = " + std::to_string(iters) + " (must be >= 1)");
    if (!ms_per_iter) invalid("ms_per_iter is NULL");
    model->backend->benchmark(b, warmup, iters, ms_per_iter);
  });
}

const char* et_last_error(void) { return g_last_error.c_str(); }

const char* et_status_string(et_status status) {
  switch (status) {
    case ET_OK: return "ok";
    case ET_ERR_INVALID_ARGUMENT: return "invalid argument";
    case ET_ERR_IO: return "i/o error";
    case ET_ERR_FORMAT: return "format error";
    case ET_ERR_SHAPE: return "shape mismatch";
    case ET_ERR_OUT_OF_MEMORY: return "out of memory";
    case ET_ERR_BACKEND: return "backend error";
    case ET_ERR_UNSUPPORTED: return "unsupported";
  }
  return "unknown status";
}

const char* et_backend_name(const et_model* model) { return model ? model->backend_name.c_str() : ""; }

const char* et_device_name(const et_model* model) { return model ? model->device_name.c_str() : ""; }

int32_t et_cuda_available(void) {
#ifdef ET_WITH_CUDA
  try {
    return et::cuda_device_present() ? 1 : 0;
  } catch (...) {
    return 0;
  }
#else
  return 0;
#endif
}

}  // extern "C"
