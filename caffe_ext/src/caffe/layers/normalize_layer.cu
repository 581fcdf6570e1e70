#include <vector>

#include "caffe/layers/normalize_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
__global__ void NormalizeInvStd(const int channels, const Dtype eps,
    const Dtype* var, Dtype* r) {
  CUDA_KERNEL_LOOP(c, channels) {
    r[c] = 1 / sqrt(var[c] + eps);
  }
}

template <typename Dtype>
__global__ void NormalizeForward(const int n, const int channels,
    const int spatial, const Dtype* x, const Dtype* mean, const Dtype* r,
    Dtype* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const int c = (i / spatial) % channels;
    y[i] = (x[i] - mean[c]) * r[c];
  }
}

// dy y, y recomputed from the bottoms.
template <typename Dtype>
__global__ void NormalizeProducts(const int n, const int channels,
    const int spatial, const Dtype* dy, const Dtype* x, const Dtype* mean,
    const Dtype* r, Dtype* products) {
  CUDA_KERNEL_LOOP(i, n) {
    const int c = (i / spatial) % channels;
    products[i] = dy[i] * (x[i] - mean[c]) * r[c];
  }
}

// stat_diff_c = scale r_c^power sum_c, in place (power 1 or 2).
template <typename Dtype>
__global__ void NormalizeStatDiff(const int channels, const Dtype scale,
    const int power, const Dtype* r, Dtype* diff) {
  CUDA_KERNEL_LOOP(c, channels) {
    diff[c] *= scale * (power == 2 ? r[c] * r[c] : r[c]);
  }
}

template <typename Dtype>
__global__ void NormalizeBackward(const int n, const int channels,
    const int spatial, const Dtype* dy, const Dtype* r, Dtype* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = dy[i] * r[(i / spatial) % channels];
  }
}

template <typename Dtype>
void NormalizeLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const int n = bottom[0]->count();
  Dtype* r = inv_std_.mutable_gpu_data();
  // NOLINT_NEXT_LINE(whitespace/operators)
  NormalizeInvStd<Dtype><<<CAFFE_GET_BLOCKS(channels_),
      CAFFE_CUDA_NUM_THREADS>>>(channels_, eps_, bottom[2]->gpu_data(), r);
  CUDA_POST_KERNEL_CHECK;
  // NOLINT_NEXT_LINE(whitespace/operators)
  NormalizeForward<Dtype><<<CAFFE_GET_BLOCKS(n), CAFFE_CUDA_NUM_THREADS>>>(
      n, channels_, spatial_, bottom[0]->gpu_data(), bottom[1]->gpu_data(), r,
      top[0]->mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void NormalizeLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  const int n = bottom[0]->count();
  const Dtype* dy = top[0]->gpu_diff();
  const Dtype* r = inv_std_.gpu_data();
  if (propagate_down[1]) {  // dmean_c = -r_c sum dy
    Dtype* dmean = bottom[1]->mutable_gpu_diff();
    channel_sum_.Sum(Dtype(1), dy, Dtype(0), dmean);
    // NOLINT_NEXT_LINE(whitespace/operators)
    NormalizeStatDiff<Dtype><<<CAFFE_GET_BLOCKS(channels_),
        CAFFE_CUDA_NUM_THREADS>>>(channels_, Dtype(-1), 1, r, dmean);
    CUDA_POST_KERNEL_CHECK;
  }
  if (propagate_down[2]) {  // dvar_c = -r_c^2 / 2 sum dy y
    // NOLINT_NEXT_LINE(whitespace/operators)
    NormalizeProducts<Dtype><<<CAFFE_GET_BLOCKS(n), CAFFE_CUDA_NUM_THREADS>>>(
        n, channels_, spatial_, dy, bottom[0]->gpu_data(),
        bottom[1]->gpu_data(), r, products_.mutable_gpu_data());
    CUDA_POST_KERNEL_CHECK;
    Dtype* dvar = bottom[2]->mutable_gpu_diff();
    channel_sum_.Sum(Dtype(1), products_.gpu_data(), Dtype(0), dvar);
    // NOLINT_NEXT_LINE(whitespace/operators)
    NormalizeStatDiff<Dtype><<<CAFFE_GET_BLOCKS(channels_),
        CAFFE_CUDA_NUM_THREADS>>>(channels_, Dtype(-0.5), 2, r, dvar);
    CUDA_POST_KERNEL_CHECK;
  }
  if (propagate_down[0]) {  // dx = r_c dy
    // NOLINT_NEXT_LINE(whitespace/operators)
    NormalizeBackward<Dtype><<<CAFFE_GET_BLOCKS(n), CAFFE_CUDA_NUM_THREADS>>>(
        n, channels_, spatial_, dy, r, bottom[0]->mutable_gpu_diff());
    CUDA_POST_KERNEL_CHECK;
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(NormalizeLayer);

}  // namespace caffe
