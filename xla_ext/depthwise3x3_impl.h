// 3x3 depthwise convolution (padding 1, stride 1 or 2) with a fused bias + ReLU/ReLU6 epilogue,
// on the channels-first "padded-width" layout of onexn.channels_first (depthwise3x3.h, Depthwise3x3Problem).
// Included by each ISA unit after bsmm_impl.h (same Isa interface).
//
// Why a kernel (MobileNet-V2 end to end, `onexn.end_to_end_latency`): the 1xN kernels shrink the 1x1 convs, and
// what is left of the sparse network is mostly its 17 depthwise convs. As XLA fusions over this
// layout they cost ~1.7 of ~2.4 ms (a pass that zeroes the junk columns and pads, then a
// 9-tap fusion); they are memory-bound, ~0.3 ms of traffic. Here each plane is copied once into an
// L1/L2-resident zero-bordered scratch (stride 2: split into even/odd columns on the way, so that
// every tap is a unit-stride load), then each output vector is 9 FMAs on 9 unaligned loads, and
// the epilogue is applied before the one store.

namespace {

// Scratch of one plane: rows 0 .. h+1 of `rs` floats (row 0 and h+1, and the columns outside the
// data, stay zero: they are the conv's zero padding). Stride 1: scratch column j = input column
// j - 1. Stride 2: the same columns split by parity, even ones at [0, rs/2), odd ones at
// [rs/2, rs), so that output column o reads even[o], odd[o], even[o + 1].
inline int64_t DepthwiseRowFloats(int64_t w, int64_t stride) {
  constexpr int64_t L = Isa::kLanes;
  if (stride == 1) return ((w + 2 + L - 1) / L + 1) * L;
  const int64_t half = ((w + 2) / 2 + 1 + L - 1) / L * L + L;
  return 2 * half;
}

inline void DepthwiseFillPlane(const float* __restrict x, int64_t h, int64_t w, int64_t stride, int64_t rs,
                        float* __restrict scratch) {
  const int64_t xs = w + 2;  // padded-width row stride of x
  if (stride == 1) {
    for (int64_t r = 0; r < h; ++r) {
      const float* src = x + r * xs;
      float* dst = scratch + (r + 1) * rs + 1;
      int64_t c = 0;
      for (; c + Isa::kLanes <= w; c += Isa::kLanes) Isa::StoreU(dst + c, Isa::LoadU(src + c));
      if (c < w) {
        const typename Isa::Mask m = Isa::MakeMask(static_cast<int>(w - c));
        Isa::StoreMasked(dst + c, Isa::LoadMasked(src + c, m), m);
      }
    }
    return;
  }
  const int64_t half = rs / 2;
  for (int64_t r = 0; r < h; ++r) {
    const float* src = x + r * xs;
    float* even = scratch + (r + 1) * rs;
    float* odd = even + half;
    // input column i is scratch column i + 1: odd[i / 2] for even i, even[(i + 1) / 2] for odd i.
    // The vectors past w carry zeros (the scratch's padding stays zero).
    for (int64_t i = 0; i < w; i += 2 * Isa::kLanes) {
      typename Isa::Vec ev, od;
      Isa::Deinterleave(src + i, static_cast<int>(MinI64(2 * Isa::kLanes, w - i)), &ev, &od);
      Isa::StoreU(odd + i / 2, ev);
      Isa::StoreU(even + i / 2 + 1, od);
    }
  }
}

template <bool kStride2>
inline void DepthwisePlane(const xla_ext::Depthwise3x3Problem& pr, int64_t plane, float* scratch) {
  using Vec = typename Isa::Vec;
  constexpr int L = Isa::kLanes;
  const int64_t h = pr.h, w = pr.w, stride = kStride2 ? 2 : 1;
  const int64_t ho = pr.ho, wo = pr.wo, rs = DepthwiseRowFloats(w, stride);
  const int64_t c = plane % pr.channels;
  const float* x = pr.x + plane * h * (w + 2);
  float* y = pr.y + plane * ho * (wo + 2);
  DepthwiseFillPlane(x, h, w, stride, rs, scratch);
  Vec k[9];
  for (int t = 0; t < 9; ++t) k[t] = Isa::Bcast(pr.kernel + c * 9 + t);
  const Vec bias = Isa::Bcast(pr.bias + c);
  const float six = 6.0f;
  const Vec zero = Isa::Zero(), vsix = Isa::Bcast(&six);
  const int64_t half = rs / 2;
  auto finish = [&](Vec acc, float* yr, int64_t c0) {
    // Max/Min return their second operand when either is NaN: NaN stays NaN, as in jnp.
    if (pr.activation != xla_ext::kBsmmActNone) acc = Isa::Max(zero, acc);
    if (pr.activation == xla_ext::kBsmmActRelu6) acc = Isa::Min(vsix, acc);
    if (c0 + L <= wo)
      Isa::StoreU(yr + c0, acc);
    else
      Isa::StoreMasked(yr + c0, acc, Isa::MakeMask(static_cast<int>(wo - c0)));
  };
  int64_t r = 0;
  if (!kStride2) {
    // Two output rows at a time: they share two of their four input rows (12 loads, not 18).
    for (; r + 2 <= ho; r += 2) {
      float* y0 = y + r * (wo + 2);
      float* y1 = y0 + (wo + 2);
      for (int64_t c0 = 0; c0 < wo; c0 += L) {
        Vec a0 = bias, a1 = bias;
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          const float* row = scratch + (r + i) * rs + c0;
#pragma GCC unroll 3
          for (int dx = 0; dx < 3; ++dx) {
            const Vec v = Isa::LoadU(row + dx);
            if (i < 3) a0 = Isa::Fma(k[i * 3 + dx], v, a0);
            if (i > 0) a1 = Isa::Fma(k[(i - 1) * 3 + dx], v, a1);
          }
        }
        finish(a0, y0, c0);
        finish(a1, y1, c0);
      }
      y0[wo] = y0[wo + 1] = y1[wo] = y1[wo + 1] = 0.0f;  // junk columns: defined zeros
    }
  }
  for (; r < ho; ++r) {
    float* yr = y + r * (wo + 2);
    for (int64_t c0 = 0; c0 < wo; c0 += L) {
      Vec acc = bias;
#pragma GCC unroll 3
      for (int dy = 0; dy < 3; ++dy) {
        const float* row = scratch + ((kStride2 ? 2 * r : r) + dy) * rs;
        if (kStride2) {
          acc = Isa::Fma(k[dy * 3 + 0], Isa::LoadU(row + c0), acc);
          acc = Isa::Fma(k[dy * 3 + 1], Isa::LoadU(row + half + c0), acc);
          acc = Isa::Fma(k[dy * 3 + 2], Isa::LoadU(row + c0 + 1), acc);
        } else {
          acc = Isa::Fma(k[dy * 3 + 0], Isa::LoadU(row + c0), acc);
          acc = Isa::Fma(k[dy * 3 + 1], Isa::LoadU(row + c0 + 1), acc);
          acc = Isa::Fma(k[dy * 3 + 2], Isa::LoadU(row + c0 + 2), acc);
        }
      }
      finish(acc, yr, c0);
    }
    yr[wo] = 0.0f;  // the output's junk columns: defined zeros
    yr[wo + 1] = 0.0f;
  }
}

// Planes [plane_begin, plane_end) of the B * C planes. `workspace`: Depthwise3x3WorkspaceFloats floats.
void RunDepthwise3x3(const xla_ext::Depthwise3x3Problem& pr, int64_t plane_begin, int64_t plane_end,
           int64_t /*group_begin*/, int64_t /*group_end*/, float* workspace) {
  const int64_t rs = DepthwiseRowFloats(pr.w, pr.stride);
  const int64_t floats = (pr.h + 3) * rs;
  // Zero once per work item: the padding rows/columns are never written afterwards.
  for (int64_t i = 0; i < floats; ++i) workspace[i] = 0.0f;
  for (int64_t plane = plane_begin; plane < plane_end; ++plane) {
    if (pr.stride == 2)
      DepthwisePlane<true>(pr, plane, workspace);
    else
      DepthwisePlane<false>(pr, plane, workspace);
  }
}

int64_t Depthwise3x3WorkspaceFloats(int64_t h, int64_t w, int64_t stride) {
  return (h + 3) * DepthwiseRowFloats(w, stride);
}

}  // namespace
