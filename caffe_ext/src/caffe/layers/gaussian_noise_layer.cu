#include <vector>

#include "caffe/layers/gaussian_noise_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
__global__ void GaussianNoiseForward(const int n, const Dtype* in,
    const Dtype* noise, Dtype* out) {
  CUDA_KERNEL_LOOP(index, n) {
    out[index] = in[index] + noise[index];
  }
}

template <typename Dtype>
void GaussianNoiseLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  if (adds_noise()) {
    Dtype* noise = noise_.mutable_gpu_data();
    // noise_ has an even length, as curandGenerateNormal requires.
    caffe_gpu_rng_gaussian<Dtype>(noise_.count(), Dtype(0), std_, noise);
    // NOLINT_NEXT_LINE(whitespace/operators)
    GaussianNoiseForward<Dtype><<<CAFFE_GET_BLOCKS(count),
        CAFFE_CUDA_NUM_THREADS>>>(count, bottom[0]->gpu_data(), noise,
        top[0]->mutable_gpu_data());
    CUDA_POST_KERNEL_CHECK;
  } else {
    caffe_copy(count, bottom[0]->gpu_data(), top[0]->mutable_gpu_data());
  }
}

template <typename Dtype>
void GaussianNoiseLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[0]) {  // in place: the same memory, nothing to copy
    caffe_copy(top[0]->count(), top[0]->gpu_diff(),
               bottom[0]->mutable_gpu_diff());
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(GaussianNoiseLayer);

}  // namespace caffe
