// AVX2 + FMA 1xN block-sparse matmul: 4 output channels x 24 pixels (12 ymm accumulators) per
// register block (12 accumulators + 3 pixel vectors + 1 broadcast = all 16 ymm registers). Compiled with a target pragma (not -mavx2) so that one build runs everywhere;
// bsmm_ffi.cc calls it only when __builtin_cpu_supports says the CPU has AVX2 and FMA.
#include <immintrin.h>
#include <stdint.h>

#include "bsmm.h"
#include "depthwise3x3.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
// Keep short copy/fill loops inline: as memmove/memset calls their overhead rivals the FMAs.
#pragma GCC optimize("no-tree-loop-distribute-patterns")

namespace {

#include "bsmm_avx_pack.h"

struct Isa {
  using Vec = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kVecs = 3;
  static constexpr int kTile = kLanes * kVecs;
  // Channels-first kernel (bsmm_cf_impl.h): 4 channels x kCfVecs vectors per register block.
  static constexpr int kCfVecs = 3;
  static constexpr bool kWide = false;

  static inline Vec Zero() { return _mm256_setzero_ps(); }
  static inline Vec Load(const float* p) { return _mm256_load_ps(p); }
  static inline Vec Bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static inline Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static inline Vec LoadU(const float* p) { return _mm256_loadu_ps(p); }
  static inline void StoreU(float* p, Vec a) { _mm256_storeu_ps(p, a); }
  static inline Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static inline Vec Max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
  static inline Vec Min(Vec a, Vec b) { return _mm256_min_ps(a, b); }
  // The first n < kLanes lanes; masked-off lanes are neither read nor written (no fault).
  using Mask = __m256i;
  static inline Mask MakeMask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline Vec LoadMasked(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static inline void StoreMasked(float* p, Vec a, Mask m) { _mm256_maskstore_ps(p, m, a); }
  // src[0 .. 2*kLanes): even-indexed elements to *even, odd-indexed to *odd (lanes beyond n,
  // the count of valid src elements, read as 0).
  static inline void Deinterleave(const float* src, int n, Vec* even, Vec* odd) {
    const __m256 a = n >= 8 ? _mm256_loadu_ps(src) : _mm256_maskload_ps(src, MakeMask(n));
    const __m256 b = n >= 16 ? _mm256_loadu_ps(src + 8)
                   : n <= 8 ? _mm256_setzero_ps() : _mm256_maskload_ps(src + 8, MakeMask(n - 8));
    // per 128-bit lane: [a0 a2 b0 b2 | a4 a6 b4 b6] -> 64-bit lanes (0, 2, 1, 3)
    const __m256 e = _mm256_shuffle_ps(a, b, 0x88), o = _mm256_shuffle_ps(a, b, 0xDD);
    *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8));
    *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8));
  }
  // Lane l of a0..a3 are the 4 channels of pixel l: transpose each 128-bit half as a 4x4 block.
  static inline void StoreQuad(Vec a0, Vec a1, Vec a2, Vec a3, float* dst, int64_t stride) {
    const __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
    const __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    _mm_storeu_ps(dst + 0 * stride, _mm256_castps256_ps128(u0));
    _mm_storeu_ps(dst + 1 * stride, _mm256_castps256_ps128(u1));
    _mm_storeu_ps(dst + 2 * stride, _mm256_castps256_ps128(u2));
    _mm_storeu_ps(dst + 3 * stride, _mm256_castps256_ps128(u3));
    _mm_storeu_ps(dst + 4 * stride, _mm256_extractf128_ps(u0, 1));
    _mm_storeu_ps(dst + 5 * stride, _mm256_extractf128_ps(u1, 1));
    _mm_storeu_ps(dst + 6 * stride, _mm256_extractf128_ps(u2, 1));
    _mm_storeu_ps(dst + 7 * stride, _mm256_extractf128_ps(u3, 1));
  }
  // Unused (kWide is false); defined so that the shared code compiles for every ISA.
  static inline void StoreOct(const Vec* a, float* dst, int64_t stride) {
    StoreQuad(a[0], a[1], a[2], a[3], dst, stride);
    StoreQuad(a[4], a[5], a[6], a[7], dst + 4, stride);
  }
  static inline void PackRowsF32(const float* x, int64_t k, int64_t valid, int64_t cols,
                                 float* panel) {
    PackRows8x8<kTile>(x, k, valid, cols, panel);
  }
};

}  // namespace

#include "bsmm_impl.h"
#include "bsmm_cf_impl.h"
#include "depthwise3x3_impl.h"

namespace xla_ext {
const BsmmKernel kBsmmAvx2 = {"avx2", Isa::kTile, &RunTiles};
const BsmmCfKernel kBsmmCfAvx2 = {"avx2", Isa::kCfVecs * Isa::kLanes, &RunTilesCf};
const Depthwise3x3Kernel kDepthwise3x3Avx2 = {"avx2", &RunDepthwise3x3,
                                            &Depthwise3x3WorkspaceFloats};
}  // namespace xla_ext

#pragma GCC pop_options
