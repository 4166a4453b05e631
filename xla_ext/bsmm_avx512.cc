// AVX-512 1xN block-sparse matmul: 8 output channels x 48 pixels (24 zmm accumulators + 3 pixel
// vectors + 1 broadcast of the 32 zmm registers) per register block. XLA's own dense dot uses 512-bit FMAs where the CPU has them, so the sparse
// kernel must too for the sparsity to turn into a speedup. Chosen at run time (bsmm_ffi.cc).
#include <immintrin.h>
#include <stdint.h>

#include "bsmm.h"
#include "depthwise3x3.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// Keep short copy/fill loops inline: as memmove/memset calls their overhead rivals the FMAs.
#pragma GCC optimize("no-tree-loop-distribute-patterns")

namespace {

#include "bsmm_avx_pack.h"

struct Isa {
  using Vec = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kVecs = 3;
  static constexpr int kTile = kLanes * kVecs;
  // Channels-first kernel (bsmm_cf_impl.h): 4 channels x kCfVecs vectors per register block.
  static constexpr int kCfVecs = 6;
  static constexpr bool kWide = true;

  static inline Vec Zero() { return _mm512_setzero_ps(); }
  static inline Vec Load(const float* p) { return _mm512_load_ps(p); }
  static inline Vec Bcast(const float* p) { return _mm512_set1_ps(*p); }
  static inline Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static inline Vec LoadU(const float* p) { return _mm512_loadu_ps(p); }
  static inline void StoreU(float* p, Vec a) { _mm512_storeu_ps(p, a); }
  static inline Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static inline Vec Max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
  static inline Vec Min(Vec a, Vec b) { return _mm512_min_ps(a, b); }
  // The first n < kLanes lanes; masked-off lanes are neither read nor written (no fault).
  using Mask = __mmask16;
  static inline Mask MakeMask(int n) { return static_cast<Mask>((1u << n) - 1u); }
  static inline Vec LoadMasked(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static inline void StoreMasked(float* p, Vec a, Mask m) { _mm512_mask_storeu_ps(p, m, a); }
  // src[0 .. 2*kLanes): even-indexed elements to *even, odd-indexed to *odd (lanes beyond n,
  // the count of valid src elements, read as 0).
  static inline void Deinterleave(const float* src, int n, Vec* even, Vec* odd) {
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __mmask16 m0 = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1u);
    const __mmask16 m1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : static_cast<__mmask16>((1u << (n - 16)) - 1u);
    const __m512 a = _mm512_maskz_loadu_ps(m0, src), b = _mm512_maskz_loadu_ps(m1, src + 16);
    *even = _mm512_permutex2var_ps(a, ie, b);
    *odd = _mm512_permutex2var_ps(a, io, b);
  }
  // Per 128-bit lane L, a 4x4 transpose leaves pixel 4L+i's 4 channels in lane L of u_i.
  static inline void StoreQuad(Vec a0, Vec a1, Vec a2, Vec a3, float* dst, int64_t stride) {
    const __m512 t0 = _mm512_unpacklo_ps(a0, a1), t1 = _mm512_unpackhi_ps(a0, a1);
    const __m512 t2 = _mm512_unpacklo_ps(a2, a3), t3 = _mm512_unpackhi_ps(a2, a3);
    const __m512 u0 = _mm512_shuffle_ps(t0, t2, 0x44), u1 = _mm512_shuffle_ps(t0, t2, 0xEE);
    const __m512 u2 = _mm512_shuffle_ps(t1, t3, 0x44), u3 = _mm512_shuffle_ps(t1, t3, 0xEE);
    _mm_storeu_ps(dst + 0 * stride, _mm512_castps512_ps128(u0));
    _mm_storeu_ps(dst + 1 * stride, _mm512_castps512_ps128(u1));
    _mm_storeu_ps(dst + 2 * stride, _mm512_castps512_ps128(u2));
    _mm_storeu_ps(dst + 3 * stride, _mm512_castps512_ps128(u3));
    _mm_storeu_ps(dst + 4 * stride, _mm512_extractf32x4_ps(u0, 1));
    _mm_storeu_ps(dst + 5 * stride, _mm512_extractf32x4_ps(u1, 1));
    _mm_storeu_ps(dst + 6 * stride, _mm512_extractf32x4_ps(u2, 1));
    _mm_storeu_ps(dst + 7 * stride, _mm512_extractf32x4_ps(u3, 1));
    _mm_storeu_ps(dst + 8 * stride, _mm512_extractf32x4_ps(u0, 2));
    _mm_storeu_ps(dst + 9 * stride, _mm512_extractf32x4_ps(u1, 2));
    _mm_storeu_ps(dst + 10 * stride, _mm512_extractf32x4_ps(u2, 2));
    _mm_storeu_ps(dst + 11 * stride, _mm512_extractf32x4_ps(u3, 2));
    _mm_storeu_ps(dst + 12 * stride, _mm512_extractf32x4_ps(u0, 3));
    _mm_storeu_ps(dst + 13 * stride, _mm512_extractf32x4_ps(u1, 3));
    _mm_storeu_ps(dst + 14 * stride, _mm512_extractf32x4_ps(u2, 3));
    _mm_storeu_ps(dst + 15 * stride, _mm512_extractf32x4_ps(u3, 3));
  }
  // Two 4x4-per-lane transposes give channels 0-3 (u) and 4-7 (v) of pixel 4L+i in lane L of
  // u_i / v_i; interleaving their lanes puts a pixel's 8 channels in one 256-bit half.
  static inline void StoreOct(const Vec* a, float* dst, int64_t stride) {
    const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i hi = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    __m512 u[4], v[4];
    Transpose4(a[0], a[1], a[2], a[3], u);
    Transpose4(a[4], a[5], a[6], a[7], v);
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const __m512 p01 = _mm512_permutex2var_ps(u[i], lo, v[i]);  // pixels i, 4+i
      const __m512 p23 = _mm512_permutex2var_ps(u[i], hi, v[i]);  // pixels 8+i, 12+i
      _mm256_storeu_ps(dst + i * stride, _mm512_castps512_ps256(p01));
      _mm256_storeu_ps(dst + (4 + i) * stride, Upper256(p01));
      _mm256_storeu_ps(dst + (8 + i) * stride, _mm512_castps512_ps256(p23));
      _mm256_storeu_ps(dst + (12 + i) * stride, Upper256(p23));
    }
  }
  // 16 full rows x 4 features per step: each zmm gathers 4 features of rows i, i+4, i+8, i+12
  // with one load and three masked 128-bit broadcast loads (blends, not shuffles), then one 4x4
  // transpose per 128-bit lane. That is 8 shuffles per 64 floats instead of the 24 of 8x8
  // transposes, which were the packing bottleneck (packing is half the time at p = 0.9).
  // Partial row blocks (the last tile) fall back to the 8x8 transposes with zero rows.
  static inline void PackRowsF32(const float* x, int64_t k, int64_t valid, int64_t cols,
                                 float* panel) {
    const int64_t k4 = k / 4 * 4;
    for (int64_t j0 = 0; j0 < cols; j0 += 16) {
      if (valid - j0 < 16) {
        PackRows8x8<kTile>(x + j0 * k, k, valid - j0, cols - j0, panel + j0);
        break;
      }
      const float* xr = x + j0 * k;
      float* p = panel + j0;
      for (int64_t c = 0; c < k4; c += 4) Transpose16x4(xr + c, k, p + c * kTile);
      for (int64_t c = k4; c < k; ++c)
        for (int64_t i = 0; i < 16; ++i) p[c * kTile + i] = xr[i * k + c];
    }
  }

 private:
  static inline __m512 LoadRowQuads(const float* a, int64_t stride) {
    __m512 v = _mm512_castps128_ps512(_mm_loadu_ps(a));
    v = _mm512_mask_broadcast_f32x4(v, 0x00F0, _mm_loadu_ps(a + 4 * stride));
    v = _mm512_mask_broadcast_f32x4(v, 0x0F00, _mm_loadu_ps(a + 8 * stride));
    return _mm512_mask_broadcast_f32x4(v, 0xF000, _mm_loadu_ps(a + 12 * stride));
  }
  // dst[c * kTile + i] = src[i * stride + c] for c < 4, i < 16.
  static inline void Transpose16x4(const float* src, int64_t stride, float* dst) {
    __m512 u[4];
    Transpose4(LoadRowQuads(src, stride), LoadRowQuads(src + stride, stride),
               LoadRowQuads(src + 2 * stride, stride), LoadRowQuads(src + 3 * stride, stride), u);
    _mm512_store_ps(dst, u[0]);
    _mm512_store_ps(dst + kTile, u[1]);
    _mm512_store_ps(dst + 2 * kTile, u[2]);
    _mm512_store_ps(dst + 3 * kTile, u[3]);
  }
  static inline void Transpose4(Vec a0, Vec a1, Vec a2, Vec a3, Vec* u) {
    const __m512 t0 = _mm512_unpacklo_ps(a0, a1), t1 = _mm512_unpackhi_ps(a0, a1);
    const __m512 t2 = _mm512_unpacklo_ps(a2, a3), t3 = _mm512_unpackhi_ps(a2, a3);
    u[0] = _mm512_shuffle_ps(t0, t2, 0x44);
    u[1] = _mm512_shuffle_ps(t0, t2, 0xEE);
    u[2] = _mm512_shuffle_ps(t1, t3, 0x44);
    u[3] = _mm512_shuffle_ps(t1, t3, 0xEE);
  }
  static inline __m256 Upper256(__m512 a) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
  }
};

}  // namespace

#include "bsmm_impl.h"
#include "bsmm_cf_impl.h"
#include "depthwise3x3_impl.h"

namespace xla_ext {
const BsmmKernel kBsmmAvx512 = {"avx512", Isa::kTile, &RunTiles};
const BsmmCfKernel kBsmmCfAvx512 = {"avx512", Isa::kCfVecs * Isa::kLanes, &RunTilesCf};
const Depthwise3x3Kernel kDepthwise3x3Avx512 = {"avx512", &RunDepthwise3x3,
                                            &Depthwise3x3WorkspaceFloats};
}  // namespace xla_ext

#pragma GCC pop_options
