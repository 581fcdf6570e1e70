#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "caffe/layers/kl_sparsity_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
std::string KLSparsityLossLayer<Dtype>::OutOfRange(const Blob<Dtype>& input,
    int i) const {
  std::ostringstream message;
  message << "KLSparsityLoss layer '" << this->layer_param_.name()
      << "': input " << input.cpu_data()[i] << " at (sample " << i / dim_
      << ", unit " << i % dim_ << ") is outside [0, 1]; the KL sparsity "
      << "penalty takes sigmoid activations";
  return message.str();
}

template <typename Dtype>
void KLSparsityLossLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const KLSparsityParameter& param = this->layer_param_.kl_sparsity_param();
  rho_ = param.rho();
  eps_ = param.eps();
  CHECK(rho_ > 0 && rho_ < 1) << "KLSparsityLoss layer '"
      << this->layer_param_.name() << "': rho must be in (0, 1), got "
      << rho_;
  CHECK(eps_ > 0 && eps_ < 0.5) << "KLSparsityLoss layer '"
      << this->layer_param_.name() << "': eps must be in (0, 0.5), got "
      << eps_;
}

template <typename Dtype>
void KLSparsityLossLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  CHECK_GE(bottom[0]->num_axes(), 1) << "KLSparsityLoss layer '"
      << this->layer_param_.name() << "': the input needs a batch axis";
  num_ = bottom[0]->shape(0);
  dim_ = bottom[0]->count(1);
  CHECK_GT(num_, 0) << "KLSparsityLoss layer '" << this->layer_param_.name()
      << "': empty batch";
  top[0]->Reshape(vector<int>());
  rho_hat_.Reshape(vector<int>(1, dim_));
  terms_.Reshape(vector<int>(1, dim_));
  const int ones = std::max(num_, dim_);
  if (ones_.count() != ones) {
    ones_.Reshape(vector<int>(1, ones));
    caffe_set(ones, Dtype(1), ones_.mutable_cpu_data());
  }
}

template <typename Dtype>
void KLSparsityLossLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const Dtype* a = bottom[0]->cpu_data();
  for (int i = 0; i < bottom[0]->count(); ++i) {
    CHECK(a[i] >= 0 && a[i] <= 1) << OutOfRange(*bottom[0], i);
  }
  Dtype* rho_hat = rho_hat_.mutable_cpu_data();
  caffe_cpu_gemv<Dtype>(CblasTrans, num_, dim_, Dtype(1) / num_, a,
                        ones_.cpu_data(), Dtype(0), rho_hat);
  Dtype loss = 0;
  for (int j = 0; j < dim_; ++j) {
    const Dtype r = std::min(std::max(rho_hat[j], eps_), Dtype(1) - eps_);
    rho_hat[j] = r;
    loss += rho_ * std::log(rho_ / r) +
        (1 - rho_) * std::log((1 - rho_) / (1 - r));
  }
  top[0]->mutable_cpu_data()[0] = loss;
}

template <typename Dtype>
void KLSparsityLossLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  const Dtype scale = top[0]->cpu_diff()[0] / num_;
  const Dtype* rho_hat = rho_hat_.cpu_data();
  Dtype* diff = bottom[0]->mutable_cpu_diff();
  for (int j = 0; j < dim_; ++j) {
    diff[j] = scale * (-rho_ / rho_hat[j] + (1 - rho_) / (1 - rho_hat[j]));
  }
  for (int i = 1; i < num_; ++i) {  // the same for every sample
    caffe_copy(dim_, diff, diff + i * dim_);
  }
}

#ifdef CPU_ONLY
STUB_GPU(KLSparsityLossLayer);
#endif

INSTANTIATE_CLASS(KLSparsityLossLayer);
REGISTER_LAYER_CLASS(KLSparsityLoss);

}  // namespace caffe
