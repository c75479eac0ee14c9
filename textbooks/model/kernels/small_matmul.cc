// y = x @ w + b for the few rows of a decode step, for XLA:CPU through the XLA FFI.
//
// A decode step multiplies a handful of rows (one token per sequence) by every weight matrix, so it reads far
// more weight bytes than it does arithmetic: its speed is the memory bandwidth it reaches. XLA runs products of
// this size on one thread; this kernel splits the columns of w into panels shared between the calling thread
// and XLA's intra-op pool, so every core streams its own part of the weights. Within a panel, blocks of rows
// keep their partial sums in vector registers over the whole reduction (one pass over the panel per block).
//
// Layouts (float32, row-major): x [..., K] (M rows), w [K, N], b [N], y [..., N].
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));  // 16 floats: one AVX-512 register, two AVX2 ones
constexpr int64_t kLanes = 16;
constexpr int kVectors = 4;  // a panel is kVectors * kLanes = 64 columns
constexpr int kRows = 4;     // rows per register block: kRows * kVectors accumulators
constexpr int64_t kPanel = kVectors * kLanes;

inline v16 Load(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void Store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

struct Work {
  const float* x;
  const float* w;
  const float* b;
  float* y;
  int64_t m, k, n, panels;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// Rows [m0, m0 + R) times columns [n0, n0 + 16 V).
template <int R, int V>
void Block(const Work& w, int64_t m0, int64_t n0) {
  v16 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < V; ++j) acc[r][j] = v16{};
  const float* x = w.x + m0 * w.k;
  const float* col = w.w + n0;
  for (int64_t k = 0; k < w.k; ++k) {
    v16 wv[V];
    for (int j = 0; j < V; ++j) wv[j] = Load(col + k * w.n + kLanes * j);
    for (int r = 0; r < R; ++r) {
      const float xv = x[r * w.k + k];
      for (int j = 0; j < V; ++j) acc[r][j] += xv * wv[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < V; ++j)
      Store(w.y + (m0 + r) * w.n + n0 + kLanes * j, acc[r][j] + Load(w.b + n0 + kLanes * j));
}

template <int V>
void Columns(const Work& w, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + kRows <= w.m; m0 += kRows) Block<kRows, V>(w, m0, n0);
  for (; m0 < w.m; ++m0) Block<1, V>(w, m0, n0);
}

// The last columns when N is not a multiple of 16.
void Scalar(const Work& w, int64_t n0) {
  for (int64_t m = 0; m < w.m; ++m)
    for (int64_t j = n0; j < w.n; ++j) {
      float acc = 0.0f;
      for (int64_t k = 0; k < w.k; ++k) acc += w.x[m * w.k + k] * w.w[k * w.n + j];
      w.y[m * w.n + j] = acc + w.b[j];
    }
}

void Panel(const Work& w, int64_t p) {
  int64_t n0 = p * kPanel;
  if (n0 + kPanel <= w.n) {
    Columns<kVectors>(w, n0);
    return;
  }
  for (; n0 + kLanes <= w.n; n0 += kLanes) Columns<1>(w, n0);
  if (n0 < w.n) Scalar(w, n0);
}

void Drain(Work& w) {
  for (int64_t p = w.next.fetch_add(1); p < w.panels; p = w.next.fetch_add(1)) {
    Panel(w, p);
    w.done.fetch_add(1, std::memory_order_release);
  }
}

ffi::Error SmallMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (wd.size() != 2 || xd.size() < 1 || xd[xd.size() - 1] != wd[0]) {
    return ffi::Error::InvalidArgument("small matmul: x [..., K] does not match w [K, N]");
  }
  if (b.dimensions().size() != 1 || b.dimensions()[0] != wd[1]) {
    return ffi::Error::InvalidArgument("small matmul: b must be [N], N = w's columns");
  }
  auto work = std::make_shared<Work>();
  work->x = x.typed_data(); work->w = w.typed_data(); work->b = b.typed_data(); work->y = y->typed_data();
  work->k = wd[0]; work->n = wd[1];
  work->m = work->k > 0 ? static_cast<int64_t>(x.element_count()) / work->k : 0;
  work->panels = (work->n + kPanel - 1) / kPanel;
  if (work->k == 0) {  // an empty sum: the bias
    for (int64_t m = 0; m < work->m; ++m) std::memcpy(work->y + m * work->n, work->b, work->n * sizeof(float));
    return ffi::Error::Success();
  }
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->panels - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { Drain(*work); });
  Drain(*work);
  while (work->done.load(std::memory_order_acquire) < work->panels) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TextbooksSmallMatmul, SmallMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
