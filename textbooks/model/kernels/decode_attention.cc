// Decode attention over a KV cache, for XLA:CPU through the XLA FFI.
//
// One query block per row attends over the row's own cache prefix: query t of row b sits at cache slot
// start[b] + t and sees slots [0, start[b] + t] (clamped to the cache). Each (row, query, head) reads only
// those slots once (scores, softmax, weighted sum of values), so a batch whose rows hold different lengths
// reads what each row holds rather than the longest row's window; the query heads that share a key/value head
// are one item, which reads that head's slots once for all of them. With 64-wide heads an item is one pass over
// 16-slot blocks with a running softmax (OnlineItem): a block's key and value rows are read together and the
// next block's are prefetched, so the exponentials and products of one block overlap the loads of the next
// (decoding is bound by reading the cache, which is cold in serving: each layer's cache a distinct buffer).
// Other head sizes score all slots, then take the softmax, then sum the values. Items are shared between the
// calling thread and XLA's intra-op thread pool (one thread per core in all) through an atomic counter; a helper
// that starts late finds no work.
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

// Lanes of a v16 at or past `n` set to `fill`.
inline v16 Beyond(v16 x, int64_t n, float fill) {
  for (int s = 0; s < 16; ++s) x[s] = s < n ? x[s] : fill;
  return x;
}

// The largest of the 16 lanes, in 4 shuffle-max steps.
inline float Max16(v16 x) {
  const i16v lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  for (int h = 8; h >= 1; h /= 2) {
    const v16 y = __builtin_shuffle(x, lane ^ h);
    x = x > y ? x : y;
  }
  return x[0];
}

// The G query heads of one item over slots [0, n) in one pass of 16-slot blocks with a running softmax
// (flash-attention style): per block the scaled scores of the G heads (Reduce16, as Scores), the running
// maximum m of each head (the head's sums and accumulators scaled by e^(m_old - m) when a block raises it),
// weights e^(score - m), and the weighted value rows added to G x D accumulators in registers. The key and value
// rows of a block are read together (both streams in flight at once) and the next block's are prefetched; the
// last block's slots past n weigh nothing and their value rows are not read. out: the normalized sums.
template <int G, int D>
void OnlineItem(const float* q, const float* k, const float* v, int64_t n, float scale, float* out) {
  constexpr int kC = D / 16;
  constexpr int64_t kAhead = kLanes;  // the next block's key and value rows are requested during this one
  v16 qv[G][kC], acc[G][kC], sum[G];
  float m[G];
  alignas(64) float tail[16 * D];
  for (int g = 0; g < G; ++g) {
    for (int c = 0; c < kC; ++c) qv[g][c] = Load(q + g * D + 16 * c), acc[g][c] = v16{};
    sum[g] = v16{};
    m[g] = -std::numeric_limits<float>::infinity();
  }
  for (int64_t s0 = 0; s0 < n; s0 += kLanes) {
    const int64_t valid = std::min<int64_t>(kLanes, n - s0);
    for (int64_t s = s0 + kAhead; s < std::min(s0 + kAhead + kLanes, n); ++s) {
      for (int c = 0; c < D; c += 16) __builtin_prefetch(k + s * D + c), __builtin_prefetch(v + s * D + c);
    }
    const float* kb = k + s0 * D;
    if (valid < kLanes) {  // the last block: its rows copied beside rows of zeros, whose weights are set to 0
      std::memcpy(tail, kb, valid * D * sizeof(float));
      std::memset(tail + valid * D, 0, (kLanes - valid) * D * sizeof(float));
      kb = tail;
    }
    float p[G][16];
    for (int g = 0; g < G; ++g) {
      v16 part[16];
#pragma GCC unroll 16
      for (int s = 0; s < 16; ++s) {
        const float* ks = kb + s * D;
        v16 a = qv[g][0] * Load(ks);
        for (int c = 1; c < kC; ++c) a += qv[g][c] * Load(ks + 16 * c);
        part[Reverse4(s)] = a;
      }
      v16 score = Reduce16(part) * scale;
      if (valid < kLanes) score = Beyond(score, valid, -std::numeric_limits<float>::infinity());
      const float top = Max16(score);
      if (top > m[g]) {  // the first block always: its accumulators are still 0
        const float shrink = m[g] == -std::numeric_limits<float>::infinity() ? 0.0f : Exp(m[g] - top);
        for (int c = 0; c < kC; ++c) acc[g][c] *= shrink;
        sum[g] *= shrink;
        m[g] = top;
      }
      float* pg = p[g];
      Store(pg, score);
#pragma omp simd
      for (int s = 0; s < 16; ++s) pg[s] = Exp(pg[s] - m[g]);
      v16 w = Load(pg);
      if (valid < kLanes) w = Beyond(w, valid, 0.0f), Store(pg, w);
      sum[g] += w;
    }
    for (int64_t s = 0; s < valid; ++s) {
      v16 vs[kC];
      for (int c = 0; c < kC; ++c) vs[c] = Load(v + (s0 + s) * D + 16 * c);
      for (int g = 0; g < G; ++g)
        for (int c = 0; c < kC; ++c) acc[g][c] += p[g][s] * vs[c];
    }
  }
  for (int g = 0; g < G; ++g) {
    float total = 0.0f;
    for (int s = 0; s < 16; ++s) total += sum[g][s];
    const float inv = 1.0f / total;
    for (int c = 0; c < kC; ++c) Store(out + g * D + 16 * c, acc[g][c] * inv);
  }
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
  if (n > 0 && group == 3 && d_n == 64) return OnlineItem<3, 64>(q, k, v, n, w.scale, o);  // SmolLM2's heads
  if (n > 0 && group == 1 && d_n == 64) return OnlineItem<1, 64>(q, k, v, n, w.scale, o);
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
  // One drainer per core: the caller and at most cores - 1 pool threads (XLA's pool can hold as many threads as
  // cores, and a third drainer on two cores only takes turns with the others).
  const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t helpers = std::min<int64_t>({pool.num_threads(), cores - 1, w->total - 1});
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
