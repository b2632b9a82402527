// et_infer — run a model exported as weights.txt + .npy files through libet and time it.
//
//   et_infer <weights.txt> <npy_dir> [--tokens FILE.npy --lengths FILE.npy] [--segments FILE.npy]
//            [--batch B --seq L] [--iters N --warmup W] [--backend cpu|cuda|auto] [--device D]
//            [--threads T] [--padded] [--seed S] [--chunk C] [--out logits.npy]
//
// Tokens come from --tokens (int32/int64: 1-D packed with --lengths, or 2-D [batch, seq] whose rows
// are cut to --lengths when given) or, without --tokens, are random (batch B of length L).
// Prints the backend, the device and the per-iteration latency (min/median/p90) of the whole batch
// (with --chunk, of its first C sequences); --out writes the logits as float32 .npy [batch, labels],
// computed in forward passes of at most C sequences with --chunk (default: one pass).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "backend.h"
#include "et.h"
#include "npy.h"

namespace {

struct Args {
  std::string manifest, npy_dir, tokens, lengths, segments, out;
  int batch = 1, seq = 128, iters = 20, warmup = 3, device = 0, threads = 0, chunk = 0;
  unsigned seed = 1;
  int backend = ET_BACKEND_AUTO;
  bool padded = false;
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kUsage =
    "usage: et_infer <weights.txt> <npy_dir> [--tokens FILE.npy --lengths FILE.npy] [--segments FILE.npy]\n"
    "                [--batch B --seq L] [--iters N --warmup W] [--backend cpu|cuda|auto] [--device D]\n"
    "                [--threads T] [--padded] [--seed S] [--chunk C] [--out logits.npy]\n";

int to_int(const std::string& flag, const std::string& v, int lo) {
  char* end = nullptr;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo || x > 1000000000)
    throw UsageError(flag + " expects an integer >= " + std::to_string(lo) + ", got '" + v + "'");
  return int(x);
}

Args parse_args(int argc, char** argv) {
  Args a;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(f + " needs a value");
      return argv[++i];
    };
    if (f == "--tokens") a.tokens = value();
    else if (f == "--lengths") a.lengths = value();
    else if (f == "--segments") a.segments = value();
    else if (f == "--out") a.out = value();
    else if (f == "--batch") a.batch = to_int(f, value(), 1);
    else if (f == "--seq") a.seq = to_int(f, value(), 1);
    else if (f == "--iters") a.iters = to_int(f, value(), 0);
    else if (f == "--warmup") a.warmup = to_int(f, value(), 0);
    else if (f == "--device") a.device = to_int(f, value(), 0);
    else if (f == "--threads") a.threads = to_int(f, value(), 0);
    else if (f == "--chunk") a.chunk = to_int(f, value(), 1);
    else if (f == "--seed") a.seed = unsigned(to_int(f, value(), 0));
    else if (f == "--padded") a.padded = true;
    else if (f == "--backend") {
      const std::string b = value();
      if (b == "auto") a.backend = ET_BACKEND_AUTO;
      else if (b == "cpu") a.backend = ET_BACKEND_CPU;
      else if (b == "cuda") a.backend = ET_BACKEND_CUDA;
      else throw UsageError("--backend must be cpu, cuda or auto, got '" + b + "'");
    } else if (f == "-h" || f == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (f.rfind("--", 0) == 0) {
      throw UsageError("unknown option " + f);
    } else {
      positional.push_back(f);
    }
  }
  if (positional.size() != 2) throw UsageError("expected <weights.txt> <npy_dir>");
  a.manifest = positional[0];
  a.npy_dir = positional[1];
  if (!a.lengths.empty() && a.tokens.empty()) throw UsageError("--lengths needs --tokens");
  if (!a.segments.empty() && a.tokens.empty()) throw UsageError("--segments needs --tokens");
  return a;
}

// An integer .npy file as int32 values.
std::vector<int32_t> read_ints(const std::string& path, std::vector<int64_t>& shape) {
  et::npy::Array a = et::npy::read(path);
  shape = a.shape;
  std::vector<int32_t> out(size_t(a.count()));
  if (a.dtype == et::npy::DType::I32) {
    std::memcpy(out.data(), a.data.data(), out.size() * 4);
  } else if (a.dtype == et::npy::DType::I64) {
    const auto* v = reinterpret_cast<const int64_t*>(a.data.data());
    for (size_t i = 0; i < out.size(); ++i) {
      if (v[i] < INT32_MIN || v[i] > INT32_MAX)
        throw et::Error(ET_ERR_FORMAT, path + ": value " + std::to_string(v[i]) + " at index " + std::to_string(i) +
                                           " does not fit in int32");
      out[i] = int32_t(v[i]);
    }
  } else {
    throw et::Error(ET_ERR_FORMAT, path + ": dtype " + et::npy::descr(a.dtype) + ", expected <i4 or <i8");
  }
  return out;
}

struct Inputs {
  std::vector<int32_t> lengths, tokens, segments;
};

// Packs a token-like file to match `lengths` (1-D: already packed; 2-D: rows cut to lengths).
std::vector<int32_t> pack(const std::string& path, const std::vector<int32_t>& data, const std::vector<int64_t>& shape,
                          const std::vector<int32_t>& lengths) {
  int64_t total = 0;
  for (int32_t len : lengths) total += len;
  if (shape.size() == 1) {
    if (shape[0] != total)
      throw et::Error(ET_ERR_SHAPE, path + ": " + std::to_string(shape[0]) + " values but the lengths sum to " +
                                        std::to_string(total));
    return data;
  }
  if (shape.size() != 2 || shape[0] != int64_t(lengths.size()))
    throw et::Error(ET_ERR_SHAPE, path + ": shape " + et::npy::shape_string(shape) + ", expected 1-D packed [" +
                                      std::to_string(total) + "] or 2-D [" + std::to_string(lengths.size()) + ", seq]");
  std::vector<int32_t> out;
  for (size_t b = 0; b < lengths.size(); ++b) {
    if (lengths[b] > shape[1] || lengths[b] < 0)
      throw et::Error(ET_ERR_SHAPE, path + ": length " + std::to_string(lengths[b]) + " of sequence " +
                                        std::to_string(b) + " exceeds its row of " + std::to_string(shape[1]));
    out.insert(out.end(), data.begin() + int64_t(b) * shape[1], data.begin() + int64_t(b) * shape[1] + lengths[b]);
  }
  return out;
}

Inputs make_inputs(const Args& a, const et_model_info& info) {
  Inputs in;
  if (a.tokens.empty()) {
    std::mt19937 rng(a.seed);
    std::uniform_int_distribution<int32_t> tok(0, info.vocab - 1);
    in.lengths.assign(size_t(a.batch), a.seq);
    in.tokens.resize(size_t(a.batch) * size_t(a.seq));
    for (auto& t : in.tokens) t = tok(rng);
    return in;
  }
  std::vector<int64_t> tshape, lshape, sshape;
  const std::vector<int32_t> tokens = read_ints(a.tokens, tshape);
  if (!a.lengths.empty()) {
    in.lengths = read_ints(a.lengths, lshape);
    if (lshape.size() != 1) throw et::Error(ET_ERR_SHAPE, a.lengths + ": lengths must be 1-D");
  } else if (tshape.size() == 2) {
    in.lengths.assign(size_t(tshape[0]), int32_t(tshape[1]));
  } else {
    throw et::Error(ET_ERR_SHAPE, a.tokens + ": 1-D packed tokens need --lengths");
  }
  for (size_t i = 0; i < in.lengths.size(); ++i)
    if (in.lengths[i] < 1)
      throw et::Error(ET_ERR_INVALID_ARGUMENT, (a.lengths.empty() ? a.tokens : a.lengths) + ": lengths[" +
                                                   std::to_string(i) + "] = " + std::to_string(in.lengths[i]) +
                                                   " (must be >= 1)");
  if (in.lengths.empty()) throw et::Error(ET_ERR_INVALID_ARGUMENT, a.lengths + ": no sequences (batch 0)");
  in.tokens = pack(a.tokens, tokens, tshape, in.lengths);
  if (!a.segments.empty()) in.segments = pack(a.segments, read_ints(a.segments, sshape), sshape, in.lengths);
  return in;
}

void check(et_status s, const char* what) {
  if (s != ET_OK) throw et::Error(s, std::string(what) + " failed (" + et_status_string(s) + "): " + et_last_error());
}

float percentile(std::vector<float> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t lo = size_t(pos), hi = std::min(lo + 1, v.size() - 1);
  return float(v[lo] + (v[hi] - v[lo]) * (pos - double(lo)));
}

int run(const Args& a) {
  et_options opts;
  et_options_default(&opts);
  opts.backend = a.backend;
  opts.device = a.device;
  opts.threads = a.threads;
  et_model* model = nullptr;
  check(et_model_load(a.manifest.c_str(), a.npy_dir.c_str(), &opts, &model), "loading the model");
  std::unique_ptr<et_model, et_status (*)(et_model*)> guard(model, et_model_free);
  et_model_info info;
  check(et_model_get_info(model, &info), "et_model_get_info");
  const Inputs in = make_inputs(a, info);
  const int32_t batch = int32_t(in.lengths.size());
  int64_t total = 0;
  for (int32_t len : in.lengths) total += len;
  const int32_t* segs = in.segments.empty() ? nullptr : in.segments.data();
  const uint32_t flags = a.padded ? ET_FORWARD_PADDED : 0u;

  std::printf("backend: %s\ndevice: %s\n", et_backend_name(model), et_device_name(model));
  std::printf("model: layers=%d hidden=%d heads=%d intermediate=%d labels=%d pruned_heads=%d kept_tiles=%lld/%lld "
              "kept_params=%lld/%lld\n",
              info.layers, info.hidden, info.heads, info.intermediate, info.labels, info.pruned_heads,
              (long long)info.kept_tiles, (long long)info.total_tiles, (long long)info.kept_params,
              (long long)info.total_params);
  std::printf("batch: %d sequences, %lld tokens%s%s\n", batch, (long long)total, a.padded ? ", padded" : "",
              a.tokens.empty() ? ", random tokens" : "");

  // Forward passes over consecutive chunks of at most `chunk` sequences.
  const int32_t chunk = a.chunk > 0 ? std::min<int32_t>(a.chunk, batch) : batch;
  std::vector<float> logits(size_t(batch) * size_t(info.labels));
  int64_t offset = 0;
  for (int32_t b0 = 0; b0 < batch; b0 += chunk) {
    const int32_t n = std::min(chunk, batch - b0);
    check(et_forward(model, n, in.lengths.data() + b0, in.tokens.data() + offset, segs ? segs + offset : nullptr,
                     flags, logits.data() + size_t(b0) * size_t(info.labels), nullptr),
          "et_forward");
    for (int32_t i = b0; i < b0 + n; ++i) offset += in.lengths[size_t(i)];
  }
  if (a.iters > 0) {
    int64_t timed_tokens = 0;
    for (int32_t i = 0; i < chunk; ++i) timed_tokens += in.lengths[size_t(i)];
    std::vector<float> ms(size_t(a.iters));
    check(et_benchmark(model, chunk, in.lengths.data(), in.tokens.data(), segs, flags, a.warmup, a.iters, ms.data()),
          "et_benchmark");
    const float med = percentile(ms, 0.5);
    std::printf("latency_ms: min=%.3f median=%.3f p90=%.3f (batch=%d iters=%d warmup=%d)\n", percentile(ms, 0.0),
                med, percentile(ms, 0.9), chunk, a.iters, a.warmup);
    std::printf("tokens_per_s: %.1f\n", double(timed_tokens) / (double(med) / 1000.0));
  }
  if (!a.out.empty()) {
    et::npy::write(a.out, et::npy::DType::F32, {batch, info.labels}, logits.data());
    std::printf("logits: %s\n", a.out.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "et_infer: error: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "et_infer: error: %s\n", e.what());
    return 1;
  }
}
