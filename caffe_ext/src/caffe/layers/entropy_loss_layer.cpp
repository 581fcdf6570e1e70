#include <algorithm>
#include <cmath>
#include <vector>

#include "caffe/layers/entropy_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void EntropyLossLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  // Not LossLayer::Reshape: it compares the first axis with a label bottom.
  const int axis =
      bottom[0]->CanonicalAxisIndex(this->layer_param_.softmax_param().axis());
  outer_num_ = bottom[0]->count(0, axis);
  classes_ = bottom[0]->shape(axis);
  inner_num_ = bottom[0]->count(axis + 1);
  CHECK_GT(outer_num_ * inner_num_, 0) << "EntropyLoss layer '"
      << this->layer_param_.name() << "': the input has no rows";
  CHECK_GT(classes_, 0) << "EntropyLoss layer '"
      << this->layer_param_.name() << "': the input has no classes";
  top[0]->Reshape(vector<int>());
  log_prob_.ReshapeLike(*bottom[0]);
  entropy_.Reshape(outer_num_, inner_num_, 1, 1);
}

template <typename Dtype>
void EntropyLossLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const Dtype* z = bottom[0]->cpu_data();
  Dtype* log_prob = log_prob_.mutable_cpu_data();
  Dtype* entropy = entropy_.mutable_cpu_data();
  Dtype loss = 0;
  for (int i = 0; i < outer_num_; ++i) {
    for (int s = 0; s < inner_num_; ++s) {
      // Row (i, s): class k at offset + k * inner_num_.
      const int offset = i * classes_ * inner_num_ + s;
      Dtype max = z[offset];
      for (int k = 1; k < classes_; ++k) {
        max = std::max(max, z[offset + k * inner_num_]);
      }
      Dtype sum = 0;
      for (int k = 0; k < classes_; ++k) {
        sum += std::exp(z[offset + k * inner_num_] - max);
      }
      const Dtype log_sum = std::log(sum);
      Dtype h = 0;
      for (int k = 0; k < classes_; ++k) {
        const int j = offset + k * inner_num_;
        log_prob[j] = z[j] - max - log_sum;
        const Dtype p = std::exp(log_prob[j]);
        h -= p > 0 ? p * log_prob[j] : 0;  // 0 log 0 = 0, even at -inf
      }
      entropy[i * inner_num_ + s] = h;
      loss += h;
    }
  }
  top[0]->mutable_cpu_data()[0] = loss / (outer_num_ * inner_num_);
}

template <typename Dtype>
void EntropyLossLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  const Dtype scale = top[0]->cpu_diff()[0] / (outer_num_ * inner_num_);
  const Dtype* log_prob = log_prob_.cpu_data();
  const Dtype* entropy = entropy_.cpu_data();
  Dtype* diff = bottom[0]->mutable_cpu_diff();
  for (int j = 0; j < bottom[0]->count(); ++j) {
    const int row = j / (classes_ * inner_num_) * inner_num_ + j % inner_num_;
    const Dtype p = std::exp(log_prob[j]);
    diff[j] = p > 0 ? -scale * p * (log_prob[j] + entropy[row]) : 0;
  }
}

#ifdef CPU_ONLY
STUB_GPU(EntropyLossLayer);
#endif

INSTANTIATE_CLASS(EntropyLossLayer);
REGISTER_LAYER_CLASS(EntropyLoss);

}  // namespace caffe
