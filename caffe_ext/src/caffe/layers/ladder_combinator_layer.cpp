#include <cmath>
#include <string>
#include <vector>

#include "caffe/filler.hpp"
#include "caffe/layers/ladder_combinator_layer.hpp"
#include "caffe/util/cpu_threads.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// Values in blocks over the CPU threads (caffe/util/cpu_threads.hpp) when a
// thread gets at least this many: a quarter of the default, as each value
// costs two exp.
const int kValuesPerThread = kMinValuesPerThread / 4;

template <typename Dtype>
FillerParameter LadderCombinatorLayer<Dtype>::ParamFiller(int k) const {
  const LadderCombinatorParameter& p =
      this->layer_param_.ladder_combinator_param();
  const bool set[kNumParams] = {
      p.has_a1_filler(), p.has_a2_filler(), p.has_a3_filler(),
      p.has_a4_filler(), p.has_a5_filler(), p.has_a6_filler(),
      p.has_a7_filler(), p.has_a8_filler(), p.has_a9_filler(),
      p.has_a10_filler()};
  const FillerParameter* given[kNumParams] = {
      &p.a1_filler(), &p.a2_filler(), &p.a3_filler(), &p.a4_filler(),
      &p.a5_filler(), &p.a6_filler(), &p.a7_filler(), &p.a8_filler(),
      &p.a9_filler(), &p.a10_filler()};
  if (set[k]) {
    return *given[k];
  }
  FillerParameter filler;
  filler.set_type("constant");
  filler.set_value(k == 1 || k == 6 ? 1 : 0);  // a2 = a7 = 1
  return filler;
}

template <typename Dtype>
void LadderCombinatorLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const LadderCombinatorParameter& param =
      this->layer_param_.ladder_combinator_param();
  const int axis = bottom[0]->CanonicalAxisIndex(param.axis());
  const int num_axes = param.num_axes();
  CHECK_GE(num_axes, -1) << "LadderCombinator layer '"
      << this->layer_param_.name() << "': num_axes must be >= 0, or -1 for "
      << "every axis from `axis` on; got " << num_axes;
  if (num_axes >= 0) {
    CHECK_GE(bottom[0]->num_axes(), axis + num_axes) << "LadderCombinator "
        << "layer '" << this->layer_param_.name() << "': the parameters' "
        << "axes [" << axis << ", " << axis + num_axes << ") extend past the "
        << "input's " << bottom[0]->num_axes() << " axes";
  }
  if (this->blobs_.size() > 0) {
    CHECK_EQ(static_cast<int>(this->blobs_.size()),
             static_cast<int>(kNumParams)) << "LadderCombinator layer '"
        << this->layer_param_.name() << "': needs " << kNumParams
        << " parameter blobs";
    LOG(INFO) << "Skipping parameter initialization";
  } else {
    const vector<int>::const_iterator begin = bottom[0]->shape().begin() + axis;
    const vector<int>::const_iterator end =
        num_axes == -1 ? bottom[0]->shape().end() : begin + num_axes;
    const vector<int> shape(begin, end);
    this->blobs_.resize(kNumParams);
    for (int k = 0; k < kNumParams; ++k) {
      this->blobs_[k].reset(new Blob<Dtype>(shape));
      shared_ptr<Filler<Dtype> > filler(GetFiller<Dtype>(ParamFiller(k)));
      filler->Fill(this->blobs_[k].get());
    }
  }
  this->param_propagate_down_.resize(this->blobs_.size(), true);
}

template <typename Dtype>
void LadderCombinatorLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const std::string& name = this->layer_param_.name();
  CHECK(bottom[0]->shape() == bottom[1]->shape()) << "LadderCombinator layer '"
      << name << "': z~ (" << bottom[0]->shape_string() << ") and u ("
      << bottom[1]->shape_string() << ") must have one shape";
  CHECK(top[0] != bottom[0] && top[0] != bottom[1]) << "LadderCombinator "
      << "layer '" << name << "' cannot run in place";
  const Blob<Dtype>& a = *this->blobs_[0];
  const int axis = bottom[0]->CanonicalAxisIndex(
      this->layer_param_.ladder_combinator_param().axis());
  CHECK_GE(bottom[0]->num_axes(), axis + a.num_axes());
  for (int i = 0; i < a.num_axes(); ++i) {
    CHECK_EQ(bottom[0]->shape(axis + i), a.shape(i)) << "LadderCombinator "
        << "layer '" << name << "': input shape " << bottom[0]->shape_string()
        << " does not match the parameters' " << a.shape_string()
        << " from axis " << axis;
  }
  for (int k = 1; k < kNumParams; ++k) {
    CHECK(this->blobs_[k]->shape() == a.shape());
  }
  outer_ = bottom[0]->count(0, axis);
  dim_ = a.count();
  inner_ = bottom[0]->count(axis + a.num_axes());
  top[0]->ReshapeLike(*bottom[0]);
  // Buffers of the GPU backward (a Blob allocates on first use only).
  param_terms_.Reshape(vector<int>(1, kNumParams * bottom[0]->count()));
  inner_sums_.Reshape(vector<int>(1, kNumParams * outer_ * dim_));
}

template <typename Dtype>
inline Dtype LadderSigmoid(Dtype x) {
  return 1 / (1 + std::exp(-x));
}

template <typename Dtype>
void LadderCombinatorLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const Dtype* a[kNumParams];
  for (int k = 0; k < kNumParams; ++k) {
    a[k] = this->blobs_[k]->cpu_data();
  }
  const Dtype* z = bottom[0]->cpu_data();
  const Dtype* u = bottom[1]->cpu_data();
  Dtype* out = top[0]->mutable_cpu_data();
  const int inner = inner_;
  ForEachPlane(outer_ * dim_, dim_, inner, kValuesPerThread,
      [&](int offset, int d) {
    for (int i = offset; i < offset + inner; ++i) {
      const Dtype mu = a[0][d] * LadderSigmoid(a[1][d] * u[i] + a[2][d]) +
          a[3][d] * u[i] + a[4][d];
      const Dtype v = a[5][d] * LadderSigmoid(a[6][d] * u[i] + a[7][d]) +
          a[8][d] * u[i] + a[9][d];
      out[i] = (z[i] - mu) * v + mu;
    }
  });
}

template <typename Dtype>
void LadderCombinatorLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  const Dtype* a[kNumParams];
  Dtype* da[kNumParams];
  for (int k = 0; k < kNumParams; ++k) {
    a[k] = this->blobs_[k]->cpu_data();
    da[k] = this->param_propagate_down_[k] ?
        this->blobs_[k]->mutable_cpu_diff() : NULL;
  }
  const Dtype* z = bottom[0]->cpu_data();
  const Dtype* u = bottom[1]->cpu_data();
  const Dtype* top_diff = top[0]->cpu_diff();
  Dtype* dz = propagate_down[0] ? bottom[0]->mutable_cpu_diff() : NULL;
  Dtype* du = propagate_down[1] ? bottom[1]->mutable_cpu_diff() : NULL;
  // The units (or channels) d in blocks over the CPU threads: the parameter
  // gradients of d are summed by one thread, over i in the serial order.
  ParallelFor(ThreadsFor(bottom[0]->count(), kValuesPerThread), dim_,
      [&](int t, int d_begin, int d_end) {
    for (int o = 0; o < outer_; ++o) {
      for (int d = d_begin; d < d_end; ++d) {
        const int begin = (o * dim_ + d) * inner_;
        for (int i = begin; i < begin + inner_; ++i) {
          const Dtype s1 = LadderSigmoid(a[1][d] * u[i] + a[2][d]);
          const Dtype s2 = LadderSigmoid(a[6][d] * u[i] + a[7][d]);
          const Dtype mu = a[0][d] * s1 + a[3][d] * u[i] + a[4][d];
          const Dtype v = a[5][d] * s2 + a[8][d] * u[i] + a[9][d];
          // d top / d mu = 1 - v, d top / d v = z~ - mu; d sigmoid =
          // s (1 - s).
          const Dtype g_mu = top_diff[i] * (1 - v);
          const Dtype g_v = top_diff[i] * (z[i] - mu);
          const Dtype ds1 = a[0][d] * s1 * (1 - s1);  // d mu / d(a2 u + a3)
          const Dtype ds2 = a[5][d] * s2 * (1 - s2);  // d v / d(a7 u + a8)
          if (dz) {
            dz[i] = top_diff[i] * v;
          }
          if (du) {
            du[i] = g_mu * (ds1 * a[1][d] + a[3][d]) +
                g_v * (ds2 * a[6][d] + a[8][d]);
          }
          const Dtype terms[kNumParams] = {
              g_mu * s1, g_mu * ds1 * u[i], g_mu * ds1, g_mu * u[i], g_mu,
              g_v * s2, g_v * ds2 * u[i], g_v * ds2, g_v * u[i], g_v};
          for (int k = 0; k < kNumParams; ++k) {
            if (da[k]) {
              da[k][d] += terms[k];
            }
          }
        }
      }
    }
  });
}

#ifdef CPU_ONLY
STUB_GPU(LadderCombinatorLayer);
#endif

INSTANTIATE_CLASS(LadderCombinatorLayer);
REGISTER_LAYER_CLASS(LadderCombinator);

}  // namespace caffe
