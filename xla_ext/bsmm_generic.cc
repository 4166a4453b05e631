// Portable 1xN block-sparse matmul: plain C++ (the compiler may still use the baseline SSE2), for
// CPUs without AVX2/FMA. Chosen at run time by bsmm_ffi.cc. Also defines the workspace size.
#include <stdint.h>

#include "bsmm.h"
#include "depthwise3x3.h"

namespace xla_ext {

int64_t BsmmPanelFloats(int64_t k, int64_t tile_rows) { return (k > 0 ? k : 1) * tile_rows; }

// Output groups staged together: about 64 channels (4 cache lines per row).
int64_t BsmmSlabGroups(int64_t n) { return n >= 64 ? 1 : 64 / n; }

// Room for 4 columns past the slab (StoreBlock writes whole quads), rounded to whole cache lines,
// plus one line when needed so that the stride is an odd number of lines: the rows of a tile
// then fall into different L1 sets.
int64_t BsmmStagingStride(int64_t n) {
  const int64_t lines = (BsmmSlabGroups(n) * n + 4 + 15) / 16;
  return 16 * (lines % 2 == 1 ? lines : lines + 1);
}

int64_t BsmmWorkspaceFloats(int64_t k, int64_t n, int64_t tile_rows) {
  return BsmmPanelFloats(k, tile_rows) + tile_rows * BsmmStagingStride(n);
}

}  // namespace xla_ext

#pragma GCC push_options
// Keep short copy/fill loops inline: as memmove/memset calls their overhead rivals the FMAs.
#pragma GCC optimize("no-tree-loop-distribute-patterns")

namespace {

struct Isa {
  struct Vec {
    float v[8];
  };
  static constexpr int kLanes = 8;
  static constexpr int kVecs = 2;
  static constexpr int kTile = kLanes * kVecs;
  // Channels-first kernel (bsmm_cf_impl.h): 4 channels x kCfVecs vectors per register block.
  static constexpr int kCfVecs = 2;
  static constexpr bool kWide = false;

  static inline Vec Zero() { return Vec{}; }
  static inline Vec Load(const float* p) {
    Vec r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = p[i];
    return r;
  }
  static inline Vec Bcast(const float* p) {
    Vec r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = *p;
    return r;
  }
  static inline Vec Fma(const Vec& a, const Vec& b, const Vec& c) {
    Vec r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
  }
  static inline Vec LoadU(const float* p) { return Load(p); }
  static inline void StoreU(float* p, const Vec& a) {
    for (int i = 0; i < kLanes; ++i) p[i] = a.v[i];
  }
  static inline Vec Add(const Vec& a, const Vec& b) {
    Vec r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
  // As maxps / minps: the second operand when either is NaN.
  static inline Vec Max(const Vec& a, const Vec& b) {
    Vec r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
    return r;
  }
  static inline Vec Min(const Vec& a, const Vec& b) {
    Vec r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = a.v[i] < b.v[i] ? a.v[i] : b.v[i];
    return r;
  }
  // The first n < kLanes lanes; the others are neither read nor written.
  struct Mask {
    int n;
  };
  static inline Mask MakeMask(int n) { return Mask{n}; }
  static inline Vec LoadMasked(const float* p, Mask m) {
    Vec r{};
    for (int i = 0; i < m.n; ++i) r.v[i] = p[i];
    return r;
  }
  static inline void StoreMasked(float* p, const Vec& a, Mask m) {
    for (int i = 0; i < m.n; ++i) p[i] = a.v[i];
  }
  // src[0 .. 2*kLanes): even-indexed elements to *even, odd-indexed to *odd (lanes beyond n,
  // the count of valid src elements, read as 0).
  static inline void Deinterleave(const float* src, int n, Vec* even, Vec* odd) {
    for (int i = 0; i < kLanes; ++i) {
      even->v[i] = 2 * i < n ? src[2 * i] : 0.0f;
      odd->v[i] = 2 * i + 1 < n ? src[2 * i + 1] : 0.0f;
    }
  }
  static inline void StoreQuad(const Vec& a0, const Vec& a1, const Vec& a2, const Vec& a3,
                               float* dst, int64_t stride) {
    for (int i = 0; i < kLanes; ++i) {
      float* d = dst + i * stride;
      d[0] = a0.v[i];
      d[1] = a1.v[i];
      d[2] = a2.v[i];
      d[3] = a3.v[i];
    }
  }
  // Unused (kWide is false); defined so that the shared code compiles for every ISA.
  static inline void StoreOct(const Vec* a, float* dst, int64_t stride) {
    StoreQuad(a[0], a[1], a[2], a[3], dst, stride);
    StoreQuad(a[4], a[5], a[6], a[7], dst + 4, stride);
  }
  static inline void PackRowsF32(const float* x, int64_t k, int64_t valid, int64_t cols,
                                 float* panel) {
    for (int64_t c = 0; c < k; ++c)
      for (int64_t j = 0; j < cols; ++j) panel[c * kTile + j] = j < valid ? x[j * k + c] : 0.0f;
  }
};

}  // namespace

#include "bsmm_impl.h"
#include "bsmm_cf_impl.h"
#include "depthwise3x3_impl.h"

namespace xla_ext {
const BsmmKernel kBsmmGeneric = {"generic", Isa::kTile, &RunTiles};
const BsmmCfKernel kBsmmCfGeneric = {"generic", Isa::kCfVecs * Isa::kLanes, &RunTilesCf};
const Depthwise3x3Kernel kDepthwise3x3Generic = {"generic", &RunDepthwise3x3,
                                            &Depthwise3x3WorkspaceFloats};
}  // namespace xla_ext

#pragma GCC pop_options
