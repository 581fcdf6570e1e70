#include <vector>

#include "caffe/layers/gaussian_noise_layer.hpp"
#include "caffe/util/counter_rng.hpp"
#include "caffe/util/math_functions.hpp"
#include "caffe/util/noise_stream.hpp"

namespace caffe {

// One thread per block j of the stream: values 2j and 2j + 1, as the CPU.
template <typename Dtype>
__global__ void GaussianNoiseForward(const int pairs, const int count,
    const counter_rng::Stream s, const double sigma, const Dtype* in,
    Dtype* out) {
  CUDA_KERNEL_LOOP(j, pairs) {
    Dtype n0, n1;
    counter_rng::GaussianNoisePair(s, j, sigma, &n0, &n1);
    out[2 * j] = counter_rng::AddRn(in[2 * j], n0);
    if (2 * j + 1 < count) {
      out[2 * j + 1] = counter_rng::AddRn(in[2 * j + 1], n1);
    }
  }
}

template <typename Dtype>
void GaussianNoiseLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  if (adds_noise()) {
    const counter_rng::Stream s = noise_stream::CurrentStream(*this->blobs_[0]);
    const int pairs = (count + 1) / 2;
    // NOLINT_NEXT_LINE(whitespace/operators)
    GaussianNoiseForward<Dtype><<<CAFFE_GET_BLOCKS(pairs),
        CAFFE_CUDA_NUM_THREADS>>>(pairs, count, s, static_cast<double>(std_),
        bottom[0]->gpu_data(), top[0]->mutable_gpu_data());
    CUDA_POST_KERNEL_CHECK;
  } else {
    caffe_copy(count, bottom[0]->gpu_data(), top[0]->mutable_gpu_data());
  }
  if (this->phase_ == TRAIN) {  // the state's 8 values, on the host
    noise_stream::Advance(this->blobs_[0].get());
  }
}

template <typename Dtype>
void GaussianNoiseLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[0]) {  // in place: the same memory, nothing to copy
    caffe_copy(top[0]->count(), top[0]->gpu_diff(),
               bottom[0]->mutable_gpu_diff());
  }
  caffe_gpu_set(this->blobs_[0]->count(), Dtype(0),
                this->blobs_[0]->mutable_gpu_diff());
}

INSTANTIATE_LAYER_GPU_FUNCS(GaussianNoiseLayer);

}  // namespace caffe
