#include <vector>

#include "caffe/layers/masking_noise_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// mask holds uniform 32-bit draws on entry and the 0/1 keep mask on exit.
template <typename Dtype>
__global__ void MaskingNoiseForward(const int n, const Dtype* in,
    const unsigned int threshold, const bool drop_all, unsigned int* mask,
    Dtype* out) {
  CUDA_KERNEL_LOOP(index, n) {
    const bool keep = !drop_all && mask[index] >= threshold;
    mask[index] = keep;
    out[index] = keep ? in[index] : Dtype(0);
  }
}

template <typename Dtype>
__global__ void MaskingNoiseBackward(const int n, const Dtype* top_diff,
    const unsigned int* mask, Dtype* diff) {
  CUDA_KERNEL_LOOP(index, n) {
    diff[index] = mask[index] ? top_diff[index] : Dtype(0);
  }
}

template <typename Dtype>
void MaskingNoiseLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  if (this->phase_ != TRAIN) {
    caffe_copy(count, bottom[0]->gpu_data(), top[0]->mutable_gpu_data());
    return;
  }
  unsigned int* mask = mask_.mutable_gpu_data();
  caffe_gpu_rng_uniform(count, mask);
  // NOLINT_NEXT_LINE(whitespace/operators)
  MaskingNoiseForward<Dtype><<<CAFFE_GET_BLOCKS(count),
      CAFFE_CUDA_NUM_THREADS>>>(count, bottom[0]->gpu_data(), threshold_,
      drop_all_, mask, top[0]->mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void MaskingNoiseLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  const int count = bottom[0]->count();
  if (this->phase_ != TRAIN) {
    caffe_copy(count, top[0]->gpu_diff(), bottom[0]->mutable_gpu_diff());
    return;
  }
  // NOLINT_NEXT_LINE(whitespace/operators)
  MaskingNoiseBackward<Dtype><<<CAFFE_GET_BLOCKS(count),
      CAFFE_CUDA_NUM_THREADS>>>(count, top[0]->gpu_diff(), mask_.gpu_data(),
      bottom[0]->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(MaskingNoiseLayer);

}  // namespace caffe
