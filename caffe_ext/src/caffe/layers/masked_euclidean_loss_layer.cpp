#include <algorithm>
#include <string>
#include <vector>

#include "caffe/layers/masked_euclidean_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
std::string MaskedEuclideanLossLayer<Dtype>::Where() const {
  return "MaskedEuclideanLoss layer '" + this->layer_param_.name() + "': ";
}

template <typename Dtype>
void MaskedEuclideanLossLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const LossParameter& loss = this->layer_param_.loss_param();
  normalization_ = loss.has_normalization() ? loss.normalization()
      : LossParameter_NormalizationMode_BATCH_SIZE;
}

template <typename Dtype>
void MaskedEuclideanLossLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::Reshape(bottom, top);
  const Blob<Dtype>& pred = *bottom[0];
  const Blob<Dtype>& mask = *bottom[2];
  CHECK(pred.shape() == bottom[1]->shape()) << Where() << "prediction "
      << pred.shape_string() << " and target " << bottom[1]->shape_string()
      << " differ in shape";
  CHECK_GE(pred.num_axes(), 2) << Where() << "inputs must be N x C x ...";
  channels_ = pred.shape(1);
  inner_ = pred.count(2);
  broadcast_ = mask.shape() != pred.shape();
  if (broadcast_) {
    vector<int> one_channel = pred.shape();
    one_channel[1] = 1;
    CHECK(mask.shape() == one_channel) << Where() << "mask "
        << mask.shape_string() << " must have the prediction's shape "
        << pred.shape_string() << ", or that shape with 1 channel";
  }
  diff_.ReshapeLike(pred);
  masked_.ReshapeLike(pred);
}

template <typename Dtype>
Dtype MaskedEuclideanLossLayer<Dtype>::Normalizer(Dtype mask_sum) const {
  switch (normalization_) {
  case LossParameter_NormalizationMode_FULL:
    return diff_.count();
  case LossParameter_NormalizationMode_VALID:
    // As Caffe's losses: at least 1, so an all-zero mask gives loss 0.
    return std::max(Dtype(1), broadcast_ ? mask_sum * channels_ : mask_sum);
  case LossParameter_NormalizationMode_BATCH_SIZE:
    return diff_.shape(0);
  case LossParameter_NormalizationMode_NONE:
    return 1;
  default:
    LOG(FATAL) << Where() << "unknown normalization "
        << LossParameter_NormalizationMode_Name(normalization_);
  }
  return 1;
}

template <typename Dtype>
void MaskedEuclideanLossLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  const Dtype* mask = bottom[2]->cpu_data();
  Dtype* diff = diff_.mutable_cpu_data();
  Dtype* masked = masked_.mutable_cpu_data();
  caffe_sub(count, bottom[0]->cpu_data(), bottom[1]->cpu_data(), diff);
  for (int i = 0; i < count; ++i) {
    const int m = broadcast_ ? i / (channels_ * inner_) * inner_ + i % inner_
        : i;
    masked[i] = mask[m] * diff[i];
  }
  const bool valid = normalization_ == LossParameter_NormalizationMode_VALID;
  normalizer_ = Normalizer(
      valid ? caffe_cpu_asum(bottom[2]->count(), mask) : Dtype(0));
  top[0]->mutable_cpu_data()[0] =
      caffe_cpu_dot(count, masked, diff) / (2 * normalizer_);
}

template <typename Dtype>
void MaskedEuclideanLossLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  for (int b = 0; b < 2; ++b) {
    if (propagate_down[b]) {
      const Dtype sign = b == 0 ? 1 : -1;
      caffe_cpu_scale(masked_.count(), sign * top[0]->cpu_diff()[0] /
          normalizer_, masked_.cpu_data(), bottom[b]->mutable_cpu_diff());
    }
  }
  if (propagate_down[2]) {
    caffe_set(bottom[2]->count(), Dtype(0), bottom[2]->mutable_cpu_diff());
  }
}

#ifdef CPU_ONLY
STUB_GPU(MaskedEuclideanLossLayer);
#endif

INSTANTIATE_CLASS(MaskedEuclideanLossLayer);
REGISTER_LAYER_CLASS(MaskedEuclideanLoss);

}  // namespace caffe
