// XLA FFI CPU custom call "xla_ext_block_sparse_matmul": the 1xN block-sparse matmul
//
//   y[..., g*N + j] = sum_{t = row_ptr[g]}^{row_ptr[g+1]-1} x[..., col_idx[t]] * values[t, j]
//
// Operands: row_ptr s32[G+1], col_idx s32[nnzb], values f32[nnzb, N], x f32|bf16[..., K].
// Result:   y (dtype of the result buffer, f32|bf16) [..., G*N]; leading dims of x and y match.
// Attributes: num_threads (i64; 0 = all threads of XLA's intra-op pool), isa (i64; 0 = best the
// CPU supports, 1 = portable, 2 = AVX2+FMA, 3 = AVX-512).
//
// "xla_ext_block_sparse_matmul_cf": the same product channels-first with a fused epilogue,
//
//   y[b, g*N + j, p] = act(sum_t values[t, j] * x[b, col_idx[t], p] + bias[g*N + j]
//                          + residual[b, g*N + j, p])
//
// Operands: row_ptr, col_idx, values as above, x f32[B, K, P], bias f32[G*N] (or [0]), residual
// f32[B, G*N, P] (or [0]). Result: y f32[B, G*N, P]. Attributes: num_threads, isa as above,
// activation (0 none, 1 relu, 2 relu6), has_bias, has_residual (0/1).
//
// "xla_ext_depthwise3x3_cf": 3x3 depthwise conv (padding 1, stride 1/2) + bias + activation on
// the channels-first padded-width layout (depthwise3x3.h, Depthwise3x3Problem). Operands x f32[B, C, h*(w+2)],
// kernel f32[C, 9], bias f32[C]; result f32[B, C, ho*(wo+2)]; attributes h, w, stride,
// activation, num_threads, isa.
//
// The instruction set is picked at run time with __builtin_cpu_supports, so one build runs on
// any x86-64 CPU; kIsaKernels holds, per instruction set, the kernel of each of the three ops.
// Every error message starts with the name of the op that raised it. Work is split over row tiles (and over output groups when there are few tiles)
// and run on XLA's intra-op thread pool; the calling thread takes part, so the call completes
// even if the pool never runs the scheduled tasks.
#include <stdint.h>
#include <stdlib.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "bsmm.h"
#include "depthwise3x3.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Isa : int64_t { kIsaAuto = 0, kIsaGeneric = 1, kIsaAvx2 = 2, kIsaAvx512 = 3 };

bool CpuSupports(int64_t isa) {
  switch (isa) {
    case kIsaGeneric:
      return true;
    case kIsaAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case kIsaAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
             __builtin_cpu_supports("fma");
    default:
      return false;
  }
}

int64_t BestIsa() {
  if (CpuSupports(kIsaAvx512)) return kIsaAvx512;
  if (CpuSupports(kIsaAvx2)) return kIsaAvx2;
  return kIsaGeneric;
}

// The kernels built for one instruction set, one per op.
struct IsaKernels {
  int64_t isa;
  const char* name;
  const xla_ext::BsmmKernel* matmul;           // block_sparse_matmul (NHWC)
  const xla_ext::BsmmCfKernel* matmul_cf;      // block_sparse_matmul_cf (channels-first)
  const xla_ext::Depthwise3x3Kernel* depthwise;  // depthwise3x3_cf
};

const IsaKernels kIsaKernels[] = {
    {kIsaGeneric, "generic", &xla_ext::kBsmmGeneric, &xla_ext::kBsmmCfGeneric,
     &xla_ext::kDepthwise3x3Generic},
    {kIsaAvx2, "avx2", &xla_ext::kBsmmAvx2, &xla_ext::kBsmmCfAvx2, &xla_ext::kDepthwise3x3Avx2},
    {kIsaAvx512, "avx512", &xla_ext::kBsmmAvx512, &xla_ext::kBsmmCfAvx512,
     &xla_ext::kDepthwise3x3Avx512},
};

// Per-thread packing buffer, reused across calls (XLA's pool threads live for the process).
float* ThreadWorkspace(int64_t floats) {
  struct Buffer {
    float* data = nullptr;
    int64_t size = 0;
    ~Buffer() { free(data); }
  };
  static thread_local Buffer buf;
  if (buf.size < floats) {
    free(buf.data);
    const size_t bytes = (static_cast<size_t>(floats) * sizeof(float) + 63) / 64 * 64;
    buf.data = static_cast<float*>(aligned_alloc(64, bytes));
    buf.size = buf.data ? floats : 0;
  }
  return buf.data;
}

// Work items: tile chunks x group chunks, claimed dynamically by the participating threads.
struct Plan {
  int64_t tiles, groups, tiles_per_item, group_chunks, groups_per_item, items;
};

Plan MakePlan(int64_t tiles, int64_t groups, int64_t threads) {
  Plan p;
  p.tiles = tiles;
  p.groups = groups;
  // Enough items for dynamic load balance (about 4 per thread).
  int64_t per_item = p.tiles / (4 * threads);
  per_item = per_item < 1 ? 1 : per_item;
  p.tiles_per_item = per_item;
  const int64_t tile_items = (p.tiles + per_item - 1) / per_item;
  // Few row tiles (small batch x resolution): also split the output groups. Each group chunk
  // re-packs its panels, which is cheap next to the FMAs of a group chunk.
  p.group_chunks = 1;
  if (threads > 1 && tile_items < 2 * threads && groups > 1) {
    p.group_chunks = (2 * threads + tile_items - 1) / tile_items;
    if (p.group_chunks > groups) p.group_chunks = groups;
  }
  p.groups_per_item = (groups + p.group_chunks - 1) / p.group_chunks;
  p.group_chunks = groups > 0 ? (groups + p.groups_per_item - 1) / p.groups_per_item : 1;
  p.items = tile_items * p.group_chunks;
  return p;
}

struct SharedState {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> out_of_memory{false};
};

int32_t ElemType(ffi::DataType t) {
  if (t == ffi::DataType::F32) return xla_ext::kBsmmF32;
  if (t == ffi::DataType::BF16) return xla_ext::kBsmmBF16;
  return -1;
}

std::string Dims(ffi::Span<const int64_t> d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// `work(tile_begin, tile_end, group_begin, group_end, workspace)` computes one work item.
template <class Work>
void RunItems(const Work& work, int64_t workspace_floats, const Plan& plan, SharedState* state) {
  float* ws = nullptr;
  for (;;) {
    const int64_t item = state->next.fetch_add(1, std::memory_order_relaxed);
    if (item >= plan.items) return;
    if (ws == nullptr && workspace_floats > 0) ws = ThreadWorkspace(workspace_floats);
    if (ws == nullptr && workspace_floats > 0) {
      state->out_of_memory.store(true);
    } else {
      const int64_t ti = item / plan.group_chunks, gi = item % plan.group_chunks;
      const int64_t t0 = ti * plan.tiles_per_item;
      const int64_t t1 = t0 + plan.tiles_per_item < plan.tiles ? t0 + plan.tiles_per_item : plan.tiles;
      const int64_t g0 = gi * plan.groups_per_item;
      const int64_t g1 = g0 + plan.groups_per_item < plan.groups ? g0 + plan.groups_per_item : plan.groups;
      work(t0, t1, g0, g1, ws);
    }
    state->done.fetch_add(1, std::memory_order_acq_rel);
  }
}

// Splits `plan` over the calling thread and `threads - 1` tasks on XLA's intra-op pool.
template <class Work>
ffi::Error RunParallel(const char* op, ffi::ThreadPool& pool, int64_t threads, const Plan& plan,
                       int64_t workspace_floats, const Work& work) {
  if (threads > plan.items) threads = plan.items;
  auto state = std::make_shared<SharedState>();
  // Workers hold the shared state (a task that starts after the call returned must find
  // `next` exhausted, not freed memory) and copies of the work description and plan.
  for (int64_t i = 1; i < threads; ++i)
    pool.Schedule([state, work, workspace_floats, plan]() {
      RunItems(work, workspace_floats, plan, state.get());
    });
  RunItems(work, workspace_floats, plan, state.get());
  while (state->done.load(std::memory_order_acquire) < plan.items) std::this_thread::yield();
  if (state->out_of_memory.load())
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      std::string(op) + ": could not allocate the workspace");
  return ffi::Error::Success();
}

// Threads for a problem of `fmas` multiply-adds: below ~1e5 the hand-off to another thread
// costs more than it saves.
int64_t ThreadsFor(ffi::ThreadPool& pool, int64_t num_threads, double fmas) {
  int64_t threads = num_threads > 0 ? num_threads : pool.num_threads();
  if (threads < 1 || fmas < 1.0e5) threads = 1;
  return threads;
}

// Checks the BSR encoding against k (O(G + nnzb), negligible next to the FMAs) so that a
// corrupted operand is an error, not an out-of-bounds read.
ffi::Error CheckEncoding(const char* op, ffi::Buffer<ffi::S32>& row_ptr,
                         ffi::Buffer<ffi::S32>& col_idx, ffi::Buffer<ffi::F32>& values, int64_t k) {
  const std::string where = std::string(op) + ": ";
  const auto rd = row_ptr.dimensions(), cd = col_idx.dimensions(), vd = values.dimensions();
  if (rd.size() != 1 || rd[0] < 1 || cd.size() != 1 || vd.size() != 2 || vd[1] < 1)
    return ffi::Error::InvalidArgument(
        where + "expected row_ptr [G+1], col_idx [nnzb], values [nnzb, N>=1]; got " +
        Dims(rd) + ", " + Dims(cd) + ", " + Dims(vd));
  const int64_t groups = rd[0] - 1, nnzb = cd[0];
  if (vd[0] != nnzb)
    return ffi::Error::InvalidArgument(where + "values has " + std::to_string(vd[0]) +
                                       " segments but col_idx has " + std::to_string(nnzb));
  const int32_t* rp = row_ptr.typed_data();
  const int32_t* ci = col_idx.typed_data();
  if (rp[0] != 0 || rp[groups] != nnzb)
    return ffi::Error::InvalidArgument(where + "row_ptr must start at 0 and end at nnzb = " +
                                       std::to_string(nnzb));
  for (int64_t g = 0; g < groups; ++g)
    if (rp[g + 1] < rp[g])
      return ffi::Error::InvalidArgument(where + "row_ptr is decreasing at group " +
                                         std::to_string(g));
  // Branch-free (vectorised) scan first; the offending index is looked up only on failure.
  uint32_t bad = 0;
  for (int64_t t = 0; t < nnzb; ++t)
    bad |= static_cast<uint32_t>(static_cast<uint32_t>(ci[t]) >= static_cast<uint64_t>(k));
  if (bad)
    for (int64_t t = 0; t < nnzb; ++t)
      if (ci[t] < 0 || ci[t] >= k)
        return ffi::Error::InvalidArgument(where + "col_idx[" + std::to_string(t) +
                                           "] = " + std::to_string(ci[t]) + " is outside [0, " +
                                           std::to_string(k) + ")");
  return ffi::Error::Success();
}

// The kernel table row of `isa` (kIsaAuto: the best this CPU supports), checked against the CPU.
ffi::Error PickKernels(const char* op, int64_t isa, const IsaKernels** out) {
  if (isa == kIsaAuto) isa = BestIsa();
  for (const IsaKernels& row : kIsaKernels) {
    if (row.isa != isa) continue;
    if (!CpuSupports(isa))
      return ffi::Error::InvalidArgument(std::string(op) + ": this CPU does not support isa " +
                                         row.name);
    *out = &row;
    return ffi::Error::Success();
  }
  return ffi::Error::InvalidArgument(std::string(op) + ": unknown isa " + std::to_string(isa) +
                                     "; allowed 0 (auto), 1 (generic), 2 (avx2), 3 (avx512)");
}

ffi::Error BlockSparseMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> row_ptr,
                                 ffi::Buffer<ffi::S32> col_idx, ffi::Buffer<ffi::F32> values,
                                 ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y,
                                 int64_t num_threads, int64_t isa) {
  static constexpr char kOp[] = "block_sparse_matmul";
  const auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() < 1 || yd.size() != xd.size())
    return ffi::Error::InvalidArgument("block_sparse_matmul: x " + Dims(xd) + " and y " + Dims(yd) +
                                       " must have the same rank >= 1");
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < xd.size(); ++i) {
    if (xd[i] != yd[i])
      return ffi::Error::InvalidArgument("block_sparse_matmul: leading dims of x " + Dims(xd) +
                                         " and y " + Dims(yd) + " differ");
    rows *= xd[i];
  }
  const int64_t k = xd[xd.size() - 1];
  if (ffi::Error e = CheckEncoding(kOp, row_ptr, col_idx, values, k); e.failure()) return e;
  const int64_t groups = row_ptr.dimensions()[0] - 1, nnzb = col_idx.dimensions()[0];
  const int64_t n = values.dimensions()[1];
  if (yd[yd.size() - 1] != groups * n)
    return ffi::Error::InvalidArgument("block_sparse_matmul: y has " +
                                       std::to_string(yd[yd.size() - 1]) + " features, need G*N = " +
                                       std::to_string(groups * n));
  const int32_t x_type = ElemType(x.element_type()), y_type = ElemType(y->element_type());
  if (x_type < 0 || y_type < 0)
    return ffi::Error::InvalidArgument("block_sparse_matmul: x and y must be f32 or bf16");
  const IsaKernels* kernels = nullptr;
  if (ffi::Error e = PickKernels(kOp, isa, &kernels); e.failure()) return e;
  const xla_ext::BsmmKernel* kernel = kernels->matmul;
  if (rows == 0 || groups == 0) return ffi::Error::Success();

  xla_ext::BsmmProblem pr;
  pr.row_ptr = row_ptr.typed_data();
  pr.col_idx = col_idx.typed_data();
  pr.values = values.typed_data();
  pr.x = x.untyped_data();
  pr.y = y->untyped_data();
  pr.rows = rows;
  pr.k = k;
  pr.groups = groups;
  pr.n = n;
  pr.x_type = x_type;
  pr.y_type = y_type;

  const int64_t threads = ThreadsFor(pool, num_threads, static_cast<double>(rows) * nnzb * n);
  const Plan plan = MakePlan((rows + kernel->tile_rows - 1) / kernel->tile_rows, groups, threads);
  auto work = [kernel, pr](int64_t t0, int64_t t1, int64_t g0, int64_t g1, float* ws) {
    kernel->run(pr, t0, t1, g0, g1, ws);
  };
  return RunParallel(kOp, pool, threads, plan,
                     xla_ext::BsmmWorkspaceFloats(k, n, kernel->tile_rows), work);
}

ffi::Error BlockSparseMatmulCfImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> row_ptr,
                                   ffi::Buffer<ffi::S32> col_idx, ffi::Buffer<ffi::F32> values,
                                   ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> bias,
                                   ffi::Buffer<ffi::F32> residual,
                                   ffi::Result<ffi::Buffer<ffi::F32>> y, int64_t num_threads,
                                   int64_t isa, int64_t activation, int64_t has_bias,
                                   int64_t has_residual) {
  static constexpr char kOp[] = "block_sparse_matmul_cf";
  const auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 3 || yd.size() != 3 || xd[0] != yd[0] || xd[2] != yd[2])
    return ffi::Error::InvalidArgument("block_sparse_matmul_cf: expected x [B, K, P] and y "
                                       "[B, C_out, P]; got " + Dims(xd) + " and " + Dims(yd));
  const int64_t batch = xd[0], k = xd[1], pixels = xd[2];
  if (ffi::Error e = CheckEncoding(kOp, row_ptr, col_idx, values, k); e.failure()) return e;
  const int64_t groups = row_ptr.dimensions()[0] - 1, nnzb = col_idx.dimensions()[0];
  const int64_t n = values.dimensions()[1], m = groups * n;
  if (yd[1] != m)
    return ffi::Error::InvalidArgument("block_sparse_matmul_cf: y has " + std::to_string(yd[1]) +
                                       " channels, need G*N = " + std::to_string(m));
  if (has_bias && (bias.dimensions().size() != 1 || bias.dimensions()[0] != m))
    return ffi::Error::InvalidArgument("block_sparse_matmul_cf: bias must be [" +
                                       std::to_string(m) + "]; got " + Dims(bias.dimensions()));
  if (has_residual && Dims(residual.dimensions()) != Dims(yd))
    return ffi::Error::InvalidArgument("block_sparse_matmul_cf: residual must be " + Dims(yd) +
                                       "; got " + Dims(residual.dimensions()));
  if (activation < xla_ext::kBsmmActNone || activation > xla_ext::kBsmmActRelu6)
    return ffi::Error::InvalidArgument("block_sparse_matmul_cf: activation must be 0 (none), "
                                       "1 (relu) or 2 (relu6); got " + std::to_string(activation));
  const IsaKernels* kernels = nullptr;
  if (ffi::Error e = PickKernels(kOp, isa, &kernels); e.failure()) return e;
  const xla_ext::BsmmCfKernel* kernel = kernels->matmul_cf;
  if (batch == 0 || pixels == 0 || m == 0) return ffi::Error::Success();

  xla_ext::BsmmCfProblem pr;
  pr.row_ptr = row_ptr.typed_data();
  pr.col_idx = col_idx.typed_data();
  pr.values = values.typed_data();
  pr.x = x.typed_data();
  pr.bias = has_bias ? bias.typed_data() : nullptr;
  pr.residual = has_residual ? residual.typed_data() : nullptr;
  pr.y = y->typed_data();
  pr.batch = batch;
  pr.k = k;
  pr.pixels = pixels;
  pr.groups = groups;
  pr.n = n;
  pr.activation = static_cast<int32_t>(activation);

  const int64_t threads =
      ThreadsFor(pool, num_threads, static_cast<double>(batch) * pixels * nnzb * n);
  const int64_t per_image = (pixels + kernel->tile_pixels - 1) / kernel->tile_pixels;
  const Plan plan = MakePlan(batch * per_image, groups, threads);
  auto work = [kernel, pr](int64_t t0, int64_t t1, int64_t g0, int64_t g1, float* ws) {
    kernel->run(pr, t0, t1, g0, g1, ws);
  };
  return RunParallel(kOp, pool, threads, plan, /*workspace_floats=*/0, work);
}

ffi::Error Depthwise3x3CfImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> bias,
                              ffi::Result<ffi::Buffer<ffi::F32>> y, int64_t h, int64_t w,
                              int64_t stride, int64_t activation, int64_t num_threads,
                              int64_t isa) {
  static constexpr char kOp[] = "depthwise3x3_cf";
  const auto xd = x.dimensions(), yd = y->dimensions();
  if (stride != 1 && stride != 2)
    return ffi::Error::InvalidArgument("depthwise3x3_cf: stride must be 1 or 2; got " +
                                       std::to_string(stride));
  if (h < 1 || w < 1)
    return ffi::Error::InvalidArgument("depthwise3x3_cf: h and w must be >= 1; got " +
                                       std::to_string(h) + ", " + std::to_string(w));
  const int64_t ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;
  if (xd.size() != 3 || yd.size() != 3 || xd[0] != yd[0] || xd[1] != yd[1] ||
      xd[2] != h * (w + 2) || yd[2] != ho * (wo + 2))
    return ffi::Error::InvalidArgument(
        "depthwise3x3_cf: expected x [B, C, h*(w+2)] = [B, C, " + std::to_string(h * (w + 2)) +
        "] and y [B, C, ho*(wo+2)] = [B, C, " + std::to_string(ho * (wo + 2)) + "]; got " +
        Dims(xd) + " and " + Dims(yd));
  const int64_t channels = xd[1];
  const auto kd = kernel.dimensions(), bd = bias.dimensions();
  if (kd.size() != 2 || kd[0] != channels || kd[1] != 9 || bd.size() != 1 || bd[0] != channels)
    return ffi::Error::InvalidArgument("depthwise3x3_cf: kernel must be [C, 9] and bias [C] with "
                                       "C = " + std::to_string(channels) + "; got " +
                                       Dims(kernel.dimensions()) + ", " + Dims(bias.dimensions()));
  if (activation < xla_ext::kBsmmActNone || activation > xla_ext::kBsmmActRelu6)
    return ffi::Error::InvalidArgument("depthwise3x3_cf: activation must be 0 (none), 1 (relu) or "
                                       "2 (relu6); got " + std::to_string(activation));
  const IsaKernels* kernels = nullptr;
  if (ffi::Error e = PickKernels(kOp, isa, &kernels); e.failure()) return e;
  const xla_ext::Depthwise3x3Kernel* k = kernels->depthwise;
  const int64_t planes = xd[0] * channels;
  if (planes == 0) return ffi::Error::Success();

  xla_ext::Depthwise3x3Problem pr;
  pr.x = x.typed_data();
  pr.kernel = kernel.typed_data();
  pr.bias = bias.typed_data();
  pr.y = y->typed_data();
  pr.batch = xd[0];
  pr.channels = channels;
  pr.h = h;
  pr.w = w;
  pr.ho = ho;
  pr.wo = wo;
  pr.stride = stride;
  pr.activation = static_cast<int32_t>(activation);
  const int64_t threads = ThreadsFor(pool, num_threads, 9.0 * planes * ho * wo);
  const Plan plan = MakePlan(planes, 1, threads);
  auto work = [k, pr](int64_t t0, int64_t t1, int64_t g0, int64_t g1, float* ws) {
    k->run(pr, t0, t1, g0, g1, ws);
  };
  return RunParallel(kOp, pool, threads, plan, k->workspace_floats(h, w, stride), work);
}

}  // namespace

// Built with -fvisibility=hidden: only the handler and the two queries below are exported.
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* XlaExtBlockSparseMatmul(
    XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(XlaExtBlockSparseMatmul, BlockSparseMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // row_ptr [G+1]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // col_idx [nnzb]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // values [nnzb, N]
                                  .Arg<ffi::AnyBuffer>()         // x [..., K]
                                  .Ret<ffi::AnyBuffer>()         // y [..., G*N]
                                  .Attr<int64_t>("num_threads")
                                  .Attr<int64_t>("isa"));

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* XlaExtBlockSparseMatmulCf(
    XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(XlaExtBlockSparseMatmulCf, BlockSparseMatmulCfImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // row_ptr [G+1]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // col_idx [nnzb]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // values [nnzb, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [B, K, P]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias [G*N] (or [0])
                                  .Arg<ffi::Buffer<ffi::F32>>()  // residual [B, G*N, P] (or [0])
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y [B, G*N, P]
                                  .Attr<int64_t>("num_threads")
                                  .Attr<int64_t>("isa")
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("has_bias")
                                  .Attr<int64_t>("has_residual"));

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* XlaExtDepthwise3x3Cf(
    XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(XlaExtDepthwise3x3Cf, Depthwise3x3CfImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [B, C, h*(w+2)]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel [C, 9]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias [C]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y [B, C, ho*(wo+2)]
                                  .Attr<int64_t>("h")
                                  .Attr<int64_t>("w")
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("num_threads")
                                  .Attr<int64_t>("isa"));

// Plain C queries for the Python side (which instruction sets this CPU can run).
extern "C" __attribute__((visibility("default"))) int64_t XlaExtBsmmBestIsa() { return BestIsa(); }
extern "C" __attribute__((visibility("default"))) int64_t XlaExtBsmmIsaSupported(
    int64_t isa) { return CpuSupports(isa) ? 1 : 0; }
