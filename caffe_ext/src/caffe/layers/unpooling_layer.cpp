#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "caffe/layers/unpooling_layer.hpp"
#include "caffe/util/cpu_threads.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

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

}  // namespace


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

  offset_h_ = unpool.has_offset_h() ? unpool.offset_h() : kernel_h_ / 2;
  offset_w_ = unpool.has_offset_w() ? unpool.offset_w() : kernel_w_ / 2;
  CHECK_LT(offset_h_, kernel_h_) << Where() << "offset_h outside the window";
  CHECK_LT(offset_w_, kernel_w_) << Where() << "offset_w outside the window";
  average_ = unpool.overlap() == UnpoolingParameter_Overlap_AVERAGE;
  overlapping_ = kernel_h_ > stride_h_ || kernel_w_ > stride_w_;
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
    // window, any other in none.
    const RowGeometry g(width_, pooled_width_, kernel_w_, stride_w_, pad_w_,
                        offset_w_);
    const bool short_rows = pooled_width_ < 8;
    // the planes in blocks over the CPU threads (caffe/util/cpu_threads.hpp)
    const Dtype* const values_0 = values;
    const Dtype* const switches_0 = switches;
    Dtype* const out_0 = out;
    ParallelFor(ThreadsFor(top[0]->count(), kMinValuesPerThread), planes,
        [&](int t, int begin, int end) {
      for (int p = begin; p < end; ++p) {
        const Dtype* values = values_0 + p * plane_in;
        const Dtype* switches = switches_0 ? switches_0 + p * plane_in : NULL;
        Dtype* out = out_0 + p * plane_out;
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
