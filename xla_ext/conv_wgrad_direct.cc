// XLA FFI CPU custom call "xla_ext_conv_wgrad_direct": a hand-written AVX-512 weight gradient of a
// stride-1 NHWC convolution, the baseline that oneDNN's `convolution_backward_weights` was
// measured against before choosing it for the CPU path (xla_ext/README.md, "Training
// convolutions"). It is kept for that comparison (`python -m common.bench --layers`) and is not
// used by the conv layers.
//
//   dw[i, j, ci, co] = sum_{b, o, p} x[b, o + i - pt, p + j - pl, ci] * dy[b, o, p, co]
//
// Operands x f32[B, H, W, Ci], dy f32[B, Ho, Wo, Co]; result dw f32[kh, kw, Ci, Co]; attributes
// kh, kw, pad_top, pad_left (stride 1, groups 1; rows and columns outside x are zeros),
// num_threads (0 = all threads of XLA's intra-op pool).
//
// Algorithm: per image (its x and dy, 2 x 64 KiB at 32x32x16, stay in L2), per tap (i, j), per
// output vector of 16 channels co and block of up to 16 input channels ci, 16 zmm accumulators
// run over the valid pixels: one dy load and 16 broadcast-FMAs per pixel. Images are split over
// the threads, each summing into its own dw; the caller adds the partial sums in a fixed order.
#include <immintrin.h>
#include <stdint.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct WgradProblem {
  const float* x;
  const float* dy;
  int64_t h, w, ci, ho, wo, co, kh, kw, pt, pl;
};

__attribute__((target("avx512f"))) void WgradImages(const WgradProblem& pr, int64_t b0,
                                                      int64_t b1, float* dw) {
  const int64_t ci_n = pr.ci, co_n = pr.co;
  for (int64_t b = b0; b < b1; ++b) {
    const float* xb = pr.x + b * pr.h * pr.w * ci_n;
    const float* dyb = pr.dy + b * pr.ho * pr.wo * co_n;
    for (int64_t i = 0; i < pr.kh; ++i) {
      const int64_t o0 = std::max<int64_t>(0, pr.pt - i);
      const int64_t o1 = std::min<int64_t>(pr.ho, pr.h + pr.pt - i);
      for (int64_t j = 0; j < pr.kw; ++j) {
        const int64_t p0 = std::max<int64_t>(0, pr.pl - j);
        const int64_t p1 = std::min<int64_t>(pr.wo, pr.w + pr.pl - j);
        float* dwt = dw + (i * pr.kw + j) * ci_n * co_n;
        for (int64_t c0 = 0; c0 < co_n; c0 += 16) {
          const __mmask16 m = co_n - c0 >= 16 ? 0xFFFF : (__mmask16)((1u << (co_n - c0)) - 1);
          for (int64_t k0 = 0; k0 < ci_n; k0 += 16) {
            const int64_t kn = std::min<int64_t>(16, ci_n - k0);
            __m512 acc[16];
            for (int64_t k = 0; k < 16; ++k) acc[k] = _mm512_setzero_ps();
            for (int64_t o = o0; o < o1; ++o) {
              const float* xr = xb + ((o + i - pr.pt) * pr.w + (p0 + j - pr.pl)) * ci_n + k0;
              const float* dr = dyb + (o * pr.wo + p0) * co_n + c0;
              for (int64_t p = p0; p < p1; ++p, xr += ci_n, dr += co_n) {
                const __m512 d = _mm512_maskz_loadu_ps(m, dr);
                if (kn == 16) {
#pragma GCC unroll 16
                  for (int k = 0; k < 16; ++k)
                    acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(xr[k]), d, acc[k]);
                } else {
                  for (int64_t k = 0; k < kn; ++k)
                    acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(xr[k]), d, acc[k]);
                }
              }
            }
            for (int64_t k = 0; k < kn; ++k) {
              float* out = dwt + (k0 + k) * co_n + c0;
              _mm512_mask_storeu_ps(out, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, out), acc[k]));
            }
          }
        }
      }
    }
  }
}

struct Shared {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

ffi::Error ConvWgradDirectImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                               int64_t kh, int64_t kw, int64_t pt, int64_t pl,
                               int64_t num_threads) {
  auto xd = x.dimensions(), yd = dy.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || wd.size() != 4 || wd[0] != kh || wd[1] != kw ||
      wd[2] != xd[3] || wd[3] != yd[3] || xd[0] != yd[0])
    return ffi::Error::InvalidArgument("conv_wgrad_direct: expected x [B, H, W, Ci], dy [B, Ho, "
                                       "Wo, Co], dw [kh, kw, Ci, Co]");
  if (!__builtin_cpu_supports("avx512f"))
    return ffi::Error::InvalidArgument("conv_wgrad_direct: this CPU has no AVX-512");
  const WgradProblem pr{x.typed_data(), dy.typed_data(), xd[1], xd[2], xd[3], yd[1],
                        yd[2],          yd[3],           kh,    kw,    pt,    pl};
  const int64_t batch = xd[0], size = kh * kw * xd[3] * yd[3];
  const int64_t all = std::max<int64_t>(1, pool.num_threads());
  const int64_t threads =
      std::max<int64_t>(1, std::min<int64_t>(batch, num_threads > 0 ? num_threads : all));
  auto partial = std::make_shared<std::vector<float>>(threads * size, 0.0f);
  auto shared = std::make_shared<Shared>();
  auto work = [pr, batch, threads, size, partial, shared]() {
    for (int64_t t; (t = shared->next.fetch_add(1)) < threads;) {
      WgradImages(pr, batch * t / threads, batch * (t + 1) / threads, partial->data() + t * size);
      shared->done.fetch_add(1);
    }
  };
  for (int64_t t = 1; t < threads; ++t) pool.Schedule(decltype(work)(work));  // an rvalue copy
  work();
  while (shared->done.load() < threads) {
  }
  float* out = dw->typed_data();
  std::copy(partial->begin(), partial->begin() + size, out);
  for (int64_t t = 1; t < threads; ++t)
    for (int64_t k = 0; k < size; ++k) out[k] += (*partial)[t * size + k];
  return ffi::Error::Success();
}

}  // namespace

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* XlaExtConvWgradDirect(
    XLA_FFI_CallFrame* call_frame);
XLA_FFI_DEFINE_HANDLER_SYMBOL(XlaExtConvWgradDirect, ConvWgradDirectImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [B, H, W, Ci]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy [B, Ho, Wo, Co]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dw [kh, kw, Ci, Co]
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("num_threads"));
