// The weights.txt manifest (format in cuda_lib/README.md) and the loader that fills et::Model.
// Errors throw et::Error: ET_ERR_IO (unreadable file), ET_ERR_FORMAT (malformed manifest or .npy,
// unknown/missing/duplicate record, path outside the folder, non-finite value), ET_ERR_SHAPE
// (dtype, shape or tile layout disagreeing with the manifest or the config).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model.h"
#include "npy.h"

namespace et {

// One `tensor` or `tiled` record.
struct ManifestTensor {
  std::string name;
  npy::DType dtype = npy::DType::F32;  // F32 or F16
  std::vector<int64_t> shape;          // the full (dense) shape
  std::string file;                    // tensor: the whole array; tiled: the kept tiles
  int tile_r = 0, tile_c = 0;          // 0 for `tensor` records
  std::string index_file;              // tiled only
  int line = 0;
};

struct Manifest {
  std::string path;
  ModelConfig cfg;
  std::vector<ManifestTensor> tensors;
  std::map<int, std::vector<int32_t>> pruned_heads;  // layer -> ascending heads
};

// Parse and check a manifest (records, config keys, file names); reads no .npy file.
Manifest parse_manifest(const std::string& path);

// Parse the manifest and load every tensor from npy_dir (empty: the manifest's folder),
// validating dtypes, shapes, tile layouts and pruned heads against the config.
Model load_model(const std::string& manifest_path, const std::string& npy_dir);

// True when `name` is a plain file name: no '/', no '\\', not empty, not starting with '.'.
bool is_plain_file_name(const std::string& name);

}  // namespace et
