// Branch-free float math for the CPU backend, written so that GCC/Clang vectorise loops over it
// (the libm calls expf/erff are scalar and dominated the FFN epilogue and softmax).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace et::cpu {

// e^x with about 2e-7 relative error on [-87, 88] (inputs are clamped there).
// Range reduction x = n ln2 + r (ln2 split in two parts so n*ln2 is exact), |r| <= ln2/2,
// then a degree-7 Taylor polynomial of e^r and 2^n built in the exponent bits.
inline float fast_exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;    // ln 2 with the low mantissa bits cleared
  constexpr float kLn2Lo = 1.42860682028622e-06f;  // ln 2 - kLn2Hi
  constexpr float kRound = 12582912.0f;            // 1.5 * 2^23: adding and subtracting rounds to an integer
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * kLog2e + kRound) - kRound;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// erf(x) with at most 1.5e-7 absolute error: Abramowitz & Stegun, Handbook of Mathematical
// Functions, formula 7.1.26, applied to |x| with the sign restored.
inline float fast_erf(float x) {
  const float ax = std::min(std::abs(x), 10.0f);
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  poly = poly * t;
  const float y = 1.0f - poly * fast_exp(-ax * ax);
  return x < 0.0f ? -y : y;
}

// sum_j f(x[j]) over j < n, in 16 interleaved partial sums so the loop vectorises (one serial
// float chain cannot be reordered by the compiler).
template <typename F>
inline float lane_sum(const float* x, int64_t n, F f) {
  float part[16] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int c = 0; c < 16; ++c) part[c] += f(x[j + c]);
  float total = 0.0f;
  for (; j < n; ++j) total += f(x[j]);
  for (int c = 0; c < 16; ++c) total += part[c];
  return total;
}

// The exact (erf-based) GELU: x * Phi(x).
inline float gelu(float x) { return 0.5f * x * (1.0f + fast_erf(x * 0.70710678118654752f)); }

}  // namespace et::cpu
