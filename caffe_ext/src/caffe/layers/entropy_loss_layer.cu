#include <vector>

#include "caffe/layers/entropy_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// One thread per row (i, s), whose class k is at
// i * classes * inner + k * inner + s: writes the row's log-softmax and
// entropy, as Forward_cpu does.
template <typename Dtype>
__global__ void EntropyLossForward(const int rows, const int classes,
    const int inner, const Dtype* z, Dtype* log_prob, Dtype* entropy) {
  CUDA_KERNEL_LOOP(row, rows) {
    const int offset = (row / inner) * classes * inner + row % inner;
    Dtype max_z = z[offset];
    for (int k = 1; k < classes; ++k) {
      max_z = max(max_z, z[offset + k * inner]);
    }
    Dtype sum = 0;
    for (int k = 0; k < classes; ++k) {
      sum += exp(z[offset + k * inner] - max_z);
    }
    const Dtype log_sum = log(sum);
    Dtype h = 0;
    for (int k = 0; k < classes; ++k) {
      const int j = offset + k * inner;
      log_prob[j] = z[j] - max_z - log_sum;
      const Dtype p = exp(log_prob[j]);
      h -= p > 0 ? p * log_prob[j] : 0;
    }
    entropy[row] = h;
  }
}

template <typename Dtype>
__global__ void EntropyLossBackward(const int n, const int classes,
    const int inner, const Dtype scale, const Dtype* log_prob,
    const Dtype* entropy, Dtype* diff) {
  CUDA_KERNEL_LOOP(index, n) {
    const int row = index / (classes * inner) * inner + index % inner;
    const Dtype p = exp(log_prob[index]);
    diff[index] = p > 0 ? -scale * p * (log_prob[index] + entropy[row]) : 0;
  }
}

template <typename Dtype>
void EntropyLossLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const int rows = outer_num_ * inner_num_;
  // NOLINT_NEXT_LINE(whitespace/operators)
  EntropyLossForward<Dtype><<<CAFFE_GET_BLOCKS(rows), CAFFE_CUDA_NUM_THREADS>>>(
      rows, classes_, inner_num_, bottom[0]->gpu_data(),
      log_prob_.mutable_gpu_data(), entropy_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  Dtype loss;  // each H_r >= 0 (log p <= 0), so their sum is the asum
  caffe_gpu_asum(rows, entropy_.gpu_data(), &loss);
  top[0]->mutable_cpu_data()[0] = loss / rows;
}

template <typename Dtype>
void EntropyLossLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  const int n = bottom[0]->count();
  const Dtype scale = top[0]->cpu_diff()[0] / (outer_num_ * inner_num_);
  // NOLINT_NEXT_LINE(whitespace/operators)
  EntropyLossBackward<Dtype><<<CAFFE_GET_BLOCKS(n), CAFFE_CUDA_NUM_THREADS>>>(
      n, classes_, inner_num_, scale, log_prob_.gpu_data(),
      entropy_.gpu_data(), bottom[0]->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(EntropyLossLayer);

}  // namespace caffe
