#include <string>
#include <vector>

#include "caffe/layers/gaussian_noise_layer.hpp"
#include "caffe/util/counter_rng.hpp"
#include "caffe/util/math_functions.hpp"
#include "caffe/util/noise_stream.hpp"

namespace caffe {

template <typename Dtype>
void GaussianNoiseLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  std_ = this->layer_param_.gaussian_noise_param().std();
  CHECK_GE(std_, 0) << "GaussianNoise layer '" << this->layer_param_.name()
      << "': std must be >= 0, got " << std_;
  noise_stream::SetUp("GaussianNoise layer '" + this->layer_param_.name()
                      + "'", &this->layer_param_, &this->blobs_);
}

template <typename Dtype>
void GaussianNoiseLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  const Dtype* in = bottom[0]->cpu_data();
  Dtype* out = top[0]->mutable_cpu_data();
  if (adds_noise()) {
    const counter_rng::Stream s = noise_stream::CurrentStream(*this->blobs_[0]);
    const double sigma = std_;
    for (int j = 0; 2 * j < count; ++j) {  // values 2j, 2j + 1: block j
      Dtype n0, n1;
      counter_rng::GaussianNoisePair(s, j, sigma, &n0, &n1);
      out[2 * j] = counter_rng::AddRn(in[2 * j], n0);
      if (2 * j + 1 < count) {
        out[2 * j + 1] = counter_rng::AddRn(in[2 * j + 1], n1);
      }
    }
  } else {
    caffe_copy(count, in, out);
  }
  if (this->phase_ == TRAIN) {
    noise_stream::Advance(this->blobs_[0].get());
  }
}

template <typename Dtype>
void GaussianNoiseLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[0]) {  // in place: the same memory, nothing to copy
    caffe_copy(top[0]->count(), top[0]->cpu_diff(),
               bottom[0]->mutable_cpu_diff());
  }
  caffe_set(this->blobs_[0]->count(), Dtype(0),
            this->blobs_[0]->mutable_cpu_diff());
}

#ifdef CPU_ONLY
STUB_GPU(GaussianNoiseLayer);
#endif

INSTANTIATE_CLASS(GaussianNoiseLayer);
REGISTER_LAYER_CLASS(GaussianNoise);

}  // namespace caffe
