#include <vector>

#include "caffe/layers/masked_euclidean_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// diff = a - b, masked = m diff; with broadcast the mask has one channel.
template <typename Dtype>
__global__ void MaskedEuclideanForward(const int n, const Dtype* a,
    const Dtype* b, const Dtype* mask, const bool broadcast,
    const int channels, const int inner, Dtype* diff, Dtype* masked) {
  CUDA_KERNEL_LOOP(index, n) {
    const int m = broadcast
        ? index / (channels * inner) * inner + index % inner : index;
    const Dtype d = a[index] - b[index];
    diff[index] = d;
    masked[index] = mask[m] * d;
  }
}

template <typename Dtype>
void MaskedEuclideanLossLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  // NOLINT_NEXT_LINE(whitespace/operators)
  MaskedEuclideanForward<Dtype><<<CAFFE_GET_BLOCKS(count),
      CAFFE_CUDA_NUM_THREADS>>>(count, bottom[0]->gpu_data(),
      bottom[1]->gpu_data(), bottom[2]->gpu_data(), broadcast_, channels_,
      inner_, diff_.mutable_gpu_data(), masked_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  Dtype mask_sum = 0;
  if (normalization_ == LossParameter_NormalizationMode_VALID) {
    caffe_gpu_asum(bottom[2]->count(), bottom[2]->gpu_data(), &mask_sum);
  }
  normalizer_ = Normalizer(mask_sum);
  Dtype dot;
  caffe_gpu_dot(count, masked_.gpu_data(), diff_.gpu_data(), &dot);
  top[0]->mutable_cpu_data()[0] = dot / (2 * normalizer_);
}

template <typename Dtype>
void MaskedEuclideanLossLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  for (int b = 0; b < 2; ++b) {
    if (propagate_down[b]) {
      const Dtype sign = b == 0 ? 1 : -1;
      caffe_gpu_scale(masked_.count(), sign * top[0]->cpu_diff()[0] /
          normalizer_, masked_.gpu_data(), bottom[b]->mutable_gpu_diff());
    }
  }
  if (propagate_down[2]) {
    caffe_gpu_set(bottom[2]->count(), Dtype(0),
                  bottom[2]->mutable_gpu_diff());
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(MaskedEuclideanLossLayer);

}  // namespace caffe
