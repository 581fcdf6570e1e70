#include <vector>

#include "caffe/layers/batch_stats_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// centered = x - mean_c and its square.
template <typename Dtype>
__global__ void BatchStatsCenter(const int n, const int channels,
    const int spatial, const Dtype* x, const Dtype* mean, Dtype* centered,
    Dtype* squares) {
  CUDA_KERNEL_LOOP(i, n) {
    const Dtype d = x[i] - mean[(i / spatial) % channels];
    centered[i] = d;
    squares[i] = d * d;
  }
}

template <typename Dtype>
__global__ void BatchStatsBackward(const int n, const int channels,
    const int spatial, const Dtype mean_scale, const Dtype var_scale,
    const Dtype* dmean, const Dtype* dvar, const Dtype* centered,
    Dtype* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const int c = (i / spatial) % channels;
    dx[i] = dmean[c] * mean_scale + dvar[c] * var_scale * centered[i];
  }
}

template <typename Dtype>
void BatchStatsLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  Dtype* mean = top[0]->mutable_gpu_data();
  Dtype* var = top[1]->mutable_gpu_data();
  if (use_global_stats_) {
    const Dtype scale = RunningScale();
    caffe_gpu_scale(channels_, scale, this->blobs_[0]->gpu_data(), mean);
    caffe_gpu_scale(channels_, scale, this->blobs_[1]->gpu_data(), var);
    return;
  }
  const int n = bottom[0]->count();
  channel_sum_.Sum(Dtype(1) / count_, bottom[0]->gpu_data(), Dtype(0), mean);
  // NOLINT_NEXT_LINE(whitespace/operators)
  BatchStatsCenter<Dtype><<<CAFFE_GET_BLOCKS(n), CAFFE_CUDA_NUM_THREADS>>>(
      n, channels_, spatial_, bottom[0]->gpu_data(), mean,
      centered_.mutable_gpu_data(), squares_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  channel_sum_.Sum(Dtype(1) / VarianceDivisor(), squares_.gpu_data(),
                   Dtype(0), var);
  UpdateRunningStats(top);
}

template <typename Dtype>
void BatchStatsLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  const int n = bottom[0]->count();
  Dtype* dx = bottom[0]->mutable_gpu_diff();
  if (use_global_stats_) {  // the tops do not depend on x
    caffe_gpu_set(n, Dtype(0), dx);
    return;
  }
  // NOLINT_NEXT_LINE(whitespace/operators)
  BatchStatsBackward<Dtype><<<CAFFE_GET_BLOCKS(n), CAFFE_CUDA_NUM_THREADS>>>(
      n, channels_, spatial_, Dtype(1) / count_,
      Dtype(2) / VarianceDivisor(), top[0]->gpu_diff(), top[1]->gpu_diff(),
      centered_.gpu_data(), dx);
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(BatchStatsLayer);

}  // namespace caffe
