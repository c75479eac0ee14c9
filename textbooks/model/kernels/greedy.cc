// Greedy next tokens of a decode step (argmax over each row of logits), for XLA:CPU through the XLA FFI.
//
// XLA:CPU reduces a [rows, vocab] array row by row on one thread without wide vectors: on SmolLM2's 49,152
// logits at 16 rows that takes about as long as a twentieth of the step. This handler takes the maximum of a
// row with vector compares (16 lanes; a NaN anywhere makes the row's answer its first NaN, as jnp.argmax
// does), then scans for the first position holding it; the row is still in cache from the first pass.
//
// Layouts: logits [..., V] float32; tokens [...] int32 (the first index of each row's maximum).
#include <cstdint>
#include <cstring>

#include "vector16.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace textbooks_kernels;  // v16 (16 floats: one AVX-512 register, two AVX2 ones), Load, ...

// The first index of the maximum of x[0, n); of the first NaN when x holds one.
int32_t RowArgmax(const float* x, int64_t n) {
  constexpr int64_t kStep = 4 * kLanes;  // four independent maxima per step (a compare's latency is 4 cycles)
  int64_t i = 0;
  float best = x[0];
  bool nan = false;
  if (n >= kStep) {
    v16 m[4];
    i16v unordered = {};
    for (int a = 0; a < 4; ++a) m[a] = Load(x + a * kLanes);
    for (; i + kStep <= n; i += kStep)
      for (int a = 0; a < 4; ++a) {
        const v16 v = Load(x + i + a * kLanes);
        unordered |= v != v;
        m[a] = v > m[a] ? v : m[a];
      }
    for (int a = 0; a < 4; ++a)
      for (int l = 0; l < kLanes; ++l) {
        nan |= unordered[l] != 0;
        best = m[a][l] > best ? m[a][l] : best;
      }
  }
  for (; i < n; ++i) {
    nan |= x[i] != x[i];
    best = x[i] > best ? x[i] : best;
  }
  int64_t j = 0;
  if (!nan) {  // skip 16 at a time to the first stretch holding the maximum
    const v16 target = v16{} + best;
    for (; j + kLanes <= n; j += kLanes) {
      const i16v hit = Load(x + j) == target;
      bool any = false;
      for (int l = 0; l < kLanes; ++l) any |= hit[l] != 0;
      if (any) break;
    }
  }
  for (; j < n; ++j)
    if (nan ? x[j] != x[j] : x[j] == best) return static_cast<int32_t>(j);
  return 0;  // unreachable: the maximum is one of the row's values
}

ffi::Error Greedy(ffi::Buffer<ffi::F32> logits, ffi::ResultBuffer<ffi::S32> tokens) {
  auto d = logits.dimensions();
  if (d.size() < 1 || d[d.size() - 1] < 1 ||
      static_cast<int64_t>(tokens->element_count()) * d[d.size() - 1] != static_cast<int64_t>(logits.element_count())) {
    return ffi::Error::InvalidArgument("greedy tokens: logits must be [..., V] with V >= 1 and tokens [...]");
  }
  const int64_t vocab = d[d.size() - 1];
  const float* x = logits.typed_data();
  int32_t* out = tokens->typed_data();
  for (int64_t r = 0; r < static_cast<int64_t>(tokens->element_count()); ++r) out[r] = RowArgmax(x + r * vocab, vocab);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TextbooksGreedy, Greedy,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::S32>>());
