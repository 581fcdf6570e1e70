#ifndef CAFFE_PATCH_REMOVAL_LAYER_HPP_
#define CAFFE_PATCH_REMOVAL_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief Removes a square patch from every image (context encoders).
 *
 * Bottom: images N x C x H x W. Top 0: the images with a size x size patch
 * (all channels) replaced by `fill`. Top 1 (optional): its mask, N x 1 x H x W,
 * 1 inside the patch and 0 outside, to restrict a loss to the patch (e.g.
 * MaskedEuclideanLoss). Mode CENTER: the patch's top-left corner is at
 * ((H - size) / 2, (W - size) / 2); RANDOM: in the TRAIN phase a uniformly
 * random position per image inside it, drawn from Caffe's RNG; in TEST, the
 * centre. The gradient passes outside the patch and is zero inside.
 * May run in place.
 */
template <typename Dtype>
class PatchRemovalLayer : public Layer<Dtype> {
 public:
  explicit PatchRemovalLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "PatchRemoval"; }
  virtual inline int ExactNumBottomBlobs() const { return 1; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 2; }

  /// Top-left corner (row, column) of image n's patch in the last forward.
  int patch_row(int n) const { return positions_.cpu_data()[2 * n]; }
  int patch_col(int n) const { return positions_.cpu_data()[2 * n + 1]; }

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
  // Places every image's patch in positions_ (CPU and GPU forward alike).
  void PlacePatches();

  int size_;
  bool random_;
  Dtype fill_;
  int num_, channels_, height_, width_;
  Blob<int> positions_;  // N x 2: row, column of each patch's top-left corner
};

}  // namespace caffe

#endif  // CAFFE_PATCH_REMOVAL_LAYER_HPP_
