// Attention of one (sequence, head) on the CPU, with the score matrix kept in a small scratch.
#pragma once

#include <cstdint>
#include <vector>

namespace et::cpu {

// Per-thread buffers, grown as needed and reused across calls.
struct AttentionScratch {
  std::vector<float> q, kt, v, scores, mask;
};

// ctx[i, 0:d] = softmax(q_i K^T / sqrt(d) + mask) V for the n query rows; keys j >= valid get
// probability exactly 0 (padding). q, k, v point at the head's first element of row 0 and have
// row stride ld; ctx has row stride ldc.
void attention_head(const float* q, const float* k, const float* v, int64_t ld, int n, int valid, int d,
                    float* ctx, int64_t ldc, AttentionScratch& scratch);

}  // namespace et::cpu
