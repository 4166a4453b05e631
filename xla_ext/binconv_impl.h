// The bit-packed binary convolution (binconv.h), written once against a small per-ISA interface.
// Included inside an anonymous namespace by each ISA translation unit, after it defines
//
//   struct Isa {
//     using Vec;                        // kLanes uint32 lanes: one output channel per lane
//     using Cnt;                        // per-lane popcount accumulator
//     static constexpr int kLanes;      // 8 or 16
//     static constexpr int kPixels;     // pixels per register block (R)
//     static constexpr int kChunk;      // flush Cnt into int32 every kChunk words (0: only at the end)
//     Vec Load(const uint32_t*);  Vec Bcast(uint32_t);  Cnt Zero();
//     Cnt Accum(Cnt c, Vec x, Vec w);   // c += popcount(x ^ w), per lane
//     void Flush(Cnt c, int32_t* acc);  // acc[0..kLanes) += c
//   };
//
// A register block is kPixels output pixels x V vectors of output channels (V = 2, or 1 for a
// last block of 16 channels); its inner loop, per packed word of the patch, loads V weight
// vectors and, per pixel, broadcasts one input word and does V XOR + popcount + add. The counts
// land in a small int32 tile on the stack, which the float32 epilogue then reads per channel
// run (vectorised by the compiler under the unit's target).

struct Tile {
  // Per pixel of the block: the input words of every tap (zeros row for a padded tap), the
  // number of taps inside the image, and the padded taps (bit t).
  const uint32_t* xp[Isa::kPixels][9];
  int32_t valid[Isa::kPixels];
  uint32_t pad_mask[Isa::kPixels];
  int64_t pixel[Isa::kPixels];  // flattened output pixel, -1 past the end
};

inline void MakeTile(const xla_ext::BinconvProblem& p, int64_t tile, Tile* t) {
  const int taps = static_cast<int>(p.ksize * p.ksize);
  const int64_t pad = (p.ksize - 1) / 2;
  const int64_t total = p.batch * p.ho * p.wo;
  int64_t q = tile * Isa::kPixels;
  // One division per tile; the pixels of a tile then step along the row (and wrap).
  int64_t b = q / (p.ho * p.wo), oy = (q % (p.ho * p.wo)) / p.wo, ox = q % p.wo;
  for (int r = 0; r < Isa::kPixels; ++r, ++q) {
    t->pixel[r] = q < total ? q : -1;
    t->valid[r] = 0;
    t->pad_mask[r] = 0;
    const int64_t y0 = oy * p.stride - pad, x0 = ox * p.stride - pad;
    const uint32_t* base = p.x + ((b * p.height + y0) * p.width + x0) * p.cw;
    for (int k = 0; k < taps; ++k) {
      const int dy = taps == 9 ? k / 3 : 0, dx = taps == 9 ? k % 3 : 0;
      const int64_t iy = y0 + dy, ix = x0 + dx;
      if (q < total && iy >= 0 && iy < p.height && ix >= 0 && ix < p.width) {
        t->xp[r][k] = base + (dy * p.width + dx) * p.cw;
        ++t->valid[r];
      } else {
        t->xp[r][k] = p.zeros;
        t->pad_mask[r] |= 1u << k;
      }
    }
    if (++ox == p.wo) {
      ox = 0;
      if (++oy == p.ho) oy = 0, ++b;
    }
  }
}

// Counts popcount(x ^ w) over the whole patch for the block's pixels and channels
// [co0, co0 + V * kLanes) into acc[r][v * kLanes + lane].
template <int V>
inline void CountBlock(const xla_ext::BinconvProblem& p, const Tile& t, int64_t co0,
                       int32_t* acc) {
  constexpr int R = Isa::kPixels, L = Isa::kLanes;
  for (int i = 0; i < R * V * L; ++i) acc[i] = 0;
  typename Isa::Cnt c[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) c[r][v] = Isa::Zero();
  const int64_t taps = p.ksize * p.ksize, cw = p.cw;
  int steps = 0;
  for (int64_t k = 0; k < taps; ++k) {
    const uint32_t* wk = p.w + k * cw * p.co_pad + co0;
    for (int64_t j = 0; j < cw; ++j) {
      typename Isa::Vec w[V];
      for (int v = 0; v < V; ++v) w[v] = Isa::Load(wk + j * p.co_pad + v * L);
      for (int r = 0; r < R; ++r) {
        const typename Isa::Vec x = Isa::Bcast(t.xp[r][k][j]);
        for (int v = 0; v < V; ++v) c[r][v] = Isa::Accum(c[r][v], x, w[v]);
      }
      if (Isa::kChunk > 0 && ++steps == Isa::kChunk) {
        for (int r = 0; r < R; ++r)
          for (int v = 0; v < V; ++v) {
            Isa::Flush(c[r][v], acc + (r * V + v) * L);
            c[r][v] = Isa::Zero();
          }
        steps = 0;
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) Isa::Flush(c[r][v], acc + (r * V + v) * L);
}

// The float32 epilogue of binconv.h, 8 channels at a time in GCC vector types (which every
// unit's target lowers to its own registers: one ymm for AVX2 and AVX-512, two xmm portably).
// Left to the auto-vectoriser, GCC unrolled the AVX2 unit's 16-channel loops into scalar code
// (vaddss/vcomiss per channel): the epilogue then took 2/3 of a fused Bi-Real layer's time.
typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));

template <typename T>
inline T Load8(const void* p) {
  T v;
  __builtin_memcpy(&v, p, sizeof(T));
  return v;
}

// Channels [co0 + c8, co0 + c8 + 8) of pixel r, from the counts at cnt + c8.
inline void Epilogue8(const xla_ext::BinconvProblem& p, const Tile& t, int r, const int32_t* cnt,
                      int64_t co0) {
  const int64_t q = t.pixel[r];
  I8 s = Load8<I8>(cnt);
  // Padded taps were XORed with zeros: take their popcount(w) back out.
  for (uint32_t m = t.pad_mask[r]; m; m &= m - 1)
    s -= Load8<I8>(p.wpop + static_cast<int64_t>(__builtin_ctz(m)) * p.co_pad + co0);
  const int32_t k = static_cast<int32_t>(p.c_in) * t.valid[r];
  F8 v = __builtin_convertvector(k - 2 * s, F8) * Load8<F8>(p.alpha + co0);
  if (p.bn_mul != nullptr)
    v = (v - Load8<F8>(p.bn_mean + co0)) * Load8<F8>(p.bn_mul + co0) + Load8<F8>(p.bn_beta + co0);
  if (p.residual != nullptr) v += Load8<F8>(p.residual + q * p.c_out + co0);
  if (p.activation == xla_ext::kBinconvActHardtanh) {
    const F8 one = F8{} + 1.0f;
    v = v < -one ? -one : v;
    v = v > one ? one : v;
  } else if (p.activation == xla_ext::kBinconvActPrelu) {
    const F8 neg = Load8<F8>(p.slope + co0) * v;
    v = v >= 0.0f ? v : neg;
  }
  __builtin_memcpy(p.y + q * p.c_out + co0, &v, sizeof(v));
}

// The same for one channel (the last, partial group of 8 of a layer whose c_out is not a multiple
// of 8), in the same float32 operations.
inline void Epilogue1(const xla_ext::BinconvProblem& p, const Tile& t, int r, int32_t cnt,
                      int64_t co) {
  const int64_t q = t.pixel[r];
  for (uint32_t m = t.pad_mask[r]; m; m &= m - 1)
    cnt -= p.wpop[static_cast<int64_t>(__builtin_ctz(m)) * p.co_pad + co];
  const int32_t k = static_cast<int32_t>(p.c_in) * t.valid[r];
  float v = static_cast<float>(k - 2 * cnt) * p.alpha[co];
  if (p.bn_mul != nullptr) v = (v - p.bn_mean[co]) * p.bn_mul[co] + p.bn_beta[co];
  if (p.residual != nullptr) v += p.residual[q * p.c_out + co];
  if (p.activation == xla_ext::kBinconvActHardtanh) {
    v = v < -1.0f ? -1.0f : v;
    v = v > 1.0f ? 1.0f : v;
  } else if (p.activation == xla_ext::kBinconvActPrelu) {
    v = v >= 0.0f ? v : p.slope[co] * v;
  }
  p.y[q * p.c_out + co] = v;
}

// The epilogue for one pixel and the channels [co0, co1).
inline void Epilogue(const xla_ext::BinconvProblem& p, const Tile& t, int r, const int32_t* cnt,
                     int64_t co0, int64_t co1) {
  int64_t c = 0;
  for (; co0 + c + 8 <= co1; c += 8) Epilogue8(p, t, r, cnt + c, co0 + c);
  for (; co0 + c < co1; ++c) Epilogue1(p, t, r, cnt[c], co0 + c);
}

void Run(const xla_ext::BinconvProblem& p, int64_t tile_begin, int64_t tile_end,
         int64_t co_begin, int64_t co_end) {
  constexpr int R = Isa::kPixels, L = Isa::kLanes;
  alignas(64) int32_t acc[R * 2 * L];
  Tile t;
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    MakeTile(p, tile, &t);
    for (int64_t co0 = co_begin; co0 < co_end;) {
      const int v = co0 + 2 * L <= co_end ? 2 : 1;
      const int64_t width = v * L < co_end - co0 ? v * L : co_end - co0;
      if (v == 2) CountBlock<2>(p, t, co0, acc);
      else CountBlock<1>(p, t, co0, acc);
      // Channels past c_out are padding: computed (whole vectors) but never stored.
      const int64_t co1 = co0 + width < p.c_out ? co0 + width : p.c_out;
      if (co1 > co0)
        for (int r = 0; r < R; ++r)
          if (t.pixel[r] >= 0) Epilogue(p, t, r, acc + r * v * L, co0, co1);
      co0 += width;
    }
  }
}
