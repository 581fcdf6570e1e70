#include <vector>

#include "caffe/layers/gaussian_noise_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void GaussianNoiseLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  std_ = this->layer_param_.gaussian_noise_param().std();
  CHECK_GE(std_, 0) << "GaussianNoise layer '" << this->layer_param_.name()
      << "': std must be >= 0, got " << std_;
}

template <typename Dtype>
void GaussianNoiseLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  NeuronLayer<Dtype>::Reshape(bottom, top);
  const int count = bottom[0]->count();
  noise_.Reshape(vector<int>(1, count + count % 2));
}

template <typename Dtype>
void GaussianNoiseLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  if (adds_noise()) {
    Dtype* noise = noise_.mutable_cpu_data();
    caffe_rng_gaussian<Dtype>(count, Dtype(0), std_, noise);
    caffe_add(count, bottom[0]->cpu_data(), noise, top[0]->mutable_cpu_data());
  } else {
    caffe_copy(count, bottom[0]->cpu_data(), top[0]->mutable_cpu_data());
  }
}

template <typename Dtype>
void GaussianNoiseLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[0]) {  // in place: the same memory, nothing to copy
    caffe_copy(top[0]->count(), top[0]->cpu_diff(),
               bottom[0]->mutable_cpu_diff());
  }
}

#ifdef CPU_ONLY
STUB_GPU(GaussianNoiseLayer);
#endif

INSTANTIATE_CLASS(GaussianNoiseLayer);
REGISTER_LAYER_CLASS(GaussianNoise);

}  // namespace caffe
