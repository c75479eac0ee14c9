// Decode attention over a KV cache, for XLA:CPU through the XLA FFI.
//
// One query block per row attends over the row's own cache prefix: query t of row b sits at cache slot
// start[b] + t and sees slots [0, start[b] + t] (clamped to the cache). Each (row, query, head) reads only
// those slots once (scores, softmax, weighted sum of values), so a batch whose rows hold different lengths
// reads what each row holds rather than the longest row's window; the query heads that share a key/value head
// are one item, which reads that head's slots once for all of them. With 64-wide heads the scores of 16 slots are
// summed at once (Scores), the softmax's maximum and sum are vector reductions. Items are shared between the calling
// thread and XLA's intra-op thread pool through an atomic counter; a helper that starts late finds no work.
//
// Layouts (float32): q [batch, queries, heads, head_dim]; k, v [batch, kv_heads, slots, head_dim] (grouped-query
// attention: query head h reads key/value head h / (heads / kv_heads));
// start [batch] int32; out [batch, queries, heads, head_dim]. Attribute: scale (applied to q.k).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "vector16.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Work {
  const float* q;
  const float* k;
  const float* v;
  const int32_t* start;
  float* out;
  int64_t batch, queries, heads, kv_heads, slots, dim;
  float scale;
  int64_t total;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

using namespace textbooks_kernels;  // v16 (16 floats: one AVX-512 register, two AVX2 ones), Load, ...

// scores[g * n + s] = scale * q[g].k[s] for the G query heads g and the slots s < n of head size D, 16 slots at
// a time: one vector partial sum per slot over the head dimension, the 16 folded into one vector of their sums
// (Reduce16; slot s's accumulator sits at index Reverse4(s), so its sum lands in lane s). Returns the first slot
// it did not score (a multiple of 16).
template <int D>
int64_t Scores(const float* q, const float* k, int64_t group, int64_t n, float scale, float* scores) {
  constexpr int kC = D / 16;
  const int64_t blocks = n / kLanes * kLanes;
  for (int64_t g = 0; g < group; ++g) {
    v16 qv[kC];
    for (int c = 0; c < kC; ++c) qv[c] = Load(q + g * D + 16 * c);
    for (int64_t s0 = 0; s0 < blocks; s0 += kLanes) {
      v16 acc[16];
      for (int s = 0; s < 16; ++s) {
        const float* ks = k + (s0 + s) * D;
        v16 a = qv[0] * Load(ks);
        for (int c = 1; c < kC; ++c) a += qv[c] * Load(ks + 16 * c);
        acc[Reverse4(s)] = a;
      }
      Store(scores + g * n + s0, Reduce16(acc) * scale);
    }
  }
  return blocks;
}

// out[g * D + d] = sum over slots s < n of p[g * n + s] * v[s * D + d] for G query heads of head size D, the
// G * D sums in vector registers over the slots (each value row read once); the same order of multiply-adds
// per output as the generic loop.
template <int G, int D>
void Values(const float* p, const float* v, int64_t n, float* out) {
  constexpr int kC = D / 16;
  v16 acc[G][kC];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < kC; ++c) acc[g][c] = v16{};
  for (int64_t s = 0; s < n; ++s) {
    v16 vs[kC];
    for (int c = 0; c < kC; ++c) std::memcpy(&vs[c], v + s * D + 16 * c, sizeof(v16));
    for (int g = 0; g < G; ++g) {
      const float w = p[g * n + s];
      for (int c = 0; c < kC; ++c) acc[g][c] += w * vs[c];
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < kC; ++c) std::memcpy(out + g * D + 16 * c, &acc[g][c], sizeof(v16));
}

// One item: query t of row b for the `group` query heads that share key/value head j, so that each cached key
// and value row is read once for all of them (grouped-query attention reads a third of the bytes at 9 heads
// over 3 KV heads).
void RunItem(const Work& w, int64_t item, std::vector<float>& scores) {
  const int64_t group = w.heads / w.kv_heads;
  const int64_t j = item % w.kv_heads;
  const int64_t t = (item / w.kv_heads) % w.queries;
  const int64_t b = item / (w.kv_heads * w.queries);
  const int64_t d_n = w.dim;
  const int64_t h0 = j * group;  // query heads h0 .. h0 + group - 1
  const float* q = w.q + ((b * w.queries + t) * w.heads + h0) * d_n;
  const float* k = w.k + (b * w.kv_heads + j) * w.slots * d_n;
  const float* v = w.v + (b * w.kv_heads + j) * w.slots * d_n;
  float* o = w.out + ((b * w.queries + t) * w.heads + h0) * d_n;
  const int64_t n = std::min<int64_t>(static_cast<int64_t>(w.start[b]) + t, w.slots - 1) + 1;
  for (int64_t d = 0; d < group * d_n; ++d) o[d] = 0.0f;
  if (n <= 0) return;
  scores.resize(group * n);  // scores[g * n + s]
  const int64_t scored = d_n == 64 ? Scores<64>(q, k, group, n, w.scale, scores.data()) : 0;
  for (int64_t s = scored; s < n; ++s) {
    const float* ks = k + s * d_n;
    for (int64_t g = 0; g < group; ++g) {
      const float* qg = q + g * d_n;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t d = 0; d < d_n; ++d) acc += qg[d] * ks[d];
      scores[g * n + s] = acc * w.scale;
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    float* sg = scores.data() + g * n;
    float best = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : best)
    for (int64_t s = 0; s < n; ++s) best = std::max(best, sg[s]);
#pragma omp simd
    for (int64_t s = 0; s < n; ++s) sg[s] = Exp(sg[s] - best);
    float total = 0.0f;  // lane-wise partial sums, then their sum (not slot by slot)
#pragma omp simd reduction(+ : total)
    for (int64_t s = 0; s < n; ++s) total += sg[s];
    const float inv = 1.0f / total;
    for (int64_t s = 0; s < n; ++s) sg[s] *= inv;
  }
  if (group == 3 && d_n == 64) return Values<3, 64>(scores.data(), v, n, o);  // SmolLM2's heads
  if (group == 1 && d_n == 64) return Values<1, 64>(scores.data(), v, n, o);
  for (int64_t s = 0; s < n; ++s) {
    const float* vs = v + s * d_n;
    for (int64_t g = 0; g < group; ++g) {
      const float p = scores[g * n + s];
      float* og = o + g * d_n;
#pragma omp simd
      for (int64_t d = 0; d < d_n; ++d) og[d] += p * vs[d];
    }
  }
}

void Drain(Work& w) {
  std::vector<float> scores;
  for (int64_t item = w.next.fetch_add(1); item < w.total; item = w.next.fetch_add(1)) {
    RunItem(w, item, scores);
    w.done.fetch_add(1, std::memory_order_release);
  }
}

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                           ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> start, float scale,
                           ffi::ResultBuffer<ffi::F32> out) {
  auto qd = q.dimensions();
  auto kd = k.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || v.dimensions().size() != 4) {
    return ffi::Error::InvalidArgument("decode attention: q, k and v must have rank 4");
  }
  if (kd[0] != qd[0] || kd[1] <= 0 || qd[2] % kd[1] != 0 || kd[3] != qd[3] || v.dimensions()[1] != kd[1] ||
      v.dimensions()[2] != kd[2]) {
    return ffi::Error::InvalidArgument(
        "decode attention: q [B, T, H, D] does not match k/v [B, KVH, S, D] with H a multiple of KVH");
  }
  auto w = std::make_shared<Work>();
  w->q = q.typed_data(); w->k = k.typed_data(); w->v = v.typed_data();
  w->start = start.typed_data(); w->out = out->typed_data();
  w->batch = qd[0]; w->queries = qd[1]; w->heads = qd[2]; w->kv_heads = kd[1]; w->dim = qd[3]; w->slots = kd[2];
  w->scale = scale;
  w->total = w->batch * w->queries * w->kv_heads;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), w->total - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([w] { Drain(*w); });
  Drain(*w);
  while (w->done.load(std::memory_order_acquire) < w->total) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TextbooksDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>());
