#include <algorithm>
#include <vector>

#include "caffe/layers/ladder_combinator_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// The ten parameters, passed by value to the kernels.
template <typename Dtype>
struct LadderParams {
  const Dtype* a[10];
};

template <typename Dtype>
__device__ inline Dtype LadderSigmoidGpu(Dtype x) {
  return 1 / (1 + exp(-x));
}

template <typename Dtype>
__global__ void LadderCombinatorForward(const int n, const int dim,
    const int inner, const LadderParams<Dtype> p, const Dtype* z,
    const Dtype* u, Dtype* out) {
  CUDA_KERNEL_LOOP(i, n) {
    const int d = (i / inner) % dim;
    const Dtype* const* a = p.a;
    const Dtype mu = a[0][d] * LadderSigmoidGpu(a[1][d] * u[i] + a[2][d]) +
        a[3][d] * u[i] + a[4][d];
    const Dtype v = a[5][d] * LadderSigmoidGpu(a[6][d] * u[i] + a[7][d]) +
        a[8][d] * u[i] + a[9][d];
    out[i] = (z[i] - mu) * v + mu;
  }
}

// Gradients to z~ and u (when their pointers are not NULL) and, when terms
// is not NULL, the ten per-value parameter gradients at terms[k * n + i].
template <typename Dtype>
__global__ void LadderCombinatorBackward(const int n, const int dim,
    const int inner, const LadderParams<Dtype> p, const Dtype* z,
    const Dtype* u, const Dtype* top_diff, Dtype* dz, Dtype* du,
    Dtype* terms) {
  CUDA_KERNEL_LOOP(i, n) {
    const int d = (i / inner) % dim;
    const Dtype* const* a = p.a;
    const Dtype s1 = LadderSigmoidGpu(a[1][d] * u[i] + a[2][d]);
    const Dtype s2 = LadderSigmoidGpu(a[6][d] * u[i] + a[7][d]);
    const Dtype mu = a[0][d] * s1 + a[3][d] * u[i] + a[4][d];
    const Dtype v = a[5][d] * s2 + a[8][d] * u[i] + a[9][d];
    const Dtype g_mu = top_diff[i] * (1 - v);
    const Dtype g_v = top_diff[i] * (z[i] - mu);
    const Dtype ds1 = a[0][d] * s1 * (1 - s1);
    const Dtype ds2 = a[5][d] * s2 * (1 - s2);
    if (dz) {
      dz[i] = top_diff[i] * v;
    }
    if (du) {
      du[i] = g_mu * (ds1 * a[1][d] + a[3][d]) +
          g_v * (ds2 * a[6][d] + a[8][d]);
    }
    if (terms) {
      terms[i] = g_mu * s1;
      terms[n + i] = g_mu * ds1 * u[i];
      terms[2 * n + i] = g_mu * ds1;
      terms[3 * n + i] = g_mu * u[i];
      terms[4 * n + i] = g_mu;
      terms[5 * n + i] = g_v * s2;
      terms[6 * n + i] = g_v * ds2 * u[i];
      terms[7 * n + i] = g_v * ds2;
      terms[8 * n + i] = g_v * u[i];
      terms[9 * n + i] = g_v;
    }
  }
}

template <typename Dtype>
void LadderCombinatorLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LadderParams<Dtype> p;
  for (int k = 0; k < kNumParams; ++k) {
    p.a[k] = this->blobs_[k]->gpu_data();
  }
  const int n = bottom[0]->count();
  // NOLINT_NEXT_LINE(whitespace/operators)
  LadderCombinatorForward<Dtype><<<CAFFE_GET_BLOCKS(n),
      CAFFE_CUDA_NUM_THREADS>>>(n, dim_, inner_, p, bottom[0]->gpu_data(),
      bottom[1]->gpu_data(), top[0]->mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void LadderCombinatorLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  LadderParams<Dtype> p;
  bool any_param = false;
  for (int k = 0; k < kNumParams; ++k) {
    p.a[k] = this->blobs_[k]->gpu_data();
    any_param = any_param || this->param_propagate_down_[k];
  }
  if (!propagate_down[0] && !propagate_down[1] && !any_param) {
    return;
  }
  const int n = bottom[0]->count();
  Dtype* terms = any_param ? param_terms_.mutable_gpu_data() : NULL;
  // NOLINT_NEXT_LINE(whitespace/operators)
  LadderCombinatorBackward<Dtype><<<CAFFE_GET_BLOCKS(n),
      CAFFE_CUDA_NUM_THREADS>>>(n, dim_, inner_, p, bottom[0]->gpu_data(),
      bottom[1]->gpu_data(), top[0]->gpu_diff(),
      propagate_down[0] ? bottom[0]->mutable_gpu_diff() : NULL,
      propagate_down[1] ? bottom[1]->mutable_gpu_diff() : NULL, terms);
  CUDA_POST_KERNEL_CHECK;
  if (!any_param) {
    return;
  }
  const int ones = std::max(outer_, inner_);
  if (ones_.count() < ones) {
    ones_.Reshape(vector<int>(1, ones));
    caffe_gpu_set(ones, Dtype(1), ones_.mutable_gpu_data());
  }
  // Sums over the inner axes: (10 outer dim) x inner times ones.
  const Dtype* sums = terms;
  if (inner_ > 1) {
    caffe_gpu_gemv<Dtype>(CblasNoTrans, kNumParams * outer_ * dim_, inner_,
        Dtype(1), terms, ones_.gpu_data(), Dtype(0),
        inner_sums_.mutable_gpu_data());
    sums = inner_sums_.gpu_data();
  }
  // Then over the outer axes, added to each parameter's diff.
  for (int k = 0; k < kNumParams; ++k) {
    if (this->param_propagate_down_[k]) {
      caffe_gpu_gemv<Dtype>(CblasTrans, outer_, dim_, Dtype(1),
          sums + k * outer_ * dim_, ones_.gpu_data(), Dtype(1),
          this->blobs_[k]->mutable_gpu_diff());
    }
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(LadderCombinatorLayer);

}  // namespace caffe
