// Where a block of the wgmma tile-sparse GEMM spends its time: one launch on a random tile-sparse weight, with the
// kernel's clock64 stamps (ET_HOPPER_SPARSE_CLOCKS, hopper_sparse_gemm.cu) of block (0, 0) printed per ring stage.
// A diagnostic, built and run by cuda_lib/gpu/run_all.sh clocks on the GPU machine:
//   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -DET_HOPPER_SPARSE_CLOCKS
//        -Icuda_lib/include -Icuda_lib/src cuda_lib/gpu/wgmma_clocks.cu cuda_lib/src/cuda/prepare.cu -o wgmma_clocks
//   ./wgmma_clocks GROUP N K M DENSITY TILE_ROWS      (e.g. 4 768 768 4096 0.2 64: BERT-base's O at b32)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cuda/hopper_sparse_gemm.cu"

using namespace et::cuda;

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: %s GROUP N K M DENSITY TILE_ROWS\n", argv[0]);
    return 2;
  }
  const int group = std::atoi(argv[1]), n = std::atoi(argv[2]), k = std::atoi(argv[3]), m = std::atoi(argv[4]);
  const double density = std::atof(argv[5]);
  const int tile_rows = std::atoi(argv[6]);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), keep(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(n) * k);
  for (int tr = 0; tr < n / tile_rows; ++tr)
    for (int tc = 0; tc < k / kTile; ++tc) {
      const bool kept = keep(rng) < density;
      for (int r = 0; r < tile_rows; ++r)
        for (int c = 0; c < kTile; ++c)
          w[static_cast<size_t>(tr * tile_rows + r) * k + tc * kTile + c] = kept ? u(rng) : 0.0f;
    }
  std::vector<float> bias(n);
  for (float& b : bias) b = u(rng);
  const PreparedLinear p = prepare_linear(w, bias, n, k, 1.0);
  const hopper_sparse::Packed<__half> packed = hopper_sparse::pack<__half>(p, group);
  std::vector<__half> x(static_cast<size_t>(m) * k), bias16(n);
  for (__half& v : x) v = __float2half(u(rng));
  for (int i = 0; i < n; ++i) bias16[i] = __float2half(bias[i]);

  void *d_rec, *d_cut, *d_x, *d_y, *d_b;
  check(cudaMalloc(&d_rec, packed.records.size() * 2), "malloc");
  check(cudaMalloc(&d_cut, packed.cut.size() * 4), "malloc");
  check(cudaMalloc(&d_x, x.size() * 2), "malloc");
  check(cudaMalloc(&d_y, static_cast<size_t>(m) * n * 2), "malloc");
  check(cudaMalloc(&d_b, n * 2), "malloc");
  check(cudaMemcpy(d_rec, packed.records.data(), packed.records.size() * 2, cudaMemcpyHostToDevice), "copy");
  check(cudaMemcpy(d_cut, packed.cut.data(), packed.cut.size() * 4, cudaMemcpyHostToDevice), "copy");
  check(cudaMemcpy(d_x, x.data(), x.size() * 2, cudaMemcpyHostToDevice), "copy");
  check(cudaMemcpy(d_b, bias16.data(), n * 2, cudaMemcpyHostToDevice), "copy");
  const hopper_sparse::Weight hw{n, k, hopper_sparse::chunk_count(k), packed.group, packed.rows, d_rec,
                                 static_cast<const int32_t*>(d_cut)};
  int sms = 0, khz = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "attr");
  check(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0), "attr");
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "event");
  check(cudaEventCreate(&e1), "event");
  const Stream s{};
  float ms = 0.0f;
  constexpr int kBackToBack = 20;  // launches timed together: the host's launch cost hidden behind the GPU's work
  auto run = [&] {
    hopper_sparse::gemm<__half>(hw, static_cast<const __half*>(d_x), m, static_cast<const __half*>(d_b), nullptr,
                                static_cast<__half*>(d_y), Epilogue::kBias, sms, s);
  };
  run();
  check(cudaEventRecord(e0), "record");
  for (int it = 0; it < kBackToBack; ++it) run();
  check(cudaEventRecord(e1), "record");
  check(cudaEventSynchronize(e1), "sync");
  check(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
  const float back_to_back_us = ms * 1e3f / kBackToBack;
  for (int it = 0; it < 3; ++it) {  // the last launch's stamps and time
    check(cudaMemset(d_y, 0, static_cast<size_t>(m) * n * 2), "memset");
    const std::vector<long long> zero(hopper_sparse::kClockStages * hopper_sparse::kStamps + 64, 0);
    check(cudaMemcpyToSymbol(hopper_sparse::g_clock, zero.data(), zero.size() * 8), "to symbol");
    check(cudaEventRecord(e0), "record");
    run();
    check(cudaEventRecord(e1), "record");
    check(cudaEventSynchronize(e1), "sync");
    check(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
  }
  std::vector<long long> c(hopper_sparse::kClockStages * hopper_sparse::kStamps + 64);
  check(cudaMemcpyFromSymbol(c.data(), hopper_sparse::g_clock, c.size() * 8), "from symbol");
  const double ns = 1.0e6 / khz;  // per clock
  const long long* extra = c.data() + hopper_sparse::kClockStages * hopper_sparse::kStamps;
  const long long t0 = extra[0] ? extra[0] : c[0];
  std::vector<unsigned long long> span(2 * hopper_sparse::kSpanBlocks);
  check(cudaMemcpyFromSymbol(span.data(), hopper_sparse::g_span, span.size() * 8), "from symbol");
  std::vector<double> dur;
  unsigned long long first = ~0ull, last_start = 0, last = 0;
  for (int b = 0; b < hopper_sparse::kSpanBlocks && span[2 * b]; ++b) {
    first = std::min(first, span[2 * b]);
    last_start = std::max(last_start, span[2 * b]);
    last = std::max(last, span[2 * b + 1]);
    dur.push_back(static_cast<double>(span[2 * b + 1] - span[2 * b]));
  }
  std::sort(dur.begin(), dur.end());
  std::printf("group %d n %d k %d m %d density %.2f tile rows %d: records %zu, one launch %.1f us, back to back "
              "%.1f us a launch (%d SMs, %d MHz)\n", group, n, k, m, density, tile_rows,
              packed.records.size() * 2 / hopper_sparse::record_bytes(group), ms * 1e3, back_to_back_us, sms,
              khz / 1000);
  if (!dur.empty())
    std::printf("blocks %zu: first start to last end %.1f us; a block %.1f / %.1f / %.1f us (min / median / max); "
                "starts spread over %.1f us\n", dur.size(), (last - first) * 1e-3, dur.front() * 1e-3,
                dur[dur.size() / 2] * 1e-3, dur.back() * 1e-3, (last_start - first) * 1e-3);
  for (int ch = 0; ch < 8 && extra[2 * ch]; ++ch)
    std::printf("X chunk %d: %.0f -> %.0f ns\n", ch, (extra[2 * ch] - t0) * ns, (extra[2 * ch + 1] - t0) * ns);
  for (int q = 0; q < 12 && extra[16 + 2 * q]; ++q)
    std::printf("epilogue of quad at %d: %.0f -> %.0f ns\n", q, (extra[16 + 2 * q] - t0) * ns,
                (extra[17 + 2 * q] - t0) * ns);
  std::printf("stage | consumer: wait-full  full  committed  waited-1 | producer: wait-empty  empty  copied  (ns)\n");
  for (int st = 0; st < hopper_sparse::kClockStages; ++st) {
    const long long* r = c.data() + st * hopper_sparse::kStamps;
    if (!r[0] && !r[4]) break;
    std::printf("%5d | %8.0f %8.0f %8.0f %8.0f | %8.0f %8.0f %8.0f\n", st, (r[0] - t0) * ns, (r[1] - t0) * ns,
                (r[2] - t0) * ns, (r[3] - t0) * ns, (r[4] - t0) * ns, (r[5] - t0) * ns, (r[6] - t0) * ns);
  }
  return 0;
}
