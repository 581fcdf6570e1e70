#include <string>
#include <vector>

#include "boost/random/uniform_int_distribution.hpp"

#include "caffe/layers/patch_removal_layer.hpp"
#include "caffe/util/math_functions.hpp"
#include "caffe/util/rng.hpp"

namespace caffe {

template <typename Dtype>
std::string PatchRemovalLayer<Dtype>::Where() const {
  return "PatchRemoval layer '" + this->layer_param_.name() + "': ";
}

template <typename Dtype>
void PatchRemovalLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const PatchRemovalParameter& param = this->layer_param_.patch_removal_param();
  CHECK(param.has_size() && param.size() > 0) << Where()
      << "patch_removal_param.size (the patch side) must be given and > 0";
  size_ = param.size();
  random_ = param.mode() == PatchRemovalParameter_Mode_RANDOM &&
      this->phase_ == TRAIN;
  fill_ = param.fill();
}

template <typename Dtype>
void PatchRemovalLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  CHECK_EQ(4, bottom[0]->num_axes()) << Where()
      << "images must be N x C x H x W, got " << bottom[0]->shape_string();
  num_ = bottom[0]->num();
  channels_ = bottom[0]->channels();
  height_ = bottom[0]->height();
  width_ = bottom[0]->width();
  CHECK(size_ <= height_ && size_ <= width_) << Where() << "patch size "
      << size_ << " is larger than the " << height_ << " x " << width_
      << " input";
  top[0]->ReshapeLike(*bottom[0]);
  if (top.size() > 1) {
    top[1]->Reshape(num_, 1, height_, width_);
  }
  positions_.Reshape(num_, 2, 1, 1);
}

template <typename Dtype>
void PatchRemovalLayer<Dtype>::PlacePatches() {
  int* pos = positions_.mutable_cpu_data();
  boost::random::uniform_int_distribution<int> row(0, height_ - size_);
  boost::random::uniform_int_distribution<int> col(0, width_ - size_);
  for (int n = 0; n < num_; ++n) {
    if (random_) {
      pos[2 * n] = row(*caffe_rng());
      pos[2 * n + 1] = col(*caffe_rng());
    } else {
      pos[2 * n] = (height_ - size_) / 2;
      pos[2 * n + 1] = (width_ - size_) / 2;
    }
  }
}

template <typename Dtype>
void PatchRemovalLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  PlacePatches();
  const int* pos = positions_.cpu_data();
  const Dtype* in = bottom[0]->cpu_data();
  Dtype* out = top[0]->mutable_cpu_data();
  Dtype* mask = top.size() > 1 ? top[1]->mutable_cpu_data() : NULL;
  const int plane = height_ * width_;
  for (int n = 0; n < num_; ++n) {
    const int y = pos[2 * n], x = pos[2 * n + 1];
    for (int c = 0; c < channels_; ++c) {
      const int offset = (n * channels_ + c) * plane;
      for (int h = 0; h < height_; ++h) {
        for (int w = 0; w < width_; ++w) {
          const int i = offset + h * width_ + w;
          const bool inside = h >= y && h < y + size_ && w >= x &&
              w < x + size_;
          out[i] = inside ? fill_ : in[i];
          if (mask && c == 0) {
            mask[n * plane + h * width_ + w] = inside;
          }
        }
      }
    }
  }
}

template <typename Dtype>
void PatchRemovalLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  const int* pos = positions_.cpu_data();
  const Dtype* top_diff = top[0]->cpu_diff();
  Dtype* diff = bottom[0]->mutable_cpu_diff();
  const int plane = height_ * width_;
  for (int i = 0; i < bottom[0]->count(); ++i) {
    const int n = i / (channels_ * plane);
    const int h = (i / width_) % height_;
    const int w = i % width_;
    const int y = pos[2 * n], x = pos[2 * n + 1];
    const bool inside = h >= y && h < y + size_ && w >= x && w < x + size_;
    diff[i] = inside ? Dtype(0) : top_diff[i];
  }
}

#ifdef CPU_ONLY
STUB_GPU(PatchRemovalLayer);
#endif

INSTANTIATE_CLASS(PatchRemovalLayer);
REGISTER_LAYER_CLASS(PatchRemoval);

}  // namespace caffe
