#include <vector>

#include "caffe/layers/unpooling_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// One thread per output location. It visits, in raster order, every pooling
// window that covers it and accumulates the values that land on it, so the
// result is deterministic (no atomics) and formed in the CPU's order.
template <typename Dtype>
__global__ void UnpoolForward(const int nthreads, const Dtype* values,
    const Dtype* switches, const int pooled_height, const int pooled_width,
    const int height, const int width, const int kernel_h, const int kernel_w,
    const int stride_h, const int stride_w, const int pad_h, const int pad_w,
    const int offset_h, const int offset_w, const bool average,
    Dtype* out, Dtype* count) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int w = index % width;
    const int h = (index / width) % height;
    const int plane = index / width / height;
    const int hp = h + pad_h;
    const int wp = w + pad_w;
    const int phstart = (hp < kernel_h) ? 0 : (hp - kernel_h) / stride_h + 1;
    const int phend = min(hp / stride_h + 1, pooled_height);
    const int pwstart = (wp < kernel_w) ? 0 : (wp - kernel_w) / stride_w + 1;
    const int pwend = min(wp / stride_w + 1, pooled_width);
    const int offset = plane * pooled_height * pooled_width;
    const Dtype* plane_values = values + offset;
    const Dtype* plane_switches = switches ? switches + offset : NULL;
    const int here = h * width + w;
    Dtype sum = 0;
    int landed = 0;
    for (int ph = phstart; ph < phend; ++ph) {
      for (int pw = pwstart; pw < pwend; ++pw) {
        const int i = ph * pooled_width + pw;
        const bool lands = plane_switches
            ? static_cast<int>(plane_switches[i]) == here
            : (ph * stride_h - pad_h + offset_h == h &&
               pw * stride_w - pad_w + offset_w == w);
        if (lands) {
          ++landed;
          // Running mean, as on the CPU: exact when equal values collide.
          sum += average ? (plane_values[i] - sum) / landed : plane_values[i];
        }
      }
    }
    out[index] = sum;
    if (count) {
      count[index] = landed;
    }
  }
}

// One thread per known switch: records in *first_bad the lowest flat index
// whose switch lies outside its own pooling window (or outside the plane), so
// the host reports the same switch the CPU's raster-order check stops at.
// The range is tested on the value before the int cast, which truncates as
// on the CPU: NaN and infinities are outside (the CPU's cast gives INT_MIN),
// values in (-1, 0) count as 0.
template <typename Dtype>
__global__ void UnpoolCheckSwitches(const int nthreads, const Dtype* switches,
    const int pooled_height, const int pooled_width, const int height,
    const int width, const int kernel_h, const int kernel_w,
    const int stride_h, const int stride_w, const int pad_h, const int pad_w,
    int* first_bad) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int pw = index % pooled_width;
    const int ph = (index / pooled_width) % pooled_height;
    const Dtype value = switches[index];
    bool inside = value > Dtype(-1) && value < Dtype(height * width);
    if (inside) {
      const int s = static_cast<int>(value);
      const int h = s / width;
      const int w = s % width;
      const int hstart = ph * stride_h - pad_h;
      const int wstart = pw * stride_w - pad_w;
      inside = h >= hstart && w >= wstart && h < hstart + kernel_h &&
          w < wstart + kernel_w;
    }
    if (!inside) {
      atomicMin(first_bad, index);
    }
  }
}

// One thread per pooled value: gathers the gradient from where it landed.
template <typename Dtype>
__global__ void UnpoolBackward(const int nthreads, const Dtype* top_diff,
    const Dtype* switches, const Dtype* count, const int pooled_height,
    const int pooled_width, const int height, const int width,
    const int stride_h, const int stride_w, const int pad_h, const int pad_w,
    const int offset_h, const int offset_w, Dtype* diff) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int pw = index % pooled_width;
    const int ph = (index / pooled_width) % pooled_height;
    const int plane = index / pooled_width / pooled_height;
    const int out_offset = plane * height * width;
    int j;
    if (switches) {
      j = static_cast<int>(switches[index]);
    } else {
      const int h = ph * stride_h - pad_h + offset_h;
      const int w = pw * stride_w - pad_w + offset_w;
      j = (h < 0 || w < 0 || h >= height || w >= width) ? -1 : h * width + w;
    }
    if (j < 0) {
      diff[index] = 0;
    } else if (count) {
      diff[index] = top_diff[out_offset + j] / count[out_offset + j];
    } else {
      diff[index] = top_diff[out_offset + j];
    }
  }
}

// Known switches are validated as Forward_cpu does: without this, a switch
// outside its window would be dropped silently by UnpoolForward and read out
// of bounds by UnpoolBackward. Costs one small kernel and a 4-byte read back
// (a device synchronisation) per call; Backward_gpu checks again because it
// indexes with the switches (the CPU's backward trusts its forward's check).
template <typename Dtype>
void UnpoolingLayer<Dtype>::CheckSwitchesGpu(const Blob<Dtype>& switches) {
  const int nthreads = switches.count();
  first_bad_switch_.Reshape(vector<int>(1, 1));
  int* first_bad = first_bad_switch_.mutable_gpu_data();
  caffe_gpu_set(1, nthreads, first_bad);  // none found
  // NOLINT_NEXT_LINE(whitespace/operators)
  UnpoolCheckSwitches<Dtype><<<CAFFE_GET_BLOCKS(nthreads),
      CAFFE_CUDA_NUM_THREADS>>>(nthreads, switches.gpu_data(),
      pooled_height_, pooled_width_, height_, width_, kernel_h_, kernel_w_,
      stride_h_, stride_w_, pad_h_, pad_w_, first_bad);
  CUDA_POST_KERNEL_CHECK;
  const int bad = first_bad_switch_.cpu_data()[0];
  if (bad < nthreads) {
    const int plane_in = pooled_height_ * pooled_width_;
    const int i = bad % plane_in;
    LOG(FATAL) << SwitchOutsideWindow(switches.cpu_data()[bad],
        bad / plane_in, i / pooled_width_, i % pooled_width_);
  }
}

template <typename Dtype>
void UnpoolingLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  if (known_switches_) {
    CheckSwitchesGpu(*bottom[1]);
  }
  const int nthreads = top[0]->count();
  Dtype* count = need_count_ ? count_.mutable_gpu_data() : NULL;
  // NOLINT_NEXT_LINE(whitespace/operators)
  UnpoolForward<Dtype><<<CAFFE_GET_BLOCKS(nthreads), CAFFE_CUDA_NUM_THREADS>>>(
      nthreads, bottom[0]->gpu_data(),
      known_switches_ ? bottom[1]->gpu_data() : NULL,
      pooled_height_, pooled_width_, height_, width_, kernel_h_, kernel_w_,
      stride_h_, stride_w_, pad_h_, pad_w_, offset_h_, offset_w_,
      average_ && overlapping_, top[0]->mutable_gpu_data(), count);
  CUDA_POST_KERNEL_CHECK;
  if (top.size() > 1) {
    caffe_copy(count_.count(), count_.gpu_data(), top[1]->mutable_gpu_data());
  }
}

template <typename Dtype>
void UnpoolingLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  ClearNonValueDiffs(propagate_down, bottom, true);
  if (!propagate_down[0]) {
    return;
  }
  if (known_switches_) {
    CheckSwitchesGpu(*bottom[1]);
  }
  const int nthreads = bottom[0]->count();
  // NOLINT_NEXT_LINE(whitespace/operators)
  UnpoolBackward<Dtype><<<CAFFE_GET_BLOCKS(nthreads), CAFFE_CUDA_NUM_THREADS>>>(
      nthreads, top[0]->gpu_diff(),
      known_switches_ ? bottom[1]->gpu_data() : NULL,
      (average_ && overlapping_) ? count_.gpu_data() : NULL,
      pooled_height_, pooled_width_, height_, width_, stride_h_, stride_w_,
      pad_h_, pad_w_, offset_h_, offset_w_, bottom[0]->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(UnpoolingLayer);

}  // namespace caffe
