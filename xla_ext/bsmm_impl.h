// The 1xN block-sparse matmul, written once against a small "instruction set" interface `Isa`
// and included by bsmm_generic.cc, bsmm_avx2.cc and bsmm_avx512.cc. Each of those defines, in an
// anonymous namespace and before including this file:
//
//   struct Isa {
//     using Vec = ...;                                  // kLanes floats
//     static constexpr int kLanes, kVecs, kTile = kLanes * kVecs;
//     static constexpr bool kWide;                      // 8-channel register blocks + StoreOct
//     static Vec Zero(); static Vec Load(const float* aligned); static Vec Bcast(const float*);
//     static Vec Fma(Vec a, Vec b, Vec c);              // a * b + c
//     // a0..a3: 4 output channels over kLanes pixels; writes pixel i's 4 values to dst + i*stride.
//     static void StoreQuad(Vec a0, Vec a1, Vec a2, Vec a3, float* dst, int64_t stride);
//     // The same for 8 channels a[0..7] (8 contiguous values per pixel); used when kWide.
//     static void StoreOct(const Vec* a, float* dst, int64_t stride);
//     // Rows [0, valid) of x ([valid, k], row stride k) into panel[c * kTile + j], j < cols,
//     // zero for valid <= j < cols (cols is a multiple of 8, <= kTile).
//     static void PackRowsF32(const float* x, int64_t k, int64_t valid, int64_t cols, float* panel);
//     // Used by the channels-first kernels (bsmm_cf_impl.h, depthwise3x3_impl.h):
//     static constexpr int kCfVecs;                     // vectors per channels-first tile
//     static Vec LoadU(const float*); static void StoreU(float*, Vec);   // unaligned
//     static Vec Add(Vec, Vec), Max(Vec, Vec), Min(Vec, Vec);  // Max/Min as maxps/minps
//     using Mask = ...; static Mask MakeMask(int n);    // the first n < kLanes lanes
//     static Vec LoadMasked(const float*, Mask);        // masked-off lanes 0, never read
//     static void StoreMasked(float*, Vec, Mask);       // masked-off lanes never written
//     // src[0 .. 2*kLanes) split into even- and odd-indexed elements (lanes >= n read as 0).
//     static void Deinterleave(const float* src, int n, Vec* even, Vec* odd);
//   };
//
// Algorithm (why this shape; the decode of the 1xN paper's Fig. 3, measured in xla_ext/README.md):
// * The 1xN structure means each kept segment t multiplies ONE input feature by N consecutive
//   output weights. We make the pixel (row) axis the vector axis: a row tile of x (kTile pixels)
//   is transposed once into a contiguous panel [k][kTile], so input feature c of the whole tile
//   is kVecs aligned vector loads at panel + c * kTile, whatever the row stride of x. (Reading
//   x columns in place was the prototype's weak spot: every kept segment touched a different,
//   long-strided row, which thrashed the TLB and caches for large layers.)
// * Register block: 4 (kWide: 8) output channels x kVecs vectors of pixels. Per kept segment:
//   kVecs panel loads, one broadcast per channel, 4-8 x kVecs FMAs. With kWide and N = 4, two
//   groups share one 8-channel block (two segment loops, one store), halving the stores.
//   The last, partial tile uses only as many vectors as it has pixels.
// * Loop order: row tile outside, output groups inside: the tile's panel stays in L1/L2 while
//   every group passes over it; the values (16-128 bytes per kept segment, each feeding 12-24
//   FMAs) stream from L2.
// * Output: the accumulators are [channel][pixel]; in-register transposes turn them into 4 or 8
//   contiguous channels per pixel, stored straight into y[p, :] (NHWC). Where that is unsafe or
//   slow (see DirectStore: partial tiles, bf16, N % 4 != 0, and row strides that are multiples
//   of 256 floats, which put all rows of a tile into a few L1 sets and thrashed it: 512 channels
//   ran at a third of the speed) they go to a small L1-resident staging slab (the tile's rows x
//   ~64 channels, row stride an odd number of cache lines) copied to y a few whole cache lines per
//   row. Neither x nor y is ever transposed in memory by XLA.
// * Summation order is fixed (kept segments in storage order, one accumulator per output), so
//   results do not depend on the thread count or the tiling.

namespace {

inline int64_t MinI64(int64_t a, int64_t b) { return a < b ? a : b; }

inline float Bf16ToF32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, sizeof(f));
  return f;
}

inline uint16_t F32ToBf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even, as XLA's convert does
  return static_cast<uint16_t>(u >> 16);
}

// Pixels of a tile the microkernels read: `valid` rounded up to whole vectors.
inline int64_t UsedColumns(int64_t valid) {
  return (valid + Isa::kLanes - 1) / Isa::kLanes * Isa::kLanes;
}

// Packs rows [p0, p0 + valid) of x into panel [k][Isa::kTile], columns [0, UsedColumns(valid)),
// zero beyond `valid`.
inline void PackPanel(const xla_ext::BsmmProblem& pr, int64_t p0, int64_t valid, float* panel) {
  const int64_t k = pr.k, cols = UsedColumns(valid);
  constexpr int64_t W = Isa::kTile;
  if (pr.x_type == xla_ext::kBsmmF32) {
    Isa::PackRowsF32(static_cast<const float*>(pr.x) + p0 * k, k, valid, cols, panel);
    return;
  }
  const uint16_t* x = static_cast<const uint16_t*>(pr.x) + p0 * k;
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t j = 0; j < valid; ++j) panel[c * W + j] = Bf16ToF32(x[j * k + c]);
    for (int64_t j = valid; j < cols; ++j) panel[c * W + j] = 0.0f;
  }
}

// Accumulates the kept segments of group g into acc[r * TV + t] for channels r0 .. r0 + R - 1.
// Input feature c of the tile is the TV vectors at panel + c * stride (a packed panel, stride
// kTile and aligned; or, channels-first, x itself with stride = pixels, unaligned).
// kPartial: the last of the TV vectors is loaded under `tail` (the pixels past the end of an
// image's row are neither read nor counted).
template <int R, int TV, bool kAligned = true, bool kPartial = false>
inline void Accumulate(const int32_t* __restrict row_ptr, const int32_t* __restrict col,
                       const float* __restrict values, int64_t n, const float* __restrict panel,
                       int64_t stride, int64_t g, int64_t r0, typename Isa::Vec* __restrict acc,
                       typename Isa::Mask tail = typename Isa::Mask{}) {
  using Vec = typename Isa::Vec;
  const int64_t b0 = row_ptr[g], b1 = row_ptr[g + 1];
  const float* __restrict v = values + r0;
#pragma GCC unroll 32
  for (int i = 0; i < R * TV; ++i) acc[i] = Isa::Zero();
  for (int64_t b = b0; b < b1; ++b) {
    const float* xp = panel + static_cast<int64_t>(col[b]) * stride;
    Vec xv[TV];
#pragma GCC unroll 8
    for (int t = 0; t < TV; ++t)
      xv[t] = (kPartial && t == TV - 1) ? Isa::LoadMasked(xp + t * Isa::kLanes, tail)
              : kAligned ? Isa::Load(xp + t * Isa::kLanes) : Isa::LoadU(xp + t * Isa::kLanes);
    const float* w = v + b * n;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const Vec wr = Isa::Bcast(w + r);
#pragma GCC unroll 8
      for (int t = 0; t < TV; ++t) acc[r * TV + t] = Isa::Fma(wr, xv[t], acc[r * TV + t]);
    }
  }
}

// Writes R accumulated channels (columns c0 .. c0+R-1) of the tile's first TV*kLanes rows to
// `out` (y itself or the staging slab; row stride ss). Always whole quads: for R % 4 != 0 the
// extra columns hold zeros that the next group overwrites (groups run in increasing order), or
// land in the slab's padding after the last group (such layers always use the slab).
template <int R, int TV>
inline void StoreBlock(const typename Isa::Vec* acc, float* out, int64_t ss, int64_t c0) {
  using Vec = typename Isa::Vec;
  if constexpr (Isa::kWide && R == 8) {
#pragma GCC unroll 4
    for (int t = 0; t < TV; ++t) {
      Vec a[8];
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) a[r] = acc[r * TV + t];
      Isa::StoreOct(a, out + t * Isa::kLanes * ss + c0, ss);
    }
    return;
  }
#pragma GCC unroll 2
  for (int q = 0; q < R; q += 4) {
#pragma GCC unroll 4
    for (int t = 0; t < TV; ++t) {
      Vec a[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) a[i] = q + i < R ? acc[(q + i < R ? q + i : q) * TV + t] : Isa::Zero();
      Isa::StoreQuad(a[0], a[1], a[2], a[3], out + t * Isa::kLanes * ss + c0 + q, ss);
    }
  }
}

template <int R, int TV>
inline void BlockRows(const xla_ext::BsmmProblem& pr, const float* panel, int64_t g, int64_t r0,
                      float* out, int64_t ss, int64_t c_base) {
  typename Isa::Vec acc[R * TV];
  Accumulate<R, TV>(pr.row_ptr, pr.col_idx, pr.values, pr.n, panel, Isa::kTile, g, r0, acc);
  StoreBlock<R, TV>(acc, out, ss, g * pr.n + r0 - c_base);
}

// N = 4 on kWide ISAs: groups g and g+1 are 8 adjacent channels, stored together.
template <int TV>
inline void GroupPair(const xla_ext::BsmmProblem& pr, const float* panel, int64_t g, float* out,
                      int64_t ss, int64_t c_base) {
  typename Isa::Vec acc[8 * TV];
  Accumulate<4, TV>(pr.row_ptr, pr.col_idx, pr.values, 4, panel, Isa::kTile, g, 0, acc);
  Accumulate<4, TV>(pr.row_ptr, pr.col_idx, pr.values, 4, panel, Isa::kTile, g + 1, 0,
                    acc + 4 * TV);
  StoreBlock<8, TV>(acc, out, ss, g * 4 - c_base);
}

// All channels of groups [g0, g1) for one packed panel; `out` holds output column c_base.
template <int TV>
inline void GroupsOnPanel(const xla_ext::BsmmProblem& pr, const float* panel, int64_t g0,
                          int64_t g1, float* out, int64_t ss, int64_t c_base) {
  const int64_t n = pr.n;
  int64_t g = g0;
  if constexpr (Isa::kWide) {
    if (n == 4)
      for (; g + 2 <= g1; g += 2) GroupPair<TV>(pr, panel, g, out, ss, c_base);
  }
  for (; g < g1; ++g) {
    int64_t r0 = 0;
    if constexpr (Isa::kWide) {
      for (; r0 + 8 <= n; r0 += 8) BlockRows<8, TV>(pr, panel, g, r0, out, ss, c_base);
    }
    for (; r0 + 4 <= n; r0 += 4) BlockRows<4, TV>(pr, panel, g, r0, out, ss, c_base);
    switch (n - r0) {
      case 3: BlockRows<3, TV>(pr, panel, g, r0, out, ss, c_base); break;
      case 2: BlockRows<2, TV>(pr, panel, g, r0, out, ss, c_base); break;
      case 1: BlockRows<1, TV>(pr, panel, g, r0, out, ss, c_base); break;
      default: break;
    }
  }
}

// Copies `cols` staged columns of the first `valid` rows to y[p0 + j, c0 : c0 + cols].
inline void CopyOut(const xla_ext::BsmmProblem& pr, const float* __restrict staging, int64_t ss,
                    int64_t p0, int64_t valid, int64_t c0, int64_t cols) {
  const int64_t m = pr.groups * pr.n;
  if (pr.y_type == xla_ext::kBsmmF32) {
    // Fixed-size copies compile to inline vector moves (a variable-length one was a memmove call
    // per row, whose overhead showed next to the FMAs of small layers).
    for (int64_t j = 0; j < valid; ++j) {
      float* __restrict y = static_cast<float*>(pr.y) + (p0 + j) * m + c0;
      const float* __restrict s = staging + j * ss;
      int64_t c = 0;
      for (; c + 16 <= cols; c += 16) __builtin_memcpy(y + c, s + c, 16 * sizeof(float));
      if (c + 8 <= cols) {
        __builtin_memcpy(y + c, s + c, 8 * sizeof(float));
        c += 8;
      }
      if (c + 4 <= cols) {
        __builtin_memcpy(y + c, s + c, 4 * sizeof(float));
        c += 4;
      }
      for (; c < cols; ++c) y[c] = s[c];
    }
  } else {
    for (int64_t j = 0; j < valid; ++j) {
      uint16_t* __restrict y = static_cast<uint16_t*>(pr.y) + (p0 + j) * m + c0;
      const float* __restrict s = staging + j * ss;
      for (int64_t c = 0; c < cols; ++c) y[c] = F32ToBf16(s[c]);
    }
  }
}

// Whether a tile's outputs can be stored straight into y: float32, a full tile, whole quads
// (N % 4 == 0: no store spills into the next group or row), and a row stride that spreads the
// tile's rows over at least 8 of the 64 L1 sets (a multiple of 256 floats maps them to <= 4).
inline bool DirectStore(const xla_ext::BsmmProblem& pr, int64_t valid) {
  const int64_t m = pr.groups * pr.n;
  return pr.y_type == xla_ext::kBsmmF32 && valid == Isa::kTile && pr.n % 4 == 0 && m % 256 != 0;
}

template <int TV>
void RunTile(const xla_ext::BsmmProblem& pr, int64_t p0, int64_t valid, int64_t group_begin,
             int64_t group_end, float* panel, float* staging) {
  PackPanel(pr, p0, valid, panel);
  if (DirectStore(pr, valid)) {
    const int64_t m = pr.groups * pr.n;
    GroupsOnPanel<TV>(pr, panel, group_begin, group_end, static_cast<float*>(pr.y) + p0 * m, m, 0);
    return;
  }
  const int64_t slab_groups = xla_ext::BsmmSlabGroups(pr.n);
  const int64_t ss = xla_ext::BsmmStagingStride(pr.n);
  for (int64_t s0 = group_begin; s0 < group_end; s0 += slab_groups) {
    const int64_t s1 = MinI64(group_end, s0 + slab_groups);
    GroupsOnPanel<TV>(pr, panel, s0, s1, staging, ss, s0 * pr.n);
    CopyOut(pr, staging, ss, p0, valid, s0 * pr.n, (s1 - s0) * pr.n);
  }
}

void RunTiles(const xla_ext::BsmmProblem& pr, int64_t tile_begin, int64_t tile_end,
              int64_t group_begin, int64_t group_end, float* workspace) {
  constexpr int64_t W = Isa::kTile;
  static_assert(Isa::kVecs >= 1 && Isa::kVecs <= 3, "RunTiles dispatches 1..3 vectors per tile");
  float* panel = workspace;
  float* staging = workspace + xla_ext::BsmmPanelFloats(pr.k, W);
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t p0 = tile * W, valid = MinI64(W, pr.rows - p0);
    switch (UsedColumns(valid) / Isa::kLanes) {
      case 1: RunTile<1>(pr, p0, valid, group_begin, group_end, panel, staging); break;
      case 2: RunTile<(Isa::kVecs >= 2 ? 2 : 1)>(pr, p0, valid, group_begin, group_end, panel, staging); break;
      default: RunTile<Isa::kVecs>(pr, p0, valid, group_begin, group_end, panel, staging); break;
    }
  }
}

}  // namespace
