#include "manifest.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>

#include "backend.h"

namespace et {
namespace {

constexpr int64_t kMaxConfigValue = int64_t(1) << 24;
const char* const kConfigKeys[] = {"layers",        "hidden",     "heads",  "intermediate",   "vocab",
                                   "max_positions", "type_vocab", "labels", "layer_norm_eps", "activation"};

[[noreturn]] void fail(et_status status, const std::string& message) { throw Error(status, message); }

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

std::vector<std::string> fields_of(const std::string& line) {
  std::vector<std::string> out;
  std::istringstream is(line);
  std::string f;
  while (is >> f) out.push_back(f);
  return out;
}

// A decimal integer in [lo, hi], the whole string consumed.
bool parse_int(const std::string& s, int64_t lo, int64_t hi, int64_t& out) {
  if (s.empty() || s.size() > 19) return false;
  size_t i = 0;
  bool neg = false;
  if (s[0] == '-') {
    neg = true;
    i = 1;
    if (s.size() == 1) return false;
  }
  int64_t v = 0;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    if (v > (std::numeric_limits<int64_t>::max() - (s[i] - '0')) / 10) return false;  // would overflow
    v = v * 10 + (s[i] - '0');
  }
  if (neg) v = -v;
  if (v < lo || v > hi) return false;
  out = v;
  return true;
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

class ManifestParser {
 public:
  explicit ManifestParser(const std::string& path) : path_(path) {}

  Manifest parse() {
    std::ifstream in(path_);
    if (!in) fail(ET_ERR_IO, path_ + ": cannot open manifest: " + std::strerror(errno));
    Manifest m;
    m.path = path_;
    std::string line;
    bool have_version = false;
    while (std::getline(in, line)) {
      ++line_no_;
      if (line_no_ > 1000000) bad("more than 1000000 lines");
      if (!line.empty() && line.back() == '\r') line.pop_back();
      const auto f = fields_of(line);
      if (f.empty() || f[0][0] == '#') continue;
      if (!have_version) {
        if (f.size() != 2 || f[0] != "et-weights") bad("the first record must be 'et-weights 1'");
        if (f[1] != "1") bad("unsupported manifest version '" + f[1] + "' (expected 1)");
        have_version = true;
        continue;
      }
      if (f[0] == "config") parse_config(f);
      else if (f[0] == "tensor") m.tensors.push_back(parse_tensor(f));
      else if (f[0] == "tiled") m.tensors.push_back(parse_tiled(f));
      else if (f[0] == "pruned_heads") parse_pruned_heads(f, m);
      else if (f[0] == "et-weights") bad("repeated 'et-weights' record");
      else bad("unknown record '" + f[0] + "' (expected config, tensor, tiled or pruned_heads)");
    }
    if (in.bad()) fail(ET_ERR_IO, path_ + ": read error");
    if (!have_version) fail(ET_ERR_FORMAT, path_ + ": empty manifest (no 'et-weights 1' record)");
    m.cfg = make_config();
    for (const auto& [layer, heads] : m.pruned_heads) {
      if (layer >= m.cfg.layers)
        fail(ET_ERR_FORMAT, path_ + ": pruned_heads names layer " + std::to_string(layer) + " but the model has " +
                                std::to_string(m.cfg.layers) + " layers");
      for (int h : heads)
        if (h >= m.cfg.heads)
          fail(ET_ERR_FORMAT, path_ + ": pruned_heads of layer " + std::to_string(layer) + " names head " +
                                  std::to_string(h) + " but the model has " + std::to_string(m.cfg.heads) + " heads");
    }
    return m;
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    fail(ET_ERR_FORMAT, path_ + ":" + std::to_string(line_no_) + ": " + what);
  }

  void parse_config(const std::vector<std::string>& f) {
    if (f.size() != 3) bad("a config record is 'config KEY VALUE'");
    if (std::find(std::begin(kConfigKeys), std::end(kConfigKeys), f[1]) == std::end(kConfigKeys))
      bad("unknown config key '" + f[1] + "'");
    if (!config_.emplace(f[1], f[2]).second) bad("duplicate config key '" + f[1] + "'");
  }

  ModelConfig make_config() const {
    for (const char* key : kConfigKeys)
      if (!config_.count(key)) fail(ET_ERR_FORMAT, path_ + ": missing config key '" + key + "'");
    ModelConfig c;
    auto get_int = [&](const char* key, int64_t lo) {
      int64_t v = 0;
      if (!parse_int(config_.at(key), lo, kMaxConfigValue, v))
        fail(ET_ERR_FORMAT, path_ + ": config " + key + " = '" + config_.at(key) + "' is not an integer in [" +
                                std::to_string(lo) + ", " + std::to_string(kMaxConfigValue) + "]");
      return int(v);
    };
    c.layers = get_int("layers", 1);
    c.hidden = get_int("hidden", 1);
    c.heads = get_int("heads", 1);
    c.intermediate = get_int("intermediate", 1);
    c.vocab = get_int("vocab", 1);
    c.max_positions = get_int("max_positions", 1);
    c.type_vocab = get_int("type_vocab", 1);
    c.labels = get_int("labels", 1);
    const std::string& eps = config_.at("layer_norm_eps");
    char* end = nullptr;
    errno = 0;
    const double e = std::strtod(eps.c_str(), &end);
    if (end == eps.c_str() || *end != '\0' || errno || !std::isfinite(e) || e <= 0.0 || e >= 1.0)
      fail(ET_ERR_FORMAT, path_ + ": config layer_norm_eps = '" + eps + "' is not a number in (0, 1)");
    c.layer_norm_eps = float(e);
    if (config_.at("activation") != "gelu")
      fail(ET_ERR_FORMAT, path_ + ": config activation = '" + config_.at("activation") + "' (only 'gelu' is supported)");
    if (c.hidden % c.heads)
      fail(ET_ERR_FORMAT, path_ + ": config hidden " + std::to_string(c.hidden) + " is not divisible by heads " +
                              std::to_string(c.heads));
    return c;
  }

  npy::DType parse_dtype(const std::string& s) const {
    if (s == "f32") return npy::DType::F32;
    if (s == "f16") return npy::DType::F16;
    bad("unsupported dtype '" + s + "' (expected f32 or f16)");
  }

  std::vector<int64_t> parse_shape(const std::string& s) const {
    std::vector<int64_t> shape;
    for (const auto& d : split(s, ',')) {
      int64_t v = 0;
      if (!parse_int(d, 1, kMaxConfigValue, v)) bad("malformed shape '" + s + "' (expected e.g. 1536,384)");
      shape.push_back(v);
    }
    if (shape.size() > 4) bad("shape '" + s + "' has more than 4 dimensions");
    return shape;
  }

  std::string check_file(const std::string& name) const {
    if (!is_plain_file_name(name))
      bad("file name '" + name + "' is not a plain file name inside the manifest's folder (no '/', '\\', or leading '.')");
    return name;
  }

  void check_new_name(const std::string& name) {
    if (!names_.insert(name).second) bad("duplicate tensor '" + name + "'");
  }

  ManifestTensor parse_tensor(const std::vector<std::string>& f) {
    if (f.size() != 5) bad("a tensor record is 'tensor NAME DTYPE SHAPE FILE'");
    ManifestTensor t;
    t.name = f[1];
    check_new_name(t.name);
    t.dtype = parse_dtype(f[2]);
    t.shape = parse_shape(f[3]);
    t.file = check_file(f[4]);
    t.line = line_no_;
    return t;
  }

  ManifestTensor parse_tiled(const std::vector<std::string>& f) {
    if (f.size() != 7) bad("a tiled record is 'tiled NAME DTYPE SHAPE TRxTC DATA_FILE INDEX_FILE'");
    ManifestTensor t;
    t.name = f[1];
    check_new_name(t.name);
    t.dtype = parse_dtype(f[2]);
    t.shape = parse_shape(f[3]);
    if (t.shape.size() != 2) bad("tiled tensor '" + t.name + "' must be 2-D, got shape " + f[3]);
    const auto tile = split(f[4], 'x');
    int64_t tr = 0, tc = 0;
    if (tile.size() != 2 || !parse_int(tile[0], 1, kMaxConfigValue, tr) || !parse_int(tile[1], 1, kMaxConfigValue, tc))
      bad("malformed tile shape '" + f[4] + "' (expected e.g. 16x16)");
    if (t.shape[0] % tr || t.shape[1] % tc)
      bad("tile shape " + f[4] + " does not divide the shape " + f[3] + " of '" + t.name + "'");
    t.tile_r = int(tr);
    t.tile_c = int(tc);
    t.file = check_file(f[5]);
    t.index_file = check_file(f[6]);
    t.line = line_no_;
    return t;
  }

  void parse_pruned_heads(const std::vector<std::string>& f, Manifest& m) {
    if (f.size() != 3) bad("a pruned_heads record is 'pruned_heads LAYER H1,H2,...'");
    int64_t layer = 0;
    if (!parse_int(f[1], 0, kMaxConfigValue, layer)) bad("malformed layer index '" + f[1] + "'");
    if (m.pruned_heads.count(int(layer))) bad("duplicate pruned_heads record for layer " + f[1]);
    std::vector<int32_t> heads;
    for (const auto& h : split(f[2], ',')) {
      int64_t v = 0;
      if (!parse_int(h, 0, kMaxConfigValue, v)) bad("malformed head index '" + h + "' in '" + f[2] + "'");
      heads.push_back(int32_t(v));
    }
    std::sort(heads.begin(), heads.end());
    if (std::adjacent_find(heads.begin(), heads.end()) != heads.end()) bad("repeated head in '" + f[2] + "'");
    m.pruned_heads[int(layer)] = heads;
  }

  std::string path_;
  int line_no_ = 0;
  std::map<std::string, std::string> config_;
  std::set<std::string> names_;
};

// ----------------------------------------------------------------------------------- loader

std::vector<float> to_float(const npy::Array& a) {
  std::vector<float> out(size_t(a.count()));
  if (a.dtype == npy::DType::F32) {
    std::memcpy(out.data(), a.data.data(), out.size() * sizeof(float));
  } else {
    const auto* h = reinterpret_cast<const uint16_t*>(a.data.data());
    for (size_t i = 0; i < out.size(); ++i) out[i] = npy::half_to_float(h[i]);
  }
  return out;
}

class Loader {
 public:
  Loader(Manifest m, std::string dir) : m_(std::move(m)), dir_(std::move(dir)) {
    for (const auto& t : m_.tensors) by_name_[t.name] = &t;
  }

  Model load() {
    const ModelConfig& c = m_.cfg;
    Model model;
    model.cfg = c;
    const int64_t H = c.hidden;
    model.word_emb = dense("bert.embeddings.word_embeddings.weight", {c.vocab, H});
    model.pos_emb = dense("bert.embeddings.position_embeddings.weight", {c.max_positions, H});
    model.type_emb = dense("bert.embeddings.token_type_embeddings.weight", {c.type_vocab, H});
    model.emb_ln_gamma = dense("bert.embeddings.LayerNorm.weight", {H});
    model.emb_ln_beta = dense("bert.embeddings.LayerNorm.bias", {H});
    model.layers.resize(size_t(c.layers));
    for (int i = 0; i < c.layers; ++i) {
      const std::string p = "bert.encoder.layer." + std::to_string(i) + ".";
      Layer& L = model.layers[size_t(i)];
      L.q = linear(p + "attention.self.query", c.hidden, c.hidden, true);
      L.k = linear(p + "attention.self.key", c.hidden, c.hidden, true);
      L.v = linear(p + "attention.self.value", c.hidden, c.hidden, true);
      L.o = linear(p + "attention.output.dense", c.hidden, c.hidden, true);
      L.ln1_gamma = dense(p + "attention.output.LayerNorm.weight", {H});
      L.ln1_beta = dense(p + "attention.output.LayerNorm.bias", {H});
      L.ffn1 = linear(p + "intermediate.dense", c.intermediate, c.hidden, true);
      L.ffn2 = linear(p + "output.dense", c.hidden, c.intermediate, true);
      L.ln2_gamma = dense(p + "output.LayerNorm.weight", {H});
      L.ln2_beta = dense(p + "output.LayerNorm.bias", {H});
      auto it = m_.pruned_heads.find(i);
      if (it != m_.pruned_heads.end()) {
        L.pruned_heads = it->second;
        check_pruned_heads(i, L);
      }
    }
    model.pooler = linear("bert.pooler.dense", c.hidden, c.hidden, false);
    model.classifier = linear("classifier", c.labels, c.hidden, false);
    for (const auto& t : m_.tensors)
      if (!used_.count(t.name))
        fail(ET_ERR_FORMAT, m_.path + ":" + std::to_string(t.line) + ": unknown tensor '" + t.name +
                                "' (not a BertForSequenceClassification weight of this config)");
    return model;
  }

 private:
  // dir_/name; a file that resolves (through a symlink) to a place outside dir_ is refused.
  std::string file_path(const std::string& name) const {
    const std::string path = dir_ + "/" + name;
    std::error_code ec;
    const std::filesystem::path real = std::filesystem::canonical(path, ec);
    if (ec) return path;  // missing or unreadable: npy::read reports it
    const std::filesystem::path root = std::filesystem::canonical(dir_, ec);
    if (ec) return path;
    const std::filesystem::path rel = real.lexically_relative(root);
    if (rel.empty() || *rel.begin() == "..")
      fail(ET_ERR_FORMAT, path + ": resolves to " + real.string() + ", outside the folder " + root.string());
    return path;
  }

  const ManifestTensor& record(const std::string& name, const std::vector<int64_t>& shape) {
    auto it = by_name_.find(name);
    if (it == by_name_.end())
      fail(ET_ERR_FORMAT, m_.path + ": missing tensor '" + name + "' (expected shape " + npy::shape_string(shape) + ")");
    const ManifestTensor& t = *it->second;
    if (t.shape != shape)
      fail(ET_ERR_SHAPE, m_.path + ":" + std::to_string(t.line) + ": tensor '" + name + "' has shape " +
                             npy::shape_string(t.shape) + " but the config implies " + npy::shape_string(shape));
    used_.insert(name);
    return t;
  }

  npy::Array read_checked(const std::string& file, const std::string& tensor, npy::DType dtype,
                          const std::vector<int64_t>& shape) const {
    const std::string path = file_path(file);
    npy::Array a = npy::read(path);
    if (a.dtype != dtype)
      fail(ET_ERR_SHAPE, path + ": dtype " + npy::descr(a.dtype) + " but the manifest declares " + npy::descr(dtype) +
                             " for '" + tensor + "'");
    if (a.shape != shape)
      fail(ET_ERR_SHAPE, path + ": shape " + npy::shape_string(a.shape) + " but the manifest declares " +
                             npy::shape_string(shape) + " for '" + tensor + "'");
    return a;
  }

  std::vector<float> read_values(const std::string& file, const std::string& tensor, npy::DType dtype,
                                 const std::vector<int64_t>& shape) const {
    std::vector<float> v = to_float(read_checked(file, tensor, dtype, shape));
    for (size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(v[i]))
        fail(ET_ERR_FORMAT, file_path(file) + ": non-finite value at flat index " + std::to_string(i) + " of '" +
                                tensor + "'");
    return v;
  }

  std::vector<float> dense(const std::string& name, const std::vector<int64_t>& shape) {
    const ManifestTensor& t = record(name, shape);
    if (t.tile_r)
      fail(ET_ERR_FORMAT, m_.path + ":" + std::to_string(t.line) + ": '" + name +
                              "' cannot be tiled (only encoder linear weights can)");
    return read_values(t.file, name, t.dtype, shape);
  }

  Linear linear(const std::string& prefix, int out, int in, bool may_be_tiled) {
    Linear lin;
    lin.out = out;
    lin.in = in;
    lin.bias = dense(prefix + ".bias", {out});
    const std::string name = prefix + ".weight";
    const ManifestTensor& t = record(name, {out, in});
    if (!t.tile_r) {
      lin.weight = read_values(t.file, name, t.dtype, t.shape);
      return lin;
    }
    if (!may_be_tiled)
      fail(ET_ERR_FORMAT, m_.path + ":" + std::to_string(t.line) + ": '" + name +
                              "' cannot be tiled (only encoder linear weights can)");
    lin.tile_r = t.tile_r;
    lin.tile_c = t.tile_c;
    const int64_t n_tiles = int64_t(out / t.tile_r) * (in / t.tile_c);
    const std::string index_path = file_path(t.index_file);
    npy::Array idx = npy::read(index_path);
    if (idx.dtype != npy::DType::I32 || idx.shape.size() != 1)
      fail(ET_ERR_SHAPE, index_path + ": tile index of '" + name + "' must be <i4 1-D, got " + npy::descr(idx.dtype) +
                             " " + npy::shape_string(idx.shape));
    const int64_t n_kept = idx.shape[0];
    lin.kept.resize(size_t(n_kept));
    std::memcpy(lin.kept.data(), idx.data.data(), size_t(n_kept) * sizeof(int32_t));
    for (int64_t i = 0; i < n_kept; ++i) {
      const int32_t id = lin.kept[size_t(i)];
      if (id < 0 || id >= n_tiles)
        fail(ET_ERR_SHAPE, index_path + ": tile id " + std::to_string(id) + " at position " + std::to_string(i) +
                               " is outside [0, " + std::to_string(n_tiles) + ") for '" + name + "'");
      if (i > 0 && id <= lin.kept[size_t(i - 1)])
        fail(ET_ERR_SHAPE, index_path + ": tile ids of '" + name + "' are not strictly ascending at position " +
                               std::to_string(i));
    }
    lin.weight = read_values(t.file, name, t.dtype, {n_kept, t.tile_r, t.tile_c});
    return lin;
  }

  // Calls fn(row, col, value) for every stored weight element.
  static void for_each_stored(const Linear& lin, const std::function<void(int, int, float)>& fn) {
    if (!lin.tiled()) {
      for (int r = 0; r < lin.out; ++r)
        for (int c = 0; c < lin.in; ++c) fn(r, c, lin.weight[size_t(r) * lin.in + c]);
      return;
    }
    const int grid_c = lin.in / lin.tile_c;
    const size_t tile_size = size_t(lin.tile_r) * lin.tile_c;
    for (size_t t = 0; t < lin.kept.size(); ++t) {
      const int r0 = lin.kept[t] / grid_c * lin.tile_r, c0 = lin.kept[t] % grid_c * lin.tile_c;
      for (int r = 0; r < lin.tile_r; ++r)
        for (int c = 0; c < lin.tile_c; ++c) fn(r0 + r, c0 + c, lin.weight[t * tile_size + size_t(r) * lin.tile_c + c]);
    }
  }

  void check_pruned_heads(int layer, const Layer& L) const {
    const int d = m_.cfg.hidden / m_.cfg.heads;
    for (int h : L.pruned_heads) {
      const int lo = h * d, hi = lo + d;
      auto where = [&](const char* what) {
        fail(ET_ERR_SHAPE, m_.path + ": pruned head " + std::to_string(h) + " of layer " + std::to_string(layer) +
                               " has nonzero values in " + what + " (pruned heads must be zero there)");
      };
      const std::pair<const Linear*, const char*> qkv[] = {{&L.q, "the query"}, {&L.k, "the key"}, {&L.v, "the value"}};
      for (const auto& [lin, what] : qkv) {
        for (int r = lo; r < hi; ++r)
          if (lin->bias[size_t(r)] != 0.0f) where((std::string(what) + " bias").c_str());
        bool nonzero = false;
        for_each_stored(*lin, [&](int r, int, float v) { nonzero |= (r >= lo && r < hi && v != 0.0f); });
        if (nonzero) where((std::string(what) + " weight rows").c_str());
      }
      bool nonzero = false;
      for_each_stored(L.o, [&](int, int c, float v) { nonzero |= (c >= lo && c < hi && v != 0.0f); });
      if (nonzero) where("the attention output weight columns");
    }
  }

  Manifest m_;
  std::string dir_;
  std::map<std::string, const ManifestTensor*> by_name_;
  std::set<std::string> used_;
};

}  // namespace

bool is_plain_file_name(const std::string& name) {
  if (name.empty() || name[0] == '.') return false;
  for (char c : name)
    if (c == '/' || c == '\\' || c == '\0') return false;
  return true;
}

Manifest parse_manifest(const std::string& path) { return ManifestParser(path).parse(); }

Model load_model(const std::string& manifest_path, const std::string& npy_dir) {
  Manifest m = parse_manifest(manifest_path);
  return Loader(std::move(m), npy_dir.empty() ? dir_of(manifest_path) : npy_dir).load();
}

}  // namespace et
