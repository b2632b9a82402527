// The CUDA backend: weights prepared at load (prepare.h) and uploaded once, a workspace sized for the
// largest batch seen, and the whole forward (embedding, every layer, pooler and classifier) enqueued
// on one stream with no host synchronisation, captured into a CUDA graph per batch shape.
//
// Tuning knobs read at load (documented in cuda_lib/NOTES.md, used by the GPU scripts to measure):
//   ET_SPARSE_MAX_DENSITY  a weight is stored tiled and run tile-sparse when its 16x16 tile density is below this
//   ET_SPARSE_MAX_ROWS     ... and the batch has at most this many token rows (larger: cuBLASLt)
//   ET_ATTN_SHORT_MAX      longest batch sequence that uses the whole-sequence attention operator
//   ET_POISON_WORKSPACE=1  fill the workspace with NaNs before each forward (tests catch unwritten data)
//   ET_EXACT_GELU=1        FFN1's GELU in the exact erf form (a separate pass after cuBLASLt) instead of the tanh
//                          form that cuBLASLt's epilogue fuses (the default)
//   ET_PDL=0               launch no kernel early (programmatic dependent launch, on by default on sm_90+)
//   ET_GEMM_TUNE=N         cuBLASLt candidates timed per GEMM shape (default 8; 1: the heuristic's first)
//   ET_GEMM_TUNE_COLD=0    time them back to back on cache-warm operands instead of after an L2 flush
//   ET_SPARSE_BM           rows of X per block of the tile-sparse GEMM: 0 auto, 32, 64 or 128
//   ET_HOPPER_GEMM_MAX_ROWS  fp16 batches of at most this many token rows run their dense GEMMs through CUTLASS's
//                          Hopper kernels (launched early; O and FFN2 split-K, summed by the LayerNorm kernel)
//                          when the library was built with them (sm_90 only); 0: cuBLASLt for every batch
//   ET_HOPPER_SPLIT_CTAS   most CTAs of a split-K GEMM on that path (default: the GPU's multiprocessors)
//   ET_HOPPER_SPARSE_MAX_DENSITY  a weight whose tile density is below this is also stored tiled for the wgmma
//                          tile-sparse GEMM (sm_90), which runs it for batches of more than
//   ET_HOPPER_SPARSE_MIN_ROWS  token rows (smaller batches: ET_SPARSE_MAX_DENSITY / _MAX_ROWS decide as before)
//   ET_HOPPER_SPARSE_GROUP  tile rows of that kernel's records (one wgmma m64n(16G)k16 each): 1, 2 or 4; 0 (default)
//                          chooses per weight (hopper_sparse::choose_group)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "backend.h"
#include "common.cuh"
#include "dense_gemm.h"
#ifdef ET_WITH_HOPPER_GEMM
#include "hopper_gemm.h"
#endif
#ifdef ET_WITH_HOPPER_SPARSE
#include "hopper_sparse_gemm.h"
#endif
#include "kernels.h"
#include "prepare.h"

namespace et {
namespace cuda {
namespace {

// Stored tiled below this density and run tile-sparse for batches of at most kDefaultSparseMaxRows token rows:
// measured on an H100 (NOTES.md, session 6 runs 38 and 40), against the dense path at 128 rows (CUTLASS, launched
// early) the tile-sparse kernel on the zero-filled weights is even or slower at density 0.05 (-1%, +3.5%) and slower
// from 0.1 (+10-19%; 0.2: +37%), and it loses at 1024 rows and more at every density measured (session 3), so larger
// batches take the dense GEMMs. Nothing below 0.05 was measured: 0.04 keeps only weights over 96% sparse on it.
// (Against cuBLASLt, before the CUTLASS path, it won up to 0.15: session 3 run 19.)
constexpr double kDefaultSparseMaxDensity = 0.04;
constexpr int64_t kDefaultSparseMaxRows = 128;
constexpr int kDefaultShortMax = 96;                // see NOTES.md "attention switch point"
constexpr int kDefaultGemmTune = 8;                 // cuBLASLt candidates timed per shape (NOTES.md, session 2)
constexpr size_t kMaxGraphs = 16;
constexpr int64_t kDefaultHopperMaxRows = 256;      // NOTES.md, session 6
// The wgmma tile-sparse GEMM (sm_90): for batches of more than this many token rows (below, the CUTLASS dense
// path) and weights below this tile density. Off by default: slower than the dense path at 80% tile sparsity for
// every tile shape and batch measured (NOTES.md, session 9 run 64: b32 1.70 ms with [64, 16] tiles, 2.03 [32, 16],
// 2.70 random 16x16, dense 1.55); faster only with [64, 16] tiles at 90% and 4096 rows (1.36 vs 1.52 ms), not at
// 1024 rows. ET_HOPPER_SPARSE_MAX_DENSITY turns it on.
constexpr int64_t kDefaultHopperSparseMinRows = 256;
constexpr double kDefaultHopperSparseMaxDensity = 0.0;

// An owned device allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes) check(cudaMalloc(&ptr_, bytes), ("cudaMalloc(" + std::to_string(bytes) + " bytes)").c_str());
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  template <typename U>
  U* as() const {
    return static_cast<U*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// An owned page-locked host allocation (staging for asynchronous copies).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes) {
    if (bytes) check(cudaMallocHost(&ptr_, bytes), "cudaMallocHost");
  }
  ~PinnedBuffer() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept : ptr_(o.ptr_) { o.ptr_ = nullptr; }
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    return *this;
  }
  template <typename U>
  U* as() const {
    return static_cast<U*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

template <typename U>
DeviceBuffer upload(const U* data, size_t n) {
  DeviceBuffer b(n * sizeof(U));
  if (n) check(cudaMemcpy(b.as<void>(), data, n * sizeof(U), cudaMemcpyHostToDevice), "cudaMemcpy(weights)");
  return b;
}

template <typename T>
DeviceBuffer upload_as(const std::vector<float>& v) {
  std::vector<T> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if constexpr (std::is_same_v<T, __half>)
      h[i] = __float2half_rn(v[i]);
    else
      h[i] = __float2bfloat16_rn(v[i]);
  }
  return upload(h.data(), h.size());
}

double env_number(const char* name, double fallback) {
  const char* s = std::getenv(name);
  if (!s || !*s) return fallback;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (end == s || *end != '\0')
    throw Error(ET_ERR_INVALID_ARGUMENT, std::string("environment variable ") + name + "='" + s + "' is not a number");
  return v;
}

template <typename T>
struct DeviceLinear {
  int n = 0, k = 0;
  bool sparse = false;
  double density = 1.0;  // kept 16x16 tiles / all tiles
  DeviceBuffer weight;  // dense [n, k]
  DeviceBuffer tiles, row_ptr, tile_col;  // the kept tiles and their CSR, when sparse
  DeviceBuffer bias;
  DeviceSparseWeight sw;
#ifdef ET_WITH_HOPPER_SPARSE
  DeviceBuffer records, cut;  // the wgmma kernel's layout of the kept tiles, when sparse and that kernel is used
  hopper_sparse::Weight hw;
#endif

  // wgmma_group: -1 no wgmma layout; else its record rows' tile rows (0: hopper_sparse::choose_group's)
  DeviceLinear(const PreparedLinear& p, int wgmma_group)
      : n(p.n), k(p.k), sparse(p.sparse), density(p.density()) {
    bias = upload_as<T>(p.bias);
    weight = upload_as<T>(p.dense);
    if (!sparse) return;
    tiles = upload_as<T>(p.tiles);
    row_ptr = upload(p.row_ptr.data(), p.row_ptr.size());
    tile_col = upload(p.tile_col.data(), p.tile_col.size());
    sw = DeviceSparseWeight{n, k, tiles.as<void>(), row_ptr.as<int32_t>(), tile_col.as<int32_t>()};
#ifdef ET_WITH_HOPPER_SPARSE
    if (wgmma_group >= 0) {
      const hopper_sparse::Packed<T> packed =
          hopper_sparse::pack<T>(p, wgmma_group > 0 ? wgmma_group : hopper_sparse::choose_group(p));
      records = upload(packed.records.data(), packed.records.size());
      cut = upload(packed.cut.data(), packed.cut.size());
      hw = hopper_sparse::Weight{n, k, hopper_sparse::chunk_count(k), packed.group, packed.rows,
                                 records.as<void>(), cut.as<int32_t>()};
    }
#else
    (void)wgmma_group;
#endif
  }
};

template <typename T>
struct DeviceLayer {
  DeviceLinear<T> qkv, o, ffn1, ffn2;
  DeviceBuffer heads;
  int n_heads;
  DeviceBuffer ln1g, ln1b, ln2g, ln2b;

  DeviceLayer(const PreparedLayer& p, int wgmma_group)
      : qkv(p.qkv, wgmma_group),
        o(p.o, wgmma_group),
        ffn1(p.ffn1, wgmma_group),
        ffn2(p.ffn2, wgmma_group),
        n_heads(static_cast<int>(p.heads.size())) {
    std::vector<int32_t> slots;
    for (const HeadSlot& h : p.heads) slots.insert(slots.end(), {h.q_off, h.k_off, h.v_off, h.dqk, h.dv, h.out_off});
    heads = upload(slots.data(), slots.size());
    ln1g = upload_as<T>(p.ln1_gamma);
    ln1b = upload_as<T>(p.ln1_beta);
    ln2g = upload_as<T>(p.ln2_gamma);
    ln2b = upload_as<T>(p.ln2_beta);
  }
};

// The working layout of one forward: rows of the activations (packed tokens or batch x max_len).
struct Shape {
  int rows = 0;
  int batch = 0;
  int max_len = 0;
  bool operator<(const Shape& o) const {
    return std::tie(rows, batch, max_len) < std::tie(o.rows, o.batch, o.max_len);
  }
};

// Activation buffers (capacity rows_cap x width), batch index arrays and host staging of a forward.
struct Workspace {
  int rows_cap = 0, batch_cap = 0;
  DeviceBuffer idx, x, x2, tmp, qkv, att, ffn, pooled, logits, hidden;
  DeviceBuffer partial;  // fp32 split-K partial products (CUTLASS path), for batches it serves
  PinnedBuffer idx_host, logits_host;
};

template <typename T>
class CudaEngine final : public Backend {
 public:
  CudaEngine(std::shared_ptr<const Model> model, const et_options& opts, et_precision precision)
      : model_(std::move(model)), precision_(precision), device_(opts.device) {
    int count = 0;
    check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    if (device_ < 0 || device_ >= count)
      throw Error(ET_ERR_INVALID_ARGUMENT,
                  "CUDA device " + std::to_string(device_) + " does not exist (" + std::to_string(count) + " visible)");
    check(cudaSetDevice(device_), "cudaSetDevice");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
    name_ = prop.name;
    sparse_dev_ = SparseDevice{prop.multiProcessorCount, static_cast<int>(prop.sharedMemPerBlockOptin)};
    early_launch_ = prop.major >= 9 && env_number("ET_PDL", 1) != 0;
    short_max_ = static_cast<int>(env_number("ET_ATTN_SHORT_MAX", kDefaultShortMax));
    poison_ = env_number("ET_POISON_WORKSPACE", 0) != 0;
    sparse_bm_ = static_cast<int>(env_number("ET_SPARSE_BM", 0));
    if (sparse_bm_ != 0 && sparse_bm_ != 32 && sparse_bm_ != 64 && sparse_bm_ != 128)
      throw Error(ET_ERR_INVALID_ARGUMENT, "ET_SPARSE_BM must be 0 (auto), 32, 64 or 128");
    const double max_rows = env_number("ET_SPARSE_MAX_ROWS", static_cast<double>(kDefaultSparseMaxRows));
    sparse_max_rows_ = max_rows >= 9.0e18 ? INT64_MAX : static_cast<int64_t>(max_rows);
    sparse_max_density_ = env_number("ET_SPARSE_MAX_DENSITY", kDefaultSparseMaxDensity);
    const double wgmma_density = env_number("ET_HOPPER_SPARSE_MAX_DENSITY", kDefaultHopperSparseMaxDensity);
    const double wgmma_rows = env_number("ET_HOPPER_SPARSE_MIN_ROWS", static_cast<double>(kDefaultHopperSparseMinRows));
#ifdef ET_WITH_HOPPER_SPARSE
    // sm_90a code: sm_90 devices only, and the block's shared memory must fit.
    if (prop.major == 9 && prop.minor == 0 &&
        prop.sharedMemPerBlockOptin >= static_cast<size_t>(hopper_sparse::shared_bytes())) {
      wgmma_max_density_ = wgmma_density;
      wgmma_min_rows_ = static_cast<int64_t>(std::max(wgmma_rows, 0.0));
    }
    wgmma_group_ = static_cast<int>(env_number("ET_HOPPER_SPARSE_GROUP", 0));
    if (wgmma_group_ != 0 && wgmma_group_ != 1 && wgmma_group_ != 2 && wgmma_group_ != 4)
      throw Error(ET_ERR_INVALID_ARGUMENT, "ET_HOPPER_SPARSE_GROUP must be 0 (auto), 1, 2 or 4");
#else
    (void)wgmma_density;
    (void)wgmma_rows;
#endif
    gelu_ = env_number("ET_EXACT_GELU", 0) != 0 ? Epilogue::kBiasGelu : Epilogue::kBiasGeluTanh;
    const int gemm_tune = static_cast<int>(env_number("ET_GEMM_TUNE", kDefaultGemmTune));
    const double hopper_rows = env_number("ET_HOPPER_GEMM_MAX_ROWS", static_cast<double>(kDefaultHopperMaxRows));
#ifdef ET_WITH_HOPPER_GEMM
    // CUTLASS's kernels are built for sm_90a, which runs on sm_90 devices only; fp16 only.
    if (std::is_same_v<T, __half> && prop.major == 9 && prop.minor == 0)
      hopper_max_rows_ = static_cast<int64_t>(std::min(hopper_rows, 1.0e9));
#else
    (void)hopper_rows;
#endif
    sms_ = prop.multiProcessorCount;
    // one wave by default (NOTES.md, run 41: two waves of K slices were slower)
    split_ctas_ = std::max(1, static_cast<int>(env_number("ET_HOPPER_SPLIT_CTAS", sms_)));

    const Model& m = *model_;
    prepared_ = prepare_model(m, std::max(sparse_max_density_, wgmma_max_density_));
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    try {
      gemm_ = std::make_unique<DenseGemm>(gemm_tune, env_number("ET_GEMM_TUNE_COLD", 1) != 0);
      word_ = upload_as<T>(m.word_emb);
      pos_ = upload_as<T>(m.pos_emb);
      type_ = upload_as<T>(m.type_emb);
      emb_g_ = upload_as<T>(m.emb_ln_gamma);
      emb_b_ = upload_as<T>(m.emb_ln_beta);
      const int wgmma_group = wgmma_max_density_ > 0.0 ? wgmma_group_ : -1;  // -1: no wgmma layout
      for (const PreparedLayer& pl : prepared_.layers) layers_.emplace_back(pl, wgmma_group);
      pool_w_ = upload_as<T>(dense_weight(m.pooler));
      pool_b_ = upload_as<T>(m.pooler.bias);
      cls_w_ = upload_as<T>(dense_weight(m.classifier));
      cls_b_ = upload_as<T>(m.classifier.bias);
    } catch (...) {
      release();
      throw;
    }
    // The float32 host copies of the tiles / dense weights are no longer needed.
    for (PreparedLayer& pl : prepared_.layers)
      for (PreparedLinear* l : {&pl.qkv, &pl.o, &pl.ffn1, &pl.ffn2}) {
        std::vector<float>().swap(l->dense);
        std::vector<float>().swap(l->tiles);
      }
  }

  ~CudaEngine() override { release(); }

  et_backend kind() const override { return ET_BACKEND_CUDA; }
  et_precision precision() const override { return precision_; }
  std::string device_name() const override { return name_; }

  void forward(const Batch& b, float* logits, float* hidden) override {
    const std::lock_guard<std::mutex> lock(mutex_);  // one workspace: calls on a model run one at a time
    check(cudaSetDevice(device_), "cudaSetDevice");
    const Shape s = stage(b);
    execute(s, (b.flags & ET_FORWARD_NO_GRAPH) == 0);
    const int labels = model_->cfg.labels, H = model_->cfg.hidden;
    if (hidden) {
      gather_rows_f32(ws_.x.as<T>(), idx(ws_.rows_cap * 3 + ws_.batch_cap * 3), static_cast<int>(b.total_tokens), H,
                      ws_.hidden.as<float>(), Stream{stream_, false});
    }
    check(cudaMemcpyAsync(ws_.logits_host.as<float>(), ws_.logits.as<float>(),
                          sizeof(float) * static_cast<size_t>(b.batch) * labels, cudaMemcpyDeviceToHost, stream_),
          "cudaMemcpyAsync(logits)");
    if (hidden)
      check(cudaMemcpyAsync(hidden, ws_.hidden.as<float>(), sizeof(float) * static_cast<size_t>(b.total_tokens) * H,
                            cudaMemcpyDeviceToHost, stream_),
            "cudaMemcpyAsync(hidden)");
    check(cudaStreamSynchronize(stream_), "forward");
    std::memcpy(logits, ws_.logits_host.as<float>(), sizeof(float) * static_cast<size_t>(b.batch) * labels);
  }

  void benchmark(const Batch& b, int warmup, int iters, float* ms_per_iter) override {
    const std::lock_guard<std::mutex> lock(mutex_);
    check(cudaSetDevice(device_), "cudaSetDevice");
    const Shape s = stage(b);
    const bool graph = (b.flags & ET_FORWARD_NO_GRAPH) == 0;
    for (int i = 0; i < warmup; ++i) execute(s, graph);
    std::vector<cudaEvent_t> ev(static_cast<size_t>(std::max(iters, 0)) + 1, nullptr);
    try {
      for (auto& e : ev) check(cudaEventCreate(&e), "cudaEventCreate");
      for (int i = 0; i < iters; ++i) {
        check(cudaEventRecord(ev[i], stream_), "cudaEventRecord");
        execute(s, graph);
      }
      check(cudaEventRecord(ev[iters], stream_), "cudaEventRecord");
      check(cudaEventSynchronize(ev[iters]), "benchmark");
      for (int i = 0; i < iters; ++i) check(cudaEventElapsedTime(&ms_per_iter[i], ev[i], ev[i + 1]), "cudaEventElapsedTime");
    } catch (...) {
      for (auto e : ev)
        if (e) cudaEventDestroy(e);
      throw;
    }
    for (auto e : ev) cudaEventDestroy(e);
  }

 private:
  const int32_t* idx(int offset) const { return ws_.idx.as<int32_t>() + offset; }

  // Grow the workspace to hold `rows` activation rows and `batch` sequences. On failure everything is
  // released (the model stays usable for smaller batches) and the error propagates.
  void ensure_workspace(int rows, int batch) {
    if (rows <= ws_.rows_cap && batch <= ws_.batch_cap) return;
    const int R = std::max(rows, ws_.rows_cap), B = std::max(batch, ws_.batch_cap);
    const ModelConfig& c = model_->cfg;
    clear_graphs();
    ws_ = Workspace{};
    try {
      Workspace w;
      w.rows_cap = R;
      w.batch_cap = B;
      const size_t n_idx = static_cast<size_t>(4) * R + 3 * B;
      w.idx = DeviceBuffer(n_idx * sizeof(int32_t));
      w.x = DeviceBuffer(sizeof(T) * R * c.hidden);
      w.x2 = DeviceBuffer(sizeof(T) * R * c.hidden);
      w.tmp = DeviceBuffer(sizeof(T) * R * c.hidden);
      w.qkv = DeviceBuffer(sizeof(T) * R * prepared_.max_qkv_width);
      w.att = DeviceBuffer(sizeof(T) * R * prepared_.max_att_width);
      w.ffn = DeviceBuffer(sizeof(T) * R * c.intermediate);
      w.pooled = DeviceBuffer(sizeof(float) * B * c.hidden);
      w.logits = DeviceBuffer(sizeof(float) * B * c.labels);
      w.hidden = DeviceBuffer(sizeof(float) * R * c.hidden);
      w.partial = DeviceBuffer(sizeof(float) * partial_elements(R));
      w.idx_host = PinnedBuffer(n_idx * sizeof(int32_t));
      w.logits_host = PinnedBuffer(sizeof(float) * B * c.labels);
      ws_ = std::move(w);
    } catch (const Error& e) {
      if (e.status() == ET_ERR_OUT_OF_MEMORY)
        throw Error(ET_ERR_OUT_OF_MEMORY, std::string(e.what()) + " (workspace for " + std::to_string(rows) +
                                              " token rows; the model stays loaded, try a smaller batch)");
      throw;
    }
  }

  // Build the index arrays of the batch (packed, or padded to batch x max_len) and upload them.
  Shape stage(const Batch& b) {
    const bool padded = (b.flags & ET_FORWARD_PADDED) != 0;
    Shape s{padded ? b.batch * b.max_len : static_cast<int>(b.total_tokens), b.batch, b.max_len};
    ensure_workspace(s.rows, s.batch);
    const int R = ws_.rows_cap, B = ws_.batch_cap;
    int32_t* h = ws_.idx_host.as<int32_t>();
    int32_t *tok = h, *seg = h + R, *pos = h + 2 * R, *start = h + 3 * R, *len = start + B, *cls = len + B,
            *gather = cls + B;
    int64_t off = 0;
    for (int q = 0; q < b.batch; ++q) {
      const int L = b.lengths[q];
      const int first = padded ? q * b.max_len : static_cast<int>(off);
      const int span = padded ? b.max_len : L;
      cls[q] = first;
      for (int i = 0; i < span; ++i) {
        const bool real = i < L;
        tok[first + i] = real ? b.token_ids[off + i] : 0;
        seg[first + i] = real && b.segment_ids ? b.segment_ids[off + i] : 0;
        pos[first + i] = i;
        if (real) gather[off + i] = first + i;
      }
      off += L;
    }
    // Attention's sequence list, longest first: its grid takes the sequences in this order, so on a ragged batch
    // the long sequences' blocks start first and the short ones fill the tail (NOTES.md, session 7).
    by_length_.resize(b.batch);
    std::iota(by_length_.begin(), by_length_.end(), 0);
    std::stable_sort(by_length_.begin(), by_length_.end(),
                     [&b](int x, int y) { return b.lengths[x] > b.lengths[y]; });
    for (int i = 0; i < b.batch; ++i) {
      start[i] = cls[by_length_[i]];
      len[i] = b.lengths[by_length_[i]];
    }
    const size_t n = static_cast<size_t>(3) * R + 3 * B + b.total_tokens;
    check(cudaMemcpyAsync(ws_.idx.as<int32_t>(), h, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_),
          "cudaMemcpyAsync(batch indices)");
    if (poison_) {
      for (DeviceBuffer* buf : {&ws_.x, &ws_.x2, &ws_.tmp, &ws_.qkv, &ws_.att, &ws_.ffn, &ws_.pooled, &ws_.logits,
                                &ws_.hidden})
        check(cudaMemsetAsync(buf->as<void>(), 0xff, buf->bytes(), stream_), "cudaMemsetAsync(poison)");
    }
    return s;
  }

  // Kernels of the forward after its first: launched early where the GPU allows it.
  Stream layer_stream() const { return Stream{stream_, early_launch_}; }

  bool runs_wgmma_sparse(const DeviceLinear<T>& l, int m) const {
    return l.sparse && l.density < wgmma_max_density_ && m > wgmma_min_rows_;
  }
  bool runs_sparse(const DeviceLinear<T>& l, int m) const {
    return l.sparse && l.density < sparse_max_density_ && m <= sparse_max_rows_ && !runs_wgmma_sparse(l, m);
  }
  bool runs_hopper(const DeviceLinear<T>& l, int m) const {
    return !runs_sparse(l, m) && !runs_wgmma_sparse(l, m) && m <= hopper_max_rows_;
  }

  // Elements of the split-K partial buffer for a workspace of `rows` rows: the most splits any O or FFN2 GEMM
  // takes (a single-row batch has the fewest tiles, so the most splits) for the rows the CUTLASS path serves.
  size_t partial_elements(int rows) const {
    const int64_t served = std::min<int64_t>(rows, std::max<int64_t>(hopper_max_rows_, 0));
    size_t splits = 0;
#ifdef ET_WITH_HOPPER_GEMM
    if (served > 0)
      for (const DeviceLayer<T>& L : layers_)
        for (const DeviceLinear<T>* l : {&L.o, &L.ffn2})
          splits = std::max<size_t>(splits, hopper::split_count(1, l->n, l->k, split_ctas_));
#endif
    return splits * static_cast<size_t>(served) * model_->cfg.hidden;
  }

  void linear(const DeviceLinear<T>& l, const T* x, int m, const T* residual, T* y, Epilogue epi) {
#ifdef ET_WITH_HOPPER_SPARSE
    if (runs_wgmma_sparse(l, m)) {
      hopper_sparse::gemm<T>(l.hw, x, m, l.bias.template as<T>(), residual, y, epi, sms_, layer_stream());
      return;
    }
#endif
    if (runs_sparse(l, m)) {
      sparse_gemm<T>(l.sw, x, m, l.bias.template as<T>(), residual, y, epi, sparse_dev_, sparse_bm_, layer_stream());
      return;
    }
#ifdef ET_WITH_HOPPER_GEMM
    if constexpr (std::is_same_v<T, __half>)
      if (runs_hopper(l, m) && hopper::gemm(l.weight.template as<T>(), x, l.bias.template as<T>(), y, m, l.n, l.k,
                                            epi, sms_, layer_stream()))
        return;
#endif
    gemm_->run<T>(l.weight.template as<T>(), x, l.bias.template as<T>(), residual, y, m, l.n, l.k, epi,
                  layer_stream());
  }

  // y = LayerNorm(x . W^T + bias + residual): on the CUTLASS path a split-K GEMM whose partial sums the
  // LayerNorm kernel adds up with bias and residual; otherwise the GEMM's residual epilogue into tmp, then
  // LayerNorm.
  void linear_layernorm(const DeviceLinear<T>& l, const T* x, int m, const T* residual, const DeviceBuffer& gamma,
                        const DeviceBuffer& beta, T* tmp, T* y) {
    const float eps = model_->cfg.layer_norm_eps;
#ifdef ET_WITH_HOPPER_GEMM
    if constexpr (std::is_same_v<T, __half>) {
      if (runs_hopper(l, m) && l.n == model_->cfg.hidden) {
        const int splits = hopper::split_count(m, l.n, l.k, split_ctas_);
        if (hopper::gemm_split_k(l.weight.template as<T>(), x, ws_.partial.as<float>(), m, l.n, l.k, splits,
                                 layer_stream())) {
          splitk_layernorm<T>(ws_.partial.as<float>(), splits, m, l.n, l.bias.template as<T>(), residual,
                              gamma.as<T>(), beta.as<T>(), eps, y, layer_stream());
          return;
        }
      }
    }
#endif
    linear(l, x, m, residual, tmp, Epilogue::kBiasResidual);
    layernorm<T>(tmp, m, model_->cfg.hidden, gamma.as<T>(), beta.as<T>(), eps, y, layer_stream());
  }

  // The whole forward on stream_, reading the staged indices (capturable: no host synchronisation).
  void enqueue(const Shape& s) {
    const ModelConfig& c = model_->cfg;
    const int R = ws_.rows_cap, B = ws_.batch_cap, H = c.hidden;
    const int32_t *tok = idx(0), *seg = idx(R), *pos = idx(2 * R), *start = idx(3 * R), *len = idx(3 * R + B),
                  *cls = idx(3 * R + 2 * B);
    T *x = ws_.x.as<T>(), *x2 = ws_.x2.as<T>(), *tmp = ws_.tmp.as<T>(), *qkv = ws_.qkv.as<T>(),
      *att = ws_.att.as<T>(), *ffn = ws_.ffn.as<T>();
    embed_layernorm<T>(tok, seg, pos, s.rows, H, word_.as<T>(), pos_.as<T>(), type_.as<T>(), emb_g_.as<T>(),
                       emb_b_.as<T>(), c.layer_norm_eps, x, Stream{stream_, false});
    for (const DeviceLayer<T>& L : layers_) {
      linear(L.qkv, x, s.rows, nullptr, qkv, Epilogue::kBias);
      attention<T>(qkv, L.qkv.n, att, L.o.k, DeviceHeads{L.n_heads, L.heads.template as<int32_t>()},
                   prepared_.max_dqk, prepared_.max_dv, start, len, s.batch, s.max_len, prepared_.attn_scale,
                   short_max_, layer_stream());
      linear_layernorm(L.o, att, s.rows, x, L.ln1g, L.ln1b, tmp, x2);
      linear(L.ffn1, x2, s.rows, nullptr, ffn, gelu_);
      linear_layernorm(L.ffn2, ffn, s.rows, x2, L.ln2g, L.ln2b, tmp, x);
    }
    pooler_classifier<T>(x, cls, s.batch, H, pool_w_.as<T>(), pool_b_.as<T>(), cls_w_.as<T>(), cls_b_.as<T>(),
                         c.labels, ws_.pooled.as<float>(), ws_.logits.as<float>(), layer_stream());
  }

  // Run the forward of shape s: replay its CUDA graph (captured on first use, after one eager run
  // that also settles every lazily created cuBLASLt plan and kernel attribute), or launch eagerly.
  void execute(const Shape& s, bool use_graph) {
    if (!use_graph) {
      enqueue(s);
      return;
    }
    auto it = graphs_.find(s);
    if (it == graphs_.end()) {
      enqueue(s);
      if (graphs_.size() >= kMaxGraphs) clear_graphs();
      cudaGraph_t graph = nullptr;
      check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
      try {
        enqueue(s);
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();
        throw;
      }
      check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
      cudaGraphExec_t exec = nullptr;
      const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      check(err, "cudaGraphInstantiate");
      it = graphs_.emplace(s, exec).first;
    }
    check(cudaGraphLaunch(it->second, stream_), "cudaGraphLaunch");
  }

  void clear_graphs() {
    for (auto& [shape, exec] : graphs_) cudaGraphExecDestroy(exec);
    graphs_.clear();
  }

  void release() {
    if (stream_) cudaStreamSynchronize(stream_);
    clear_graphs();
    ws_ = Workspace{};
    layers_.clear();
    gemm_.reset();
    if (stream_) cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }

  std::shared_ptr<const Model> model_;
  et_precision precision_;
  int device_;
  std::string name_;
  SparseDevice sparse_dev_;
  int short_max_ = kDefaultShortMax;
  bool poison_ = false;
  int sparse_bm_ = 0;  // 0: chosen per batch
  bool early_launch_ = false;
  Epilogue gelu_ = Epilogue::kBiasGeluTanh;
  int64_t sparse_max_rows_ = kDefaultSparseMaxRows;
  double sparse_max_density_ = kDefaultSparseMaxDensity;  // the mma.sync tile-sparse kernel (small batches)
  double wgmma_max_density_ = 0.0;                        // the wgmma one (large batches); 0: not available
  int64_t wgmma_min_rows_ = kDefaultHopperSparseMinRows;
  int wgmma_group_ = 0;                                   // tile rows of its records (0: chosen per weight)
  int64_t hopper_max_rows_ = -1;  // -1: no CUTLASS path (not built, not sm_90, or bf16)
  std::vector<int> by_length_;    // stage(): the batch's sequences, longest first
  int sms_ = 0;                   // the GPU's multiprocessors
  int split_ctas_ = 0;            // most CTAs of a split-K GEMM
  PreparedModel prepared_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<DenseGemm> gemm_;
  DeviceBuffer word_, pos_, type_, emb_g_, emb_b_, pool_w_, pool_b_, cls_w_, cls_b_;
  std::vector<DeviceLayer<T>> layers_;
  Workspace ws_;
  std::map<Shape, cudaGraphExec_t> graphs_;
  std::mutex mutex_;
};

}  // namespace
}  // namespace cuda

bool cuda_device_present() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
}

std::unique_ptr<Backend> make_cuda_backend(std::shared_ptr<const Model> model, const et_options& opts) {
  switch (opts.precision) {
    case ET_PRECISION_DEFAULT:
    case ET_PRECISION_FP16:
      return std::make_unique<cuda::CudaEngine<__half>>(std::move(model), opts, ET_PRECISION_FP16);
    case ET_PRECISION_BF16:
      return std::make_unique<cuda::CudaEngine<__nv_bfloat16>>(std::move(model), opts, ET_PRECISION_BF16);
    case ET_PRECISION_FP32:
      throw Error(ET_ERR_UNSUPPORTED, "the CUDA backend computes in fp16 or bf16 (fp32 accumulation); "
                                      "precision fp32 is served by the CPU backend");
    default:
      throw Error(ET_ERR_INVALID_ARGUMENT, "unknown precision " + std::to_string(opts.precision));
  }
}

}  // namespace et
