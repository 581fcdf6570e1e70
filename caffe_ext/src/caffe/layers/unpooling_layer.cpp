#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "caffe/layers/unpooling_layer.hpp"
#include "caffe/util/cpu_threads.hpp"
#include "caffe/util/math_functions.hpp"

#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__GNUC__) && defined(__x86_64__)
#define UNPOOL_AVX512 1
#include <immintrin.h>
#endif

namespace caffe {

// A 2x2/2 tiling of short rows, for its AVX-512 path: the pooled rows in
// groups of `rows` (`lanes` = rows * pooled_w <= 32 values, a multiple of 4),
// whose outputs (two output rows per pooled row: 4 values per lane) are
// `vectors` whole 16-value vectors, one after the other. A group's values
// and switches are two registers; each output vector is a permute of them.
// Groups run on across planes (both are contiguous), so the lanes' places
// in their planes repeat with a period of `phases` groups, `planes` planes.
struct UnpoolRowGroups {
  static const int kMaxPhases = 64;
  int rows, lanes, vectors, phases, planes;
  // per phase: each lane's window's top-left output, flat in its plane
  alignas(64) int32_t window[kMaxPhases][32];
  // each output's lane in the group, and its place in the window: 0, 1 (top
  // row), width, width + 1 (bottom row)
  alignas(64) int32_t lane[8][16];
  alignas(64) int32_t cell[8][16];
  // (5-8 vectors: BuildRowGroups)
  uint16_t fixed[8];  // outputs that are their window's fixed cell
};

namespace {

// CPU fast path for non-overlapping windows (kernel <= stride in both
// dimensions): each location receives at most one value, so the output is
// written output-centrically, row by row, every element exactly once (the
// value that lands there, or 0), with no zeroing pass and no
// read-modify-write. A value is written as 0 + value, as the generic path's
// `out[j] += value` on a zeroed output does (so -0 becomes +0 there too):
// both paths give bit-identical results.

// Column geometry of one output row: window pw covers columns
// [pw * stride - pad, pw * stride - pad + kernel) clipped to [0, width);
// windows [full_begin, full_end) lie wholly inside the row.
struct RowGeometry {
  int width, pooled, kernel, stride, pad, offset;
  int full_begin, full_end;
  RowGeometry(int width, int pooled, int kernel, int stride, int pad,
              int offset)
      : width(width), pooled(pooled), kernel(kernel), stride(stride),
        pad(pad), offset(offset) {
    full_begin = std::min(pooled, (pad + stride - 1) / stride);
    full_end = full_begin;
    if (width + pad - kernel >= 0) {
      full_end = std::max(full_begin,
          std::min(pooled, (width + pad - kernel) / stride + 1));
    }
  }
};

// Windows [begin, end) of one row, any geometry, from column *c on (the
// columns before a window, gaps when stride > kernel, are zeroed). Known
// switches: the value goes to the column whose flat index row0 + column is
// the switch; fixed: to column start + offset. Returns how many values
// landed in this row.
template <typename Dtype, bool KNOWN>
inline int UnpoolWindows(const Dtype* values, const Dtype* switches,
    int begin, int end, const RowGeometry& g, int row0, Dtype* out, int* c) {
  int hits = 0;
  int col = *c;
  for (int pw = begin; pw < end; ++pw) {
    const int start = pw * g.stride - g.pad;
    const int lo = std::min(std::max(start, 0), g.width);
    const int hi = std::max(std::min(start + g.kernel, g.width), lo);
    for (; col < lo; ++col) {
      out[col] = Dtype(0);
    }
    // Column of the value relative to lo, as unsigned: anything outside
    // [0, hi - lo) means "not in this row" (no signed overflow for any
    // switch, NaN's INT_MIN included).
    const unsigned r = KNOWN
        ? static_cast<unsigned>(static_cast<int>(switches[pw])) -
          static_cast<unsigned>(row0 + lo)
        : static_cast<unsigned>(start + g.offset - lo);
    const Dtype x = values[pw] + Dtype(0);
    for (; col < hi; ++col) {
      out[col] = r == static_cast<unsigned>(col - lo) ? x : Dtype(0);
    }
    hits += r < static_cast<unsigned>(hi - lo);
  }
  *c = col;
  return hits;
}

// n whole windows of K columns side by side (stride == kernel == K), out[0]
// the first window's first column, whose flat index is base: the loop the
// compiler vectorises.
template <typename Dtype, bool KNOWN, int K>
inline int UnpoolRun(const Dtype* __restrict__ values,
    const Dtype* __restrict__ switches, int n, unsigned base, int offset,
    Dtype* __restrict__ out) {
  int hits = 0;
  for (int p = 0; p < n; ++p) {
    const unsigned r = KNOWN
        ? static_cast<unsigned>(static_cast<int>(switches[p])) -
          (base + static_cast<unsigned>(p * K))
        : static_cast<unsigned>(offset);
    const Dtype x = values[p] + Dtype(0);
    for (int d = 0; d < K; ++d) {
      out[p * K + d] = r == static_cast<unsigned>(d) ? x : Dtype(0);
    }
    hits += r < static_cast<unsigned>(K);
  }
  return hits;
}

// One whole output row (flat index of its first element: row0) from one
// pooled row. Returns how many of the pooled row's values landed in it.
template <typename Dtype, bool KNOWN>
int UnpoolRow(const Dtype* values, const Dtype* switches,
    const RowGeometry& g, int row0, Dtype* out) {
  int c = 0;
  int hits = UnpoolWindows<Dtype, KNOWN>(values, switches, 0, g.full_begin,
      g, row0, out, &c);
  const int n = g.full_end - g.full_begin;
  if (g.stride == g.kernel && n > 0 && g.kernel <= 4) {
    const int start = g.full_begin * g.stride - g.pad;
    for (; c < start; ++c) {
      out[c] = Dtype(0);
    }
    const Dtype* v = values + g.full_begin;
    const Dtype* s = KNOWN ? switches + g.full_begin : NULL;
    const unsigned base = static_cast<unsigned>(row0 + start);
    switch (g.kernel) {
    case 1:
      hits += UnpoolRun<Dtype, KNOWN, 1>(v, s, n, base, g.offset, out + start);
      break;
    case 2:
      hits += UnpoolRun<Dtype, KNOWN, 2>(v, s, n, base, g.offset, out + start);
      break;
    case 3:
      hits += UnpoolRun<Dtype, KNOWN, 3>(v, s, n, base, g.offset, out + start);
      break;
    default:
      hits += UnpoolRun<Dtype, KNOWN, 4>(v, s, n, base, g.offset, out + start);
    }
    c = start + n * g.kernel;
  } else {
    hits += UnpoolWindows<Dtype, KNOWN>(values, switches, g.full_begin,
        g.full_end, g, row0, out, &c);
  }
  hits += UnpoolWindows<Dtype, KNOWN>(values, switches, g.full_end, g.pooled,
      g, row0, out, &c);
  for (; c < g.width; ++c) {
    out[c] = Dtype(0);
  }
  return hits;
}

// x where keep, else +0, by masking x's bits (a compare and an and, where
// `keep ? x : 0` on random switches compiled to mispredicted branches).
template <typename Dtype>
inline Dtype KeepIf(bool keep, Dtype x) {
  typedef typename std::conditional<sizeof(Dtype) == 4, uint32_t,
                                    uint64_t>::type Bits;
  Bits bits;
  std::memcpy(&bits, &x, sizeof(x));
  bits &= -static_cast<Bits>(keep);
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

// Pooled value pw of a row into its 2x2 block (top and bottom output rows,
// base: the flat index of top[0]); 1 if it landed there. The selects are
// masks, not branches: r is random.
template <typename Dtype, bool KNOWN>
inline int UnpoolBlock(const Dtype* v, const Dtype* s, unsigned fixed_r,
    unsigned base, unsigned width, int pw, Dtype* top, Dtype* bottom) {
  const unsigned r = KNOWN
      ? static_cast<unsigned>(static_cast<int>(s[pw])) - (base + 2 * pw)
      : fixed_r;
  const Dtype x = v[pw] + Dtype(0);
  top[2 * pw] = KeepIf(r == 0, x);
  top[2 * pw + 1] = KeepIf(r == 1, x);
  bottom[2 * pw] = KeepIf(r == width, x);
  bottom[2 * pw + 1] = KeepIf(r == width + 1, x);
  return (r == 0) | (r == 1) | (r == width) | (r == width + 1);
}

// Pooled row ph of a 2x2/2 tiling (pooled_w values a row, output rows
// twice as wide): its values and switches (NULL: fixed switches), the two
// output rows its blocks fill, and the flat index where the first begins.
template <typename Dtype>
struct TiledRow {
  TiledRow(const Dtype* values, const Dtype* switches, int ph, int pooled_w,
           Dtype* out)
      : v(values + ph * pooled_w),
        s(switches ? switches + ph * pooled_w : NULL),
        top(out + 4 * ph * pooled_w), bottom(top + 2 * pooled_w),
        base(4 * ph * pooled_w) {}
  const Dtype* v;
  const Dtype* s;
  Dtype* top;
  Dtype* bottom;
  int base;
};

// VGG's case: 2x2 windows, stride 2, no padding, tiling the plane exactly
// (width == 2 * pooled_w). Each pooled value fills its 2x2 block in two
// output rows at once. r is the value's place relative to its block's
// top-left output (known switches: switch - block index; fixed: the
// offset's): 0, 1 (top row), width, width + 1 (bottom row); anything else
// lands nowhere. Same values as UnpoolRow (0 + value, +0 elsewhere).
// Returns the first pooled row whose switches did not all land, or -1.
template <typename Dtype, bool KNOWN>
int Unpool2x2Plane(const Dtype* values, const Dtype* switches,
    unsigned fixed_r, int pooled_h, int pooled_w, bool stream, Dtype* out) {
  const unsigned width = 2 * pooled_w;
  for (int ph = 0; ph < pooled_h; ++ph) {
    const TiledRow<Dtype> row(values, switches, ph, pooled_w, out);
    int hits = 0;
    for (int pw = 0; pw < pooled_w; ++pw) {
      hits += UnpoolBlock<Dtype, KNOWN>(row.v, row.s, fixed_r, row.base,
                                        width, pw, row.top, row.bottom);
    }
    if (KNOWN && hits != pooled_w) {
      return ph;
    }
  }
  return -1;
}

#ifdef __SSE2__
// float: four pooled values at a time, baseline x86-64 SSE2 (what Debian's
// compiler targets). With `stream`, the output goes out by non-temporal
// stores: for outputs larger than the caches, where write-allocating every
// output line would read it from memory first (what memcpy avoids too).
template <bool KNOWN>
int Unpool2x2PlaneFloat(const float* values, const float* switches,
    unsigned fixed_r, int pooled_h, int pooled_w, bool stream, float* out) {
  const int width = 2 * pooled_w;
  const int vec_end = pooled_w & ~3;
  // aligned stores need 16-byte rows (the caller checks the output's start)
  stream = stream && width % 4 == 0;
  const __m128i step = _mm_set_epi32(6, 4, 2, 0);
  const __m128i zero_i = _mm_setzero_si128();
  const __m128i one_i = _mm_set1_epi32(1);
  const __m128i width_i = _mm_set1_epi32(width);
  const __m128i width1_i = _mm_set1_epi32(width + 1);
  const __m128 zero = _mm_setzero_ps();
  const __m128i all_lanes = _mm_set1_epi32(-1);
  // lanes 4 - (pooled_w - vec_end) .. 3 of the overlapping last four
  const __m128i tail_lanes = _mm_cmpgt_epi32(_mm_set_epi32(3, 2, 1, 0),
      _mm_set1_epi32(3 - (pooled_w - vec_end)));
  for (int ph = 0; ph < pooled_h; ++ph) {
    const TiledRow<float> row(values, switches, ph, pooled_w, out);
    __m128i landed = _mm_setzero_si128();  // per lane: minus the values landed
    // four pooled values from pw on; `count` keeps the lanes to count
    auto four = [&](int pw, bool streamed, __m128i count) {
      const __m128i r = KNOWN
          ? _mm_sub_epi32(_mm_cvttps_epi32(_mm_loadu_ps(row.s + pw)),
                _mm_add_epi32(_mm_set1_epi32(row.base + 2 * pw), step))
          : _mm_set1_epi32(static_cast<int>(fixed_r));
      const __m128 m0 = _mm_castsi128_ps(_mm_cmpeq_epi32(r, zero_i));
      const __m128 m1 = _mm_castsi128_ps(_mm_cmpeq_epi32(r, one_i));
      const __m128 m2 = _mm_castsi128_ps(_mm_cmpeq_epi32(r, width_i));
      const __m128 m3 = _mm_castsi128_ps(_mm_cmpeq_epi32(r, width1_i));
      const __m128 x = _mm_add_ps(_mm_loadu_ps(row.v + pw), zero);
      const __m128 t0 = _mm_and_ps(m0, x), t1 = _mm_and_ps(m1, x);
      const __m128 b0 = _mm_and_ps(m2, x), b1 = _mm_and_ps(m3, x);
      if (streamed) {
        _mm_stream_ps(row.top + 2 * pw, _mm_unpacklo_ps(t0, t1));
        _mm_stream_ps(row.top + 2 * pw + 4, _mm_unpackhi_ps(t0, t1));
        _mm_stream_ps(row.bottom + 2 * pw, _mm_unpacklo_ps(b0, b1));
        _mm_stream_ps(row.bottom + 2 * pw + 4, _mm_unpackhi_ps(b0, b1));
      } else {
        _mm_storeu_ps(row.top + 2 * pw, _mm_unpacklo_ps(t0, t1));
        _mm_storeu_ps(row.top + 2 * pw + 4, _mm_unpackhi_ps(t0, t1));
        _mm_storeu_ps(row.bottom + 2 * pw, _mm_unpacklo_ps(b0, b1));
        _mm_storeu_ps(row.bottom + 2 * pw + 4, _mm_unpackhi_ps(b0, b1));
      }
      if (KNOWN) {  // a lane's masks are all-ones (-1) where it landed
        landed = _mm_add_epi32(landed, _mm_and_si128(count, _mm_castps_si128(
            _mm_or_ps(_mm_or_ps(m0, m1), _mm_or_ps(m2, m3)))));
      }
    };
    for (int pw = 0; pw < vec_end; pw += 4) {
      four(pw, stream, all_lanes);
    }
    if (vec_end != pooled_w && pooled_w >= 4) {
      // the last four again, overlapping: rewrites the same values, counts
      // only the lanes past vec_end
      four(pooled_w - 4, false, tail_lanes);
    }
    landed = _mm_add_epi32(landed, _mm_shuffle_epi32(landed, 0x4e));
    landed = _mm_add_epi32(landed, _mm_shuffle_epi32(landed, 0xb1));
    int hits = -_mm_cvtsi128_si32(landed);
    for (int pw = pooled_w >= 4 ? pooled_w : vec_end; pw < pooled_w; ++pw) {
      hits += UnpoolBlock<float, KNOWN>(row.v, row.s, fixed_r, row.base,
                                        width, pw, row.top, row.bottom);
    }
    if (KNOWN && hits != pooled_w) {
      return ph;
    }
  }
  return -1;
}

template <>
int Unpool2x2Plane<float, true>(const float* values, const float* switches,
    unsigned fixed_r, int pooled_h, int pooled_w, bool stream, float* out) {
  return Unpool2x2PlaneFloat<true>(values, switches, fixed_r, pooled_h,
                                   pooled_w, stream, out);
}

template <>
int Unpool2x2Plane<float, false>(const float* values, const float* switches,
    unsigned fixed_r, int pooled_h, int pooled_w, bool stream, float* out) {
  return Unpool2x2PlaneFloat<false>(values, switches, fixed_r, pooled_h,
                                    pooled_w, stream, out);
}
#endif  // __SSE2__

// Outputs at least this large are streamed past the caches (see above):
// half this machine's 32 MiB L3, where VGG's pool3 (25.7 MB at batch 8)
// went from 0.6 to 1.0 of a copy's bandwidth.
const size_t kUnpoolStreamBytes = size_t(16) << 20;

// Planes unpooled in row groups (below), for the tests.
std::atomic<int64_t> row_group_planes(0);

// Whether the AVX-512 path may run: the CPU has it (checked once, at run
// time: the build targets baseline x86-64), unless a test switched it off.
bool wide_simd_allowed = true;

bool UseWideSimd() {
#ifdef UNPOOL_AVX512
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return has && wide_simd_allowed;
#else
  return false;
#endif
}

#ifdef UNPOOL_AVX512
// The 2x2/2 tiling of Unpool2x2Plane for float with AVX-512 where the CPU
// has it: sixteen pooled values at a time, a row's remainder by masked
// loads and stores, so that VGG's short rows (pool4-5: 14 and 7 values)
// take one step where SSE2 takes four lanes at a time and an
// overlapping tail. Outputs in cache only (the streamed ones, 16 MiB and
// more, stay on SSE2). Same values, same checks.
template <bool KNOWN>
__attribute__((target("avx512f")))
int Unpool2x2PlaneAvx512(const float* values, const float* switches,
    unsigned fixed_r, int pooled_h, int pooled_w, float* out) {
  const int width = 2 * pooled_w;
  const __m512i step = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14,
                                        12, 10, 8, 6, 4, 2, 0);
  // t0[i], t1[i] interleaved: lanes 0-7 of each, then lanes 8-15
  const __m512i low_half = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3,
                                            18, 2, 17, 1, 16, 0);
  const __m512i high_half = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12,
                                             27, 11, 26, 10, 25, 9, 24, 8);
  const __m512i zero_i = _mm512_setzero_si512();
  const __m512i one_i = _mm512_set1_epi32(1);
  const __m512i width_i = _mm512_set1_epi32(width);
  const __m512i width1_i = _mm512_set1_epi32(width + 1);
  const __m512 zero = _mm512_setzero_ps();
  for (int ph = 0; ph < pooled_h; ++ph) {
    const TiledRow<float> row(values, switches, ph, pooled_w, out);
    int landed = 0;
    for (int pw = 0; pw < pooled_w; pw += 16) {
      const int n = std::min(16, pooled_w - pw);
      const __mmask16 in = static_cast<__mmask16>((1u << n) - 1);
      const __m512 x =
          _mm512_add_ps(_mm512_maskz_loadu_ps(in, row.v + pw), zero);
      const __m512i r = KNOWN
          ? _mm512_sub_epi32(
                _mm512_cvttps_epi32(_mm512_maskz_loadu_ps(in, row.s + pw)),
                _mm512_add_epi32(_mm512_set1_epi32(row.base + 2 * pw), step))
          : _mm512_set1_epi32(static_cast<int>(fixed_r));
      const __mmask16 k0 = _mm512_mask_cmpeq_epi32_mask(in, r, zero_i);
      const __mmask16 k1 = _mm512_mask_cmpeq_epi32_mask(in, r, one_i);
      const __mmask16 k2 = _mm512_mask_cmpeq_epi32_mask(in, r, width_i);
      const __mmask16 k3 = _mm512_mask_cmpeq_epi32_mask(in, r, width1_i);
      const __m512 t0 = _mm512_maskz_mov_ps(k0, x);
      const __m512 t1 = _mm512_maskz_mov_ps(k1, x);
      const __m512 b0 = _mm512_maskz_mov_ps(k2, x);
      const __m512 b1 = _mm512_maskz_mov_ps(k3, x);
      // 2 n outputs in each of the two rows
      const __mmask16 out_low = static_cast<__mmask16>(
          n >= 8 ? 0xffffu : (1u << (2 * n)) - 1);
      const __mmask16 out_high = static_cast<__mmask16>(
          n > 8 ? (1u << (2 * (n - 8))) - 1 : 0u);
      _mm512_mask_storeu_ps(row.top + 2 * pw, out_low,
                            _mm512_permutex2var_ps(t0, low_half, t1));
      _mm512_mask_storeu_ps(row.bottom + 2 * pw, out_low,
                            _mm512_permutex2var_ps(b0, low_half, b1));
      if (out_high) {
        _mm512_mask_storeu_ps(row.top + 2 * pw + 16, out_high,
                              _mm512_permutex2var_ps(t0, high_half, t1));
        _mm512_mask_storeu_ps(row.bottom + 2 * pw + 16, out_high,
                              _mm512_permutex2var_ps(b0, high_half, b1));
      }
      if (KNOWN) {
        landed += __builtin_popcount(k0 | k1 | k2 | k3);
      }
    }
    if (KNOWN && landed != pooled_w) {
      return ph;
    }
  }
  return -1;
}
#endif  // UNPOOL_AVX512

// Unpool2x2Plane on the AVX-512 path where it can run (float, the CPU has
// it); -2 where it cannot.
template <bool KNOWN>
int Unpool2x2PlaneWide(const double* values, const double* switches,
    unsigned fixed_r, int pooled_h, int pooled_w, double* out) {
  return -2;
}

template <bool KNOWN>
int Unpool2x2PlaneWide(const float* values, const float* switches,
    unsigned fixed_r, int pooled_h, int pooled_w, float* out) {
#ifdef UNPOOL_AVX512
  if (UseWideSimd()) {
    return Unpool2x2PlaneAvx512<KNOWN>(values, switches, fixed_r, pooled_h,
                                       pooled_w, out);
  }
#endif
  return -2;
}

// The groups for pooled planes of pooled_h x pooled_w (fixed cell:
// offset_h, offset_w), or NULL where no group fits: rows longer than 32
// values (the row loops' vectors are full there), or no multiple of 4 within
// 32 (e.g. 9 or 11 a row). VGG's pool3-5: 1, 2 and 4 rows of 28 values.
shared_ptr<UnpoolRowGroups> BuildRowGroups(int pooled_h, int pooled_w,
    int offset_h, int offset_w) {
  // The most rows that fit: then a group has 20-32 values (the largest
  // multiple of lcm(pooled_w, 4) up to 32), 5-8 output vectors.
  int rows = 0;
  for (int m = 1; m * pooled_w <= 32; ++m) {
    if (m * pooled_w % 4 == 0) {
      rows = m;
    }
  }
  if (rows == 0) {
    return shared_ptr<UnpoolRowGroups>();
  }
  int period_rows = pooled_h;  // lcm(pooled_h, rows)
  while (period_rows % rows != 0) {
    period_rows += pooled_h;
  }
  if (period_rows / rows > UnpoolRowGroups::kMaxPhases) {
    return shared_ptr<UnpoolRowGroups>();
  }
  shared_ptr<UnpoolRowGroups> groups(new UnpoolRowGroups);
  const int width = 2 * pooled_w;
  groups->rows = rows;
  groups->lanes = rows * pooled_w;
  groups->vectors = groups->lanes / 4;
  groups->phases = period_rows / rows;
  groups->planes = period_rows / pooled_h;
  for (int q = 0; q < groups->phases; ++q) {
    for (int l = 0; l < 32; ++l) {
      const int ph = (q * rows + l / pooled_w) % pooled_h, pw = l % pooled_w;
      groups->window[q][l] = l < groups->lanes ? 2 * ph * width + 2 * pw : 0;
    }
  }
  for (int v = 0; v < groups->vectors; ++v) {
    groups->fixed[v] = 0;
    for (int j = 0; j < 16; ++j) {
      const int e = 16 * v + j, row = e / (2 * width);
      const int bottom = e % (2 * width) / width, col = e % width;
      groups->lane[v][j] = row * pooled_w + col / 2;
      groups->cell[v][j] = bottom * width + col % 2;
      groups->fixed[v] |= static_cast<uint16_t>(
          (bottom == offset_h && col % 2 == offset_w) << j);
    }
  }
  return groups;
}

#ifdef UNPOOL_AVX512
// `periods` periods of groups of 4 V values (V output vectors) from values /
// switches (NULL: fixed) to out: the row loop's values (0 + value, +0
// elsewhere). Returns how many pooled values landed: all of them unless a
// known switch lies outside its window (an output keeps its window's value
// where the switch names that output's cell, so a value lands at most
// once). V is a template argument so that the permutes' lanes and cells
// stay in registers: loaded from the table at each step, pool4-5 took 1.3-1.5
// times as long.
template <bool KNOWN, int V>
__attribute__((target("avx512f")))
int64_t UnpoolRowGroupsAvx512(const UnpoolRowGroups& groups,
    const float* values, const float* switches, int periods, float* out) {
  const int lanes = 4 * V;  // 20-32: the first register full
  const __mmask16 high = static_cast<__mmask16>((1u << (lanes - 16)) - 1);
  const __m512 zero = _mm512_setzero_ps();
  const __m512i minus_one = _mm512_set1_epi32(-1);
  __m512i lane[V], cell[V];
  __mmask16 fixed[V];
  for (int v = 0; v < V; ++v) {
    lane[v] = _mm512_loadu_si512(groups.lane[v]);
    cell[v] = _mm512_loadu_si512(groups.cell[v]);
    fixed[v] = groups.fixed[v];
  }
  __m512i landed = _mm512_setzero_si512();  // per output lane
  for (int p = 0; p < periods; ++p) {
    for (int q = 0; q < groups.phases; ++q) {
      const __m512 x0 = _mm512_add_ps(_mm512_loadu_ps(values), zero);
      const __m512 x1 =
          _mm512_add_ps(_mm512_maskz_loadu_ps(high, values + 16), zero);
      __m512i r0, r1;  // each lane's switch, from its window's top left
      if (KNOWN) {
        r0 = _mm512_sub_epi32(_mm512_cvttps_epi32(_mm512_loadu_ps(switches)),
            _mm512_loadu_si512(groups.window[q]));
        r1 = _mm512_sub_epi32(
            _mm512_cvttps_epi32(_mm512_maskz_loadu_ps(high, switches + 16)),
            _mm512_loadu_si512(groups.window[q] + 16));
        switches += lanes;
      }
      for (int v = 0; v < V; ++v) {
        __mmask16 keep;
        if (KNOWN) {
          keep = _mm512_cmpeq_epi32_mask(
              _mm512_permutex2var_epi32(r0, lane[v], r1), cell[v]);
          landed = _mm512_mask_sub_epi32(landed, keep, landed, minus_one);
        } else {
          keep = fixed[v];
        }
        _mm512_storeu_ps(out + 16 * v,
                         _mm512_maskz_permutex2var_ps(keep, x0, lane[v], x1));
      }
      values += lanes;
      out += 4 * lanes;
    }
  }
  return KNOWN ? _mm512_reduce_add_epi32(landed)
               : static_cast<int64_t>(periods) * groups.phases * lanes;
}

template <bool KNOWN>
int64_t UnpoolRowGroupsAvx512(const UnpoolRowGroups& groups,
    const float* values, const float* switches, int periods, float* out) {
  switch (groups.vectors) {
  case 5:
    return UnpoolRowGroupsAvx512<KNOWN, 5>(groups, values, switches, periods,
                                           out);
  case 6:
    return UnpoolRowGroupsAvx512<KNOWN, 6>(groups, values, switches, periods,
                                           out);
  case 7:
    return UnpoolRowGroupsAvx512<KNOWN, 7>(groups, values, switches, periods,
                                           out);
  default:
    return UnpoolRowGroupsAvx512<KNOWN, 8>(groups, values, switches, periods,
                                           out);
  }
}
#endif  // UNPOOL_AVX512

// The first `periods` periods of the row groups where they can run (float,
// the CPU has AVX-512); false where they cannot or a known switch lies
// outside its window (then the row loop redoes these planes and reports it).
bool UnpoolRowGroupsWide(const UnpoolRowGroups& groups, const double* values,
    const double* switches, int periods, double* out) {
  return false;
}

bool UnpoolRowGroupsWide(const UnpoolRowGroups& groups, const float* values,
    const float* switches, int periods, float* out) {
#ifdef UNPOOL_AVX512
  if (UseWideSimd()) {
    const int64_t all =
        static_cast<int64_t>(periods) * groups.phases * groups.lanes;
    return (switches
        ? UnpoolRowGroupsAvx512<true>(groups, values, switches, periods, out)
        : UnpoolRowGroupsAvx512<false>(groups, values, NULL, periods, out))
        == all;
  }
#endif
  return false;
}

}  // namespace


void SetUnpoolingWideSimdForTest(bool allowed) {
  wide_simd_allowed = allowed;
}

bool UnpoolingUsesWideSimd() {
  return UseWideSimd();
}

int64_t UnpoolingRowGroupPlanes() {
  return row_group_planes;
}

template <typename Dtype>
std::string UnpoolingLayer<Dtype>::Where() const {
  return "Unpooling layer '" + this->layer_param_.name() + "': ";
}

template <typename Dtype>
std::string UnpoolingLayer<Dtype>::SwitchOutsideWindow(Dtype value,
    int plane, int ph, int pw) const {
  std::ostringstream message;
  message << Where() << "switch " << value << " at (plane " << plane << ", "
      << ph << ", " << pw << ") lies outside its pooling window; is bottom[1] "
      << "the mask top of a Pooling layer with the same kernel, stride and "
      << "pad?";
  return message.str();
}

template <typename Dtype>
void UnpoolingLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const PoolingParameter& pool = this->layer_param_.pooling_param();
  const UnpoolingParameter& unpool = this->layer_param_.unpooling_param();
  CHECK(!pool.global_pooling()) << Where()
      << "global pooling cannot be inverted; use explicit kernel sizes";
  CHECK(pool.pool() == PoolingParameter_PoolMethod_MAX) << Where()
      << "only MAX pooling has switches to invert";
  CHECK(pool.has_kernel_size() != (pool.has_kernel_h() && pool.has_kernel_w()))
      << Where() << "give kernel_size or kernel_h and kernel_w, not both";
  kernel_h_ = pool.has_kernel_size() ? pool.kernel_size() : pool.kernel_h();
  kernel_w_ = pool.has_kernel_size() ? pool.kernel_size() : pool.kernel_w();
  stride_h_ = pool.has_stride_h() ? pool.stride_h() : pool.stride();
  stride_w_ = pool.has_stride_w() ? pool.stride_w() : pool.stride();
  pad_h_ = pool.has_pad_h() ? pool.pad_h() : pool.pad();
  pad_w_ = pool.has_pad_w() ? pool.pad_w() : pool.pad();
  CHECK_GT(kernel_h_, 0) << Where() << "kernel cannot be zero";
  CHECK_GT(kernel_w_, 0) << Where() << "kernel cannot be zero";
  CHECK_GT(stride_h_, 0) << Where() << "stride cannot be zero";
  CHECK_GT(stride_w_, 0) << Where() << "stride cannot be zero";
  CHECK_LT(pad_h_, kernel_h_) << Where() << "pad must be smaller than kernel";
  CHECK_LT(pad_w_, kernel_w_) << Where() << "pad must be smaller than kernel";
  ceil_mode_ = pool.round_mode() == PoolingParameter_RoundMode_CEIL;

  switch (unpool.switches()) {
  case UnpoolingParameter_Switches_KNOWN:
    known_switches_ = true;
    break;
  case UnpoolingParameter_Switches_FIXED:
    known_switches_ = false;
    break;
  default:
    known_switches_ = bottom.size() >= 2;
  }
  const int expected = known_switches_ ? 2 : 1;
  CHECK(bottom.size() == expected || bottom.size() == expected + 1)
      << Where() << (known_switches_ ? "known" : "fixed") << " switches take "
      << expected << " bottom(s) plus an optional shape reference, got "
      << bottom.size();
  has_reference_ = bottom.size() == expected + 1;
  CHECK(!(has_reference_ && (unpool.has_out_h() || unpool.has_out_w())))
      << Where() << "give a reference bottom or out_h/out_w, not both";
  CHECK(unpool.has_out_h() == unpool.has_out_w())
      << Where() << "give both out_h and out_w";

  groups_pooled_h_ = groups_pooled_w_ = -1;  // no row groups built yet
  offset_h_ = unpool.has_offset_h() ? unpool.offset_h() : kernel_h_ / 2;
  offset_w_ = unpool.has_offset_w() ? unpool.offset_w() : kernel_w_ / 2;
  CHECK_LT(offset_h_, kernel_h_) << Where() << "offset_h outside the window";
  CHECK_LT(offset_w_, kernel_w_) << Where() << "offset_w outside the window";
  average_ = unpool.overlap() == UnpoolingParameter_Overlap_AVERAGE;
  overlapping_ = kernel_h_ > stride_h_ || kernel_w_ > stride_w_;
}

template <typename Dtype>
bool UnpoolingLayer<Dtype>::TilesTwoByTwo() const {
  return kernel_h_ == 2 && kernel_w_ == 2 && stride_h_ == 2 &&
      stride_w_ == 2 && pad_h_ == 0 && pad_w_ == 0 &&
      height_ == 2 * pooled_height_ && width_ == 2 * pooled_width_;
}

template <typename Dtype>
int UnpoolingLayer<Dtype>::PooledSize(int in, int kernel, int stride,
    int pad) const {
  const float span = static_cast<float>(in + 2 * pad - kernel) / stride;
  int pooled = static_cast<int>(ceil_mode_ ? ceil(span) : floor(span)) + 1;
  // Caffe's Pooling drops a last window that starts inside the padding.
  if (pad > 0 && (pooled - 1) * stride >= in + pad) {
    --pooled;
  }
  return pooled;
}

template <typename Dtype>
void UnpoolingLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  CHECK_EQ(4, bottom[0]->num_axes()) << Where()
      << "values must be N x C x H x W, got " << bottom[0]->shape_string();
  channels_ = bottom[0]->channels();
  pooled_height_ = bottom[0]->height();
  pooled_width_ = bottom[0]->width();
  if (known_switches_) {
    CHECK(bottom[0]->shape() == bottom[1]->shape()) << Where()
        << "switches " << bottom[1]->shape_string()
        << " must have the shape of the values " << bottom[0]->shape_string();
  }
  const UnpoolingParameter& unpool = this->layer_param_.unpooling_param();
  if (has_reference_) {
    const Blob<Dtype>* ref = bottom.back();
    CHECK_EQ(4, ref->num_axes()) << Where() << "reference bottom must be 4-D";
    height_ = ref->height();
    width_ = ref->width();
  } else if (unpool.has_out_h()) {
    height_ = unpool.out_h();
    width_ = unpool.out_w();
  } else {
    height_ = (pooled_height_ - 1) * stride_h_ + kernel_h_ - 2 * pad_h_;
    width_ = (pooled_width_ - 1) * stride_w_ + kernel_w_ - 2 * pad_w_;
  }
  CHECK(height_ > 0 && width_ > 0) << Where() << "output size " << height_
      << " x " << width_ << " is empty";
  // The output must be a shape that pools back to the input's shape.
  const int ph = PooledSize(height_, kernel_h_, stride_h_, pad_h_);
  const int pw = PooledSize(width_, kernel_w_, stride_w_, pad_w_);
  CHECK(ph == pooled_height_ && pw == pooled_width_) << Where()
      << "cannot mirror: an output of " << height_ << " x " << width_
      << " pools (kernel " << kernel_h_ << "x" << kernel_w_ << ", stride "
      << stride_h_ << "x" << stride_w_ << ", pad " << pad_h_ << "x" << pad_w_
      << ") to " << ph << " x " << pw << ", not the input's "
      << pooled_height_ << " x " << pooled_width_;
  top[0]->Reshape(bottom[0]->num(), channels_, height_, width_);
  if (TilesTwoByTwo()) {
    if (groups_pooled_h_ != pooled_height_ ||
        groups_pooled_w_ != pooled_width_) {
      row_groups_ = BuildRowGroups(pooled_height_, pooled_width_,
                                   offset_h_, offset_w_);
      groups_pooled_h_ = pooled_height_;
      groups_pooled_w_ = pooled_width_;
    }
  } else {
    row_groups_.reset();
    groups_pooled_h_ = groups_pooled_w_ = -1;
  }
  need_count_ = (average_ && overlapping_) || top.size() > 1;
  if (need_count_) {
    count_.ReshapeLike(*top[0]);
  } else {
    count_.Reshape(vector<int>());
  }
  if (top.size() > 1) {
    top[1]->ReshapeLike(*top[0]);
  }
}

template <typename Dtype>
void UnpoolingLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const Dtype* values = bottom[0]->cpu_data();
  const Dtype* switches = known_switches_ ? bottom[1]->cpu_data() : NULL;
  Dtype* out = top[0]->mutable_cpu_data();
  const int planes = bottom[0]->num() * channels_;
  const int plane_in = pooled_height_ * pooled_width_;
  const int plane_out = height_ * width_;
  if (!overlapping_ && !need_count_) {
    // Fast path (UnpoolRow; short rows: per band of rows, below): rows in
    // order, each written once. Output rows outside every window (gaps
    // when stride > kernel, rows past the last window) are zeros. Known
    // switches are checked per pooled row by counting the values that
    // landed: a switch inside its window lands in exactly one row of the
    // window, any other in none. 2x2/2 tilings have their own paths: row
    // groups (AVX-512, rows of up to 32 values), else a plane's rows two
    // output rows at a time (Unpool2x2Plane*).
    const RowGeometry g(width_, pooled_width_, kernel_w_, stride_w_, pad_w_,
                        offset_w_);
    const bool short_rows = pooled_width_ < 8;
    // the planes in blocks over the CPU threads (caffe/util/cpu_threads.hpp)
    const Dtype* const values_0 = values;
    const Dtype* const switches_0 = switches;
    Dtype* const out_0 = out;
    const bool tiles_2x2 = TilesTwoByTwo();
    const unsigned fixed_r = offset_h_ * width_ + offset_w_;
    // (the SSE2 path streams only rows of a multiple of 16 bytes: then every
    // plane and row starts aligned where the output does)
    const bool stream = top[0]->count() * sizeof(Dtype) >= kUnpoolStreamBytes
        && reinterpret_cast<uintptr_t>(out) % 16 == 0;
    // short rows: whole periods of planes in row groups, where they fit
    // (streamed outputs stay on the row loop: there the row groups, which
    // store through the caches, were no faster for VGG's pool3)
    const UnpoolRowGroups* const groups = stream ? NULL : row_groups_.get();
    ParallelFor(ThreadsFor(top[0]->count(), kMinValuesPerThread), planes,
        [&](int t, int begin, int end) {
      int p = begin;
      if (groups) {
        const int periods = (end - begin) / groups->planes;
        if (UnpoolRowGroupsWide(*groups, values_0 + p * plane_in,
                switches_0 ? switches_0 + p * plane_in : NULL, periods,
                out_0 + p * plane_out)) {
          p += periods * groups->planes;
          row_group_planes += periods * groups->planes;
        }  // else the planes below redo them (and report the bad switch)
      }
      for (; p < end; ++p) {
        const Dtype* values = values_0 + p * plane_in;
        const Dtype* switches = switches_0 ? switches_0 + p * plane_in : NULL;
        Dtype* out = out_0 + p * plane_out;
        if (tiles_2x2) {
          int bad_row = stream ? -2 : known_switches_
              ? Unpool2x2PlaneWide<true>(values, switches, 0,
                    pooled_height_, pooled_width_, out)
              : Unpool2x2PlaneWide<false>(values, NULL, fixed_r,
                    pooled_height_, pooled_width_, out);
          if (bad_row == -2) {
            bad_row = known_switches_
                ? Unpool2x2Plane<Dtype, true>(values, switches, 0,
                      pooled_height_, pooled_width_, stream, out)
                : Unpool2x2Plane<Dtype, false>(values, NULL, fixed_r,
                      pooled_height_, pooled_width_, stream, out);
          }
          if (bad_row < 0) {
            continue;  // done; else the rows below find and report the switch
          }
        }
        int h = 0;
        for (int ph = 0; ph < pooled_height_; ++ph) {
          const int hstart = ph * stride_h_ - pad_h_;
          const int lo = std::min(std::max(hstart, 0), height_);
          const int hi = std::max(std::min(hstart + kernel_h_, height_), lo);
          std::fill(out + h * width_, out + lo * width_, Dtype(0));
          const Dtype* v = values + ph * pooled_width_;
          const Dtype* s = switches ? switches + ph * pooled_width_ : NULL;
          int hits = 0;
          if (short_rows) {
            // Rows too short for the vectorised row loop (VGG's pool5: 7
            // windows): the band of rows [lo, hi), contiguous and in cache, is
            // zeroed, then each value placed in it.
            Dtype* band = out + lo * width_;
            std::fill(band, out + hi * width_, Dtype(0));
            const unsigned band_size =
                static_cast<unsigned>((hi - lo) * width_);
            for (int pw = 0; pw < pooled_width_; ++pw) {
              const int wstart = pw * stride_w_ - pad_w_;
              unsigned r;  // flat index in the band
              if (known_switches_) {
                r = static_cast<unsigned>(static_cast<int>(s[pw])) -
                    static_cast<unsigned>(lo * width_);
              } else {
                const int fh = hstart + offset_h_, fw = wstart + offset_w_;
                if (fh < 0 || fw < 0 || fh >= height_ || fw >= width_) {
                  continue;  // the fixed cell lies in the padding: dropped
                }
                r = static_cast<unsigned>((fh - lo) * width_ + fw);
              }
              if (r < band_size) {
                const int c = static_cast<int>(r % width_);
                if (c >= wstart && c < wstart + kernel_w_) {
                  band[r] = v[pw] + Dtype(0);
                  ++hits;
                }
              }
            }
          }
          for (h = short_rows ? hi : lo; h < hi; ++h) {
            if (known_switches_) {
              hits += UnpoolRow<Dtype, true>(v, s, g, h * width_,
                  out + h * width_);
            } else if (h == hstart + offset_h_) {
              UnpoolRow<Dtype, false>(v, NULL, g, h * width_, out + h * width_);
            } else {
              std::fill(out + h * width_, out + (h + 1) * width_, Dtype(0));
            }
          }
          if (known_switches_ && hits != pooled_width_) {
            // The first switch of this row outside its window (raster order,
            // as the generic path reports it).
            for (int pw = 0; pw < pooled_width_; ++pw) {
              const int wstart = pw * stride_w_ - pad_w_;
              const int si = static_cast<int>(s[pw]);
              const int sh = si / width_;
              const int sw = si % width_;
              CHECK(si >= 0 && si < plane_out && sh >= hstart && sw >= wstart
                    && sh < hstart + kernel_h_ && sw < wstart + kernel_w_)
                  << SwitchOutsideWindow(s[pw], p, ph, pw);
            }
            LOG(FATAL) << Where() << "switch count mismatch in plane " << p
                << ", pooled row " << ph;
          }
        }
        std::fill(out + h * width_, out + plane_out, Dtype(0));
      }
#ifdef __SSE2__
      if (stream) {
        _mm_sfence();  // the streamed stores, before the pool's barrier
      }
#endif
    });
    return;
  }
  // Generic path: overlapping windows (several values may land on one
  // location: averaged or summed), or the count top asked for.
  Dtype* count = need_count_ ? count_.mutable_cpu_data() : NULL;
  caffe_set(top[0]->count(), Dtype(0), out);
  if (count) {
    caffe_set(count_.count(), Dtype(0), count);
  }
  for (int p = 0; p < planes; ++p) {
    for (int ph = 0; ph < pooled_height_; ++ph) {
      for (int pw = 0; pw < pooled_width_; ++pw) {
        const int i = ph * pooled_width_ + pw;
        const int hstart = ph * stride_h_ - pad_h_;
        const int wstart = pw * stride_w_ - pad_w_;
        int h, w;
        if (known_switches_) {
          const int s = static_cast<int>(switches[i]);
          h = s / width_;
          w = s % width_;
          CHECK(s >= 0 && s < plane_out && h >= hstart && w >= wstart
                && h < hstart + kernel_h_ && w < wstart + kernel_w_)
              << SwitchOutsideWindow(switches[i], p, ph, pw);
        } else {
          h = hstart + offset_h_;
          w = wstart + offset_w_;
          if (h < 0 || w < 0 || h >= height_ || w >= width_) {
            continue;  // the fixed cell lies in the padding: value dropped
          }
        }
        const int j = h * width_ + w;
        if (average_ && overlapping_) {
          // Running mean: exact when equal values collide (the max of two
          // windows at one location), unlike sum / count.
          count[j] += 1;
          out[j] += (values[i] - out[j]) / count[j];
        } else {
          out[j] += values[i];
          if (count) {
            count[j] += 1;
          }
        }
      }
    }
    values += plane_in;
    if (switches) {
      switches += plane_in;
    }
    out += plane_out;
    if (count) {
      count += plane_out;
    }
  }
  if (top.size() > 1) {
    caffe_copy(count_.count(), count_.cpu_data(), top[1]->mutable_cpu_data());
  }
}

template <typename Dtype>
void UnpoolingLayer<Dtype>::ClearNonValueDiffs(
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom,
    bool gpu) {
  for (int b = 1; b < bottom.size(); ++b) {
    if (!propagate_down[b]) {
      continue;
    }
    if (gpu) {
#ifndef CPU_ONLY
      caffe_gpu_set(bottom[b]->count(), Dtype(0),
                    bottom[b]->mutable_gpu_diff());
#endif
    } else {
      caffe_set(bottom[b]->count(), Dtype(0), bottom[b]->mutable_cpu_diff());
    }
  }
}

template <typename Dtype>
void UnpoolingLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  ClearNonValueDiffs(propagate_down, bottom, false);
  if (!propagate_down[0]) {
    return;
  }
  const Dtype* top_diff = top[0]->cpu_diff();
  const Dtype* switches = known_switches_ ? bottom[1]->cpu_data() : NULL;
  const Dtype* count = (average_ && overlapping_) ? count_.cpu_data() : NULL;
  Dtype* diff = bottom[0]->mutable_cpu_diff();
  const int planes = bottom[0]->num() * channels_;
  const int plane_in = pooled_height_ * pooled_width_;
  const int plane_out = height_ * width_;
  if (!overlapping_) {
    // Non-overlapping windows: no count to divide by; the gradient of each
    // value is the top diff where it landed (0 for a fixed cell dropped in
    // the padding). Switches are trusted, as below: Forward checked them.
    // The planes in blocks over the CPU threads.
    const Dtype* const switches_0 = switches;
    const Dtype* const top_diff_0 = top_diff;
    Dtype* const diff_0 = diff;
    ParallelFor(ThreadsFor(top[0]->count(), kMinValuesPerThread), planes,
        [&](int t, int begin, int end) {
      for (int p = begin; p < end; ++p) {
        const Dtype* switches = switches_0 ? switches_0 + p * plane_in : NULL;
        const Dtype* top_diff = top_diff_0 + p * plane_out;
        Dtype* diff = diff_0 + p * plane_in;
        if (known_switches_) {
          for (int i = 0; i < plane_in; ++i) {
            diff[i] = top_diff[static_cast<int>(switches[i])];
          }
        } else {
          for (int ph = 0; ph < pooled_height_; ++ph) {
            const int h = ph * stride_h_ - pad_h_ + offset_h_;
            Dtype* d = diff + ph * pooled_width_;
            if (h < 0 || h >= height_) {
              std::fill(d, d + pooled_width_, Dtype(0));
              continue;
            }
            const Dtype* t = top_diff + h * width_;
            for (int pw = 0; pw < pooled_width_; ++pw) {
              const int w = pw * stride_w_ - pad_w_ + offset_w_;
              d[pw] = (w >= 0 && w < width_) ? t[w] : Dtype(0);
            }
          }
        }
      }
    });
    return;
  }
  for (int p = 0; p < planes; ++p) {
    for (int ph = 0; ph < pooled_height_; ++ph) {
      for (int pw = 0; pw < pooled_width_; ++pw) {
        const int i = ph * pooled_width_ + pw;
        int j;
        if (known_switches_) {
          j = static_cast<int>(switches[i]);
        } else {
          const int h = ph * stride_h_ - pad_h_ + offset_h_;
          const int w = pw * stride_w_ - pad_w_ + offset_w_;
          if (h < 0 || w < 0 || h >= height_ || w >= width_) {
            diff[i] = 0;
            continue;
          }
          j = h * width_ + w;
        }
        diff[i] = count ? top_diff[j] / count[j] : top_diff[j];
      }
    }
    diff += plane_in;
    if (switches) {
      switches += plane_in;
    }
    top_diff += plane_out;
    if (count) {
      count += plane_out;
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(UnpoolingLayer);
#endif

INSTANTIATE_CLASS(UnpoolingLayer);
REGISTER_LAYER_CLASS(Unpooling);

}  // namespace caffe
