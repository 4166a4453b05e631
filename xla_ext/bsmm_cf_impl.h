// The channels-first 1xN block-sparse matmul with a fused epilogue (bsmm.h, BsmmCfProblem),
// included by each ISA unit after bsmm_impl.h, whose Isa interface and Accumulate it reuses.
// It uses the channels-first part of the Isa interface (listed in bsmm_impl.h).
//
// Why channels-first (the decode of the paper's Fig. 3, vectorised over pixels): with x stored as
// [k][pixels] per image, a kept segment's input feature over a tile of pixels is already a run of
// contiguous vectors, so
// * nothing is transposed: the NHWC kernel spends up to half of its time at p = 0.9 packing x
//   into panels, a full read of x whatever the sparsity; here the rows of x that no kept segment
//   reads are never touched;
// * the accumulators [channel][pixel] are stored as they are, with the layer's epilogue (folded
//   BN bias, residual sum, ReLU/ReLU6) applied in registers: the output is written once and not
//   re-read by a separate elementwise pass.
// Summation order is that of the NHWC kernel (one accumulator per output, kept segments in
// storage order), so both layouts give bit-identical results for the same packed weights.

namespace {

// Stores R channels x TV vectors of one tile of image b, pixels [p0, p0 + valid), through the
// epilogue act(acc + bias + residual). A last, partial vector (the image's final pixels) is
// read and written under a lane mask, so nothing past the row is touched.
template <int R, int TV, bool kPartial>
inline void StoreCf(const xla_ext::BsmmCfProblem& pr, const typename Isa::Vec* acc, int64_t b,
                    int64_t c0, int64_t p0, typename Isa::Mask tail) {
  using Vec = typename Isa::Vec;
  const int64_t m = pr.groups * pr.n, hw = pr.pixels;
  const float six = 6.0f;
  const Vec zero = Isa::Zero(), vsix = Isa::Bcast(&six);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const int64_t c = c0 + r;
    const Vec bias = pr.bias ? Isa::Bcast(pr.bias + c) : zero;
    float* yr = pr.y + (b * m + c) * hw + p0;
    const float* rr = pr.residual ? pr.residual + (b * m + c) * hw + p0 : nullptr;
#pragma GCC unroll 8
    for (int t = 0; t < TV; ++t) {
      const bool partial = kPartial && t == TV - 1;
      Vec v = Isa::Add(acc[r * TV + t], bias);
      if (rr)
        v = Isa::Add(v, partial ? Isa::LoadMasked(rr + t * Isa::kLanes, tail)
                                : Isa::LoadU(rr + t * Isa::kLanes));
      // Max/Min return their second operand when either is NaN: NaN stays NaN, as in jnp.
      if (pr.activation != xla_ext::kBsmmActNone) v = Isa::Max(zero, v);
      if (pr.activation == xla_ext::kBsmmActRelu6) v = Isa::Min(vsix, v);
      if (partial)
        Isa::StoreMasked(yr + t * Isa::kLanes, v, tail);
      else
        Isa::StoreU(yr + t * Isa::kLanes, v);
    }
  }
}

// All channels of groups [g0, g1) for one tile of TV vectors starting at pixel p0 of image b.
// Register block: 4 channels (one N = 4 group, or a quarter of N = 16) x TV vectors, i.e. up to
// 24 accumulators on AVX-512: per kept segment 4 broadcasts and TV loads feed 4 * TV FMAs. Wider
// than the NHWC kernel's 8 x 3 block because here nothing ties the register block to a stored
// 8-channel row, and the per-segment work (broadcasts, index load, loop) is what limits short
// segment lists at high sparsity: measured, a 2-vector tile cost as much as a 3-vector one.
template <int TV, bool kPartial>
inline void GroupsCf(const xla_ext::BsmmCfProblem& pr, int64_t g0, int64_t g1, int64_t b,
                     int64_t p0, typename Isa::Mask tail) {
  using Vec = typename Isa::Vec;
  const int64_t n = pr.n, xs = pr.pixels;
  const float* xt = pr.x + b * pr.k * pr.pixels + p0;
  const int32_t* rp = pr.row_ptr;
  const int32_t* ci = pr.col_idx;
  const float* vals = pr.values;
  for (int64_t g = g0; g < g1; ++g) {
    int64_t r0 = 0;
    for (; r0 + 4 <= n; r0 += 4) {
      Vec acc[4 * TV];
      Accumulate<4, TV, false, kPartial>(rp, ci, vals, n, xt, xs, g, r0, acc, tail);
      StoreCf<4, TV, kPartial>(pr, acc, b, g * n + r0, p0, tail);
    }
    for (; r0 + 2 <= n; r0 += 2) {  // N = 2
      Vec acc[2 * TV];
      Accumulate<2, TV, false, kPartial>(rp, ci, vals, n, xt, xs, g, r0, acc, tail);
      StoreCf<2, TV, kPartial>(pr, acc, b, g * n + r0, p0, tail);
    }
    for (; r0 < n; ++r0) {  // N = 1
      Vec acc[TV];
      Accumulate<1, TV, false, kPartial>(rp, ci, vals, n, xt, xs, g, r0, acc, tail);
      StoreCf<1, TV, kPartial>(pr, acc, b, g * n + r0, p0, tail);
    }
  }
}

// A tile whose last vector ends inside the image's row reads and writes that vector under a
// lane mask. (Rows whose length is not a whole number of vectors, 14x14 = 196 pixels, make most
// loads straddle cache lines, about 15% slower; copying each tile into an aligned panel was
// measured slower still, since the copy streams all k rows of x from L3 without overlap.)
template <int TV>
void RunTileCf(const xla_ext::BsmmCfProblem& pr, int64_t b, int64_t p0, int64_t valid,
               int64_t g0, int64_t g1) {
  const int rest = static_cast<int>(valid - (TV - 1) * Isa::kLanes);
  if (rest == Isa::kLanes)
    GroupsCf<TV, false>(pr, g0, g1, b, p0, typename Isa::Mask{});
  else
    GroupsCf<TV, true>(pr, g0, g1, b, p0, Isa::MakeMask(rest));
}

// Tile t of an image of nv vectors, split into ceil(nv / kCfVecs) tiles as evenly as possible
// (sizes differ by at most one): its first vector and vector count.
inline void CfTile(int64_t nv, int64_t t, int64_t* v0, int* tv) {
  const int64_t tiles = (nv + Isa::kCfVecs - 1) / Isa::kCfVecs;
  const int64_t base = nv / tiles, extra = nv % tiles;
  *v0 = t * base + MinI64(t, extra);
  *tv = static_cast<int>(base + (t < extra ? 1 : 0));
}

// Tiles are numbered image-major, ceil(pixels / (kCfVecs * kLanes)) per image (bsmm.h).
void RunTilesCf(const xla_ext::BsmmCfProblem& pr, int64_t tile_begin, int64_t tile_end,
                int64_t group_begin, int64_t group_end, float* /*workspace*/) {
  static_assert(Isa::kCfVecs >= 1 && Isa::kCfVecs <= 6, "RunTilesCf dispatches 1..6 vectors");
  const int64_t nv = (pr.pixels + Isa::kLanes - 1) / Isa::kLanes;
  const int64_t per_image = (nv + Isa::kCfVecs - 1) / Isa::kCfVecs;
  constexpr int V = Isa::kCfVecs;
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t b = tile / per_image;
    int64_t v0;
    int tv;
    CfTile(nv, tile % per_image, &v0, &tv);
    const int64_t p0 = v0 * Isa::kLanes;
    const int64_t valid = MinI64(tv * Isa::kLanes, pr.pixels - p0);
    switch (tv) {
      case 1: RunTileCf<1>(pr, b, p0, valid, group_begin, group_end); break;
      case 2: RunTileCf<(V >= 2 ? 2 : V)>(pr, b, p0, valid, group_begin, group_end); break;
      case 3: RunTileCf<(V >= 3 ? 3 : V)>(pr, b, p0, valid, group_begin, group_end); break;
      case 4: RunTileCf<(V >= 4 ? 4 : V)>(pr, b, p0, valid, group_begin, group_end); break;
      case 5: RunTileCf<(V >= 5 ? 5 : V)>(pr, b, p0, valid, group_begin, group_end); break;
      default: RunTileCf<V>(pr, b, p0, valid, group_begin, group_end); break;
    }
  }
}

}  // namespace
