// XLA FFI CPU custom call "xla_ext_binary_conv2d": the bit-packed binary convolution of
// binconv.h with its float32 epilogue,
//
//   y[p, o] = act(BN(alpha[o] * sum_{t valid at p} (c_in - 2 popcount(x[p + t] ^ w[t, o])))
//                 + residual[p, o])
//
// Operands: x u32[B, H, W, cw], w u32[taps * cw, co_pad], wpop s32[taps, co_pad],
// alpha f32[C], bn_mean / bn_mul / bn_beta f32[C] (or [0] without BatchNorm), slope f32[C] (or
// [0]), residual f32[B, Ho, Wo, C] (or [0]). Result: y f32[B, Ho, Wo, C].
// Attributes: c_in, ksize (1 | 3), stride (1 | 2), activation (0 none, 1 hardtanh, 2 PReLU),
// has_bn, has_residual (0/1), num_threads (0 = all of XLA's intra-op pool), isa (0 = best the CPU
// supports, 1 = portable, 2 = AVX2, 3 = AVX-512 with VPOPCNTDQ).
//
// The instruction set is picked at run time (__builtin_cpu_supports), so one build runs on any
// x86-64 CPU. Work items (tiles of output pixels x runs of output channels) are claimed
// dynamically by the calling thread and num_threads - 1 tasks on XLA's intra-op pool; the caller
// takes part, so the call completes even if the pool never runs the tasks. Every output is one
// integer count, so the result does not depend on the threading.
#include <stdint.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "binconv.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr char kOp[] = "binary_conv2d";
enum Isa : int64_t { kIsaAuto = 0, kIsaGeneric = 1, kIsaAvx2 = 2, kIsaAvx512 = 3 };

bool CpuSupports(int64_t isa) {
  switch (isa) {
    case kIsaGeneric:
      return true;
    case kIsaAvx2:
      return __builtin_cpu_supports("avx2");
    case kIsaAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
    default:
      return false;
  }
}

int64_t BestIsa() {
  if (CpuSupports(kIsaAvx512)) return kIsaAvx512;
  if (CpuSupports(kIsaAvx2)) return kIsaAvx2;
  return kIsaGeneric;
}

const xla_ext::BinconvKernel* KernelFor(int64_t isa) {
  switch (isa) {
    case kIsaGeneric:
      return &xla_ext::kBinconvGeneric;
    case kIsaAvx2:
      return &xla_ext::kBinconvAvx2;
    case kIsaAvx512:
      return &xla_ext::kBinconvAvx512;
    default:
      return nullptr;
  }
}

std::string Dims(ffi::Span<const int64_t> d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

ffi::Error Invalid(const std::string& what) {
  return ffi::Error::InvalidArgument(std::string(kOp) + ": " + what);
}

struct Shared {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

ffi::Error BinaryConv2dImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> x,
                            ffi::Buffer<ffi::U32> w, ffi::Buffer<ffi::S32> wpop,
                            ffi::Buffer<ffi::F32> alpha, ffi::Buffer<ffi::F32> bn_mean,
                            ffi::Buffer<ffi::F32> bn_mul, ffi::Buffer<ffi::F32> bn_beta,
                            ffi::Buffer<ffi::F32> slope, ffi::Buffer<ffi::F32> residual,
                            ffi::Result<ffi::Buffer<ffi::F32>> y, int64_t c_in, int64_t ksize,
                            int64_t stride, int64_t activation, int64_t has_bn,
                            int64_t has_residual, int64_t num_threads, int64_t isa) {
  const auto xd = x.dimensions(), wd = w.dimensions(), pd = wpop.dimensions();
  const auto yd = y->dimensions();
  if (ksize != 1 && ksize != 3) return Invalid("ksize must be 1 or 3; got " + std::to_string(ksize));
  if (stride != 1 && stride != 2) return Invalid("stride must be 1 or 2; got " + std::to_string(stride));
  if (xd.size() != 4 || yd.size() != 4)
    return Invalid("x and y must be [B, H, W, words] and [B, Ho, Wo, C]; got " + Dims(xd) +
                   " and " + Dims(yd));
  const int64_t batch = xd[0], h = xd[1], wdt = xd[2], cw = xd[3], c_out = yd[3];
  const int64_t taps = ksize * ksize, pad = (ksize - 1) / 2;
  const int64_t ho = (h + 2 * pad - ksize) / stride + 1, wo = (wdt + 2 * pad - ksize) / stride + 1;
  if (c_in < 1 || (c_in + 31) / 32 != cw)
    return Invalid("c_in = " + std::to_string(c_in) + " needs ceil(c_in / 32) words per pixel; x has " +
                   std::to_string(cw));
  if (yd[0] != batch || yd[1] != ho || yd[2] != wo)
    return Invalid("y must be [" + std::to_string(batch) + ", " + std::to_string(ho) + ", " +
                   std::to_string(wo) + ", C] for x " + Dims(xd) + "; got " + Dims(yd));
  const int64_t co_pad = (c_out + xla_ext::kBinconvChannelPad - 1) / xla_ext::kBinconvChannelPad *
                         xla_ext::kBinconvChannelPad;
  if (wd.size() != 2 || wd[0] != taps * cw || wd[1] != co_pad)
    return Invalid("w must be [taps * words, co_pad] = [" + std::to_string(taps * cw) + ", " +
                   std::to_string(co_pad) + "]; got " + Dims(wd));
  if (pd.size() != 2 || pd[0] != taps || pd[1] != co_pad)
    return Invalid("wpop must be [" + std::to_string(taps) + ", " + std::to_string(co_pad) +
                   "]; got " + Dims(pd));
  auto is_vec = [c_out](const ffi::Buffer<ffi::F32>& b) {
    return b.dimensions().size() == 1 && b.dimensions()[0] == c_out;
  };
  if (!is_vec(alpha)) return Invalid("alpha must be [" + std::to_string(c_out) + "]");
  if (has_bn && !(is_vec(bn_mean) && is_vec(bn_mul) && is_vec(bn_beta)))
    return Invalid("bn_mean, bn_mul, bn_beta must be [" + std::to_string(c_out) + "]");
  if (activation < xla_ext::kBinconvActNone || activation > xla_ext::kBinconvActPrelu)
    return Invalid("activation must be 0 (none), 1 (hardtanh) or 2 (prelu); got " +
                   std::to_string(activation));
  if (activation == xla_ext::kBinconvActPrelu && !is_vec(slope))
    return Invalid("slope must be [" + std::to_string(c_out) + "] for PReLU");
  if (has_residual && Dims(residual.dimensions()) != Dims(yd))
    return Invalid("residual must be " + Dims(yd) + "; got " + Dims(residual.dimensions()));
  if (isa == kIsaAuto) isa = BestIsa();
  const xla_ext::BinconvKernel* kernel = KernelFor(isa);
  if (kernel == nullptr)
    return Invalid("unknown isa " + std::to_string(isa) +
                   "; allowed 0 (auto), 1 (generic), 2 (avx2), 3 (avx512)");
  if (!CpuSupports(isa)) return Invalid(std::string("this CPU does not support isa ") + kernel->name);
  const int64_t pixels = batch * ho * wo;
  if (pixels == 0 || c_out == 0) return ffi::Error::Success();

  auto zeros = std::make_shared<std::vector<uint32_t>>(cw, 0u);
  xla_ext::BinconvProblem pr;
  pr.x = x.typed_data();
  pr.w = w.typed_data();
  pr.wpop = wpop.typed_data();
  pr.zeros = zeros->data();
  pr.alpha = alpha.typed_data();
  pr.bn_mean = has_bn ? bn_mean.typed_data() : nullptr;
  pr.bn_mul = has_bn ? bn_mul.typed_data() : nullptr;
  pr.bn_beta = has_bn ? bn_beta.typed_data() : nullptr;
  pr.residual = has_residual ? residual.typed_data() : nullptr;
  pr.slope = activation == xla_ext::kBinconvActPrelu ? slope.typed_data() : nullptr;
  pr.y = y->typed_data();
  pr.batch = batch;
  pr.height = h;
  pr.width = wdt;
  pr.cw = cw;
  pr.c_in = c_in;
  pr.c_out = c_out;
  pr.co_pad = co_pad;
  pr.ksize = ksize;
  pr.stride = stride;
  pr.ho = ho;
  pr.wo = wo;
  pr.activation = static_cast<int32_t>(activation);

  // Work items: pixel tiles x channel chunks. Few tiles (batch 1 on a 7x7 map): split the
  // channels too, so that every thread gets work.
  const int64_t tiles = (pixels + kernel->tile_pixels - 1) / kernel->tile_pixels;
  const double words = static_cast<double>(pixels) * co_pad * taps * cw;
  int64_t threads = num_threads > 0 ? num_threads : pool.num_threads();
  if (threads < 1 || words < 2.0e5) threads = 1;  // below this the hand-off costs more
  const int64_t blocks16 = co_pad / xla_ext::kBinconvChannelPad;
  int64_t co_chunks = 1;
  if (threads > 1 && tiles < 8 * threads) co_chunks = blocks16 < 4 * threads ? blocks16 : 4 * threads;
  const int64_t co_per = (blocks16 + co_chunks - 1) / co_chunks * xla_ext::kBinconvChannelPad;
  co_chunks = (co_pad + co_per - 1) / co_per;
  int64_t tiles_per = tiles / (8 * threads);
  tiles_per = tiles_per < 1 ? 1 : tiles_per;
  const int64_t tile_items = (tiles + tiles_per - 1) / tiles_per;
  const int64_t items = tile_items * co_chunks;
  if (threads > items) threads = items;

  auto state = std::make_shared<Shared>();
  // Tasks hold the shared state and the zeros row: a task that starts after the call returned
  // must find `next` exhausted, not freed memory.
  auto work = [state, zeros, kernel, pr, tiles, tiles_per, co_chunks, co_per, co_pad, items]() {
    for (;;) {
      const int64_t item = state->next.fetch_add(1, std::memory_order_relaxed);
      if (item >= items) return;
      const int64_t ti = item / co_chunks, ci = item % co_chunks;
      const int64_t t0 = ti * tiles_per, t1 = t0 + tiles_per < tiles ? t0 + tiles_per : tiles;
      const int64_t c0 = ci * co_per, c1 = c0 + co_per < co_pad ? c0 + co_per : co_pad;
      kernel->run(pr, t0, t1, c0, c1);
      state->done.fetch_add(1, std::memory_order_acq_rel);
    }
  };
  for (int64_t i = 1; i < threads; ++i) pool.Schedule([work]() { work(); });
  work();
  while (state->done.load(std::memory_order_acquire) < items) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

// Built with -fvisibility=hidden: only the handler and the two queries below are exported.
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* XlaExtBinaryConv2d(
    XLA_FFI_CallFrame* call_frame);
XLA_FFI_DEFINE_HANDLER_SYMBOL(XlaExtBinaryConv2d, BinaryConv2dImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()  // x [B, H, W, words]
                                  .Arg<ffi::Buffer<ffi::U32>>()  // w [taps * words, co_pad]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // wpop [taps, co_pad]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // alpha [C]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bn_mean [C] or [0]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bn_mul [C] or [0]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bn_beta [C] or [0]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // slope [C] or [0]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // residual [B, Ho, Wo, C] or [0]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y [B, Ho, Wo, C]
                                  .Attr<int64_t>("c_in")
                                  .Attr<int64_t>("ksize")
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("has_bn")
                                  .Attr<int64_t>("has_residual")
                                  .Attr<int64_t>("num_threads")
                                  .Attr<int64_t>("isa"));

extern "C" __attribute__((visibility("default"))) int64_t XlaExtBinconvBestIsa() {
  return BestIsa();
}
extern "C" __attribute__((visibility("default"))) int64_t XlaExtBinconvIsaSupported(int64_t isa) {
  return CpuSupports(isa) ? 1 : 0;
}
