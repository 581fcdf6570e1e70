#ifndef CAFFE_UNPOOLING_LAYER_HPP_
#define CAFFE_UNPOOLING_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

// Whether the CPU forward of 2x2/2 tilings (float) runs its AVX-512 path:
// where the CPU has AVX-512, unless switched off (for tests: the SSE2 path).
bool UnpoolingUsesWideSimd();
void SetUnpoolingWideSimdForTest(bool allowed);

// The AVX-512 path for rows of at most 32 pooled values (unpooling_layer.cpp),
// and how many planes it has unpooled in this process (for the tests).
struct UnpoolRowGroups;
int64_t UnpoolingRowGroupPlanes();

/**
 * @brief Inverts MAX pooling: every pooled value is written back into the
 *        window it was pooled from, zeros elsewhere.
 *
 * Kernel, stride and pad come from pooling_param (a Pooling layer's
 * parameters copied verbatim); unpooling_param holds the rest.
 *
 * Bottoms:
 *   - values, N x C x PH x PW;
 *   - with KNOWN switches: the switches, the Pooling layer's second top
 *     (flat index h * W + w within each channel plane). The value goes to the
 *     location its max came from (SWWAE). No gradient flows into it;
 *   - optionally a last bottom whose spatial shape is the output shape (for
 *     mirrored shapes the formula cannot give, e.g. after ceil-mode pooling).
 *   With FIXED switches every value goes to offset (offset_h, offset_w) of its
 *   window, kernel / 2 by default (SAE).
 * Tops:
 *   - the unpooled values, N x C x H x W, H = (PH - 1) * stride + kernel - 2 pad
 *     unless given;
 *   - optionally the number of values that landed on each location.
 * Overlapping windows (AlexNet's 3x3/2) may send several values to one
 * location: they are averaged (default; a location nothing reached stays 0)
 * or summed.
 */
template <typename Dtype>
class UnpoolingLayer : public Layer<Dtype> {
 public:
  explicit UnpoolingLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "Unpooling"; }
  virtual inline int MinBottomBlobs() const { return 1; }
  virtual inline int MaxBottomBlobs() const { return 3; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 2; }
  // Only the values receive a gradient.
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index == 0;
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

  // Pooled size that Caffe's Pooling layer gives for an input of size `in`.
  int PooledSize(int in, int kernel, int stride, int pad) const;
  // Zeroes the diffs of the switch and reference bottoms, which get none.
  void ClearNonValueDiffs(const vector<bool>& propagate_down,
      const vector<Blob<Dtype>*>& bottom, bool gpu);
  std::string Where() const;
  // VGG's case: 2x2 windows, stride 2, no padding, tiling the output.
  bool TilesTwoByTwo() const;
  // The error for a known switch outside its pooling window (CPU and GPU).
  std::string SwitchOutsideWindow(Dtype value, int plane, int ph, int pw)
      const;
  // GPU: fails with SwitchOutsideWindow() for the first switch (in raster
  // order, as the CPU) that lies outside its window (unpooling_layer.cu).
  void CheckSwitchesGpu(const Blob<Dtype>& switches);

  int kernel_h_, kernel_w_;
  int stride_h_, stride_w_;
  int pad_h_, pad_w_;
  int offset_h_, offset_w_;
  bool known_switches_;
  bool has_reference_;
  bool average_;
  // Windows overlap, so several values may land on one location.
  bool overlapping_;
  bool ceil_mode_;
  int channels_;
  int pooled_height_, pooled_width_;
  int height_, width_;
  // Values landed per output location; kept only where it matters (averaging
  // over overlapping windows, or when the count top is asked for).
  Blob<Dtype> count_;
  bool need_count_;
  // GPU: flat index of the first switch outside its window (count if none).
  Blob<int> first_bad_switch_;
  // CPU, a 2x2/2 tiling of short rows: their groups (NULL where none fit),
  // kept while the shape stays.
  shared_ptr<UnpoolRowGroups> row_groups_;
  int groups_pooled_h_, groups_pooled_w_;  // the shape they were built for
};

}  // namespace caffe

#endif  // CAFFE_UNPOOLING_LAYER_HPP_
