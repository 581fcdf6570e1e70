#ifndef CAFFE_KL_SPARSITY_LOSS_LAYER_HPP_
#define CAFFE_KL_SPARSITY_LOSS_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The sparsity penalty of sparse autoencoders: the KL divergence
 *        between a target activation rho and each code unit's mean
 *        activation over the batch.
 *
 * Bottom: a N x D code of sigmoid activations in [0, 1] (any shape,
 * flattened after axis 0); a value outside [0, 1] (or NaN) stops Forward with
 * an error naming the layer. With rho_j the batch mean of unit j,
 *   loss = sum_j rho log(rho / rho_j) + (1 - rho) log((1 - rho) / (1 - rho_j))
 * and, exactly, d loss / d a_ij = (-rho / rho_j + (1 - rho) / (1 - rho_j)) / N.
 * The penalty weight beta is the layer's loss_weight (default 1). rho_j is
 * clamped into [eps, 1 - eps] (kl_sparsity_param.eps, default 1e-6) in the
 * loss and the gradient, so that a unit saturated over the whole batch
 * (rho_j = 0 or 1) gives a finite loss and a finite gradient pointing back
 * inside, that of the clamped value.
 */
template <typename Dtype>
class KLSparsityLossLayer : public LossLayer<Dtype> {
 public:
  explicit KLSparsityLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "KLSparsityLoss"; }
  virtual inline int ExactNumBottomBlobs() const { return 1; }
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return true;
  }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  // The error for the input value at flat index i (CPU and GPU).
  std::string OutOfRange(const Blob<Dtype>& input, int i) const;
  // GPU: fails with OutOfRange() for the first value outside [0, 1].
  void CheckRangeGpu(const Blob<Dtype>& input);

  Dtype rho_, eps_;
  int num_, dim_;
  Blob<Dtype> rho_hat_;  // D: clamped batch means of the last forward pass
  Blob<Dtype> ones_;     // max(N, D) ones
  Blob<Dtype> terms_;    // GPU: D per-unit KL terms
  Blob<int> first_bad_;  // GPU: flat index of the first value outside [0, 1]
};

}  // namespace caffe

#endif  // CAFFE_KL_SPARSITY_LOSS_LAYER_HPP_
