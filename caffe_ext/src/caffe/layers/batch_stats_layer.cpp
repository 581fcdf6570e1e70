#include <vector>

#include "caffe/layers/batch_stats_layer.hpp"
#include "caffe/util/cpu_threads.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void BatchStatsLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const BatchStatsParameter& param = this->layer_param_.batch_stats_param();
  unbiased_ = param.unbiased();
  use_global_stats_ = param.has_use_global_stats() ?
      param.use_global_stats() : this->phase_ == TEST;
  moving_average_fraction_ = param.moving_average_fraction();
  channels_ = bottom[0]->num_axes() > 1 ? bottom[0]->shape(1) : 1;
  if (this->blobs_.size() > 0) {
    CHECK_EQ(this->blobs_.size(), 3) << "BatchStats layer '"
        << this->layer_param_.name() << "': needs 3 blobs of running "
        << "statistics";
    LOG(INFO) << "Skipping parameter initialization";
  } else {
    this->blobs_.resize(3);
    this->blobs_[0].reset(new Blob<Dtype>(vector<int>(1, channels_)));
    this->blobs_[1].reset(new Blob<Dtype>(vector<int>(1, channels_)));
    this->blobs_[2].reset(new Blob<Dtype>(vector<int>(1, 1)));
    for (int i = 0; i < 3; ++i) {
      caffe_set(this->blobs_[i]->count(), Dtype(0),
                this->blobs_[i]->mutable_cpu_data());
    }
  }
  // Statistics, not parameters: their learning rates are 0 (as BatchNorm).
  for (int i = 0; i < this->blobs_.size(); ++i) {
    if (this->layer_param_.param_size() == i) {
      this->layer_param_.add_param()->set_lr_mult(0);
    } else {
      CHECK_EQ(this->layer_param_.param(i).lr_mult(), 0) << "BatchStats "
          << "layer '" << this->layer_param_.name() << "': its blobs are "
          << "running statistics, not parameters; lr_mult must be 0";
    }
  }
}

template <typename Dtype>
void BatchStatsLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const int channels = bottom[0]->num_axes() > 1 ? bottom[0]->shape(1) : 1;
  CHECK_EQ(channels, this->blobs_[0]->count()) << "BatchStats layer '"
      << this->layer_param_.name() << "': input " << bottom[0]->shape_string()
      << " has " << channels << " channels, its statistics "
      << this->blobs_[0]->count();
  num_ = bottom[0]->shape(0);
  spatial_ = bottom[0]->num_axes() > 1 ? bottom[0]->count(2) : 1;
  count_ = num_ * spatial_;
  CHECK(use_global_stats_ || count_ > (unbiased_ ? 1 : 0)) << "BatchStats "
      << "layer '" << this->layer_param_.name() << "': " << count_
      << " value(s) a "
      << "channel in " << bottom[0]->shape_string() << " give no "
      << (unbiased_ ? "unbiased " : "") << "variance";
  top[0]->Reshape(vector<int>(1, channels_));
  top[1]->Reshape(vector<int>(1, channels_));
  centered_.ReshapeLike(*bottom[0]);
  squares_.ReshapeLike(*bottom[0]);
  channel_sum_.Reshape(num_, channels_, spatial_);
}

template <typename Dtype>
Dtype BatchStatsLayer<Dtype>::RunningScale() const {
  const Dtype weight = this->blobs_[2]->cpu_data()[0];
  return weight == 0 ? 0 : 1 / weight;
}

// The running sums: S = f S + statistic, weight = f weight + 1 (BatchNorm's
// update), on the device the tops are on.
template <typename Dtype>
void BatchStatsLayer<Dtype>::UpdateRunningStats(
    const vector<Blob<Dtype>*>& top) {
  const Dtype f = moving_average_fraction_;
  Dtype* weight = this->blobs_[2]->mutable_cpu_data();
  weight[0] = f * weight[0] + 1;
  if (Caffe::mode() == Caffe::CPU) {
    caffe_cpu_axpby(channels_, Dtype(1), top[0]->cpu_data(), f,
                    this->blobs_[0]->mutable_cpu_data());
    caffe_cpu_axpby(channels_, RunningVarianceFactor(), top[1]->cpu_data(), f,
                    this->blobs_[1]->mutable_cpu_data());
  } else {
#ifndef CPU_ONLY
    caffe_gpu_axpby(channels_, Dtype(1), top[0]->gpu_data(), f,
                    this->blobs_[0]->mutable_gpu_data());
    caffe_gpu_axpby(channels_, RunningVarianceFactor(), top[1]->gpu_data(), f,
                    this->blobs_[1]->mutable_gpu_data());
#else
    NO_GPU;
#endif
  }
}

template <typename Dtype>
void BatchStatsLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  Dtype* mean = top[0]->mutable_cpu_data();
  Dtype* var = top[1]->mutable_cpu_data();
  if (use_global_stats_) {
    const Dtype scale = RunningScale();
    caffe_cpu_scale(channels_, scale, this->blobs_[0]->cpu_data(), mean);
    caffe_cpu_scale(channels_, scale, this->blobs_[1]->cpu_data(), var);
    return;
  }
  const Dtype* x = bottom[0]->cpu_data();
  channel_sum_.Sum(Dtype(1) / count_, x, Dtype(0), mean);
  Dtype* centered = centered_.mutable_cpu_data();
  const int spatial = spatial_;
  ForEachPlane(num_ * channels_, channels_, spatial, kMinValuesPerThread,
      [=](int offset, int c) {
    for (int i = offset; i < offset + spatial; ++i) {
      centered[i] = x[i] - mean[c];
    }
  });
  caffe_sqr(bottom[0]->count(), centered, squares_.mutable_cpu_data());
  channel_sum_.Sum(Dtype(1) / VarianceDivisor(), squares_.cpu_data(),
                   Dtype(0), var);
  UpdateRunningStats(top);
}

template <typename Dtype>
void BatchStatsLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  Dtype* dx = bottom[0]->mutable_cpu_diff();
  if (use_global_stats_) {  // the tops do not depend on x
    caffe_set(bottom[0]->count(), Dtype(0), dx);
    return;
  }
  const Dtype* dmean = top[0]->cpu_diff();
  const Dtype* dvar = top[1]->cpu_diff();
  const Dtype* centered = centered_.cpu_data();
  const Dtype mean_scale = Dtype(1) / count_;
  const Dtype var_scale = Dtype(2) / VarianceDivisor();
  const int spatial = spatial_;
  ForEachPlane(num_ * channels_, channels_, spatial, kMinValuesPerThread,
      [=](int offset, int c) {
    for (int i = offset; i < offset + spatial; ++i) {
      dx[i] = dmean[c] * mean_scale + dvar[c] * var_scale * centered[i];
    }
  });
}

#ifdef CPU_ONLY
STUB_GPU(BatchStatsLayer);
#endif

INSTANTIATE_CLASS(BatchStatsLayer);
REGISTER_LAYER_CLASS(BatchStats);

}  // namespace caffe
