#include "npy.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "backend.h"

namespace et::npy {
namespace {

constexpr unsigned char kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
constexpr uint32_t kMaxHeaderLen = 1u << 20;  // numpy itself writes a few hundred bytes
constexpr int kMaxDims = 16;
constexpr int64_t kMaxBytes = int64_t(1) << 40;

[[noreturn]] void fail(et_status status, const std::string& path, const std::string& what) {
  throw Error(status, path + ": " + what);
}

// A parser for the Python dict literal of a .npy header, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  void parse(std::string& descr_out, bool& fortran_out, std::vector<int64_t>& shape_out) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_ws();
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') {
        ++i_;
        break;
      }
      std::string key = parse_string();
      skip_ws();
      expect(':');
      skip_ws();
      if (key == "descr") {
        if (have_descr) bad("duplicate key 'descr'");
        descr_out = parse_string();
        have_descr = true;
      } else if (key == "fortran_order") {
        if (have_fortran) bad("duplicate key 'fortran_order'");
        fortran_out = parse_bool();
        have_fortran = true;
      } else if (key == "shape") {
        if (have_shape) bad("duplicate key 'shape'");
        shape_out = parse_shape();
        have_shape = true;
      } else {
        bad("unexpected key '" + key + "' (expected descr, fortran_order, shape)");
      }
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      skip_ws();
      expect('}');
      break;
    }
    skip_ws();
    if (i_ != s_.size()) bad("trailing characters after the header dict");
    if (!have_descr) bad("header has no 'descr'");
    if (!have_fortran) bad("header has no 'fortran_order'");
    if (!have_shape) bad("header has no 'shape'");
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    fail(ET_ERR_FORMAT, path_, "malformed .npy header: " + what);
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    if (peek() != c) bad(std::string("expected '") + c + "' at offset " + std::to_string(i_));
    ++i_;
  }
  std::string parse_string() {
    char q = peek();
    if (q != '\'' && q != '"') bad("expected a quoted string at offset " + std::to_string(i_));
    ++i_;
    size_t start = i_;
    while (i_ < s_.size() && s_[i_] != q) ++i_;
    if (i_ >= s_.size()) bad("unterminated string");
    std::string out = s_.substr(start, i_ - start);
    ++i_;
    return out;
  }
  bool parse_bool() {
    if (s_.compare(i_, 4, "True") == 0) {
      i_ += 4;
      return true;
    }
    if (s_.compare(i_, 5, "False") == 0) {
      i_ += 5;
      return false;
    }
    bad("fortran_order must be True or False");
  }
  int64_t parse_int() {
    if (peek() < '0' || peek() > '9') bad("expected a non-negative integer in 'shape'");
    int64_t v = 0;
    while (peek() >= '0' && peek() <= '9') {
      if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) bad("dimension too large in 'shape'");
      v = v * 10 + (s_[i_] - '0');
      ++i_;
    }
    if (peek() == 'L') ++i_;  // Python 2 long suffix
    return v;
  }
  std::vector<int64_t> parse_shape() {
    std::vector<int64_t> shape;
    expect('(');
    skip_ws();
    while (peek() != ')') {
      shape.push_back(parse_int());
      if (shape.size() > kMaxDims) bad("more than " + std::to_string(kMaxDims) + " dimensions");
      skip_ws();
      if (peek() == ',') {
        ++i_;
        skip_ws();
      } else if (peek() != ')') {
        bad("expected ',' or ')' in 'shape'");
      }
    }
    ++i_;
    return shape;
  }

  const std::string& s_;
  const std::string& path_;
  size_t i_ = 0;
};

bool parse_descr(const std::string& d, DType& out) {
  if (d == "<f4") out = DType::F32;
  else if (d == "<f2") out = DType::F16;
  else if (d == "<i4") out = DType::I32;
  else if (d == "<i8") out = DType::I64;
  else return false;
  return true;
}

}  // namespace

const char* descr(DType dtype) {
  switch (dtype) {
    case DType::F32: return "<f4";
    case DType::F16: return "<f2";
    case DType::I32: return "<i4";
    case DType::I64: return "<i8";
  }
  return "?";
}

int item_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

int64_t Array::count() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? "," : "") << shape[i];
  os << ']';
  return os.str();
}

Array read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ET_ERR_IO, path, std::string("cannot open .npy file: ") + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const std::streamoff file_size = in.tellg();
  in.seekg(0, std::ios::beg);
  if (file_size < 0) fail(ET_ERR_IO, path, "cannot determine the file size");

  unsigned char pre[8];
  if (file_size < 10 || !in.read(reinterpret_cast<char*>(pre), 8))
    fail(ET_ERR_FORMAT, path, "truncated .npy file: " + std::to_string(file_size) + " bytes, shorter than the preamble");
  if (std::memcmp(pre, kMagic, 6) != 0) fail(ET_ERR_FORMAT, path, "not a .npy file (bad magic string)");
  const int major = pre[6], minor = pre[7];
  if (minor != 0 || major < 1 || major > 3)
    fail(ET_ERR_FORMAT, path,
         "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
             " (expected 1.0, 2.0 or 3.0)");

  uint32_t header_len = 0;
  int64_t prefix = 0;
  if (major == 1) {
    unsigned char b[2];
    if (!in.read(reinterpret_cast<char*>(b), 2)) fail(ET_ERR_FORMAT, path, "truncated header length");
    header_len = uint32_t(b[0]) | (uint32_t(b[1]) << 8);
    prefix = 10;
  } else {
    unsigned char b[4];
    if (!in.read(reinterpret_cast<char*>(b), 4)) fail(ET_ERR_FORMAT, path, "truncated header length");
    header_len = uint32_t(b[0]) | (uint32_t(b[1]) << 8) | (uint32_t(b[2]) << 16) | (uint32_t(b[3]) << 24);
    prefix = 12;
  }
  if (header_len > kMaxHeaderLen)
    fail(ET_ERR_FORMAT, path, "header length " + std::to_string(header_len) + " is implausibly large");
  if (prefix + int64_t(header_len) > file_size)
    fail(ET_ERR_FORMAT, path,
         "truncated .npy file: header of " + std::to_string(header_len) + " bytes runs past the end of the file (" +
             std::to_string(file_size) + " bytes)");
  std::string header(header_len, '\0');
  if (header_len && !in.read(header.data(), header_len)) fail(ET_ERR_IO, path, "cannot read the header");
  for (char c : header)
    if (static_cast<unsigned char>(c) >= 0x80 || c == '\0')
      fail(ET_ERR_FORMAT, path, "malformed .npy header: non-ASCII or NUL byte");

  std::string descr_str;
  bool fortran = false;
  Array out;
  HeaderParser(header, path).parse(descr_str, fortran, out.shape);
  if (!parse_descr(descr_str, out.dtype))
    fail(ET_ERR_FORMAT, path, "unsupported dtype '" + descr_str + "' (expected <f4, <f2, <i4 or <i8)");
  if (fortran) fail(ET_ERR_FORMAT, path, "Fortran-order arrays are not supported (expected C order)");

  const int64_t isz = item_size(out.dtype);
  int64_t count = 1;
  for (int64_t d : out.shape) {
    if (d != 0 && count > kMaxBytes / isz / d)
      fail(ET_ERR_FORMAT, path, "shape " + shape_string(out.shape) + " is implausibly large");
    count *= d;
  }
  const int64_t data_bytes = count * isz;
  const int64_t expected = prefix + header_len + data_bytes;
  if (file_size != expected) {
    const char* kind = file_size < expected ? "truncated .npy file" : "trailing bytes in .npy file";
    fail(ET_ERR_FORMAT, path,
         std::string(kind) + ": " + std::to_string(file_size) + " bytes, expected " + std::to_string(expected) +
             " for " + descr_str + " " + shape_string(out.shape));
  }
  try {
    out.data.resize(size_t(data_bytes));
  } catch (const std::bad_alloc&) {
    fail(ET_ERR_OUT_OF_MEMORY, path, "cannot allocate " + std::to_string(data_bytes) + " bytes");
  }
  if (data_bytes && !in.read(reinterpret_cast<char*>(out.data.data()), data_bytes))
    fail(ET_ERR_IO, path, "cannot read the array data");
  return out;
}

void write(const std::string& path, DType dtype, const std::vector<int64_t>& shape, const void* data) {
  std::string dict = std::string("{'descr': '") + descr(dtype) + "', 'fortran_order': False, 'shape': (";
  int64_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dict += std::to_string(shape[i]) + (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
    count *= shape[i];
  }
  dict += "), }";
  size_t total = 10 + dict.size() + 1;
  size_t pad = (64 - total % 64) % 64;
  dict.append(pad, ' ');
  dict += '\n';
  const uint16_t hlen = static_cast<uint16_t>(dict.size());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail(ET_ERR_IO, path, std::string("cannot create file: ") + std::strerror(errno));
  const unsigned char pre[10] = {kMagic[0], kMagic[1], kMagic[2], kMagic[3], kMagic[4], kMagic[5], 1, 0,
                                 static_cast<unsigned char>(hlen & 0xff), static_cast<unsigned char>(hlen >> 8)};
  out.write(reinterpret_cast<const char*>(pre), 10);
  out.write(dict.data(), std::streamsize(dict.size()));
  out.write(static_cast<const char*>(data), std::streamsize(count * item_size(dtype)));
  out.close();
  if (!out) fail(ET_ERR_IO, path, "write failed");
}

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace et::npy
