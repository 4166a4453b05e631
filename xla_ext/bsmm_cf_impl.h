// The channels-first 1xN block-sparse matmul with a fused epilogue (bsmm.h, BsmmCfProblem),
// included by each ISA unit after bsmm_impl.h, whose Isa interface and Accumulate it reuses.
// Besides what bsmm_impl.h needs, Isa provides LoadU / StoreU (unaligned), Add, Max, Min.
//
// Why channels-first (spec section 2.3; shared/notes/jax-stack.md section 4): with x stored as
// [k][pixels] per image, a kept segment's input feature over a tile of pixels is already a run of
// contiguous vectors, so
// * nothing is transposed: the NHWC kernel spends up to half of its time at p = 0.9 packing x
//   into panels, a full read of x whatever the sparsity; here the rows of x that no kept segment
//   reads are never touched;
// * the accumulators [channel][pixel] are stored as they are, with the layer's epilogue (folded
//   BN bias, residual sum, ReLU/ReLU6) applied in registers: the output is written once and not
//   re-read by a separate elementwise pass.
// Register blocking and summation order are those of the NHWC kernel: the same FMAs in the same
// order, so both layouts give bit-identical results for the same packed weights.

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
#pragma GCC unroll 4
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

// All channels of groups [g0, g1) for one tile of TV vectors: input feature c of the tile is at
// xt + c * xs (kAligned: a copied, aligned panel).
template <int TV, bool kAligned, bool kPartial>
inline void GroupsCf(const xla_ext::BsmmCfProblem& pr, const float* xt, int64_t xs, int64_t g0,
                     int64_t g1, int64_t b, int64_t p0, typename Isa::Mask tail) {
  using Vec = typename Isa::Vec;
  const int64_t n = pr.n;
  const int32_t* rp = pr.row_ptr;
  const int32_t* ci = pr.col_idx;
  const float* vals = pr.values;
  // Loads of x are masked only when reading x itself; a panel is zero-padded.
  constexpr bool kMaskLoads = kPartial && !kAligned;
  int64_t g = g0;
  if constexpr (Isa::kWide) {
    if (n == 4) {
      for (; g + 2 <= g1; g += 2) {
        Vec acc[8 * TV];
        Accumulate<4, TV, kAligned, kMaskLoads>(rp, ci, vals, 4, xt, xs, g, 0, acc, tail);
        Accumulate<4, TV, kAligned, kMaskLoads>(rp, ci, vals, 4, xt, xs, g + 1, 0, acc + 4 * TV,
                                                tail);
        StoreCf<8, TV, kPartial>(pr, acc, b, g * 4, p0, tail);
      }
    }
  }
  for (; g < g1; ++g) {
    int64_t r0 = 0;
    if constexpr (Isa::kWide) {
      for (; r0 + 8 <= n; r0 += 8) {
        Vec acc[8 * TV];
        Accumulate<8, TV, kAligned, kMaskLoads>(rp, ci, vals, n, xt, xs, g, r0, acc, tail);
        StoreCf<8, TV, kPartial>(pr, acc, b, g * n + r0, p0, tail);
      }
    }
    for (; r0 + 4 <= n; r0 += 4) {
      Vec acc[4 * TV];
      Accumulate<4, TV, kAligned, kMaskLoads>(rp, ci, vals, n, xt, xs, g, r0, acc, tail);
      StoreCf<4, TV, kPartial>(pr, acc, b, g * n + r0, p0, tail);
    }
    for (; r0 < n; ++r0) {  // N = 1, 2: one channel at a time
      Vec acc[TV];
      Accumulate<1, TV, kAligned, kMaskLoads>(rp, ci, vals, n, xt, xs, g, r0, acc, tail);
      StoreCf<1, TV, kPartial>(pr, acc, b, g * n + r0, p0, tail);
    }
  }
}

// Where the rows of x are not whole vectors apart (pixels % kLanes != 0, e.g. 14x14 = 196), most
// vector loads of x would straddle two cache lines; measured 15-20% slower than aligned rows.
// The tile is then copied once into an aligned, zero-padded panel [k][kTile] (k * TV vectors,
// a few percent of the tile's FMAs) that all groups read.
template <int TV>
void RunTileCf(const xla_ext::BsmmCfProblem& pr, int64_t b, int64_t p0, int64_t valid,
               int64_t g0, int64_t g1, float* panel) {
  const float* xt = pr.x + b * pr.k * pr.pixels + p0;
  const int rest = static_cast<int>(valid - (TV - 1) * Isa::kLanes);
  const typename Isa::Mask tail = Isa::MakeMask(rest % Isa::kLanes);
  if (panel != nullptr && pr.pixels % Isa::kLanes != 0) {
    for (int64_t c = 0; c < pr.k; ++c) {
      const float* src = xt + c * pr.pixels;
      float* dst = panel + c * Isa::kTile;
#pragma GCC unroll 3
      for (int t = 0; t < TV; ++t)
        Isa::StoreU(dst + t * Isa::kLanes,
                    (t == TV - 1 && rest < Isa::kLanes) ? Isa::LoadMasked(src + t * Isa::kLanes, tail)
                                                         : Isa::LoadU(src + t * Isa::kLanes));
    }
    if (rest == Isa::kLanes)
      GroupsCf<TV, true, false>(pr, panel, Isa::kTile, g0, g1, b, p0, tail);
    else
      GroupsCf<TV, true, true>(pr, panel, Isa::kTile, g0, g1, b, p0, tail);
    return;
  }
  if (rest == Isa::kLanes)
    GroupsCf<TV, false, false>(pr, xt, pr.pixels, g0, g1, b, p0, tail);
  else
    GroupsCf<TV, false, true>(pr, xt, pr.pixels, g0, g1, b, p0, tail);
}

// Tile t of an image of nv vectors: its first vector and vector count. Tiles hold kVecs
// vectors, except that a remainder of one vector is avoided when possible: a one-vector tile
// spends as many weight broadcasts per segment as a full one for a third of the FMAs, so
// 3k + 1 vectors run as (k - 1) full tiles and two of two vectors.
inline void CfTile(int64_t nv, int64_t t, int64_t* v0, int* tv) {
  constexpr int V = Isa::kVecs;
  if (V == 3 && nv >= 4 && nv % 3 == 1) {
    const int64_t q = nv / 3;
    if (t < q - 1) {
      *v0 = 3 * t;
      *tv = 3;
    } else {
      *v0 = 3 * (q - 1) + 2 * (t - (q - 1));
      *tv = 2;
    }
    return;
  }
  *v0 = V * t;
  *tv = static_cast<int>(MinI64(V, nv - V * t));
}

// Tiles are numbered image-major; an image has ceil(pixels / kTile) of them (bsmm.h).
void RunTilesCf(const xla_ext::BsmmCfProblem& pr, int64_t tile_begin, int64_t tile_end,
                int64_t group_begin, int64_t group_end, float* workspace) {
  static_assert(Isa::kVecs >= 1 && Isa::kVecs <= 3, "RunTilesCf dispatches 1..3 vectors per tile");
  const int64_t per_image = (pr.pixels + Isa::kTile - 1) / Isa::kTile;
  const int64_t nv = (pr.pixels + Isa::kLanes - 1) / Isa::kLanes;
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t b = tile / per_image;
    int64_t v0;
    int tv;
    CfTile(nv, tile % per_image, &v0, &tv);
    const int64_t p0 = v0 * Isa::kLanes;
    const int64_t valid = MinI64(tv * Isa::kLanes, pr.pixels - p0);
    switch (tv) {
      case 1: RunTileCf<1>(pr, b, p0, valid, group_begin, group_end, workspace); break;
      case 2: RunTileCf<(Isa::kVecs >= 2 ? 2 : 1)>(pr, b, p0, valid, group_begin, group_end,
                                                   workspace); break;
      default: RunTileCf<Isa::kVecs>(pr, b, p0, valid, group_begin, group_end, workspace); break;
    }
  }
}

}  // namespace
