#include <cmath>
#include <string>
#include <vector>

#include "caffe/layers/normalize_layer.hpp"
#include "caffe/util/cpu_threads.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void NormalizeLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  eps_ = this->layer_param_.normalize_param().eps();
  CHECK_GE(eps_, 0) << "Normalize layer '" << this->layer_param_.name()
      << "': eps must be >= 0, got " << eps_;
}

template <typename Dtype>
void NormalizeLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const std::string& name = this->layer_param_.name();
  CHECK(top[0] != bottom[0]) << "Normalize layer '" << name
      << "' cannot run in place";
  num_ = bottom[0]->shape(0);
  channels_ = bottom[0]->num_axes() > 1 ? bottom[0]->shape(1) : 1;
  spatial_ = bottom[0]->num_axes() > 1 ? bottom[0]->count(2) : 1;
  const char* what[3] = {"", "mean", "var"};
  for (int b = 1; b < 3; ++b) {
    CHECK_EQ(bottom[b]->count(), channels_) << "Normalize layer '" << name
        << "': " << what[b] << " " << bottom[b]->shape_string() << " must "
        << "have one value per channel of x " << bottom[0]->shape_string()
        << " (" << channels_ << ")";
  }
  top[0]->ReshapeLike(*bottom[0]);
  inv_std_.Reshape(vector<int>(1, channels_));
  products_.ReshapeLike(*bottom[0]);
  channel_sum_.Reshape(num_, channels_, spatial_);
}

template <typename Dtype>
void NormalizeLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const Dtype* x = bottom[0]->cpu_data();
  const Dtype* mean = bottom[1]->cpu_data();
  const Dtype* var = bottom[2]->cpu_data();
  Dtype* r = inv_std_.mutable_cpu_data();
  for (int c = 0; c < channels_; ++c) {
    r[c] = 1 / std::sqrt(var[c] + eps_);
  }
  Dtype* y = top[0]->mutable_cpu_data();
  const int spatial = spatial_;
  ForEachPlane(num_ * channels_, channels_, spatial, kMinValuesPerThread,
      [=](int offset, int c) {
    for (int i = offset; i < offset + spatial; ++i) {
      y[i] = (x[i] - mean[c]) * r[c];
    }
  });
}

template <typename Dtype>
void NormalizeLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  const int spatial = spatial_;
  const Dtype* dy = top[0]->cpu_diff();
  const Dtype* r = inv_std_.cpu_data();
  if (propagate_down[1]) {  // dmean_c = -r_c sum dy
    Dtype* dmean = bottom[1]->mutable_cpu_diff();
    channel_sum_.Sum(Dtype(1), dy, Dtype(0), dmean);
    for (int c = 0; c < channels_; ++c) {
      dmean[c] *= -r[c];
    }
  }
  if (propagate_down[2]) {  // dvar_c = -r_c^2 / 2 sum dy y
    const Dtype* x = bottom[0]->cpu_data();
    const Dtype* mean = bottom[1]->cpu_data();
    Dtype* products = products_.mutable_cpu_data();
    ForEachPlane(num_ * channels_, channels_, spatial, kMinValuesPerThread,
        [=](int offset, int c) {
      for (int i = offset; i < offset + spatial; ++i) {
        products[i] = dy[i] * (x[i] - mean[c]) * r[c];
      }
    });
    Dtype* dvar = bottom[2]->mutable_cpu_diff();
    channel_sum_.Sum(Dtype(1), products, Dtype(0), dvar);
    for (int c = 0; c < channels_; ++c) {
      dvar[c] *= Dtype(-0.5) * r[c] * r[c];
    }
  }
  if (propagate_down[0]) {  // dx = r_c dy
    Dtype* dx = bottom[0]->mutable_cpu_diff();
    ForEachPlane(num_ * channels_, channels_, spatial, kMinValuesPerThread,
        [=](int offset, int c) {
      for (int i = offset; i < offset + spatial; ++i) {
        dx[i] = dy[i] * r[c];
      }
    });
  }
}

#ifdef CPU_ONLY
STUB_GPU(NormalizeLayer);
#endif

INSTANTIATE_CLASS(NormalizeLayer);
REGISTER_LAYER_CLASS(Normalize);

}  // namespace caffe
