// 3x3 depthwise convolution on the channels-first layout: the interface between the FFI handler
// (bsmm_ffi.cc, op "depthwise3x3_cf") and the per-instruction-set kernels, which include
// depthwise3x3_impl.h. Plain C types only, for the reason given in bsmm.h.
#ifndef XLA_EXT_DEPTHWISE3X3_H_
#define XLA_EXT_DEPTHWISE3X3_H_

#include <stdint.h>

#include "bsmm.h"  // BsmmActivation, shared with the channels-first matmul epilogue

namespace xla_ext {

// 3x3 depthwise conv, padding 1, stride 1 or 2, channels-first "padded-width" layout (the
// activations of onexn.channels_first): a plane of h x w pixels is h rows of w + 2 floats, the
// last 2 of each row junk (ignored on input, written as 0 on output).
//
//   y[b, c, o] = act(bias[c] + sum_{dy, dx} kernel[c, dy*3 + dx] * x[b, c, in(o, dy, dx)])
struct Depthwise3x3Problem {
  const float* x;       // [batch, channels, h * (w + 2)]
  const float* kernel;  // [channels, 9]
  const float* bias;    // [channels]
  float* y;             // [batch, channels, ho * (wo + 2)]
  int64_t batch, channels, h, w, ho, wo, stride;
  int32_t activation;   // BsmmActivation
};

// `run` computes planes (b * channels + c) [tile_begin, tile_end) (the group range is unused);
// workspace: `workspace_floats(h, w, stride)` floats, 64-byte aligned.
struct Depthwise3x3Kernel {
  const char* name;
  void (*run)(const Depthwise3x3Problem& problem, int64_t tile_begin, int64_t tile_end,
              int64_t group_begin, int64_t group_end, float* workspace);
  int64_t (*workspace_floats)(int64_t h, int64_t w, int64_t stride);
};

extern const Depthwise3x3Kernel kDepthwise3x3Generic;
extern const Depthwise3x3Kernel kDepthwise3x3Avx2;
extern const Depthwise3x3Kernel kDepthwise3x3Avx512;

}  // namespace xla_ext

#endif  // XLA_EXT_DEPTHWISE3X3_H_
