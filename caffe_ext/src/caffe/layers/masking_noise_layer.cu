#include <vector>

#include "caffe/layers/masking_noise_layer.hpp"
#include "caffe/util/counter_rng.hpp"
#include "caffe/util/math_functions.hpp"
#include "caffe/util/noise_stream.hpp"

namespace caffe {

// One thread per block j of the stream: values 4j .. 4j + 3, as the CPU;
// mask gets the 0/1 keep mask.
template <typename Dtype>
__global__ void MaskingNoiseForward(const int blocks, const int count,
    const counter_rng::Stream s, const unsigned int threshold,
    const bool drop_all, const Dtype* in, unsigned int* mask, Dtype* out) {
  CUDA_KERNEL_LOOP(j, blocks) {
    const counter_rng::Block b = counter_rng::Draw(s, j);
    for (int k = 0; k < 4 && 4 * j + k < count; ++k) {
      const int i = 4 * j + k;
      const bool keep = counter_rng::Keep(b.v[k], threshold, drop_all);
      mask[i] = keep;
      out[i] = keep ? in[i] : Dtype(0);
    }
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
  const counter_rng::Stream s = noise_stream::CurrentStream(*this->blobs_[0]);
  const int blocks = (count + 3) / 4;
  // NOLINT_NEXT_LINE(whitespace/operators)
  MaskingNoiseForward<Dtype><<<CAFFE_GET_BLOCKS(blocks),
      CAFFE_CUDA_NUM_THREADS>>>(blocks, count, s, threshold_, drop_all_,
      bottom[0]->gpu_data(), mask_.mutable_gpu_data(),
      top[0]->mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  noise_stream::Advance(this->blobs_[0].get());  // 8 values, on the host
}

template <typename Dtype>
void MaskingNoiseLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  caffe_gpu_set(this->blobs_[0]->count(), Dtype(0),
                this->blobs_[0]->mutable_gpu_diff());
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
