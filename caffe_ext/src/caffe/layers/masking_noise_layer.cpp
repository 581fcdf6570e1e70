#include <algorithm>
#include <string>
#include <vector>

#include "caffe/layers/masking_noise_layer.hpp"
#include "caffe/util/counter_rng.hpp"
#include "caffe/util/math_functions.hpp"
#include "caffe/util/noise_stream.hpp"

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
  noise_stream::SetUp("MaskingNoise layer '" + this->layer_param_.name()
                      + "'", &this->layer_param_, &this->blobs_);
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
    const counter_rng::Stream s = noise_stream::CurrentStream(*this->blobs_[0]);
    const int count = mask_.count();
    unsigned int* mask = mask_.mutable_cpu_data();
    for (int j = 0; 4 * j < count; ++j) {  // values 4j .. 4j + 3: block j
      const counter_rng::Block b = counter_rng::Draw(s, j);
      for (int k = 0; k < 4 && 4 * j + k < count; ++k) {
        mask[4 * j + k] = counter_rng::Keep(b.v[k], threshold_, drop_all_);
      }
    }
    noise_stream::Advance(this->blobs_[0].get());
  }
  ApplyMask_cpu(bottom[0]->cpu_data(), top[0]->mutable_cpu_data());
}

template <typename Dtype>
void MaskingNoiseLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[0]) {
    ApplyMask_cpu(top[0]->cpu_diff(), bottom[0]->mutable_cpu_diff());
  }
  caffe_set(this->blobs_[0]->count(), Dtype(0),
            this->blobs_[0]->mutable_cpu_diff());
}

#ifdef CPU_ONLY
STUB_GPU(MaskingNoiseLayer);
#endif

INSTANTIATE_CLASS(MaskingNoiseLayer);
REGISTER_LAYER_CLASS(MaskingNoise);

}  // namespace caffe
