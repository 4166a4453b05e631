// 1xN block-sparse matmul: the interface between the FFI handler (bsmm_ffi.cc) and the
// per-instruction-set kernels (bsmm_generic.cc, bsmm_avx2.cc, bsmm_avx512.cc).
//
//   y[p, g*n + j] = sum_{t in [row_ptr[g], row_ptr[g+1])} x[p, col_idx[t]] * values[t, j]
//
// x is [rows, k] row-major (rows = pixels of an NHWC activation, or im2col patches), y is
// [rows, m] with m = groups * n. This is the BSR-by-output-block encoding of the 1xN paper
// (Lin et al., TPAMI 2022, Fig. 3): one kept segment = 1 input x N consecutive
// outputs, stored as N contiguous values.
//
// Plain C types only: the ISA translation units are compiled with different target options, so
// they must not instantiate any inline function or template that another unit also instantiates
// (the linker would keep one copy, possibly the AVX-512 one, for every caller).
#ifndef XLA_EXT_BSMM_H_
#define XLA_EXT_BSMM_H_

#include <stdint.h>

namespace xla_ext {

enum BsmmElemType : int32_t { kBsmmF32 = 0, kBsmmBF16 = 1 };

struct BsmmProblem {
  const int32_t* row_ptr;  // [groups + 1], row_ptr[0] == 0, non-decreasing
  const int32_t* col_idx;  // [nnzb], each in [0, k)
  const float* values;     // [nnzb, n]
  const void* x;           // [rows, k], element type x_type
  void* y;                 // [rows, groups * n], element type y_type
  int64_t rows;
  int64_t k;
  int64_t groups;
  int64_t n;
  int32_t x_type;          // BsmmElemType
  int32_t y_type;          // BsmmElemType
};

// One kernel per instruction set. A kernel computes the output rows of row tiles
// [tile_begin, tile_end) for output groups [group_begin, group_end). A row tile is
// `tile_rows` consecutive rows of x; the last tile may be partial.
//
// `workspace` must hold BsmmWorkspaceFloats(k, n, tile_rows) floats, 64-byte aligned: the
// transposed, zero-padded panel [k][tile_rows] of one row tile of x (BsmmPanelFloats), then a
// staging slab [tile_rows][BsmmStagingStride(n)] for the outputs of BsmmSlabGroups(n) groups.
struct BsmmKernel {
  const char* name;
  int64_t tile_rows;
  void (*run)(const BsmmProblem& problem, int64_t tile_begin, int64_t tile_end,
              int64_t group_begin, int64_t group_end, float* workspace);
};

int64_t BsmmPanelFloats(int64_t k, int64_t tile_rows);
int64_t BsmmSlabGroups(int64_t n);
int64_t BsmmStagingStride(int64_t n);
int64_t BsmmWorkspaceFloats(int64_t k, int64_t n, int64_t tile_rows);

extern const BsmmKernel kBsmmGeneric;
extern const BsmmKernel kBsmmAvx2;
extern const BsmmKernel kBsmmAvx512;

// Channels-first variant with a fused epilogue (float32 only):
//
//   y[b, g*n + j, p] = act(sum_t values[t, j] * x[b, col_idx[t], p] + bias[g*n + j]
//                          + residual[b, g*n + j, p])
//
// x is [batch, k, pixels] and y, residual are [batch, groups * n, pixels] (NCHW with H*W
// flattened). Pixels are already the contiguous axis, so no operand is transposed and the
// inputs of pruned-away channels are never read. bias and residual may be null.
enum BsmmActivation : int32_t { kBsmmActNone = 0, kBsmmActRelu = 1, kBsmmActRelu6 = 2 };

struct BsmmCfProblem {
  const int32_t* row_ptr;  // [groups + 1]
  const int32_t* col_idx;  // [nnzb]
  const float* values;     // [nnzb, n]
  const float* x;          // [batch, k, pixels]
  const float* bias;       // [groups * n] or null
  const float* residual;   // [batch, groups * n, pixels] or null
  float* y;                // [batch, groups * n, pixels]
  int64_t batch;
  int64_t k;
  int64_t pixels;
  int64_t groups;
  int64_t n;
  int32_t activation;      // BsmmActivation
};

// Tiles are runs of at most `tile_pixels` consecutive pixels of one image, numbered image-major,
// ceil(pixels / tile_pixels) per image, of near-equal size. No workspace is used (the argument
// keeps the signature of BsmmKernel::run; it may be null).
struct BsmmCfKernel {
  const char* name;
  int64_t tile_pixels;
  void (*run)(const BsmmCfProblem& problem, int64_t tile_begin, int64_t tile_end,
              int64_t group_begin, int64_t group_end, float* workspace);
};

extern const BsmmCfKernel kBsmmCfGeneric;
extern const BsmmCfKernel kBsmmCfAvx2;
extern const BsmmCfKernel kBsmmCfAvx512;

}  // namespace xla_ext

#endif  // XLA_EXT_BSMM_H_
