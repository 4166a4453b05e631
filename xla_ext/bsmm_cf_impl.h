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

template <int R, int TV>
inline void StoreCf(const xla_ext::BsmmCfProblem& pr, const typename Isa::Vec* acc, int64_t b,
                    int64_t c0, int64_t p0, int64_t valid) {
  using Vec = typename Isa::Vec;
  const int64_t m = pr.groups * pr.n, hw = pr.pixels;
  const float six = 6.0f;
  const Vec zero = Isa::Zero(), vsix = Isa::Bcast(&six);
  // Vectors [0, full) are whole; a last, partial one (the image's final tile) goes through a
  // small buffer so that nothing is read or written past the row.
  const int full = static_cast<int>(valid / Isa::kLanes);
  const int rest = static_cast<int>(valid % Isa::kLanes);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const int64_t c = c0 + r;
    const Vec bias = pr.bias ? Isa::Bcast(pr.bias + c) : zero;
    float* yr = pr.y + (b * m + c) * hw + p0;
    const float* rr = pr.residual ? pr.residual + (b * m + c) * hw + p0 : nullptr;
#pragma GCC unroll 4
    for (int t = 0; t < TV; ++t) {
      if (t > full || (t == full && rest == 0)) break;
      const bool partial = t == full;
      alignas(64) float buf[Isa::kLanes];
      Vec v = Isa::Add(acc[r * TV + t], bias);
      if (rr) {
        if (partial) {
          for (int i = 0; i < Isa::kLanes; ++i) buf[i] = i < rest ? rr[t * Isa::kLanes + i] : 0.0f;
          v = Isa::Add(v, Isa::Load(buf));
        } else {
          v = Isa::Add(v, Isa::LoadU(rr + t * Isa::kLanes));
        }
      }
      // Max/Min return their second operand when either is NaN: NaN stays NaN, as in jnp.
      if (pr.activation != xla_ext::kBsmmActNone) v = Isa::Max(zero, v);
      if (pr.activation == xla_ext::kBsmmActRelu6) v = Isa::Min(vsix, v);
      if (partial) {
        Isa::StoreU(buf, v);
        for (int i = 0; i < rest; ++i) yr[t * Isa::kLanes + i] = buf[i];
      } else {
        Isa::StoreU(yr + t * Isa::kLanes, v);
      }
    }
  }
}

// All channels of groups [g0, g1) for one tile: the tile's input feature c is TV vectors at
// xt + c * xs (kAligned: a packed panel).
template <int TV, bool kAligned>
inline void GroupsCf(const xla_ext::BsmmCfProblem& pr, const float* xt, int64_t xs, int64_t g0,
                     int64_t g1, int64_t b, int64_t p0, int64_t valid) {
  using Vec = typename Isa::Vec;
  const int64_t n = pr.n;
  int64_t g = g0;
  if constexpr (Isa::kWide) {
    if (n == 4) {
      for (; g + 2 <= g1; g += 2) {
        Vec acc[8 * TV];
        Accumulate<4, TV, kAligned>(pr.row_ptr, pr.col_idx, pr.values, 4, xt, xs, g, 0, acc);
        Accumulate<4, TV, kAligned>(pr.row_ptr, pr.col_idx, pr.values, 4, xt, xs, g + 1, 0,
                                    acc + 4 * TV);
        StoreCf<8, TV>(pr, acc, b, g * 4, p0, valid);
      }
    }
  }
  for (; g < g1; ++g) {
    int64_t r0 = 0;
    if constexpr (Isa::kWide) {
      for (; r0 + 8 <= n; r0 += 8) {
        Vec acc[8 * TV];
        Accumulate<8, TV, kAligned>(pr.row_ptr, pr.col_idx, pr.values, n, xt, xs, g, r0, acc);
        StoreCf<8, TV>(pr, acc, b, g * n + r0, p0, valid);
      }
    }
    for (; r0 + 4 <= n; r0 += 4) {
      Vec acc[4 * TV];
      Accumulate<4, TV, kAligned>(pr.row_ptr, pr.col_idx, pr.values, n, xt, xs, g, r0, acc);
      StoreCf<4, TV>(pr, acc, b, g * n + r0, p0, valid);
    }
    for (; r0 < n; ++r0) {  // N = 1, 2 (or the rest of N = 3-type sizes): one channel at a time
      Vec acc[TV];
      Accumulate<1, TV, kAligned>(pr.row_ptr, pr.col_idx, pr.values, n, xt, xs, g, r0, acc);
      StoreCf<1, TV>(pr, acc, b, g * n + r0, p0, valid);
    }
  }
}

template <int TV>
void RunTileCf(const xla_ext::BsmmCfProblem& pr, int64_t b, int64_t p0, int64_t valid,
               int64_t g0, int64_t g1, float* panel) {
  const float* xb = pr.x + b * pr.k * pr.pixels + p0;
  if (valid % Isa::kLanes == 0) {
    GroupsCf<TV, false>(pr, xb, pr.pixels, g0, g1, b, p0, valid);
    return;
  }
  // The image's last tile ends inside a vector: copy it into a zero-padded panel (k * valid
  // floats, once per tile) rather than read past the end of a row (or of x).
  constexpr int64_t W = Isa::kTile;
  const int64_t cols = TV * Isa::kLanes;
  for (int64_t c = 0; c < pr.k; ++c) {
    const float* src = xb + c * pr.pixels;
    float* dst = panel + c * W;
    for (int64_t j = 0; j < valid; ++j) dst[j] = src[j];
    for (int64_t j = valid; j < cols; ++j) dst[j] = 0.0f;
  }
  GroupsCf<TV, true>(pr, panel, W, g0, g1, b, p0, valid);
}

void RunTilesCf(const xla_ext::BsmmCfProblem& pr, int64_t tile_begin, int64_t tile_end,
                int64_t group_begin, int64_t group_end, float* workspace) {
  constexpr int64_t W = Isa::kTile;
  static_assert(Isa::kVecs >= 1 && Isa::kVecs <= 3, "RunTilesCf dispatches 1..3 vectors per tile");
  const int64_t per_image = (pr.pixels + W - 1) / W;
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t b = tile / per_image, p0 = (tile % per_image) * W;
    const int64_t valid = MinI64(W, pr.pixels - p0);
    switch ((valid + Isa::kLanes - 1) / Isa::kLanes) {
      case 1: RunTileCf<1>(pr, b, p0, valid, group_begin, group_end, workspace); break;
      case 2: RunTileCf<(Isa::kVecs >= 2 ? 2 : 1)>(pr, b, p0, valid, group_begin, group_end,
                                                   workspace); break;
      default: RunTileCf<Isa::kVecs>(pr, b, p0, valid, group_begin, group_end, workspace); break;
    }
  }
}

}  // namespace
