// Row-panel packing shared by the AVX2 and AVX-512 kernels: 8x8 in-register transposes turn 8
// rows of x (8 consecutive input features each) into 8 panel rows of 8 pixels. Included inside
// the anonymous namespace of a translation unit compiled with at least AVX2 enabled.

// dst[c * dst_stride + i] = src[i * src_stride + c] for c < 8, i < 8. Rows i and i+4 share a
// vector (two 128-bit loads), so only in-lane 4x4 transposes are needed: 16 shuffles per 64
// floats instead of 24 (shuffles bound the packing).
inline void Transpose8x8(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    const float* s = src + 4 * h;
    __m256 r[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i)
      r[i] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(s + i * src_stride)),
                                  _mm_loadu_ps(s + (i + 4) * src_stride), 1);
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    float* d = dst + 4 * h * dst_stride;
    _mm256_store_ps(d, _mm256_shuffle_ps(t0, t2, 0x44));
    _mm256_store_ps(d + dst_stride, _mm256_shuffle_ps(t0, t2, 0xEE));
    _mm256_store_ps(d + 2 * dst_stride, _mm256_shuffle_ps(t1, t3, 0x44));
    _mm256_store_ps(d + 3 * dst_stride, _mm256_shuffle_ps(t1, t3, 0xEE));
  }
}

// The same for the first `rows` < 8 rows, zeros for the others (the last, partial tile).
inline void Transpose8x8Partial(const float* src, int64_t src_stride, int64_t rows, float* dst,
                                int64_t dst_stride) {
  alignas(32) float tmp[8 * 8] = {};
  for (int64_t i = 0; i < rows; ++i)
    for (int c = 0; c < 8; ++c) tmp[i * 8 + c] = src[i * src_stride + c];
  Transpose8x8(tmp, 8, dst, dst_stride);
}

// panel[c * kTile + j] = x[j * k + c] for j < valid, 0 for valid <= j < cols (cols % 8 == 0).
template <int64_t kTile>
inline void PackRows8x8(const float* x, int64_t k, int64_t valid, int64_t cols, float* panel) {
  const int64_t k8 = k / 8 * 8;
  for (int64_t j0 = 0; j0 < cols; j0 += 8) {
    const int64_t rows = valid - j0 >= 8 ? 8 : (valid > j0 ? valid - j0 : 0);
    const float* xr = x + j0 * k;
    float* p = panel + j0;
    if (rows == 8) {
      for (int64_t c = 0; c < k8; c += 8) Transpose8x8(xr + c, k, p + c * kTile, kTile);
    } else if (rows > 0) {
      for (int64_t c = 0; c < k8; c += 8) Transpose8x8Partial(xr + c, k, rows, p + c * kTile, kTile);
    } else {
      for (int64_t c = 0; c < k8; ++c) _mm256_store_ps(p + c * kTile, _mm256_setzero_ps());
    }
    for (int64_t c = k8; c < k; ++c)
      for (int64_t i = 0; i < 8; ++i) p[c * kTile + i] = i < rows ? xr[i * k + c] : 0.0f;
  }
}
