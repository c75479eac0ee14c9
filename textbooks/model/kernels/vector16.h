// 16-float vectors for the decode kernels: loads and stores at any alignment, the sums of 16 vectors at once, and
// an exponential that vectorizes.
//
// A v16 is one AVX-512 register (two AVX2 ones; the build targets the machine it runs on). Reduce16 folds 16
// vectors of partial sums into one vector of their 16 sums with 15 shuffle-adds, where 16 horizontal sums would
// cost more than the products that made them at decode sizes.
#ifndef TEXTBOOKS_KERNELS_VECTOR16_H_
#define TEXTBOOKS_KERNELS_VECTOR16_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace textbooks_kernels {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16v __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

inline v16 Load(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void Store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

// out[i] = a[i] + a[i ^ h] where bit h of i is clear, b[i] + b[i ^ h] where it is set.
template <int H>
inline v16 Fold(v16 a, v16 b) {
  const i16v same = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  i16v lane = same, pick = (same & H) != 0;  // pick: -1 where bit H is set
  const i16v first = lane + (pick & 16);
  const i16v second = (lane ^ H) + (pick & 16);
  return __builtin_shuffle(a, b, first) + __builtin_shuffle(a, b, second);
}

// The 16 sums of acc[0..15]; the sum of acc[j] lands in lane Reverse4(j) (the 4-bit reversal of j).
inline v16 Reduce16(const v16* acc) {
  v16 l1[8], l2[4], l3[2];
  for (int j = 0; j < 8; ++j) l1[j] = Fold<8>(acc[2 * j], acc[2 * j + 1]);
  for (int j = 0; j < 4; ++j) l2[j] = Fold<4>(l1[2 * j], l1[2 * j + 1]);
  for (int j = 0; j < 2; ++j) l3[j] = Fold<2>(l2[2 * j], l2[2 * j + 1]);
  return Fold<1>(l3[0], l3[1]);
}

constexpr int Reverse4(int j) { return ((j & 1) << 3) | ((j & 2) << 1) | ((j & 4) >> 1) | ((j & 8) >> 3); }

// e^x for x <= 0 (attention scores less their maximum; minus the magnitude of a SwiGLU gate) in plain
// arithmetic, so that a loop of them vectorizes (the library's exp is a call per element): x = k ln 2 + r with
// k an integer and |r| <= ln(2) / 2, e^r by Cephes' degree-6 polynomial (within 2 ulp of e^r), times 2^k built
// in the exponent bits. Below -87 it returns about 1e-38 where e^x is smaller still: a weight that vanishes
// beside the maximum's 1 either way (and a sigmoid below 1e-38 that a float32 sum with anything of order 1
// cannot tell from 0).
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer

inline float Exp(float x) {
  x = std::max(x, -87.0f);
  const float k = (x * 1.44269504088896341f + kRound) - kRound;  // nearest integer (|k| <= 126)
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(k) + 127) << 23);
}

}  // namespace textbooks_kernels

#endif  // TEXTBOOKS_KERNELS_VECTOR16_H_
