// A validating reader (and a small writer) for NumPy .npy files.
// Supported: format versions 1.0, 2.0 and 3.0; C order; little-endian <f4, <f2, <i4, <i8.
// Every failure throws et::Error naming the file and what was expected:
//   ET_ERR_IO for a missing/unreadable file, ET_ERR_FORMAT for a malformed header or wrong size.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace et::npy {

enum class DType { F32, F16, I32, I64 };

// "<f4", "<f2", "<i4", "<i8".
const char* descr(DType dtype);
// Bytes per element.
int item_size(DType dtype);

struct Array {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<unsigned char> data;  // count() * item_size(dtype) bytes, little-endian

  int64_t count() const;
};

// "[2,3]"-style rendering of a shape for messages.
std::string shape_string(const std::vector<int64_t>& shape);

// Read and validate a whole file (header, dtype, order, exact size).
Array read(const std::string& path);

// Write a C-order .npy file (format 1.0); throws et::Error(ET_ERR_IO) on failure.
void write(const std::string& path, DType dtype, const std::vector<int64_t>& shape, const void* data);

// Half precision (IEEE binary16) bits to float.
float half_to_float(uint16_t bits);

}  // namespace et::npy
