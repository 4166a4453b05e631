// XLA FFI CPU custom call "xla_ext_block_sparse_matmul": the 1xN block-sparse matmul
//
//   y[..., g*N + j] = sum_{t = row_ptr[g]}^{row_ptr[g+1]-1} x[..., col_idx[t]] * values[t, j]
//
// Operands: row_ptr s32[G+1], col_idx s32[nnzb], values f32[nnzb, N], x f32|bf16[..., K].
// Result:   y (dtype of the result buffer, f32|bf16) [..., G*N]; leading dims of x and y match.
// Attributes: num_threads (i64; 0 = all threads of XLA's intra-op pool), isa (i64; 0 = best the
// CPU supports, 1 = portable, 2 = AVX2+FMA, 3 = AVX-512).
//
// The instruction set is picked at run time with __builtin_cpu_supports, so one build runs on
// any x86-64 CPU. Work is split over row tiles (and over output groups when there are few tiles)
// and run on XLA's intra-op thread pool; the calling thread takes part, so the call completes
// even if the pool never runs the scheduled tasks.
#include <stdint.h>
#include <stdlib.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "bsmm.h"
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

const xla_ext::BsmmKernel* KernelFor(int64_t isa) {
  switch (isa) {
    case kIsaGeneric:
      return &xla_ext::kBsmmGeneric;
    case kIsaAvx2:
      return &xla_ext::kBsmmAvx2;
    case kIsaAvx512:
      return &xla_ext::kBsmmAvx512;
    default:
      return nullptr;
  }
}

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
  int64_t tiles, tiles_per_item, group_chunks, groups_per_item, items;
};

Plan MakePlan(int64_t rows, int64_t groups, int64_t tile_rows, int64_t k, int64_t threads) {
  Plan p;
  p.tiles = (rows + tile_rows - 1) / tile_rows;
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

void RunItems(const xla_ext::BsmmKernel* kernel, const xla_ext::BsmmProblem& pr, const Plan& plan,
              SharedState* state) {
  float* ws = nullptr;
  for (;;) {
    const int64_t item = state->next.fetch_add(1, std::memory_order_relaxed);
    if (item >= plan.items) return;
    if (ws == nullptr) ws = ThreadWorkspace(
        xla_ext::BsmmWorkspaceFloats(pr.k, pr.n, kernel->tile_rows));
    if (ws == nullptr) {
      state->out_of_memory.store(true);
    } else {
      const int64_t ti = item / plan.group_chunks, gi = item % plan.group_chunks;
      const int64_t t0 = ti * plan.tiles_per_item;
      const int64_t t1 = t0 + plan.tiles_per_item < plan.tiles ? t0 + plan.tiles_per_item : plan.tiles;
      const int64_t g0 = gi * plan.groups_per_item;
      const int64_t g1 = g0 + plan.groups_per_item < pr.groups ? g0 + plan.groups_per_item : pr.groups;
      kernel->run(pr, t0, t1, g0, g1, ws);
    }
    state->done.fetch_add(1, std::memory_order_acq_rel);
  }
}

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

ffi::Error BlockSparseMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> row_ptr,
                                 ffi::Buffer<ffi::S32> col_idx, ffi::Buffer<ffi::F32> values,
                                 ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y,
                                 int64_t num_threads, int64_t isa) {
  const auto rd = row_ptr.dimensions(), cd = col_idx.dimensions(), vd = values.dimensions();
  const auto xd = x.dimensions(), yd = y->dimensions();
  if (rd.size() != 1 || rd[0] < 1 || cd.size() != 1 || vd.size() != 2 || vd[1] < 1)
    return ffi::Error::InvalidArgument(
        "block_sparse_matmul: expected row_ptr [G+1], col_idx [nnzb], values [nnzb, N>=1]; got " +
        Dims(rd) + ", " + Dims(cd) + ", " + Dims(vd));
  const int64_t groups = rd[0] - 1, nnzb = cd[0], n = vd[1];
  if (vd[0] != nnzb)
    return ffi::Error::InvalidArgument("block_sparse_matmul: values has " + std::to_string(vd[0]) +
                                       " segments but col_idx has " + std::to_string(nnzb));
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
  if (yd[yd.size() - 1] != groups * n)
    return ffi::Error::InvalidArgument("block_sparse_matmul: y has " +
                                       std::to_string(yd[yd.size() - 1]) + " features, need G*N = " +
                                       std::to_string(groups * n));
  const int32_t x_type = ElemType(x.element_type()), y_type = ElemType(y->element_type());
  if (x_type < 0 || y_type < 0)
    return ffi::Error::InvalidArgument("block_sparse_matmul: x and y must be f32 or bf16");

  // The encoding is validated on every call (O(G + nnzb), negligible next to rows * nnzb * N
  // FMAs) so that a corrupted operand is an error, not an out-of-bounds read.
  const int32_t* rp = row_ptr.typed_data();
  const int32_t* ci = col_idx.typed_data();
  if (rp[0] != 0 || rp[groups] != nnzb)
    return ffi::Error::InvalidArgument("block_sparse_matmul: row_ptr must start at 0 and end at "
                                       "nnzb = " + std::to_string(nnzb));
  for (int64_t g = 0; g < groups; ++g)
    if (rp[g + 1] < rp[g])
      return ffi::Error::InvalidArgument("block_sparse_matmul: row_ptr is decreasing at group " +
                                         std::to_string(g));
  for (int64_t t = 0; t < nnzb; ++t)
    if (ci[t] < 0 || ci[t] >= k)
      return ffi::Error::InvalidArgument("block_sparse_matmul: col_idx[" + std::to_string(t) +
                                         "] = " + std::to_string(ci[t]) + " is outside [0, " +
                                         std::to_string(k) + ")");

  if (isa == kIsaAuto) isa = BestIsa();
  const xla_ext::BsmmKernel* kernel = KernelFor(isa);
  if (kernel == nullptr) return ffi::Error::InvalidArgument("block_sparse_matmul: unknown isa");
  if (!CpuSupports(isa))
    return ffi::Error::InvalidArgument(std::string("block_sparse_matmul: this CPU does not support ") +
                                       kernel->name);
  if (rows == 0 || groups == 0) return ffi::Error::Success();

  xla_ext::BsmmProblem pr;
  pr.row_ptr = rp;
  pr.col_idx = ci;
  pr.values = values.typed_data();
  pr.x = x.untyped_data();
  pr.y = y->untyped_data();
  pr.rows = rows;
  pr.k = k;
  pr.groups = groups;
  pr.n = n;
  pr.x_type = x_type;
  pr.y_type = y_type;

  int64_t threads = num_threads > 0 ? num_threads : pool.num_threads();
  if (threads < 1) threads = 1;
  // Below ~1e5 multiply-adds the hand-off to another thread costs more than it saves.
  const double fmas = static_cast<double>(rows) * static_cast<double>(nnzb) * static_cast<double>(n);
  if (fmas < 1.0e5) threads = 1;
  const Plan plan = MakePlan(rows, groups, kernel->tile_rows, k, threads);
  if (threads > plan.items) threads = plan.items;

  auto state = std::make_shared<SharedState>();
  // Workers hold the shared state (a task that starts after the call returned must find
  // `next` exhausted, not freed memory) and copies of the problem and plan.
  for (int64_t i = 1; i < threads; ++i)
    pool.Schedule([state, kernel, pr, plan]() { RunItems(kernel, pr, plan, state.get()); });
  RunItems(kernel, pr, plan, state.get());
  while (state->done.load(std::memory_order_acquire) < plan.items) std::this_thread::yield();
  if (state->out_of_memory.load())
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "block_sparse_matmul: could not allocate the packing workspace");
  return ffi::Error::Success();
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

// Plain C queries for the Python side (which instruction sets this CPU can run).
extern "C" __attribute__((visibility("default"))) int64_t XlaExtBsmmBestIsa() { return BestIsa(); }
extern "C" __attribute__((visibility("default"))) int64_t XlaExtBsmmIsaSupported(
    int64_t isa) { return CpuSupports(isa) ? 1 : 0; }
