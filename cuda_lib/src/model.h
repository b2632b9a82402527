// Host-side model representation shared by the loader and every backend.
// The loader (manifest + .npy) fills it in float32; backends convert to what they need.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace et {

struct ModelConfig {
  int layers = 0;
  int hidden = 0;
  int heads = 0;
  int intermediate = 0;
  int vocab = 0;
  int max_positions = 0;
  int type_vocab = 0;
  int labels = 0;
  float layer_norm_eps = 1e-12f;
};

// A linear layer y = x W^T + b with W of shape [out, in] (PyTorch order).
// Dense: weight holds out*in values row-major.
// Tiled: weight holds kept.size() tiles of tile_r x tile_c values, in `kept` order, each tile
// row-major; kept holds strictly ascending tile ids (tile_row * (in / tile_c) + tile_col).
struct Linear {
  int out = 0;
  int in = 0;
  int tile_r = 0;  // 0 when dense
  int tile_c = 0;
  std::vector<int32_t> kept;
  std::vector<float> weight;
  std::vector<float> bias;  // [out]

  bool tiled() const { return tile_r > 0; }
  int64_t stored_params() const { return static_cast<int64_t>(weight.size()); }
};

struct Layer {
  Linear q, k, v, o;     // attention projections, each [hidden, hidden]
  Linear ffn1, ffn2;     // [intermediate, hidden], [hidden, intermediate]
  std::vector<float> ln1_gamma, ln1_beta;  // after attention (attention.output.LayerNorm)
  std::vector<float> ln2_gamma, ln2_beta;  // after FFN (output.LayerNorm)
  std::vector<int32_t> pruned_heads;       // ascending head indices not computed
};

struct Model {
  ModelConfig cfg;
  std::vector<float> word_emb;   // [vocab, hidden]
  std::vector<float> pos_emb;    // [max_positions, hidden]
  std::vector<float> type_emb;   // [type_vocab, hidden]
  std::vector<float> emb_ln_gamma, emb_ln_beta;
  std::vector<Layer> layers;
  Linear pooler;                 // [hidden, hidden], tanh
  Linear classifier;             // [labels, hidden]
};

}  // namespace et
