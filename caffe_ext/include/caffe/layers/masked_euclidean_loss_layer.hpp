#ifndef CAFFE_MASKED_EUCLIDEAN_LOSS_LAYER_HPP_
#define CAFFE_MASKED_EUCLIDEAN_LOSS_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The Euclidean loss restricted by a mask (context encoders: the loss
 *        on the removed patch only).
 *
 * Bottoms: prediction a and target b (the same shape, N x C x ...), and a
 * mask m of weights >= 0, either of their shape or with axis 1 of size 1
 * (N x 1 x ..., broadcast over the channels; e.g. PatchRemoval's mask top).
 *   loss = sum_i m_i (a_i - b_i)^2 / (2 Z),
 * d loss / d a = m (a - b) / Z = -d loss / d b; the mask gets no gradient.
 * Z follows loss_param.normalization: BATCH_SIZE (N, as EuclideanLoss; the
 * default when unset, so an all-ones mask gives EuclideanLoss), FULL (the
 * prediction's count), VALID (the sum of the broadcast mask, the masked
 * values' count for a 0/1 mask; at least 1), NONE (1).
 */
template <typename Dtype>
class MaskedEuclideanLossLayer : public LossLayer<Dtype> {
 public:
  explicit MaskedEuclideanLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "MaskedEuclideanLoss"; }
  virtual inline int ExactNumBottomBlobs() const { return 3; }
  // The prediction and the target take a gradient, the mask none.
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index < 2;
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

  std::string Where() const;
  // Z for a mask whose values sum to mask_sum.
  Dtype Normalizer(Dtype mask_sum) const;

  LossParameter_NormalizationMode normalization_;
  bool broadcast_;  // the mask has one channel for all
  int channels_, inner_;  // axis 1's size; the count after axis 1
  Dtype normalizer_;  // Z of the last forward pass
  Blob<Dtype> diff_;    // a - b
  Blob<Dtype> masked_;  // m (a - b)
};

}  // namespace caffe

#endif  // CAFFE_MASKED_EUCLIDEAN_LOSS_LAYER_HPP_
