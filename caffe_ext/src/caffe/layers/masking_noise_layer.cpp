#include <algorithm>
#include <vector>

#include "caffe/layers/masking_noise_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void MaskingNoiseLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  ratio_ = this->layer_param_.masking_noise_param().ratio();
  CHECK(ratio_ >= 0 && ratio_ <= 1) << "MaskingNoise layer '"
      << this->layer_param_.name() << "': ratio must be in [0, 1], got "
      << ratio_;
  drop_all_ = ratio_ >= 1;
  threshold_ = static_cast<unsigned int>(
      std::min(static_cast<double>(ratio_) * 4294967296.0, 4294967295.0));
}

template <typename Dtype>
void MaskingNoiseLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  NeuronLayer<Dtype>::Reshape(bottom, top);
  mask_.Reshape(bottom[0]->shape());
}

template <typename Dtype>
void MaskingNoiseLayer<Dtype>::ApplyMask_cpu(const Dtype* in, Dtype* out) {
  const int count = mask_.count();
  if (this->phase_ != TRAIN) {
    caffe_copy(count, in, out);
    return;
  }
  const unsigned int* mask = mask_.cpu_data();
  for (int i = 0; i < count; ++i) {
    out[i] = mask[i] ? in[i] : Dtype(0);  // zero even for inf / NaN input
  }
}

template <typename Dtype>
void MaskingNoiseLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  if (this->phase_ == TRAIN) {  // 1: kept
    caffe_rng_bernoulli(mask_.count(), Dtype(1) - ratio_,
                        mask_.mutable_cpu_data());
  }
  ApplyMask_cpu(bottom[0]->cpu_data(), top[0]->mutable_cpu_data());
}

template <typename Dtype>
void MaskingNoiseLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[0]) {
    ApplyMask_cpu(top[0]->cpu_diff(), bottom[0]->mutable_cpu_diff());
  }
}

#ifdef CPU_ONLY
STUB_GPU(MaskingNoiseLayer);
#endif

INSTANTIATE_CLASS(MaskingNoiseLayer);
REGISTER_LAYER_CLASS(MaskingNoise);

}  // namespace caffe
