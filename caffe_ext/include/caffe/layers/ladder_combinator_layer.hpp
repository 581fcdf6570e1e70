#ifndef CAFFE_LADDER_COMBINATOR_LAYER_HPP_
#define CAFFE_LADDER_COMBINATOR_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief The denoising function g(z~, u) of ladder networks (Rasmus et al.
 *        2015): the "gauss" combinator of the authors' official code.
 *
 * Bottoms: z~ (the corrupted encoder's value) and u (the top-down signal),
 * of one shape (N x D, N x C x H x W, ...). Ten learned parameter blobs
 * a1..a10 (blobs_[0..9]);
 *   mu = a1 sigmoid(a2 u + a3) + a4 u + a5
 *   v  = a6 sigmoid(a7 u + a8) + a9 u + a10
 *   top z^ = (z~ - mu) v + mu.
 * Each a_i has the shape of bottom axes [axis, axis + num_axes)
 * (ladder_combinator_param; default axis 1, num_axes -1: per unit, one
 * sample's shape, as in the paper) and is broadcast over the other axes;
 * num_axes 1 on N x C x H x W gives one value per channel. Unset fillers:
 * a2 = a7 = 1, the others 0 (the official initialisation, for which z^ = 0).
 * Exact gradients to z~, u and every a_i (the a_i's summed over the
 * broadcast axes and, as Caffe does, added to their diffs). Not in place.
 */
template <typename Dtype>
class LadderCombinatorLayer : public Layer<Dtype> {
 public:
  explicit LadderCombinatorLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "LadderCombinator"; }
  virtual inline int ExactNumBottomBlobs() const { return 2; }
  virtual inline int ExactNumTopBlobs() const { return 1; }

  enum { kNumParams = 10 };  // a1..a10

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  // The filler of a_{k+1}: the parameter's if set, else the default one.
  FillerParameter ParamFiller(int k) const;

  // A value at flat index i uses the parameters' entry (i / inner_) % dim_.
  int outer_, dim_, inner_;
  // GPU: the ten per-value parameter gradients (10 x count) and their sums
  // over the inner axes (10 x outer x dim), reduced by gemv with ones.
  Blob<Dtype> param_terms_;
  Blob<Dtype> inner_sums_;
  Blob<Dtype> ones_;  // max(outer, inner) ones
};

}  // namespace caffe

#endif  // CAFFE_LADDER_COMBINATOR_LAYER_HPP_
