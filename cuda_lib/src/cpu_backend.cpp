// The CPU backend: the whole BERT encoder in float32 with OpenMP.
//
// Ragged batches are computed without padding: every linear layer runs on the packed tokens and
// attention runs per (sequence, head) over that sequence's own tokens. With ET_FORWARD_PADDED the
// batch is laid out as [batch, max_len] (pad token 0, segment 0) and attention masks the padded
// keys, as a padded framework would; the real tokens' results are the same.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <mutex>

#include "backend.h"
#include "cpu_attention.h"
#include "cpu_linear.h"
#include "cpu_math.h"

namespace et {
namespace {

// Below these amounts of work a parallel region's fork/join costs more than it saves (and on a
// busy machine a descheduled thread stalls the barrier), so the loop runs on one thread.
constexpr int64_t kMinParallelElements = int64_t(1) << 16;
constexpr int64_t kMinParallelAttentionMacs = int64_t(1) << 18;

using cpu::Epilogue;
using cpu::PackedLinear;

struct CpuLayer {
  PackedLinear qkv;  // Q, K and V side by side: one pass over the input, outputs [tokens, 3 * hidden]
  PackedLinear o, ffn1, ffn2;
  std::vector<int> active_heads;
};

// Rows of the activations: where each sequence starts, how many rows it has, how many are real.
struct RowLayout {
  int64_t rows = 0;
  std::vector<int64_t> start;  // [batch]
  std::vector<int32_t> rows_of;  // [batch] rows in the layout (padded: max_len)
  std::vector<int32_t> len;    // [batch] real tokens
};

std::string cpu_description(int threads) {
  std::ifstream in("/proc/cpuinfo");
  std::string line, name = "CPU";
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos && colon + 2 <= line.size()) name = line.substr(colon + 2);
      break;
    }
  }
  return name + " (" + std::to_string(threads) + " threads)";
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(std::shared_ptr<const Model> model, const et_options& opts) : model_(std::move(model)) {
    if (opts.precision != ET_PRECISION_DEFAULT && opts.precision != ET_PRECISION_FP32)
      throw Error(ET_ERR_UNSUPPORTED, "the CPU backend computes in float32 only; fp16/bf16 precision is unsupported");
    threads_ = opts.threads > 0 ? opts.threads : omp_get_max_threads();
    device_ = cpu_description(threads_);
    const ModelConfig& c = model_->cfg;
    head_dim_ = c.hidden / c.heads;
    for (const Layer& L : model_->layers) {
      CpuLayer cl;
      std::vector<bool> head_kept(size_t(c.heads), true);
      for (int h : L.pruned_heads) head_kept[size_t(h)] = false;
      std::vector<bool> dims(size_t(c.hidden));
      for (int h = 0; h < c.heads; ++h) {
        if (head_kept[size_t(h)]) cl.active_heads.push_back(h);
        for (int i = 0; i < head_dim_; ++i) dims[size_t(h * head_dim_ + i)] = head_kept[size_t(h)];
      }
      cl.qkv = cpu::concat_outputs({cpu::pack_linear(L.q, dims), cpu::pack_linear(L.k, dims), cpu::pack_linear(L.v, dims)});
      cl.o = cpu::pack_linear(L.o, {}, dims);
      cl.ffn1 = cpu::pack_linear(L.ffn1);
      cl.ffn2 = cpu::pack_linear(L.ffn2);
      layers_.push_back(std::move(cl));
    }
    pooler_ = cpu::pack_linear(model_->pooler);
    classifier_ = cpu::pack_linear(model_->classifier);
  }

  et_backend kind() const override { return ET_BACKEND_CPU; }
  et_precision precision() const override { return ET_PRECISION_FP32; }
  std::string device_name() const override { return device_; }

  void forward(const Batch& b, float* logits, float* hidden) override {
    std::lock_guard<std::mutex> lock(mu_);
    run(b, logits, hidden);
  }

  void benchmark(const Batch& b, int warmup, int iters, float* ms_per_iter) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<float> logits(size_t(b.batch) * size_t(model_->cfg.labels));
    for (int i = 0; i < warmup; ++i) run(b, logits.data(), nullptr);
    for (int i = 0; i < iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      run(b, logits.data(), nullptr);
      const auto t1 = std::chrono::steady_clock::now();
      ms_per_iter[i] = std::chrono::duration<float, std::milli>(t1 - t0).count();
    }
  }

 private:
  RowLayout layout(const Batch& b) const {
    RowLayout l;
    const bool padded = b.flags & ET_FORWARD_PADDED;
    for (int32_t i = 0; i < b.batch; ++i) {
      l.start.push_back(l.rows);
      l.len.push_back(b.lengths[i]);
      l.rows_of.push_back(padded ? b.max_len : b.lengths[i]);
      l.rows += l.rows_of.back();
    }
    return l;
  }

  void run(const Batch& b, float* logits, float* hidden) {
    const ModelConfig& c = model_->cfg;
    const RowLayout l = layout(b);
    const int64_t H = c.hidden, I = c.intermediate;
    x_.resize(size_t(l.rows * H));
    qkv_.resize(x_.size() * 3);
    ctx_.resize(x_.size());
    tmp_.resize(x_.size());
    ffn_.resize(size_t(l.rows * I));

    embed(b, l);
    for (size_t li = 0; li < layers_.size(); ++li) {
      const CpuLayer& L = layers_[li];
      const Layer& src = model_->layers[li];
      cpu::linear_forward(L.qkv, x_.data(), H, l.rows, qkv_.data(), 3 * H, Epilogue::kBias, threads_);
      attention(L, l);
      cpu::linear_forward(L.o, ctx_.data(), H, l.rows, tmp_.data(), H, Epilogue::kBias, threads_);
      add_layer_norm(tmp_.data(), l.rows, src.ln1_gamma, src.ln1_beta);
      cpu::linear_forward(L.ffn1, x_.data(), H, l.rows, ffn_.data(), I, Epilogue::kBiasGelu, threads_);
      cpu::linear_forward(L.ffn2, ffn_.data(), I, l.rows, tmp_.data(), H, Epilogue::kBias, threads_);
      add_layer_norm(tmp_.data(), l.rows, src.ln2_gamma, src.ln2_beta);
    }

    // Pooler (tanh of a linear layer on each sequence's first token), then the classifier.
    std::vector<float> cls(size_t(b.batch * H)), pooled(size_t(b.batch * H));
    for (int32_t i = 0; i < b.batch; ++i)
      std::copy_n(x_.data() + l.start[size_t(i)] * H, H, cls.data() + int64_t(i) * H);
    cpu::linear_forward(pooler_, cls.data(), H, b.batch, pooled.data(), H, Epilogue::kBiasTanh, threads_);
    cpu::linear_forward(classifier_, pooled.data(), H, b.batch, logits, c.labels, Epilogue::kBias, threads_);

    if (hidden) {
      int64_t out_row = 0;
      for (int32_t i = 0; i < b.batch; ++i) {
        std::copy_n(x_.data() + l.start[size_t(i)] * H, int64_t(l.len[size_t(i)]) * H, hidden + out_row * H);
        out_row += l.len[size_t(i)];
      }
    }
  }

  // x = LayerNorm(word + token_type + position embeddings).
  void embed(const Batch& b, const RowLayout& l) {
    const Model& m = *model_;
    const int64_t H = m.cfg.hidden;
    std::vector<int32_t> ids(size_t(l.rows), 0), segs(size_t(l.rows), 0), pos(size_t(l.rows), 0);
    int64_t t = 0;
    for (int32_t i = 0; i < b.batch; ++i) {
      for (int32_t p = 0; p < l.rows_of[size_t(i)]; ++p) {
        const size_t row = size_t(l.start[size_t(i)] + p);
        pos[row] = p;
        if (p < l.len[size_t(i)]) {
          ids[row] = b.token_ids[t];
          segs[row] = b.segment_ids ? b.segment_ids[t] : 0;
          ++t;
        }
      }
    }
#pragma omp parallel for schedule(static) num_threads(threads_) if (l.rows * H >= kMinParallelElements)
    for (int64_t r = 0; r < l.rows; ++r) {
      const float* w = m.word_emb.data() + int64_t(ids[size_t(r)]) * H;
      const float* ty = m.type_emb.data() + int64_t(segs[size_t(r)]) * H;
      const float* p = m.pos_emb.data() + int64_t(pos[size_t(r)]) * H;
      float* out = x_.data() + r * H;
      for (int64_t j = 0; j < H; ++j) out[j] = (w[j] + ty[j]) + p[j];
      layer_norm_row(out, m.emb_ln_gamma, m.emb_ln_beta);
    }
  }

  // x = LayerNorm(x + delta), row by row.
  void add_layer_norm(const float* delta, int64_t rows, const std::vector<float>& gamma,
                      const std::vector<float>& beta) {
    const int64_t H = model_->cfg.hidden;
#pragma omp parallel for schedule(static) num_threads(threads_) if (rows * H >= kMinParallelElements)
    for (int64_t r = 0; r < rows; ++r) {
      float* out = x_.data() + r * H;
      const float* d = delta + r * H;
      for (int64_t j = 0; j < H; ++j) out[j] = d[j] + out[j];
      layer_norm_row(out, gamma, beta);
    }
  }

  void layer_norm_row(float* x, const std::vector<float>& gamma, const std::vector<float>& beta) const {
    const int64_t H = model_->cfg.hidden;
    const float mean = cpu::lane_sum(x, H, [](float v) { return v; }) / float(H);
    const float var = cpu::lane_sum(x, H, [mean](float v) { return (v - mean) * (v - mean); }) / float(H);
    const float inv = 1.0f / std::sqrt(var + model_->cfg.layer_norm_eps);
    for (int64_t j = 0; j < H; ++j) x[j] = (x[j] - mean) * inv * gamma[size_t(j)] + beta[size_t(j)];
  }

  // ctx = softmax(Q K^T / sqrt(d) + mask) V per sequence and active head; pruned heads are skipped.
  void attention(const CpuLayer& L, const RowLayout& l) {
    const int64_t H = model_->cfg.hidden, ld = 3 * H;  // rows of qkv_: [q | k | v]
    const int d = head_dim_;
    const int64_t n_heads = int64_t(L.active_heads.size());
    const int64_t items = int64_t(l.start.size()) * n_heads;
    int64_t macs = 0;
    for (int32_t n : l.rows_of) macs += 2 * int64_t(n) * n * d * n_heads;
#pragma omp parallel num_threads(threads_) if (items > 1 && macs >= kMinParallelAttentionMacs)
    {
      cpu::AttentionScratch scratch;
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) {
        const size_t seq = size_t(item / n_heads);
        const int64_t col = int64_t(L.active_heads[size_t(item % n_heads)]) * d;
        const float* base = qkv_.data() + l.start[seq] * ld + col;
        cpu::attention_head(base, base + H, base + 2 * H, ld, l.rows_of[seq], l.len[seq], d,
                            ctx_.data() + l.start[seq] * H + col, H, scratch);
      }
    }
  }

  std::shared_ptr<const Model> model_;
  std::vector<CpuLayer> layers_;
  PackedLinear pooler_, classifier_;
  int threads_ = 1;
  int head_dim_ = 0;
  std::string device_;
  std::mutex mu_;
  std::vector<float> x_, qkv_, ctx_, tmp_, ffn_;  // workspace, reused across calls
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<const Model> model, const et_options& opts) {
  return std::make_unique<CpuBackend>(std::move(model), opts);
}

}  // namespace et
