#ifndef CAFFE_NORMALIZE_LAYER_HPP_
#define CAFFE_NORMALIZE_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/channel_sum.hpp"

namespace caffe {

/**
 * @brief Normalisation with given statistics: top = (x - mean_c) /
 *        sqrt(var_c + eps), with gradients to x, mean and var.
 *
 * Bottoms: x (N x C x ...: per unit for N x D, per channel for N x C x H x W,
 * as BatchStats), mean and var (C values each, any shape: BatchStats's
 * tops). eps: normalize_param.eps (default 1e-10, the official ladder
 * code's). With r_c = 1 / sqrt(var_c + eps) and y the top,
 *   dx = r_c dy,  dmean_c = -r_c sum dy,  dvar_c = -r_c^2 / 2 sum dy y
 * (sums over the batch and the axes after the channel axis). After a
 * BatchStats on the same x this is batch normalisation (without scale and
 * shift) with its exact gradient; with `propagate_down: false` on mean and
 * var it normalises x with another blob's statistics, as the ladder's
 * z^_BN with the clean pass's. Not in place (a BatchStats on x needs x in
 * its backward); the backward reads only the bottoms, so the top may be
 * changed in place (e.g. by GaussianNoise) after this layer.
 */
template <typename Dtype>
class NormalizeLayer : public Layer<Dtype> {
 public:
  explicit NormalizeLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "Normalize"; }
  virtual inline int ExactNumBottomBlobs() const { return 3; }
  virtual inline int ExactNumTopBlobs() const { return 1; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  Dtype eps_;
  int num_, channels_, spatial_;
  Blob<Dtype> inv_std_;       // C: 1 / sqrt(var + eps) of the last forward
  Blob<Dtype> products_;      // backward: dy y, summed for dvar
  ChannelSum<Dtype> channel_sum_;
};

}  // namespace caffe

#endif  // CAFFE_NORMALIZE_LAYER_HPP_
