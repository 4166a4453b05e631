// Bit-packed binary convolution: the interface between the FFI handler (binconv_ffi.cc) and the
// per-instruction-set kernels (binconv_generic.cc, binconv_avx2.cc, binconv_avx512.cc).
//
// Values in {-1, +1} are stored one bit each, bit 1 = -1 (the float sign bit), 32 channels per
// uint32 word, channel c in bit c % 32 of word c / 32; the bits past the last channel are 0 in
// both the activations and the weights, so they never count. Over the k = c_in channels of one
// tap the dot product of two such vectors is
//
//   sum_c x_c w_c = k - 2 * popcount(x XOR w)
//
// (each disagreeing pair contributes -1 instead of +1). A 3x3 conv with padding 1 sums this over
// the taps that fall inside the image only: the official models pad the *binarized* input with
// zeros, so a padded tap contributes 0, not +-1. The kernel XORs padded taps with a row of zero
// words (no branch in the inner loop), which adds popcount(w_tap) to the count, and subtracts
// it again per border pixel ("wpop", precomputed per tap and output channel):
//
//   acc[p, o] = sum_{t valid at p} (k - 2 popcount(x[p + t] XOR w[t, o]))
//
// exactly, as an int32. The float32 epilogue of a binary block follows in the same pass:
//
//   y = acc * alpha[o]                                 (the learnable scaling factor)
//   y = (y - bn_mean[o]) * bn_mul[o] + bn_beta[o]      (the following BatchNorm, if has_bn;
//                                                       bn_mul = gamma / sqrt(var + eps))
//   y = y + residual[p, o]                             (the Bi-Real shortcut, if present)
//   y = act(y)                                         (none | hardtanh | PReLU(slope[o]))
//
// Layouts: x [batch, h, w, cw] (NHWC, cw = ceil(c_in / 32) words per pixel); weights
// [taps * cw, co_pad] (word-major: the words of tap t, word j for every output channel are
// contiguous, so one vector load feeds 8 or 16 output channels), taps = ksize^2 in row-major
// (dy, dx) order, co_pad = c_out rounded up to 16 (the padded channels are computed, never
// stored); wpop [taps, co_pad] int32; y and residual [batch, ho, wo, c_out] float32.
//
// Plain C types only: the ISA translation units are compiled with different target options and
// must not share inline functions (the linker would keep one copy for every caller).
#ifndef XLA_EXT_BINCONV_H_
#define XLA_EXT_BINCONV_H_

#include <stdint.h>

namespace xla_ext {

enum BinconvActivation : int32_t {
  kBinconvActNone = 0,
  kBinconvActHardtanh = 1,
  kBinconvActPrelu = 2,
};

// Output channels are padded to a multiple of this in the weight layout.
constexpr int64_t kBinconvChannelPad = 16;

struct BinconvProblem {
  const uint32_t* x;        // [batch, h, w, cw]
  const uint32_t* w;        // [taps * cw, co_pad]
  const int32_t* wpop;      // [taps, co_pad]
  const uint32_t* zeros;    // [cw] zero words: the input of a padded tap
  const float* alpha;       // [c_out]
  const float* bn_mean;     // [c_out] or null (no BatchNorm in the epilogue)
  const float* bn_mul;      // [c_out] or null
  const float* bn_beta;     // [c_out] or null
  const float* residual;    // [batch, ho, wo, c_out] or null
  const float* slope;       // [c_out] (PReLU) or null
  float* y;                 // [batch, ho, wo, c_out]
  int64_t batch, height, width, cw, c_in, c_out, co_pad, ksize, stride, ho, wo;
  int32_t activation;       // BinconvActivation
};

// One kernel per instruction set. `run` computes the output pixels of tiles
// [tile_begin, tile_end) (a tile is `tile_pixels` consecutive pixels of the flattened
// [batch, ho, wo] output; the last may be partial) for the output channels
// [co_begin, co_end) (multiples of kBinconvChannelPad, co_end <= co_pad).
struct BinconvKernel {
  const char* name;
  int64_t tile_pixels;
  void (*run)(const BinconvProblem& problem, int64_t tile_begin, int64_t tile_end,
              int64_t co_begin, int64_t co_end);
};

extern const BinconvKernel kBinconvGeneric;
extern const BinconvKernel kBinconvAvx2;
extern const BinconvKernel kBinconvAvx512;

}  // namespace xla_ext

#endif  // XLA_EXT_BINCONV_H_
