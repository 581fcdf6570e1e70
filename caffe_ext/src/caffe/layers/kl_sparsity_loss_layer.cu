#include <vector>

#include "caffe/layers/kl_sparsity_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// Records in *first_bad the lowest flat index of a value outside [0, 1]
// (NaN included), so the host reports the value the CPU's check stops at.
template <typename Dtype>
__global__ void KLSparsityCheckRange(const int n, const Dtype* a,
    int* first_bad) {
  CUDA_KERNEL_LOOP(index, n) {
    if (!(a[index] >= 0 && a[index] <= 1)) {
      atomicMin(first_bad, index);
    }
  }
}

// Clamps rho_hat into [eps, 1 - eps] in place and writes each unit's term.
template <typename Dtype>
__global__ void KLSparsityTerms(const int dim, const Dtype rho,
    const Dtype eps, Dtype* rho_hat, Dtype* terms) {
  CUDA_KERNEL_LOOP(j, dim) {
    const Dtype r = min(max(rho_hat[j], eps), Dtype(1) - eps);
    rho_hat[j] = r;
    terms[j] = rho * log(rho / r) + (1 - rho) * log((1 - rho) / (1 - r));
  }
}

template <typename Dtype>
__global__ void KLSparsityBackward(const int n, const int dim,
    const Dtype rho, const Dtype scale, const Dtype* rho_hat, Dtype* diff) {
  CUDA_KERNEL_LOOP(index, n) {
    const Dtype r = rho_hat[index % dim];
    diff[index] = scale * (-rho / r + (1 - rho) / (1 - r));
  }
}

// Costs one kernel and a 4-byte read back (a synchronisation) per forward.
template <typename Dtype>
void KLSparsityLossLayer<Dtype>::CheckRangeGpu(const Blob<Dtype>& input) {
  const int n = input.count();
  first_bad_.Reshape(vector<int>(1, 1));
  int* first_bad = first_bad_.mutable_gpu_data();
  caffe_gpu_set(1, n, first_bad);  // none found
  // NOLINT_NEXT_LINE(whitespace/operators)
  KLSparsityCheckRange<Dtype><<<CAFFE_GET_BLOCKS(n), CAFFE_CUDA_NUM_THREADS>>>(
      n, input.gpu_data(), first_bad);
  CUDA_POST_KERNEL_CHECK;
  const int bad = first_bad_.cpu_data()[0];
  CHECK_EQ(bad, n) << OutOfRange(input, bad);
}

template <typename Dtype>
void KLSparsityLossLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  CheckRangeGpu(*bottom[0]);
  Dtype* rho_hat = rho_hat_.mutable_gpu_data();
  caffe_gpu_gemv<Dtype>(CblasTrans, num_, dim_, Dtype(1) / num_,
                        bottom[0]->gpu_data(), ones_.gpu_data(), Dtype(0),
                        rho_hat);
  // NOLINT_NEXT_LINE(whitespace/operators)
  KLSparsityTerms<Dtype><<<CAFFE_GET_BLOCKS(dim_), CAFFE_CUDA_NUM_THREADS>>>(
      dim_, rho_, eps_, rho_hat, terms_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  Dtype loss;
  caffe_gpu_dot(dim_, terms_.gpu_data(), ones_.gpu_data(), &loss);
  top[0]->mutable_cpu_data()[0] = loss;
}

template <typename Dtype>
void KLSparsityLossLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  const int n = bottom[0]->count();
  const Dtype scale = top[0]->cpu_diff()[0] / num_;
  // NOLINT_NEXT_LINE(whitespace/operators)
  KLSparsityBackward<Dtype><<<CAFFE_GET_BLOCKS(n), CAFFE_CUDA_NUM_THREADS>>>(
      n, dim_, rho_, scale, rho_hat_.gpu_data(),
      bottom[0]->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(KLSparsityLossLayer);

}  // namespace caffe
