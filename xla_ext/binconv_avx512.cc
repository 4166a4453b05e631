// AVX-512 binary conv: 16 output channels per zmm, VPOPCNTD (AVX512_VPOPCNTDQ) counts each
// lane's 32 XORed bits in one instruction; 8 pixels x 2 vectors = 16 zmm counters per register
// block. Chosen at run time when the CPU has avx512f + avx512vpopcntdq (binconv_ffi.cc).
#include <immintrin.h>
#include <stdint.h>

#include "binconv.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vpopcntdq,avx2,fma")

namespace {

struct Isa {
  using Vec = __m512i;
  using Cnt = __m512i;
  static constexpr int kLanes = 16;
  static constexpr int kPixels = 8;
  static constexpr int kChunk = 0;  // 32-bit counters: no overflow for any patch that fits
  static inline Vec Load(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static inline Vec Bcast(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
  static inline Cnt Zero() { return _mm512_setzero_si512(); }
  static inline Cnt Accum(Cnt c, Vec x, Vec w) {
    return _mm512_add_epi32(c, _mm512_popcnt_epi32(_mm512_xor_si512(x, w)));
  }
  static inline void Flush(Cnt c, int32_t* acc) {
    _mm512_storeu_si512(acc, _mm512_add_epi32(_mm512_loadu_si512(acc), c));
  }
};

#include "binconv_impl.h"

}  // namespace

namespace xla_ext {
const BinconvKernel kBinconvAvx512 = {"avx512", Isa::kPixels, &Run};
}  // namespace xla_ext

#pragma GCC pop_options
