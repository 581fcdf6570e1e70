#ifndef CAFFE_BATCH_STATS_LAYER_HPP_
#define CAFFE_BATCH_STATS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/channel_sum.hpp"

namespace caffe {

/**
 * @brief The batch statistics of batch normalisation as tops (ladder
 *        networks): with Normalize, batch normalisation whose mean and
 *        variance can be read, or used to normalise another blob.
 *
 * Bottom x: N x C x ... (N x D: C = D, per unit; N x C x H x W: per channel).
 * Tops: mean and variance, C values each (1-D), over the batch and the axes
 * after the channel axis, M = N x (their size) values a channel:
 *   mean_c = sum x / M,  var_c = sum (x - mean_c)^2 / M
 * (biased, as batch normalisation; batch_stats_param.unbiased: / (M - 1)).
 * Gradient: dx = dmean_c / M + dvar_c 2 (x - mean_c) / M (or M - 1), so that
 * Normalize after BatchStats on the same x has batch normalisation's exact
 * gradient.
 *
 * Running statistics exactly as Caffe's BatchNorm, in the same three blobs
 * (so a BatchNorm layer of the same name can read them from a caffemodel):
 * blobs_[0] = sum of means and blobs_[1] = sum of unbiased variances, both
 * decayed by moving_average_fraction f, blobs_[2] = their weight (decayed
 * by f, + 1 per batch); their learning rates are forced to 0. When
 * use_global_stats is false (default in TRAIN) the tops are the batch's and
 * each forward updates the sums; when true (default in TEST) the tops are
 * blobs_[0] / blobs_[2] and blobs_[1] / blobs_[2] (the unbiased running
 * variance whatever `unbiased` says; 0 before any update) and the gradient
 * to x is 0.
 */
template <typename Dtype>
class BatchStatsLayer : public Layer<Dtype> {
 public:
  explicit BatchStatsLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "BatchStats"; }
  virtual inline int ExactNumBottomBlobs() const { return 1; }
  virtual inline int ExactNumTopBlobs() const { return 2; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  // The variance's divisor: M - 1 when unbiased, else M.
  Dtype VarianceDivisor() const { return unbiased_ ? count_ - 1 : count_; }
  // The factor from the variance top to the unbiased variance that the
  // running sum takes: divisor / (M - 1) (/ M when M = 1, as BatchNorm).
  Dtype RunningVarianceFactor() const {
    return VarianceDivisor() / (count_ > 1 ? count_ - 1 : count_);
  }
  // 1 / blobs_[2], 0 before any update.
  Dtype RunningScale() const;
  void UpdateRunningStats(const vector<Blob<Dtype>*>& top);

  bool unbiased_, use_global_stats_;
  Dtype moving_average_fraction_;
  int num_, channels_, spatial_, count_;  // count_ = M = num_ x spatial_
  Blob<Dtype> centered_;      // x - mean of the last batch forward pass
  Blob<Dtype> squares_;       // its squares
  ChannelSum<Dtype> channel_sum_;
};

}  // namespace caffe

#endif  // CAFFE_BATCH_STATS_LAYER_HPP_
