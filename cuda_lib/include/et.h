/*
 * et.h — the one public C API of the E.T. inference library (libet).
 *
 * The same API is implemented by two backends:
 *   - CPU  (always built): float32 BERT encoder in C++ with OpenMP, tile-sparse linear layers;
 *   - CUDA (built when nvcc is found and ET_CUDA is ON/AUTO): fp16/bf16 tensor-core engine with
 *     on-the-fly attention, tile-sparse GEMMs and a padding-free (ragged) encoder.
 *
 * Conventions
 *   - Every function that can fail returns an et_status; on failure et_last_error() returns a
 *     message naming the culprit (file, tensor, expected shape, argument). The library never
 *     prints, aborts or exits on bad input.
 *   - Batches are ragged: token ids of all sequences are packed back to back, with no padding;
 *     lengths[b] gives the length of sequence b; sum(lengths) tokens in all.
 *   - Weights are loaded from a manifest (weights.txt) and a folder of .npy files; the format is
 *     documented in cuda_lib/README.md ("Manifest format").
 */
#ifndef ET_H
#define ET_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ET_API_VERSION 1

typedef enum et_status {
  ET_OK = 0,
  ET_ERR_INVALID_ARGUMENT = 1, /* null pointer, batch <= 0, bad length, token id out of range */
  ET_ERR_IO = 2,               /* a file is missing or unreadable */
  ET_ERR_FORMAT = 3,           /* malformed manifest or .npy file */
  ET_ERR_SHAPE = 4,            /* dtype, shape or tile layout disagrees with the manifest */
  ET_ERR_OUT_OF_MEMORY = 5,    /* host or device allocation failed; the model stays usable */
  ET_ERR_BACKEND = 6,          /* backend unavailable or a CUDA call failed */
  ET_ERR_UNSUPPORTED = 7       /* a valid request this build cannot serve */
} et_status;

typedef enum et_backend {
  ET_BACKEND_AUTO = 0, /* CUDA when built and a device is present, else CPU */
  ET_BACKEND_CPU = 1,
  ET_BACKEND_CUDA = 2
} et_backend;

typedef enum et_precision {
  ET_PRECISION_DEFAULT = 0, /* CPU: fp32; CUDA: fp16 */
  ET_PRECISION_FP32 = 1,
  ET_PRECISION_FP16 = 2,
  ET_PRECISION_BF16 = 3
} et_precision;

typedef struct et_options {
  int32_t backend;   /* et_backend */
  int32_t device;    /* CUDA device ordinal (ignored by the CPU backend) */
  int32_t precision; /* et_precision */
  int32_t threads;   /* CPU threads; 0 = OpenMP default */
} et_options;

typedef struct et_model_info {
  int32_t layers;
  int32_t hidden;
  int32_t heads;
  int32_t intermediate;
  int32_t vocab;
  int32_t max_positions;
  int32_t type_vocab;
  int32_t labels;
  int32_t backend;      /* et_backend actually in use (CPU or CUDA) */
  int32_t precision;    /* et_precision actually in use */
  int32_t pruned_heads; /* total over all layers */
  int32_t reserved;
  int64_t kept_tiles;   /* over all tiled encoder weights */
  int64_t total_tiles;
  int64_t kept_params;  /* encoder linear-layer weights actually stored */
  int64_t total_params; /* encoder linear-layer weights before pruning */
} et_model_info;

/* Flags for et_forward / et_benchmark. */
#define ET_FORWARD_PADDED 1u   /* run on a padded [batch, max(lengths)] layout (for comparison) */
#define ET_FORWARD_NO_GRAPH 2u /* CUDA: do not capture or replay a CUDA graph */

typedef struct et_model et_model;

/* Fill *opts with defaults (backend AUTO, device 0, precision DEFAULT, threads 0). */
void et_options_default(et_options* opts);

/* Load a model from a manifest and the folder holding its .npy files.
 * opts may be NULL (defaults). On success *out_model owns all memory; free with et_model_free. */
et_status et_model_load(const char* manifest_path, const char* npy_dir, const et_options* opts,
                        et_model** out_model);

/* Free a model; NULL is accepted and returns ET_OK. */
et_status et_model_free(et_model* model);

/* Hyper-parameters and pruning statistics of a loaded model. */
et_status et_model_get_info(const et_model* model, et_model_info* out_info);

/* One forward pass over a ragged batch.
 *   batch        number of sequences, >= 1
 *   lengths      [batch], each in 1..max_positions
 *   token_ids    [sum(lengths)] packed, each in 0..vocab-1
 *   segment_ids  [sum(lengths)] packed, each in 0..type_vocab-1; NULL means all zero
 *   flags        ET_FORWARD_* bits
 *   logits       [batch, labels] float32 output
 *   hidden       [sum(lengths), hidden] float32 output of the last encoder layer, or NULL */
et_status et_forward(et_model* model, int32_t batch, const int32_t* lengths, const int32_t* token_ids,
                     const int32_t* segment_ids, uint32_t flags, float* logits, float* hidden);

/* Time the forward pass on one ragged batch kept resident on the device: `warmup` untimed runs,
 * then `iters` timed runs; ms_per_iter[i] receives run i's time in milliseconds (CUDA events on
 * the CUDA backend, a steady clock on the CPU backend). Inputs are validated as in et_forward. */
et_status et_benchmark(et_model* model, int32_t batch, const int32_t* lengths, const int32_t* token_ids,
                       const int32_t* segment_ids, uint32_t flags, int32_t warmup, int32_t iters,
                       float* ms_per_iter);

/* The calling thread's last error message; never NULL ("" when none). */
const char* et_last_error(void);

/* A static name for a status ("ok", "invalid argument", ...). */
const char* et_status_string(et_status status);

/* "cpu" or "cuda"; "" for NULL. */
const char* et_backend_name(const et_model* model);

/* The device in use: the GPU's name, or the CPU's description; "" for NULL. */
const char* et_device_name(const et_model* model);

/* 1 if this build has the CUDA backend and a CUDA device is visible, else 0. */
int32_t et_cuda_available(void);

#ifdef __cplusplus
}
#endif

#endif /* ET_H */
