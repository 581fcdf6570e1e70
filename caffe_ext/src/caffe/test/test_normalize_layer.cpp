#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/batch_norm_layer.hpp"
#include "caffe/layers/batch_stats_layer.hpp"
#include "caffe/layers/normalize_layer.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class NormalizeLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  NormalizeLayerTest()
      : x_(new Blob<Dtype>()), mean_(new Blob<Dtype>()),
        var_(new Blob<Dtype>()), top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    bottom_vec_.push_back(x_);
    bottom_vec_.push_back(mean_);
    bottom_vec_.push_back(var_);
    top_vec_.push_back(top_);
  }
  virtual ~NormalizeLayerTest() {
    delete x_;
    delete mean_;
    delete var_;
    delete top_;
  }

  static LayerParameter Param(float eps) {
    LayerParameter p;
    p.set_name("norm");
    p.mutable_normalize_param()->set_eps(eps);
    return p;
  }
  static void Gaussian(Blob<Dtype>* blob, Dtype mean, Dtype std) {
    FillerParameter filler_param;
    filler_param.set_mean(mean);
    filler_param.set_std(std);
    GaussianFiller<Dtype>(filler_param).Fill(blob);
  }
  // x ~ N(1, 2^2) of `shape`, mean ~ N(0, 1), var ~ U[0.5, 2] per channel.
  void FillRandom(const vector<int>& shape) {
    x_->Reshape(shape);
    Gaussian(x_, 1, 2);
    mean_->Reshape(vector<int>(1, shape[1]));
    Gaussian(mean_, 0, 1);
    var_->Reshape(vector<int>(1, shape[1]));
    FillerParameter filler_param;
    filler_param.set_min(0.5);
    filler_param.set_max(2);
    UniformFiller<Dtype>(filler_param).Fill(var_);
  }

  Blob<Dtype>* const x_;
  Blob<Dtype>* const mean_;
  Blob<Dtype>* const var_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(NormalizeLayerTest, TestDtypesAndDevices);

TYPED_TEST(NormalizeLayerTest, TestDefaults) {
  LayerParameter p;
  EXPECT_FLOAT_EQ(1e-10, p.normalize_param().eps());
}

// N = 2, D = 2: x = [[1, 2], [3, 6]], mean (1, 2), var (4, 0.25), eps 0:
// r = 1 / sqrt(var) = (0.5, 2), y = (x - mean) r = [[0, 0], [1, 8]].
// dy = [[1, 2], [3, -1]]: dx = r dy = [[0.5, 4], [1.5, -2]];
// dmean = -r sum dy = (-2, -2); dvar = -r^2 / 2 sum dy y = (-0.375, 16).
TYPED_TEST(NormalizeLayerTest, TestHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  this->x_->Reshape(vector<int>{2, 2});
  this->mean_->Reshape(vector<int>{2});
  this->var_->Reshape(vector<int>{2});
  const Dtype x[4] = {1, 2, 3, 6}, mean[2] = {1, 2}, var[2] = {4, 0.25};
  caffe_copy(4, x, this->x_->mutable_cpu_data());
  caffe_copy(2, mean, this->mean_->mutable_cpu_data());
  caffe_copy(2, var, this->var_->mutable_cpu_data());
  NormalizeLayer<Dtype> layer(this->Param(0));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_STREQ("Normalize", layer.type());
  EXPECT_EQ("2 2 (4)", this->top_->shape_string());
  layer.Forward(this->bottom_vec_, this->top_vec_);
  const double y[4] = {0, 0, 1, 8};
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(y[i], this->top_->cpu_data()[i], 1e-6) << i;
  }
  const Dtype dy[4] = {1, 2, 3, -1};
  caffe_copy(4, dy, this->top_->mutable_cpu_diff());
  layer.Backward(this->top_vec_, vector<bool>(3, true), this->bottom_vec_);
  const double dx[4] = {0.5, 4, 1.5, -2};
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(dx[i], this->x_->cpu_diff()[i], 1e-6) << i;
  }
  EXPECT_NEAR(-2, this->mean_->cpu_diff()[0], 1e-6);
  EXPECT_NEAR(-2, this->mean_->cpu_diff()[1], 1e-6);
  EXPECT_NEAR(-0.375, this->var_->cpu_diff()[0], 1e-6);
  EXPECT_NEAR(16, this->var_->cpu_diff()[1], 1e-5);
}

// eps is added to the variance: var 0 and eps 0.25 give r = 2.
TYPED_TEST(NormalizeLayerTest, TestEps) {
  typedef typename TypeParam::Dtype Dtype;
  this->x_->Reshape(vector<int>{1, 1});
  this->mean_->Reshape(vector<int>{1});
  this->var_->Reshape(vector<int>{1});
  this->x_->mutable_cpu_data()[0] = 3;
  this->mean_->mutable_cpu_data()[0] = 1;
  this->var_->mutable_cpu_data()[0] = 0;
  NormalizeLayer<Dtype> layer(this->Param(0.25));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_NEAR(4, this->top_->cpu_data()[0], 1e-6);
}

// Per channel on N x C x H x W, random values: the formulas computed here.
TYPED_TEST(NormalizeLayerTest, TestForwardBackwardPerChannel) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillRandom(vector<int>{3, 4, 2, 3});
  NormalizeLayer<Dtype> layer(this->Param(1e-3));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  this->Gaussian(this->top_, 0, 1);
  caffe_copy(this->top_->count(), this->top_->cpu_data(),
             this->top_->mutable_cpu_diff());
  layer.Forward(this->bottom_vec_, this->top_vec_);
  layer.Backward(this->top_vec_, vector<bool>(3, true), this->bottom_vec_);
  for (int c = 0; c < 4; ++c) {
    const double m = this->mean_->cpu_data()[c];
    const double r = 1 / std::sqrt(this->var_->cpu_data()[c] + 1e-3);
    double sum_dy = 0, sum_dy_y = 0;
    for (int n = 0; n < 3; ++n) {
      for (int s = 0; s < 6; ++s) {
        const int i = (n * 4 + c) * 6 + s;
        const double y = (this->x_->cpu_data()[i] - m) * r;
        const double dy = this->top_->cpu_diff()[i];
        EXPECT_NEAR(y, this->top_->cpu_data()[i], 1e-5) << i;
        EXPECT_NEAR(dy * r, this->x_->cpu_diff()[i], 1e-5) << i;
        sum_dy += dy;
        sum_dy_y += dy * y;
      }
    }
    EXPECT_NEAR(-r * sum_dy, this->mean_->cpu_diff()[c], 1e-4) << c;
    EXPECT_NEAR(-0.5 * r * r * sum_dy_y, this->var_->cpu_diff()[c], 1e-4)
        << c;
  }
}

// Another pass's statistics (the ladder's z^_BN): propagate_down false on
// mean and var leaves their diffs alone.
TYPED_TEST(NormalizeLayerTest, TestExternalStatsNoPropagation) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillRandom(vector<int>{4, 3});
  NormalizeLayer<Dtype> layer(this->Param(1e-10));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  caffe_set(12, Dtype(1), this->top_->mutable_cpu_diff());
  caffe_set(3, Dtype(7), this->mean_->mutable_cpu_diff());
  caffe_set(3, Dtype(7), this->var_->mutable_cpu_diff());
  vector<bool> down(3, false);
  down[0] = true;
  layer.Backward(this->top_vec_, down, this->bottom_vec_);
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(7, this->mean_->cpu_diff()[c]);
    EXPECT_EQ(7, this->var_->cpu_diff()[c]);
  }
  for (int i = 0; i < 12; ++i) {
    EXPECT_NEAR(1 / std::sqrt(this->var_->cpu_data()[i % 3] + 1e-10),
                this->x_->cpu_diff()[i], 1e-5);
  }
}

TYPED_TEST(NormalizeLayerTest, TestGradientPerUnit) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillRandom(vector<int>{3, 4});
  NormalizeLayer<Dtype> layer(this->Param(1e-10));
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  // x, mean and var
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
}

TYPED_TEST(NormalizeLayerTest, TestGradientPerChannel) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillRandom(vector<int>{2, 3, 2, 2});
  NormalizeLayer<Dtype> layer(this->Param(1e-2));
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
}

// BatchStats then Normalize on the same x is batch normalisation: the top
// and the total gradient to x (Normalize's own plus BatchStats's from the
// mean and var diffs, as a Split would add them) equal Caffe's BatchNorm's
// in TRAIN (batch statistics, biased variance) with the same eps.
TYPED_TEST(NormalizeLayerTest, TestBatchStatsPlusNormalizeIsBatchNorm) {
  typedef typename TypeParam::Dtype Dtype;
  const int shapes[2][4] = {{5, 3, 2, 3}, {6, 4, 1, 1}};
  for (int k = 0; k < 2; ++k) {
    const vector<int> shape(shapes[k], shapes[k] + (k == 0 ? 4 : 2));
    this->x_->Reshape(shape);
    this->Gaussian(this->x_, 2, 3);
    const int count = this->x_->count();
    LayerParameter stats_param;
    stats_param.set_phase(TRAIN);
    BatchStatsLayer<Dtype> stats(stats_param);
    vector<Blob<Dtype>*> x_vec(1, this->x_);
    vector<Blob<Dtype>*> stats_vec;
    stats_vec.push_back(this->mean_);
    stats_vec.push_back(this->var_);
    stats.SetUp(x_vec, stats_vec);
    NormalizeLayer<Dtype> norm(this->Param(1e-5));
    norm.SetUp(this->bottom_vec_, this->top_vec_);
    LayerParameter bn_param;
    bn_param.set_phase(TRAIN);
    bn_param.mutable_batch_norm_param()->set_eps(1e-5);
    BatchNormLayer<Dtype> bn(bn_param);
    Blob<Dtype> bn_top;
    vector<Blob<Dtype>*> bn_top_vec(1, &bn_top);
    bn.SetUp(x_vec, bn_top_vec);

    stats.Forward(x_vec, stats_vec);
    norm.Forward(this->bottom_vec_, this->top_vec_);
    bn.Forward(x_vec, bn_top_vec);
    for (int i = 0; i < count; ++i) {
      EXPECT_NEAR(bn_top.cpu_data()[i], this->top_->cpu_data()[i], 1e-4);
    }
    this->Gaussian(this->top_, 0, 1);  // the top diff
    caffe_copy(count, this->top_->cpu_data(), this->top_->mutable_cpu_diff());
    caffe_copy(count, this->top_->cpu_data(), bn_top.mutable_cpu_diff());
    bn.Backward(bn_top_vec, vector<bool>(1, true), x_vec);
    Blob<Dtype> bn_dx;
    bn_dx.CopyFrom(*this->x_, true, true);
    norm.Backward(this->top_vec_, vector<bool>(3, true), this->bottom_vec_);
    Blob<Dtype> norm_dx;
    norm_dx.CopyFrom(*this->x_, true, true);
    stats.Backward(stats_vec, vector<bool>(1, true), x_vec);
    double largest = 0;
    for (int i = 0; i < count; ++i) {
      const Dtype total = norm_dx.cpu_diff()[i] + this->x_->cpu_diff()[i];
      EXPECT_NEAR(bn_dx.cpu_diff()[i], total, 1e-4) << k << " " << i;
      largest = std::max(largest, std::fabs(double(bn_dx.cpu_diff()[i])));
    }
    EXPECT_GT(largest, 0.01);  // not trivially zero
  }
}

TYPED_TEST(NormalizeLayerTest, TestStatsShapeMismatch) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  this->FillRandom(vector<int>{2, 3, 2, 2});
  this->var_->Reshape(vector<int>{4});
  NormalizeLayer<Dtype> layer(this->Param(1e-10));
  EXPECT_DEATH(layer.SetUp(this->bottom_vec_, this->top_vec_),
               "Normalize layer 'norm': var 4 \\(4\\) must have one value "
               "per channel of x 2 3 2 2 \\(24\\) \\(3\\)");
}

}  // namespace caffe
