// AVX2 binary conv: 8 output channels per ymm. AVX2 has no vector popcount, so each byte of
// x ^ w is counted with two 16-entry table lookups (VPSHUFB on its low and high nibble), the
// byte counts are summed for up to 31 words (31 * 8 = 248 fits a byte) and only then widened to
// the 32-bit lane of their channel (VPMADDUBSW + VPMADDWD by ones): 8 instructions per 256 bits
// in the inner loop. 4 pixels x 2 vectors per register block.
#include <immintrin.h>
#include <stdint.h>

#include "binconv.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace {

struct Isa {
  using Vec = __m256i;
  using Cnt = __m256i;  // per-byte counts
  static constexpr int kLanes = 8;
  static constexpr int kPixels = 4;
  static constexpr int kChunk = 31;
  static inline Vec Load(const uint32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static inline Vec Bcast(uint32_t x) { return _mm256_set1_epi32(static_cast<int>(x)); }
  static inline Cnt Zero() { return _mm256_setzero_si256(); }
  static inline Cnt Accum(Cnt c, Vec x, Vec w) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i v = _mm256_xor_si256(x, w);
    const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
    const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_add_epi8(c, _mm256_add_epi8(lo, hi));
  }
  static inline void Flush(Cnt c, int32_t* acc) {
    const __m256i pairs = _mm256_maddubs_epi16(c, _mm256_set1_epi8(1));
    const __m256i lanes = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
    __m256i* a = reinterpret_cast<__m256i*>(acc);
    _mm256_storeu_si256(a, _mm256_add_epi32(_mm256_loadu_si256(a), lanes));
  }
};

#include "binconv_impl.h"

}  // namespace

namespace xla_ext {
const BinconvKernel kBinconvAvx2 = {"avx2", Isa::kPixels, &Run};
}  // namespace xla_ext

#pragma GCC pop_options
