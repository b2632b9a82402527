// Host-side check of the wgmma tile-sparse GEMM's weight layout (hopper_sparse::pack, record_count, choose_group):
// built with nvcc and run on the CPU by tests/test_wgmma_records.py (no GPU needed: packing is host code).
// Prints one line per failed property and "ok" when all hold; exits 1 on a failure.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "cuda/hopper_sparse_gemm.cu"

using namespace et::cuda;

namespace {

int failures = 0;

void expect(bool ok, const char* what, int group) {
  if (!ok) {
    std::printf("FAIL (G = %d): %s\n", group, what);
    ++failures;
  }
}

// A random weight [n, k] whose tiles of tile_rows x 16 are kept with probability density (values never zero).
PreparedLinear random_weight(int n, int k, int tile_rows, double density, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> value(0.5f, 1.5f), keep(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(n) * k, 0.0f);
  for (int tr = 0; tr < n / tile_rows; ++tr)
    for (int tc = 0; tc < k / kTile; ++tc)
      if (keep(rng) < density)
        for (int r = 0; r < tile_rows; ++r)
          for (int c = 0; c < kTile; ++c) w[static_cast<size_t>(tr * tile_rows + r) * k + tc * kTile + c] = value(rng);
  return prepare_linear(w, std::vector<float>(n, 0.0f), n, k, 1.0);
}

// Every property of pack(p, group) against the dense weight.
void check_pack(const PreparedLinear& p, int group) {
  const hopper_sparse::Packed<__half> packed = hopper_sparse::pack<__half>(p, group);
  const int elems = hopper_sparse::record_bytes(group) / 2, chunks = hopper_sparse::chunk_count(p.k);
  const int tile_rows = p.n / kTile, chunk_tiles = hopper_sparse::kChunk / kTile;
  expect(packed.group == group, "group recorded", group);
  expect(packed.rows == (tile_rows + group - 1) / group, "record rows = ceil(tile rows / G)", group);
  expect(static_cast<int64_t>(packed.records.size() / elems) == hopper_sparse::record_count(p, group),
         "record_count matches the packed records", group);
  expect(packed.cut.size() == static_cast<size_t>(packed.rows) * (chunks + 1), "one cut per record row and chunk",
         group);
  int first = 0;
  for (int g = 0; g < packed.rows; ++g) {
    std::set<int> kept;  // the union of the G tile rows' kept tile columns
    for (int tr = g * group; tr < std::min((g + 1) * group, tile_rows); ++tr)
      for (int i = p.row_ptr[tr]; i < p.row_ptr[tr + 1]; ++i) kept.insert(p.tile_col[i]);
    const int last = packed.cut[static_cast<size_t>(g) * (chunks + 1) + chunks];
    expect(last - first == static_cast<int>(kept.size()), "a record row holds the union of its rows' tiles", group);
    int i = first;
    for (int col : kept) {  // ascending, as the records must be
      const __half* rec = packed.records.data() + static_cast<size_t>(i) * elems;
      int32_t header = 0;
      std::memcpy(&header, rec, sizeof header);
      expect(header == col, "record headers are the union's columns, ascending", group);
      for (int r = 0; r < kTile * group; ++r)
        for (int c = 0; c < kTile; ++c) {
          const int row = g * kTile * group + r;
          const float want = row < p.n ? p.dense[static_cast<size_t>(row) * p.k + col * kTile + c] : 0.0f;
          const float got = __half2float(rec[8 + ((r / 8) * 2 + c / 8) * 64 + (r % 8) * 8 + c % 8]);
          if (got != __half2float(__float2half(want))) {
            expect(false, "record data = the weight's 16G x 16 block (core-matrix order), zeros past n", group);
            return;
          }
        }
      ++i;
    }
    for (int c = 0; c < chunks; ++c) {  // the first record whose column lies in chunk c or later
      int want = first;
      for (int col : kept)
        if (col < c * chunk_tiles) ++want;
      expect(packed.cut[static_cast<size_t>(g) * (chunks + 1) + c] == want, "cut = first record of each chunk", group);
    }
    first = last;
  }
}

}  // namespace

int main() {
  // 13 tile rows (a partial last record row at G = 2 and 4) and K = 1600 (three chunks, the last of 64 columns)
  const PreparedLinear random16 = random_weight(208, 1600, 16, 0.3, 1);
  for (int group : {1, 2, 4}) check_pack(random16, group);
  // [64, 16] tiles: four stacked tile rows keep the same columns, so G = 4 adds no zeros and is chosen
  const PreparedLinear wide = random_weight(768, 768, 64, 0.2, 2);
  check_pack(wide, 4);
  expect(hopper_sparse::record_count(wide, 4) * 4 == wide.kept_tiles, "[64, 16] tiles: G = 4 records = kept / 4", 4);
  expect(hopper_sparse::choose_group(wide) == 4, "[64, 16] tiles choose G = 4", 4);
  // random 16x16 tiles at density 0.2: the union of stacked rows costs more than wider MMAs save
  expect(hopper_sparse::choose_group(random_weight(768, 768, 16, 0.2, 3)) == 1, "random 16x16 tiles choose G = 1", 1);
  // [32, 16] tiles: pairs of tile rows share their columns
  expect(hopper_sparse::choose_group(random_weight(768, 768, 32, 0.2, 4)) == 2, "[32, 16] tiles choose G = 2", 2);
  if (failures) return 1;
  std::printf("ok\n");
  return 0;
}
