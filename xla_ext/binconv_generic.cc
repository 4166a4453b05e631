// Portable C++ binary conv: 8 output channels per "vector" of plain uint32 lanes, popcount by
// the SWAR bit-slicing identity (no popcnt instruction assumed), 4 pixels per register block.
// The reference the SIMD paths are tested against, and the path for CPUs without AVX2.
#include <stdint.h>

#include "binconv.h"

namespace {

struct Lanes {
  uint32_t v[8];
};

struct Isa {
  using Vec = Lanes;
  using Cnt = Lanes;
  static constexpr int kLanes = 8;
  static constexpr int kPixels = 4;
  static constexpr int kChunk = 0;
  static inline Vec Load(const uint32_t* p) {
    Lanes r;
    for (int i = 0; i < 8; ++i) r.v[i] = p[i];
    return r;
  }
  static inline Vec Bcast(uint32_t x) {
    Lanes r;
    for (int i = 0; i < 8; ++i) r.v[i] = x;
    return r;
  }
  static inline Cnt Zero() { return Bcast(0); }
  static inline uint32_t Popcount(uint32_t v) {
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0f0f0f0fu;
    return (v * 0x01010101u) >> 24;
  }
  static inline Cnt Accum(Cnt c, Vec x, Vec w) {
    for (int i = 0; i < 8; ++i) c.v[i] += Popcount(x.v[i] ^ w.v[i]);
    return c;
  }
  static inline void Flush(Cnt c, int32_t* acc) {
    for (int i = 0; i < 8; ++i) acc[i] += static_cast<int32_t>(c.v[i]);
  }
};

// The epilogue's 8-float vector type is wider than this unit's SSE2 registers: GCC notes that
// passing it by value would change the ABI, which cannot matter for functions inlined within
// this translation unit's anonymous namespace.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#include "binconv_impl.h"
#pragma GCC diagnostic pop

}  // namespace

namespace xla_ext {
const BinconvKernel kBinconvGeneric = {"generic", Isa::kPixels, &Run};
}  // namespace xla_ext
