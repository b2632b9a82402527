// Load-time preparation of the encoder for the CUDA engine (host code; see prepare.h).
#include "prepare.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "backend.h"

namespace et::cuda {
namespace {

int round_up(int x, int m) { return (x + m - 1) / m * m; }

bool row_nonzero(const std::vector<float>& w, const std::vector<float>& b, int cols, int r) {
  if (b[r] != 0.0f) return true;
  const float* p = w.data() + static_cast<size_t>(r) * cols;
  return std::any_of(p, p + cols, [](float v) { return v != 0.0f; });
}

bool col_nonzero(const std::vector<float>& w, int rows, int cols, int c) {
  for (int r = 0; r < rows; ++r)
    if (w[static_cast<size_t>(r) * cols + c] != 0.0f) return true;
  return false;
}

}  // namespace

std::vector<float> dense_weight(const Linear& lin) {
  if (!lin.tiled()) return lin.weight;
  std::vector<float> w(static_cast<size_t>(lin.out) * lin.in, 0.0f);
  const int grid_c = lin.in / lin.tile_c;
  const size_t tile_elems = static_cast<size_t>(lin.tile_r) * lin.tile_c;
  for (size_t i = 0; i < lin.kept.size(); ++i) {
    const int tr = lin.kept[i] / grid_c;
    const int tc = lin.kept[i] % grid_c;
    const float* src = lin.weight.data() + i * tile_elems;
    for (int r = 0; r < lin.tile_r; ++r)
      std::copy(src + static_cast<size_t>(r) * lin.tile_c, src + static_cast<size_t>(r + 1) * lin.tile_c,
                w.begin() + static_cast<size_t>(tr * lin.tile_r + r) * lin.in + static_cast<size_t>(tc) * lin.tile_c);
  }
  return w;
}

PreparedLinear prepare_linear(std::vector<float> w, std::vector<float> bias, int n, int k,
                              double max_sparse_density) {
  PreparedLinear p;
  p.n = n;
  p.k = k;
  p.bias = std::move(bias);
  const int gr = n / kTile;
  const int gc = k / kTile;
  p.total_tiles = static_cast<int64_t>(gr) * gc;
  std::vector<std::vector<std::pair<int, int>>> row_tiles(gr);  // (tile col, tile index) per tile row
  for (int tr = 0; tr < gr; ++tr)
    for (int tc = 0; tc < gc; ++tc) {
      bool nz = false;
      for (int r = 0; r < kTile && !nz; ++r) {
        const float* row = w.data() + static_cast<size_t>(tr * kTile + r) * k + tc * kTile;
        nz = std::any_of(row, row + kTile, [](float v) { return v != 0.0f; });
      }
      if (nz) row_tiles[tr].emplace_back(tc, static_cast<int>(p.kept_tiles++));
    }
  p.sparse = p.density() < max_sparse_density;
  p.dense = std::move(w);  // also kept for sparse weights: large batches may run faster through cuBLASLt
  if (!p.sparse) return p;
  const std::vector<float>& w_ref = p.dense;
  // Kept tiles in mma B-fragment order: lane (g = lane/4, t = lane%4) holds, for output rows g and
  // g+8 of the tile, input columns 2t, 2t+1, 2t+8, 2t+9: one 16-byte load per lane per tile.
  p.tiles.resize(static_cast<size_t>(p.kept_tiles) * 256);
  for (int tr = 0; tr < gr; ++tr)
    for (const auto& [tc, idx] : row_tiles[tr]) {
      float* dst = p.tiles.data() + static_cast<size_t>(idx) * 256;
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        const int rows[2] = {g, g + 8};
        const int cols[4] = {2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9};
        for (int ri = 0; ri < 2; ++ri)
          for (int ci = 0; ci < 4; ++ci)
            dst[lane * 8 + ri * 4 + ci] =
                w_ref[static_cast<size_t>(tr * kTile + rows[ri]) * k + tc * kTile + cols[ci]];
      }
    }
  p.row_ptr.assign(1, 0);
  for (int tr = 0; tr < gr; ++tr) {
    for (const auto& ct : row_tiles[tr]) p.tile_col.push_back(ct.first);
    p.row_ptr.push_back(static_cast<int32_t>(p.tile_col.size()));
  }
  return p;
}

PreparedModel prepare_model(const Model& model, double max_sparse_density) {
  const ModelConfig& c = model.cfg;
  if (c.hidden % kTile != 0 || c.intermediate % kTile != 0)
    throw Error(ET_ERR_UNSUPPORTED, "CUDA backend: hidden (" + std::to_string(c.hidden) + ") and intermediate (" +
                                        std::to_string(c.intermediate) + ") must be multiples of 16");
  if (c.heads <= 0 || c.hidden % c.heads != 0)
    throw Error(ET_ERR_UNSUPPORTED, "CUDA backend: hidden must be a multiple of heads");
  const int H = c.hidden;
  const int dh = H / c.heads;
  if (round_up(dh, kTile) > 128)
    throw Error(ET_ERR_UNSUPPORTED, "CUDA backend: head size " + std::to_string(dh) + " > 128 is not supported");

  PreparedModel pm;
  pm.attn_scale = 1.0f / std::sqrt(static_cast<float>(dh));
  for (const Layer& L : model.layers) {
    const std::vector<float> wq = dense_weight(L.q), wk = dense_weight(L.k), wv = dense_weight(L.v),
                             wo = dense_weight(L.o);
    std::vector<int> q_rows, v_rows;  // source rows (-1: zero padding) of the fused weight's Q and V blocks
    std::vector<HeadSlot> slots;
    std::vector<int> head_q_begin, head_v_begin;
    for (int h = 0; h < c.heads; ++h) {
      if (std::binary_search(L.pruned_heads.begin(), L.pruned_heads.end(), h)) continue;
      std::vector<int> qk, vv;
      for (int d = 0; d < dh; ++d) {
        const int r = h * dh + d;
        if (row_nonzero(wq, L.q.bias, H, r) && row_nonzero(wk, L.k.bias, H, r)) qk.push_back(r);
        if (row_nonzero(wv, L.v.bias, H, r) && col_nonzero(wo, H, H, r)) vv.push_back(r);
      }
      if (vv.empty()) continue;  // the head adds nothing to the output
      const int dqk = std::max(kTile, round_up(static_cast<int>(qk.size()), kTile));
      const int dv = round_up(static_cast<int>(vv.size()), kTile);
      qk.resize(dqk, -1);
      vv.resize(dv, -1);
      head_q_begin.push_back(static_cast<int>(q_rows.size()));
      head_v_begin.push_back(static_cast<int>(v_rows.size()));
      q_rows.insert(q_rows.end(), qk.begin(), qk.end());
      v_rows.insert(v_rows.end(), vv.begin(), vv.end());
      slots.push_back(HeadSlot{0, 0, 0, dqk, dv, 0});
    }
    if (slots.empty()) {  // every head removed: one all-zero head keeps the layer's shapes valid
      head_q_begin.push_back(0);
      head_v_begin.push_back(0);
      q_rows.assign(kTile, -1);
      v_rows.assign(kTile, -1);
      slots.push_back(HeadSlot{0, 0, 0, kTile, kTile, 0});
    }
    const int qtot = static_cast<int>(q_rows.size());
    const int vtot = static_cast<int>(v_rows.size());
    for (size_t i = 0; i < slots.size(); ++i) {
      slots[i].q_off = head_q_begin[i];
      slots[i].k_off = qtot + head_q_begin[i];
      slots[i].v_off = 2 * qtot + head_v_begin[i];
      slots[i].out_off = head_v_begin[i];
      pm.max_dqk = std::max(pm.max_dqk, slots[i].dqk);
      pm.max_dv = std::max(pm.max_dv, slots[i].dv);
    }
    const int nqkv = 2 * qtot + vtot;
    std::vector<float> wqkv(static_cast<size_t>(nqkv) * H, 0.0f), bqkv(nqkv, 0.0f);
    auto copy_row = [&](const std::vector<float>& src, const std::vector<float>& b, int src_row, int dst_row) {
      if (src_row < 0) return;
      std::copy(src.begin() + static_cast<size_t>(src_row) * H, src.begin() + static_cast<size_t>(src_row + 1) * H,
                wqkv.begin() + static_cast<size_t>(dst_row) * H);
      bqkv[dst_row] = b[src_row];
    };
    for (int i = 0; i < qtot; ++i) {
      copy_row(wq, L.q.bias, q_rows[i], i);
      copy_row(wk, L.k.bias, q_rows[i], qtot + i);
    }
    for (int i = 0; i < vtot; ++i) copy_row(wv, L.v.bias, v_rows[i], 2 * qtot + i);
    std::vector<float> wo_c(static_cast<size_t>(H) * vtot, 0.0f);
    for (int r = 0; r < H; ++r)
      for (int j = 0; j < vtot; ++j)
        if (v_rows[j] >= 0) wo_c[static_cast<size_t>(r) * vtot + j] = wo[static_cast<size_t>(r) * H + v_rows[j]];

    PreparedLayer pl;
    pl.heads = std::move(slots);
    pl.qkv = prepare_linear(std::move(wqkv), std::move(bqkv), nqkv, H, max_sparse_density);
    pl.o = prepare_linear(std::move(wo_c), L.o.bias, H, vtot, max_sparse_density);
    pl.ffn1 = prepare_linear(dense_weight(L.ffn1), L.ffn1.bias, c.intermediate, H, max_sparse_density);
    pl.ffn2 = prepare_linear(dense_weight(L.ffn2), L.ffn2.bias, H, c.intermediate, max_sparse_density);
    pl.ln1_gamma = L.ln1_gamma;
    pl.ln1_beta = L.ln1_beta;
    pl.ln2_gamma = L.ln2_gamma;
    pl.ln2_beta = L.ln2_beta;
    pm.max_qkv_width = std::max(pm.max_qkv_width, nqkv);
    pm.max_att_width = std::max(pm.max_att_width, vtot);
    pm.layers.push_back(std::move(pl));
  }
  return pm;
}

}  // namespace et::cuda
