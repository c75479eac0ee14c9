// y = x @ w + b for the few rows of a decode step, for XLA:CPU through the XLA FFI.
//
// A decode step multiplies a handful of rows (one token per sequence) by every weight matrix, so it reads far
// more weight bytes than it does arithmetic: its speed is the memory bandwidth it reaches. XLA runs products of
// this size on one thread; this kernel splits the columns of w into panels shared between the calling thread
// and XLA's intra-op pool, so every core streams its own part of the weights. Within a panel, blocks of rows
// keep their partial sums in vector registers over the whole reduction (one pass over the panel per block);
// the first pass prefetches the panel's rows ahead of its products.
//
// Layouts (float32, row-major): x [..., K] (M rows), w [K, N], b [N], y [..., N]. A panel of w [K, N] is a
// column strip: each of its K rows a short stretch of memory N floats from the next, which one core reads at
// well under half the speed of consecutive memory. The packed layout [ceil(N / 48), K, 48] (PackedMatmul)
// stores every 48-column panel as one consecutive block (the last padded with zero columns), so a panel is
// a single sequential read; a decoder packs its weights once. A third handler computes x @ w.T for w [N, K]
// (a tied LM head reads the embedding table as it is stored; see SmallMatmulNT), and a fourth a Llama MLP's whole
// step on packed weights, gate and up products, SwiGLU and down product in one call (PackedSwiglu).
//
// The packed handlers also take the parts of a pre-norm block around their products, so that a decode step
// does not run them as separate small XLA ops: an RMSNorm of x's rows (norm scale [K], attribute eps; x is
// normalized once into the calling thread's scratch before the products) and a residual added to the output
// (y = r + x @ w + b). An empty norm scale or residual leaves that part out.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "vector16.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace textbooks_kernels;  // v16 (16 floats: one AVX-512 register, two AVX2 ones), Load, ...
// Panels and register blocks: with kFewRows rows or more, a panel is kVectors * kLanes = 48 columns (it divides
// 192, 576 and 1536) and a block holds kRows rows (24 accumulators of 32 registers; 16 rows: two passes over the
// panel, the second from cache). With fewer rows each row is one pass, which reads memory at its pace: panels
// are wider then (kWideVectors * kLanes = 96 columns, six cache lines of each row of w per step of the
// reduction) and still split 192, 576 and 1536 columns evenly between two cores.
constexpr int kVectors = 3;
constexpr int kRows = 8;
constexpr int kWideVectors = 6;
constexpr int64_t kFewRows = 4;
constexpr int64_t kAhead = 8;  // the first block of rows prefetches the weights this many rows of w ahead
constexpr int64_t kPacked = kVectors * kLanes;  // columns per panel of the packed layout

struct Work {
  const float* x;
  const float* w;
  const float* b;
  const float* r = nullptr;  // residual [M, N] added to y, or none
  float* y;
  int64_t m, k, n, units;  // units: panels of `width` columns
  int64_t width;           // columns per panel
  int64_t ld;              // floats from one row of a panel to the next: N, or kPacked when packed
  int64_t panel_step;      // floats from one panel's first element to the next one's: width, or K * kPacked
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// Rows [m0, m0 + R) times columns [n0, n0 + 16 V), whose row 0 starts at col.
template <int R, int V>
void Block(const Work& w, int64_t m0, int64_t n0, const float* col) {
  v16 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < V; ++j) acc[r][j] = v16{};
  const float* x = w.x + m0 * w.k;
  const int64_t ld = w.ld;
  const bool first = m0 == 0;
  for (int64_t k = 0; k < w.k; ++k) {
    if (first)
      for (int j = 0; j < V; ++j) __builtin_prefetch(col + (k + kAhead) * ld + kLanes * j);
    v16 wv[V];
    for (int j = 0; j < V; ++j) wv[j] = Load(col + k * ld + kLanes * j);
    for (int r = 0; r < R; ++r) {
      const float xv = x[r * w.k + k];
      for (int j = 0; j < V; ++j) acc[r][j] += xv * wv[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < V; ++j) {
      const int64_t at = (m0 + r) * w.n + n0 + kLanes * j;
      const v16 out = acc[r][j] + Load(w.b + n0 + kLanes * j);
      Store(w.y + at, w.r == nullptr ? out : Load(w.r + at) + out);
    }
}

// Every row times columns [n0, n0 + 16 V) starting at col: blocks of R rows, then of R / 2, then single rows.
template <int V, int R>
void Columns(const Work& w, int64_t n0, const float* col) {
  int64_t m0 = 0;
  if constexpr (R > 1) {
    for (; m0 + R <= w.m; m0 += R) Block<R, V>(w, m0, n0, col);
    for (; m0 + R / 2 <= w.m; m0 += R / 2) Block<R / 2, V>(w, m0, n0, col);
  }
  for (; m0 < w.m; ++m0) Block<1, V>(w, m0, n0, col);
}

// Columns per panel of w [K, N]: wide panels for few rows (see kWideVectors), kPacked otherwise.
int64_t PanelWidth(int64_t m) { return kLanes * (m < kFewRows ? kWideVectors : kVectors); }

// The last columns [n0, N) when N is not a multiple of 16, starting at col.
void Scalar(const Work& w, int64_t n0, const float* col) {
  for (int64_t m = 0; m < w.m; ++m)
    for (int64_t j = n0; j < w.n; ++j) {
      float acc = 0.0f;
      for (int64_t k = 0; k < w.k; ++k) acc += w.x[m * w.k + k] * col[k * w.ld + j - n0];
      w.y[m * w.n + j] = w.r == nullptr ? acc + w.b[j] : w.r[m * w.n + j] + (acc + w.b[j]);
    }
}

void Panel(Work& w, int64_t p) {  // (not const: the signature of a unit of Share)
  int64_t n0 = p * w.width;
  const float* col = w.w + p * w.panel_step;
  if (n0 + w.width <= w.n) {
    if (w.m >= kFewRows) {
      Columns<kVectors, kRows>(w, n0, col);  // width is kPacked in either layout
    } else if (w.width == kPacked) {
      Columns<kVectors, 1>(w, n0, col);
    } else {
      Columns<kWideVectors, 1>(w, n0, col);
    }
    return;
  }
  for (; n0 + kLanes <= w.n; n0 += kLanes, col += kLanes) Columns<1, kRows>(w, n0, col);
  if (n0 < w.n) Scalar(w, n0, col);
}

// Runs Unit(*work, u) for every u < work->units once, on the calling thread and the pool's threads (whichever
// takes a unit first); returns when all are done.
template <typename W, void (*Unit)(W&, int64_t)>
void Share(ffi::ThreadPool& pool, std::shared_ptr<W> work) {
  auto drain = [](W& w) {
    for (int64_t u = w.next.fetch_add(1); u < w.units; u = w.next.fetch_add(1)) {
      Unit(w, u);
      w.done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->units - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work, drain] { drain(*work); });
  drain(*work);
  while (work->done.load(std::memory_order_acquire) < work->units) std::this_thread::yield();
}

ffi::Error Run(ffi::ThreadPool& pool, std::shared_ptr<Work> work);

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
  work->m = work->k > 0 ? static_cast<int64_t>(x.element_count()) / work->k
                        : static_cast<int64_t>(y->element_count()) / std::max<int64_t>(work->n, 1);
  work->width = work->panel_step = PanelWidth(work->m);
  work->ld = work->n;
  return Run(pool, work);
}

// Runs a product set up in work (every field but units); the bias alone when K is 0.
ffi::Error Run(ffi::ThreadPool& pool, std::shared_ptr<Work> work) {
  work->units = (work->n + work->width - 1) / work->width;
  if (work->k == 0) {  // an empty sum: the bias (plus the residual)
    for (int64_t m = 0; m < work->m; ++m)
      for (int64_t j = 0; j < work->n; ++j)
        work->y[m * work->n + j] = work->r == nullptr ? work->b[j] : work->r[m * work->n + j] + work->b[j];
    return ffi::Error::Success();
  }
  Share<Work, Panel>(pool, work);
  return ffi::Error::Success();
}

// out[m] = x[m] * (scale / sqrt(mean(x[m]^2) + eps)) for the M rows of K (an RMSNorm, in flax's order of operations).
void NormRows(const float* x, const float* scale, int64_t m, int64_t k, float eps, float* out) {
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x + i * k;
    float* o = out + i * k;
    float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
    for (int64_t c = 0; c < k; ++c) squares += xr[c] * xr[c];
    const float inv = 1.0f / std::sqrt(squares / static_cast<float>(k) + eps);
#pragma omp simd
    for (int64_t c = 0; c < k; ++c) o[c] = xr[c] * (inv * scale[c]);
  }
}

// The optional norm and residual of a packed product: checks their sizes (an empty buffer: none) against its M rows
// of K inputs and N outputs, normalizes x into `normed` (grown as needed) when a scale is given, and points the
// product at its input and residual. Returns an error message, or nullptr.
const char* Prologue(Work& work, const float* x, const float* scale, int64_t scales, const float* residual,
                     int64_t residuals, float eps, std::vector<float>& normed) {
  if (scales != 0 && scales != work.k) return "the norm scale must be [K] or empty";
  if (residuals != 0 && residuals != work.m * work.n) return "the residual must be [..., N] like y, or empty";
  work.x = x;
  if (scales != 0) {
    normed.resize(std::max<size_t>(normed.size(), work.m * work.k));
    NormRows(x, scale, work.m, work.k, eps, normed.data());
    work.x = normed.data();
  }
  work.r = residuals != 0 ? residual : nullptr;
  return nullptr;
}

// y = [r +] norm(x) @ w + b with w in the packed layout [ceil(N / kPacked), K, kPacked]; N is b's length; the
// norm (scale [K] and eps) and the residual r [..., N] are optional (empty buffers).
ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                        ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b, ffi::Buffer<ffi::F32> residual, float eps,
                        ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (b.dimensions().size() != 1 || wd.size() != 3 || wd[2] != kPacked || xd.size() < 1 ||
      xd[xd.size() - 1] != wd[1] || wd[0] != (b.dimensions()[0] + kPacked - 1) / kPacked) {
    return ffi::Error::InvalidArgument("packed matmul: x [..., K], w [ceil(N / 48), K, 48] and b [N] do not fit");
  }
  auto work = std::make_shared<Work>();
  work->w = w.typed_data(); work->b = b.typed_data(); work->y = y->typed_data();
  work->k = wd[1]; work->n = b.dimensions()[0];
  work->m = work->k > 0 ? static_cast<int64_t>(x.element_count()) / work->k
                        : static_cast<int64_t>(y->element_count()) / std::max<int64_t>(work->n, 1);
  // Scratch of the calling thread, reused by its later calls; a helper that starts after the call returned
  // finds no unit and does not read it.
  thread_local std::vector<float> normed;
  if (const char* error = Prologue(*work, x.typed_data(), scale.typed_data(), scale.element_count(),
                                   residual.typed_data(), residual.element_count(), eps, normed)) {
    return ffi::Error::InvalidArgument(std::string("packed matmul: ") + error);
  }
  work->width = kPacked;
  work->ld = kPacked;
  work->panel_step = work->k * kPacked;
  return Run(pool, work);
}

// A Llama MLP's decode step in one call: y = (silu(x @ wg + bg) * (x @ wu + bu)) @ wd + bd. The gate and up
// columns are packed in pairs of half panels ([P, K, 48], panel p: gate columns [24 p, 24 p + 24) then the same
// up columns; pack_swiglu in cpu_matmul.py), so a panel's product yields 24 columns of h = silu(g) * u, made
// while its sums are in cache; the down product ([ceil(D / 48), 24 P, 48]) starts once every panel of h is
// done. One fork and join instead of two, and no trip of g, u and h through XLA ops between them.
constexpr int64_t kHalf = kPacked / 2;

struct Mlp {
  Work up, down;        // x @ [wg | wu] + b into gate_up [M, 48 P]; h [M, 24 P] @ wd + bd into y
  float* gate_up;       // both in the calling thread's scratch, in use until the call returns
  float* h;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t units;        // P panels of the first product, then the panels of the second
};

// silu(g) * u = g u / (1 + e^-g), with e^-|g| (Exp takes x <= 0) for either sign of g.
void Swiglu(const Mlp& w, int64_t p) {
  const int64_t cols = w.up.n, half_cols = w.down.k;
  for (int64_t m = 0; m < w.up.m; ++m) {
    const float* g = w.gate_up + m * cols + p * kPacked;
    float* h = w.h + m * half_cols + p * kHalf;
#pragma omp simd
    for (int64_t c = 0; c < kHalf; ++c) {
      const float e = Exp(-std::abs(g[c]));
      const float sigmoid = g[c] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
      h[c] = g[c] * sigmoid * g[kHalf + c];
    }
  }
}

// Unit u < P: panel u of the first product and its strip of h; then panel u - P of the second, which waits
// until every strip of h is written (the threads that reach it take the remaining first-product units first).
void MlpUnit(Mlp& w, int64_t u) {
  const int64_t panels = w.up.units;
  if (u < panels) {
    Panel(w.up, u);
    Swiglu(w, u);
    w.up.done.fetch_add(1, std::memory_order_release);
    return;
  }
  while (w.up.done.load(std::memory_order_acquire) < panels) std::this_thread::yield();
  Panel(w.down, u - panels);
}

// y = [r +] mlp(norm(x)); the norm (scale [K] and eps) and the residual r [..., D] are optional (empty buffers).
ffi::Error PackedSwiglu(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                        ffi::Buffer<ffi::F32> wgu, ffi::Buffer<ffi::F32> bgu, ffi::Buffer<ffi::F32> wd,
                        ffi::Buffer<ffi::F32> bd, ffi::Buffer<ffi::F32> residual, float eps,
                        ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto gd = wgu.dimensions();
  auto dd = wd.dimensions();
  if (gd.size() != 3 || gd[2] != kPacked || dd.size() != 3 || dd[2] != kPacked || xd.size() < 1 ||
      xd[xd.size() - 1] != gd[1] || bgu.dimensions().size() != 1 || bgu.dimensions()[0] != gd[0] * kPacked ||
      dd[1] != gd[0] * kHalf || bd.dimensions().size() != 1 || dd[0] != (bd.dimensions()[0] + kPacked - 1) / kPacked) {
    return ffi::Error::InvalidArgument(
        "packed swiglu: x [..., K], gate/up [P, K, 48], their bias [48 P], down [ceil(D / 48), 24 P, 48] and its "
        "bias [D] do not fit");
  }
  auto work = std::make_shared<Mlp>();
  Work& up = work->up;
  Work& down = work->down;
  up.k = gd[1]; up.n = gd[0] * kPacked;
  up.m = up.k > 0 ? static_cast<int64_t>(x.element_count()) / up.k
                  : static_cast<int64_t>(y->element_count()) / std::max<int64_t>(bd.dimensions()[0], 1);
  // Scratch of the calling thread, reused by its later calls (no allocation and first-touch page faults per
  // call); a helper that starts after the call returned finds no unit and does not touch it.
  thread_local std::vector<float> scratch, normed;
  scratch.resize(std::max<size_t>(scratch.size(), up.m * (up.n + dd[1])));
  work->gate_up = scratch.data();
  work->h = scratch.data() + up.m * up.n;
  up.w = wgu.typed_data(); up.b = bgu.typed_data(); up.y = work->gate_up;
  down.x = work->h; down.w = wd.typed_data(); down.b = bd.typed_data(); down.y = y->typed_data();
  down.m = up.m; down.k = dd[1]; down.n = bd.dimensions()[0];
  // The first product takes the norm, the second the residual.
  const char* error = Prologue(up, x.typed_data(), scale.typed_data(), scale.element_count(), nullptr, 0, eps, normed);
  if (error == nullptr) {
    error = Prologue(down, work->h, nullptr, 0, residual.typed_data(), residual.element_count(), eps, normed);
  }
  if (error != nullptr) return ffi::Error::InvalidArgument(std::string("packed swiglu: ") + error);
  for (Work* w : {&up, &down}) {
    w->width = w->ld = kPacked;
    w->panel_step = w->k * kPacked;
    w->units = (w->n + kPacked - 1) / kPacked;
  }
  work->units = up.units + down.units;
  if (up.m == 0 || work->units == 0) return ffi::Error::Success();
  Share<Mlp, MlpUnit>(pool, work);
  return ffi::Error::Success();
}

// y = x @ w.T with w [N, K] row-major (a tied LM head: the embedding table, one row per output column). Every
// row of w is contiguous, so a tile of kTileRows rows is one sequential stretch of memory; the tiles are shared
// between the threads and each is read once per step for all rows of x. A register block keeps 16 vector
// partial sums over the reduction (4 rows of w by 4 rows of x, or 16 rows of w by 1 row of x), then folds the
// 16 vectors into one vector of their 16 sums with 15 shuffle-adds (a horizontal sum per vector would cost
// more than the products at these sizes).
constexpr int64_t kTileRows = 32;  // rows of w per unit of work (a multiple of 16)

struct WorkNT {
  const float* x;
  const float* w;
  float* y;
  int64_t m, k, n, units;  // units: tiles of kTileRows rows of w
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// y[m0 + c, n0 + r] for r < R, c < C, R * C == 16 (K a multiple of 16; Scalar-free: see RowNT for the rest).
template <int R, int C>
void BlockNT(const WorkNT& w, int64_t n0, int64_t m0) {
  static_assert(R * C == 16, "a register block holds 16 partial sums");
  v16 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = v16{};
  const int64_t k = w.k;
  const float* wr = w.w + n0 * k;
  const float* xr = w.x + m0 * k;
  if (C == 1) {  // one row of x: w's rows one after the other (sequential reads; the chains still overlap)
    for (int r = 0; r < R; ++r)
      for (int64_t i = 0; i < k; i += kLanes) acc[r] += Load(wr + r * k + i) * Load(xr + i);
  } else {
    // The first block of x rows also fetches the next R rows of w (one cache line each per step), so that
    // memory is read while this block computes.
    const float* ahead = m0 == 0 ? wr + R * k : nullptr;
    for (int64_t i = 0; i < k; i += kLanes) {
      v16 wv[R], xv[C];
      if (ahead != nullptr)
        for (int r = 0; r < R; ++r) __builtin_prefetch(ahead + r * k + i);
      for (int r = 0; r < R; ++r) wv[r] = Load(wr + r * k + i);
      for (int c = 0; c < C; ++c) xv[c] = Load(xr + c * k + i);
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r * C + c] += wv[r] * xv[c];
    }
  }
  const v16 sums = Reduce16(acc);
  for (int lane = 0; lane < 16; ++lane) {
    const int j = Reverse4(lane), r = j / C, c = j % C;
    w.y[(m0 + c) * w.n + n0 + r] = sums[lane];
  }
}

// One row of w against every row of x, any K (the rows left over when N is not a multiple of 16, or K is not
// one of 16).
void RowNT(const WorkNT& w, int64_t n) {
  const float* wr = w.w + n * w.k;
  for (int64_t m = 0; m < w.m; ++m) {
    const float* xr = w.x + m * w.k;
    float s = 0.0f;
    for (int64_t i = 0; i < w.k; ++i) s += wr[i] * xr[i];
    w.y[m * w.n + n] = s;
  }
}

void TileNT(WorkNT& w, int64_t t) {
  const int64_t end = std::min(w.n, (t + 1) * kTileRows);
  int64_t n0 = t * kTileRows;
  if (w.k % kLanes == 0) {
    for (; n0 + 16 <= end; n0 += 16) {
      int64_t m0 = 0;
      for (; m0 + 4 <= w.m; m0 += 4)
        for (int64_t r = 0; r < 16; r += 4) BlockNT<4, 4>(w, n0 + r, m0);
      for (; m0 < w.m; ++m0) BlockNT<16, 1>(w, n0, m0);
    }
  }
  for (; n0 < end; ++n0) RowNT(w, n0);
}

ffi::Error SmallMatmulNT(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (wd.size() != 2 || xd.size() < 1 || xd[xd.size() - 1] != wd[1]) {
    return ffi::Error::InvalidArgument("small matmul (transposed): x [..., K] does not match w [N, K]");
  }
  auto work = std::make_shared<WorkNT>();
  work->x = x.typed_data(); work->w = w.typed_data(); work->y = y->typed_data();
  work->n = wd[0]; work->k = wd[1];
  work->m = work->k > 0 ? static_cast<int64_t>(x.element_count()) / work->k
                        : static_cast<int64_t>(y->element_count()) / std::max<int64_t>(work->n, 1);
  work->units = (work->n + kTileRows - 1) / kTileRows;
  if (work->k == 0 || work->n == 0) {  // an empty sum: zeros
    std::memset(work->y, 0, static_cast<size_t>(y->element_count()) * sizeof(float));
    return ffi::Error::Success();
  }
  Share<WorkNT, TileNT>(pool, work);
  return ffi::Error::Success();
}

}  // namespace

#define TEXTBOOKS_F32 .Arg<ffi::Buffer<ffi::F32>>()

// x, w -> y; x, w, b -> y; x, norm scale, w, b, residual -> y; x, norm scale, gate/up, bias, down, bias,
// residual -> y (the optional parts as empty buffers).
XLA_FFI_DEFINE_HANDLER_SYMBOL(TextbooksSmallMatmulNT, SmallMatmulNT,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() TEXTBOOKS_F32 TEXTBOOKS_F32
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(TextbooksSmallMatmul, SmallMatmul,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() TEXTBOOKS_F32 TEXTBOOKS_F32 TEXTBOOKS_F32
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(TextbooksPackedMatmul, PackedMatmul,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() TEXTBOOKS_F32 TEXTBOOKS_F32 TEXTBOOKS_F32
                                  TEXTBOOKS_F32 TEXTBOOKS_F32.Attr<float>("eps").Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(TextbooksPackedSwiglu, PackedSwiglu,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() TEXTBOOKS_F32 TEXTBOOKS_F32 TEXTBOOKS_F32
                                  TEXTBOOKS_F32 TEXTBOOKS_F32 TEXTBOOKS_F32 TEXTBOOKS_F32
                                  .Attr<float>("eps").Ret<ffi::Buffer<ffi::F32>>());
