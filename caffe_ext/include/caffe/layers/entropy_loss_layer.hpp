#ifndef CAFFE_ENTROPY_LOSS_LAYER_HPP_
#define CAFFE_ENTROPY_LOSS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The mean entropy of the softmax of the input: the unlabelled-data
 *        term E = -sum p log p of semi-supervised learning by deep-network
 *        inversion.
 *
 * Bottom: logits z, the class axis softmax_param.axis (default 1; negative
 * counts from the end), the axes before and after it taken as independent
 * rows, as in SoftmaxWithLoss: an N x K x H x W input has R = N H W rows of
 * K classes. With p = softmax(z) along the class axis and H_r the entropy
 * of row r,
 *   loss = (1 / R) sum_r H_r,  H_r = -sum_k p_rk log p_rk,
 *   d loss / d z_rj = -(1 / R) p_rj (log p_rj + H_r).
 * log p comes from the log-softmax z - max - log sum exp(z - max), never
 * from log(p), and a class whose p underflows to 0 adds 0 to H_r and gets
 * a 0 gradient (0 log 0 = 0): logits of +-1000, or a -inf logit in a row
 * with a finite one, give finite values, not NaN. The loss is in nats; its
 * weight is the layer's loss_weight (default 1). loss_param.normalization
 * is not read: the normaliser is always R.
 */
template <typename Dtype>
class EntropyLossLayer : public LossLayer<Dtype> {
 public:
  explicit EntropyLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "EntropyLoss"; }
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

  int outer_num_;     // the product of the axes before the class axis
  int classes_;       // K
  int inner_num_;     // the product of the axes after it
  Blob<Dtype> log_prob_;  // log p, the bottom's shape (last forward pass)
  Blob<Dtype> entropy_;   // H_r, outer_num_ x inner_num_ (last forward pass)
};

}  // namespace caffe

#endif  // CAFFE_ENTROPY_LOSS_LAYER_HPP_
