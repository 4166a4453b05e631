// XLA FFI CPU custom calls for the training convolutions of the model zoo, on oneDNN's
// convolution primitives (`dnnl::convolution_forward`, `convolution_backward_data`,
// `convolution_backward_weights`; the `onednn-cpu-gomp` build):
//
//   "xla_ext_conv_fwd":         y[b, o, p, co]  = sum_{i, j, ci} x[b, s*o + i - pt, s*p + j - pl, g(co)*Cig + ci]
//                                                  * w[i, j, ci, co]
//   "xla_ext_conv_bwd_data":    dx = the transpose of the map above applied to dy (input gradient)
//   "xla_ext_conv_bwd_weights": dw[i, j, ci, co] = sum_{b, o, p} x[b, s*o + i - pt, s*p + j - pl, g(co)*Cig + ci]
//                                                  * dy[b, o, p, co]            (weight gradient)
//
// with zero padding outside the image, g(co) = co / (Co / groups) the group of output channel co
// and Cig = Ci / groups. Layouts are those of a Flax `nn.Conv` (lax.conv_general_dilated with
// dimension numbers NHWC, HWIO, NHWC): x/dx f32[B, H, W, Ci], w/dw f32[kh, kw, Ci/groups, Co],
// y/dy f32[B, Ho, Wo, Co]. Attributes (i64): stride_h, stride_w, pad_top, pad_bottom, pad_left,
// pad_right, groups, num_threads (0 = all threads of XLA's intra-op pool).
//
// Threads: the batch is cut into fixed chunks (MakeChunks) run by single-threaded oneDNN calls on
// the calling thread and XLA's intra-op pool, claimed dynamically. oneDNN's own OpenMP team was
// measured first: on a 2-core machine shared with other processes its barriers wait for
// descheduled threads (a 3-image 5x5x7 weight gradient took 6-15 ms instead of 0.02 ms), and its
// threads compete with XLA's pool, which the chunks reuse instead.
//
// Activations stay NHWC (any other layout would cost a reorder pass over every activation, which
// is what we are trying to save); the weights are handed to oneDNN in the layout it prefers
// (format `any`), reordered from/to HWIO inside the call (a few KiB at CIFAR widths). Primitives
// are built once per shape and kept in a process-wide cache (building one costs ~0.1 ms).
// Every error message starts with the op's name.
#include <stdint.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

extern "C" void omp_set_num_threads(int);

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;

enum Op : int { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };
const char* const kOpNames[] = {"conv_fwd", "conv_bwd_data", "conv_bwd_weights"};

struct Geometry {
  int64_t b, h, w, ci, ho, wo, co, kh, kw, sh, sw, pt, pb, pl, pr, groups;
  std::string Key(int op) const {
    std::string k = std::to_string(op);
    for (int64_t v : {b, h, w, ci, ho, wo, co, kh, kw, sh, sw, pt, pb, pl, pr, groups})
      k += "," + std::to_string(v);
    return k;
  }
};

// One op at one geometry: the primitive, and the reorders between the caller's HWIO weights and
// the primitive's own weight layout (null when they are the same).
struct Plan {
  dnnl::primitive prim;
  memory::desc act_in_md, wei_md, act_out_md;   // the primitive's descriptors
  memory::desc user_wei_md;                     // HWIO (hwigo for groups > 1)
  bool reorder_weights = false;
  dnnl::primitive wei_reorder;                  // user -> prim (fwd, bwd_data) or prim -> user
  size_t scratch_bytes = 0;                     // the primitive's scratchpad (user-managed)
};

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

memory::desc WeightDesc(const Geometry& g, tag t) {
  if (g.groups == 1) return memory::desc({g.co, g.ci, g.kh, g.kw}, memory::data_type::f32, t);
  return memory::desc({g.groups, g.co / g.groups, g.ci / g.groups, g.kh, g.kw},
                      memory::data_type::f32, t);
}

std::shared_ptr<Plan> BuildPlan(int op, const Geometry& g) {
  auto& eng = Engine();
  const auto f32 = memory::data_type::f32;
  memory::desc src({g.b, g.ci, g.h, g.w}, f32, tag::nhwc);
  memory::desc dst({g.b, g.co, g.ho, g.wo}, f32, tag::nhwc);
  memory::desc wany = WeightDesc(g, tag::any);
  memory::dims strides = {g.sh, g.sw}, pad_l = {g.pt, g.pl}, pad_r = {g.pb, g.pr};
  // A scratchpad per call, not one per primitive: chunks of a batch run the same primitive on
  // several threads at once.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto plan = std::make_shared<Plan>();
  plan->user_wei_md = WeightDesc(g, g.groups == 1 ? tag::hwio : tag::hwigo);
  dnnl::convolution_forward::primitive_desc fwd(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, wany,
      dst, strides, pad_l, pad_r, attr);
  if (op == kFwd) {
    plan->prim = dnnl::convolution_forward(fwd);
    plan->act_in_md = fwd.src_desc();
    plan->wei_md = fwd.weights_desc();
    plan->act_out_md = fwd.dst_desc();
    plan->scratch_bytes = fwd.scratchpad_desc().get_size();
  } else if (op == kBwdData) {
    dnnl::convolution_backward_data::primitive_desc bwd(
        eng, dnnl::algorithm::convolution_direct, src, wany, dst, strides, pad_l, pad_r, fwd,
        attr);
    plan->prim = dnnl::convolution_backward_data(bwd);
    plan->act_in_md = bwd.diff_dst_desc();
    plan->wei_md = bwd.weights_desc();
    plan->act_out_md = bwd.diff_src_desc();
    plan->scratch_bytes = bwd.scratchpad_desc().get_size();
  } else {
    dnnl::convolution_backward_weights::primitive_desc bwd(
        eng, dnnl::algorithm::convolution_direct, src, wany, dst, strides, pad_l, pad_r, fwd,
        attr);
    plan->prim = dnnl::convolution_backward_weights(bwd);
    plan->act_in_md = bwd.src_desc();
    plan->wei_md = bwd.diff_weights_desc();
    plan->act_out_md = bwd.diff_dst_desc();
    plan->scratch_bytes = bwd.scratchpad_desc().get_size();
  }
  plan->reorder_weights = plan->wei_md != plan->user_wei_md;
  if (plan->reorder_weights) {
    plan->wei_reorder = op == kBwdWeights
                            ? dnnl::reorder(dnnl::reorder::primitive_desc(
                                  eng, plan->wei_md, eng, plan->user_wei_md))
                            : dnnl::reorder(dnnl::reorder::primitive_desc(
                                  eng, plan->user_wei_md, eng, plan->wei_md));
  }
  return plan;
}

std::shared_ptr<Plan> GetPlan(int op, const Geometry& g) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<Plan>> cache;
  const std::string key = g.Key(op);
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto plan = BuildPlan(op, g);   // outside the lock: building takes a while
  std::lock_guard<std::mutex> lock(mu);
  return cache.emplace(key, plan).first->second;
}

std::string Dims(ffi::Span<const int64_t> d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// Checks the three shapes against each other and fills the geometry. `act` is x (fwd,
// bwd_weights) or dx (bwd_data), `out` y/dy, `wei` w/dw.
ffi::Error MakeGeometry(int op, ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd,
                        ffi::Span<const int64_t> yd, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr, int64_t groups, Geometry* g) {
  const std::string op_name = kOpNames[op];
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument(op_name + ": expected x [B, H, W, Ci], w [kh, kw, Ci/groups, "
                                       "Co], y [B, Ho, Wo, Co]; got " + Dims(xd) + ", " +
                                       Dims(wd) + ", " + Dims(yd));
  if (sh < 1 || sw < 1 || pt < 0 || pb < 0 || pl < 0 || pr < 0 || groups < 1)
    return ffi::Error::InvalidArgument(op_name + ": strides must be >= 1, paddings >= 0, groups "
                                       ">= 1");
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], wd[0], wd[1],
                sh,    sw,    pt,    pb,    pl,    pr,    groups};
  if (g->ci % groups || g->co % groups || wd[2] * groups != g->ci || wd[3] != g->co)
    return ffi::Error::InvalidArgument(op_name + ": w " + Dims(wd) + " does not match Ci = " +
                                       std::to_string(g->ci) + ", Co = " + std::to_string(g->co) +
                                       ", groups = " + std::to_string(groups));
  const int64_t ho = (g->h + pt + pb - g->kh) / sh + 1, wo = (g->w + pl + pr - g->kw) / sw + 1;
  if (yd[0] != xd[0] || ho != g->ho || wo != g->wo || ho < 1 || wo < 1)
    return ffi::Error::InvalidArgument(op_name + ": y " + Dims(yd) + " is not the output of x " +
                                       Dims(xd) + " under this kernel, stride and padding (Ho = " +
                                       std::to_string(ho) + ", Wo = " + std::to_string(wo) + ")");
  return ffi::Error::Success();
}

int64_t ThreadsFor(ffi::ThreadPool& pool, int64_t num_threads) {
  const int64_t all = pool.num_threads() > 0 ? pool.num_threads() : 1;
  return num_threads > 0 && num_threads < all ? num_threads : all;
}

// The batch is cut into at most kChunks chunks of equal size (the last one shorter) that depend
// on the batch size only, so that every output is computed by the same single-threaded oneDNN
// call whatever the number of threads: results are bit-identical for any `num_threads`.
constexpr int64_t kChunks = 16;

struct Chunks {
  int64_t size, count;
  int64_t Begin(int64_t c) const { return c * size; }
  int64_t Len(int64_t c, int64_t batch) const { return std::min(size, batch - c * size); }
};

Chunks MakeChunks(int64_t batch) {
  const int64_t size = (batch + kChunks - 1) / kChunks;
  return Chunks{size, (batch + size - 1) / size};
}

// Runs fn(chunk) for every chunk on the calling thread and threads - 1 tasks of XLA's pool, which
// claim chunks dynamically; the caller takes part, so the call finishes even if the pool is busy
// (no barrier waits on a thread the OS has descheduled, as an OpenMP team's would on a loaded
// machine).
struct Progress {
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::string error;
};

template <typename Fn>
ffi::Error ParallelChunks(const char* op, ffi::ThreadPool& pool, int64_t threads, int64_t count,
                          Fn fn) {
  auto progress = std::make_shared<Progress>();
  auto work = [progress, count, fn]() {
    omp_set_num_threads(1);   // oneDNN runs single-threaded inside each chunk
    for (int64_t c; (c = progress->next.fetch_add(1)) < count;) {
      try {
        fn(c);
      } catch (const dnnl::error& e) {
        std::lock_guard<std::mutex> lock(progress->mu);
        if (progress->error.empty()) progress->error = e.what();
      }
      progress->done.fetch_add(1);
    }
  };
  for (int64_t t = 1; t < std::min(threads, count); ++t) pool.Schedule(decltype(work)(work));
  work();
  while (progress->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
  if (!progress->error.empty())
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string(op) + ": oneDNN failed: " + progress->error);
  return ffi::Error::Success();
}

// One oneDNN execution on one chunk, with a scratchpad of this thread.
void Execute(const Plan& plan, std::unordered_map<int, memory> args) {
  thread_local std::vector<uint8_t> scratch;
  auto& eng = Engine();
  if (plan.scratch_bytes) {
    if (scratch.size() < plan.scratch_bytes) scratch.resize(plan.scratch_bytes);
    args.emplace(DNNL_ARG_SCRATCHPAD,
                 memory(memory::desc({static_cast<int64_t>(plan.scratch_bytes)},
                                     memory::data_type::u8, tag::x),
                        eng, scratch.data()));
  }
  dnnl::stream stream(eng);
  plan.prim.execute(stream, args);
  stream.wait();
}

// Runs one op over the batch: `act_in` is the primitive's activation input (x for fwd and
// bwd_weights, dy for bwd_data), `wei` the caller's HWIO weights (input of fwd / bwd_data, output
// of bwd_weights), `act_out` the activation output (y, dx) or, for bwd_weights, dy.
ffi::Error Run(ffi::ThreadPool& pool, int op, const Geometry& g, int64_t threads, float* act_in, float* wei,
               float* act_out) {
  const char* name = kOpNames[op];
  const int64_t wei_size = g.kh * g.kw * (g.ci / g.groups) * g.co;
  if (g.b == 0) {
    if (op == kBwdWeights) std::fill(wei, wei + wei_size, 0.0f);
    return ffi::Error::Success();
  }
  // Before any oneDNN call on this thread (building primitives, reordering weights): an OpenMP
  // team of more than one thread, once created, leaves its idle threads spinning, which on a
  // 2-core machine took most of the CPU from the chunks (a 32x32x16 weight gradient used 280 ms of
  // CPU time instead of 5 ms).
  omp_set_num_threads(1);
  const Chunks chunks = MakeChunks(g.b);
  const int64_t last = chunks.Len(chunks.count - 1, g.b);
  // Per-image strides (floats) of the two activations the op reads or writes.
  const int64_t x_img = g.h * g.w * g.ci, y_img = g.ho * g.wo * g.co;
  try {
    auto& eng = Engine();
    Geometry gc = g, gl = g;
    gc.b = chunks.size;
    gl.b = last;
    std::shared_ptr<Plan> full = GetPlan(op, gc), tail = last == chunks.size ? full : GetPlan(op, gl);
    auto plan_of = [&](int64_t c) -> const Plan& {
      return chunks.Len(c, g.b) == chunks.size ? *full : *tail;
    };
    const int64_t in_img = op == kBwdData ? y_img : x_img;
    const int64_t out_img = op == kFwd ? y_img : x_img;   // bwd_weights: dy below
    if (op != kBwdWeights) {
      // The weights, in the primitive's layout, once for all chunks (full and tail plans pick
      // the same layout: the batch size does not change how oneDNN blocks the weights).
      memory user_w(full->user_wei_md, eng, wei);
      memory prim_w = full->reorder_weights ? memory(full->wei_md, eng) : user_w;
      if (full->reorder_weights) {
        dnnl::stream stream(eng);
        full->wei_reorder.execute(stream, {{DNNL_ARG_FROM, user_w}, {DNNL_ARG_TO, prim_w}});
        stream.wait();
      }
      if (tail->wei_md != full->wei_md)
        return ffi::Error(ffi::ErrorCode::kInternal,
                          std::string(name) + ": oneDNN chose different weight layouts for "
                          "batch chunks of " + std::to_string(chunks.size) + " and " +
                          std::to_string(last));
      const int in_arg = op == kFwd ? DNNL_ARG_SRC : DNNL_ARG_DIFF_DST;
      const int out_arg = op == kFwd ? DNNL_ARG_DST : DNNL_ARG_DIFF_SRC;
      return ParallelChunks(name, pool, threads, chunks.count, [&, prim_w](int64_t c) {
        const Plan& p = plan_of(c);
        Execute(p, {{in_arg, memory(p.act_in_md, eng, act_in + chunks.Begin(c) * in_img)},
                    {DNNL_ARG_WEIGHTS, prim_w},
                    {out_arg, memory(p.act_out_md, eng, act_out + chunks.Begin(c) * out_img)}});
      });
    }
    // Weight gradient: every chunk writes its own partial sum (in HWIO), added in chunk order.
    std::vector<float> partial(chunks.count * wei_size);
    ffi::Error e = ParallelChunks(name, pool, threads, chunks.count, [&](int64_t c) {
      const Plan& p = plan_of(c);
      memory user_w(p.user_wei_md, eng, partial.data() + c * wei_size);
      memory prim_w = p.reorder_weights ? memory(p.wei_md, eng) : user_w;
      Execute(p, {{DNNL_ARG_SRC, memory(p.act_in_md, eng, act_in + chunks.Begin(c) * x_img)},
                  {DNNL_ARG_DIFF_DST, memory(p.act_out_md, eng, act_out + chunks.Begin(c) * y_img)},
                  {DNNL_ARG_DIFF_WEIGHTS, prim_w}});
      if (p.reorder_weights) {
        dnnl::stream stream(eng);
        p.wei_reorder.execute(stream, {{DNNL_ARG_FROM, prim_w}, {DNNL_ARG_TO, user_w}});
        stream.wait();
      }
    });
    if (e.failure()) return e;
    std::copy(partial.begin(), partial.begin() + wei_size, wei);
    for (int64_t c = 1; c < chunks.count; ++c) {
      const float* src = partial.data() + c * wei_size;
      for (int64_t k = 0; k < wei_size; ++k) wei[k] += src[k];
    }
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(name) + ": oneDNN failed: " + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
                       int64_t pb, int64_t pl, int64_t pr, int64_t groups, int64_t num_threads) {
  Geometry g;
  if (ffi::Error e = MakeGeometry(kFwd, x.dimensions(), w.dimensions(), y->dimensions(), sh, sw,
                                  pt, pb, pl, pr, groups, &g);
      e.failure())
    return e;
  return Run(pool, kFwd, g, ThreadsFor(pool, num_threads), x.typed_data(), w.typed_data(),
             y->typed_data());
}

ffi::Error ConvBwdDataImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                           ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx, int64_t sh,
                           int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                           int64_t groups, int64_t num_threads) {
  Geometry g;
  if (ffi::Error e = MakeGeometry(kBwdData, dx->dimensions(), w.dimensions(), dy.dimensions(), sh,
                                  sw, pt, pb, pl, pr, groups, &g);
      e.failure())
    return e;
  return Run(pool, kBwdData, g, ThreadsFor(pool, num_threads), dy.typed_data(), w.typed_data(),
             dx->typed_data());
}

ffi::Error ConvBwdWeightsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw, int64_t sh,
                              int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                              int64_t groups, int64_t num_threads) {
  Geometry g;
  if (ffi::Error e = MakeGeometry(kBwdWeights, x.dimensions(), dw->dimensions(), dy.dimensions(),
                                  sh, sw, pt, pb, pl, pr, groups, &g);
      e.failure())
    return e;
  return Run(pool, kBwdWeights, g, ThreadsFor(pool, num_threads), x.typed_data(), dw->typed_data(),
             dy.typed_data());
}

}  // namespace

#define XLA_EXT_CONV_BINDING(FIRST, SECOND, RESULT)                                       \
  ffi::Ffi::Bind()                                                                       \
      .Ctx<ffi::ThreadPool>()                                                            \
      .Arg<ffi::Buffer<ffi::F32>>() /* FIRST */                                          \
      .Arg<ffi::Buffer<ffi::F32>>() /* SECOND */                                         \
      .Ret<ffi::Buffer<ffi::F32>>() /* RESULT */                                         \
      .Attr<int64_t>("stride_h")                                                         \
      .Attr<int64_t>("stride_w")                                                         \
      .Attr<int64_t>("pad_top")                                                          \
      .Attr<int64_t>("pad_bottom")                                                       \
      .Attr<int64_t>("pad_left")                                                         \
      .Attr<int64_t>("pad_right")                                                        \
      .Attr<int64_t>("groups")                                                           \
      .Attr<int64_t>("num_threads")

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* XlaExtConvFwd(
    XLA_FFI_CallFrame* call_frame);
XLA_FFI_DEFINE_HANDLER_SYMBOL(XlaExtConvFwd, ConvFwdImpl, XLA_EXT_CONV_BINDING(x, w, y));

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* XlaExtConvBwdData(
    XLA_FFI_CallFrame* call_frame);
XLA_FFI_DEFINE_HANDLER_SYMBOL(XlaExtConvBwdData, ConvBwdDataImpl,
                              XLA_EXT_CONV_BINDING(dy, w, dx));

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* XlaExtConvBwdWeights(
    XLA_FFI_CallFrame* call_frame);
XLA_FFI_DEFINE_HANDLER_SYMBOL(XlaExtConvBwdWeights, ConvBwdWeightsImpl,
                              XLA_EXT_CONV_BINDING(x, dy, dw));
