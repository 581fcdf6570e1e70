#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/batch_norm_layer.hpp"
#include "caffe/layers/batch_stats_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class BatchStatsLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  BatchStatsLayerTest()
      : x_(new Blob<Dtype>()), mean_(new Blob<Dtype>()),
        var_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    bottom_vec_.push_back(x_);
    top_vec_.push_back(mean_);
    top_vec_.push_back(var_);
  }
  virtual ~BatchStatsLayerTest() {
    delete x_;
    delete mean_;
    delete var_;
  }

  static LayerParameter Param(Phase phase = TRAIN, bool unbiased = false) {
    LayerParameter p;
    p.set_name("stats");
    p.set_phase(phase);
    p.mutable_batch_stats_param()->set_unbiased(unbiased);
    return p;
  }
  // x = N 2, C 2, spatial 2: channel 0 holds 1, 3 | 5, 7 (mean 4, squared
  // deviations 9 + 1 + 1 + 9 = 20), channel 1 holds 0, 0 | 2, -2 (mean 0,
  // squares 8); M = 4 values a channel.
  void FillHand() {
    x_->Reshape(vector<int>{2, 2, 1, 2});
    const double x[8] = {1, 3, 0, 0, 5, 7, 2, -2};
    for (int i = 0; i < 8; ++i) {
      x_->mutable_cpu_data()[i] = x[i];
    }
  }
  void FillGaussian(const vector<int>& shape, Dtype mean = 0) {
    x_->Reshape(shape);
    FillerParameter filler_param;
    filler_param.set_mean(mean);
    GaussianFiller<Dtype>(filler_param).Fill(x_);
  }

  Blob<Dtype>* const x_;
  Blob<Dtype>* const mean_;
  Blob<Dtype>* const var_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(BatchStatsLayerTest, TestDtypesAndDevices);

TYPED_TEST(BatchStatsLayerTest, TestDefaults) {
  LayerParameter p;
  EXPECT_FALSE(p.batch_stats_param().unbiased());
  EXPECT_FALSE(p.batch_stats_param().has_use_global_stats());
  EXPECT_FLOAT_EQ(0.999, p.batch_stats_param().moving_average_fraction());
}

// Tops of C values; three zeroed blobs of running statistics (as
// BatchNorm's), their learning rates set to 0.
TYPED_TEST(BatchStatsLayerTest, TestSetUp) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(vector<int>{4, 3, 2, 5});
  BatchStatsLayer<Dtype> layer(this->Param());
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_STREQ("BatchStats", layer.type());
  EXPECT_EQ("3 (3)", this->mean_->shape_string());
  EXPECT_EQ("3 (3)", this->var_->shape_string());
  ASSERT_EQ(3, static_cast<int>(layer.blobs().size()));
  EXPECT_EQ("3 (3)", layer.blobs()[0]->shape_string());
  EXPECT_EQ("3 (3)", layer.blobs()[1]->shape_string());
  EXPECT_EQ("1 (1)", layer.blobs()[2]->shape_string());
  ASSERT_EQ(3, layer.layer_param().param_size());
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(0, layer.layer_param().param(i).lr_mult());
    for (int c = 0; c < layer.blobs()[i]->count(); ++c) {
      EXPECT_EQ(0, layer.blobs()[i]->cpu_data()[c]);
    }
  }
  // N x D: per unit.
  this->FillGaussian(vector<int>{4, 7});
  BatchStatsLayer<Dtype> fc(this->Param());
  fc.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ("7 (7)", this->mean_->shape_string());
}

// Means 4, 0; biased variances 20 / 4 = 5, 8 / 4 = 2. Top diffs dmean =
// (1, -2), dvar = (0.5, 3): dx = dmean / 4 + dvar 2 (x - mean) / 4,
// channel 0: 0.25 + 0.25 (-3, -1 | 1, 3) = (-0.5, 0 | 0.5, 1), channel 1:
// -0.5 + 1.5 (0, 0 | 2, -2) = (-0.5, -0.5 | 2.5, -3.5).
TYPED_TEST(BatchStatsLayerTest, TestHandComputedBiased) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillHand();
  BatchStatsLayer<Dtype> layer(this->Param());
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_NEAR(4, this->mean_->cpu_data()[0], 1e-6);
  EXPECT_NEAR(0, this->mean_->cpu_data()[1], 1e-6);
  EXPECT_NEAR(5, this->var_->cpu_data()[0], 1e-6);
  EXPECT_NEAR(2, this->var_->cpu_data()[1], 1e-6);
  this->mean_->mutable_cpu_diff()[0] = 1;
  this->mean_->mutable_cpu_diff()[1] = -2;
  this->var_->mutable_cpu_diff()[0] = 0.5;
  this->var_->mutable_cpu_diff()[1] = 3;
  layer.Backward(this->top_vec_, vector<bool>(1, true), this->bottom_vec_);
  const double dx[8] = {-0.5, 0, -0.5, -0.5, 0.5, 1, 2.5, -3.5};
  for (int i = 0; i < 8; ++i) {
    EXPECT_NEAR(dx[i], this->x_->cpu_diff()[i], 1e-6) << i;
  }
}

// Unbiased: variances 20 / 3 and 8 / 3; dx's variance term 2 (x - mean) / 3:
// channel 0: 0.25 + (1 / 3)(-3, -1 | 1, 3).
TYPED_TEST(BatchStatsLayerTest, TestHandComputedUnbiased) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillHand();
  BatchStatsLayer<Dtype> layer(this->Param(TRAIN, true));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_NEAR(4, this->mean_->cpu_data()[0], 1e-6);
  EXPECT_NEAR(20. / 3, this->var_->cpu_data()[0], 1e-5);
  EXPECT_NEAR(8. / 3, this->var_->cpu_data()[1], 1e-5);
  this->mean_->mutable_cpu_diff()[0] = 1;
  this->mean_->mutable_cpu_diff()[1] = 0;
  this->var_->mutable_cpu_diff()[0] = 0.5;
  this->var_->mutable_cpu_diff()[1] = 0;
  layer.Backward(this->top_vec_, vector<bool>(1, true), this->bottom_vec_);
  const double dx[4] = {0.25 - 1, 0.25 - 1. / 3, 0.25 + 1. / 3, 0.25 + 1};
  const int index[4] = {0, 1, 4, 5};
  for (int k = 0; k < 4; ++k) {
    EXPECT_NEAR(dx[k], this->x_->cpu_diff()[index[k]], 1e-5) << k;
  }
}

// The running sums after batches b1, b2, b3 are BatchNorm's (TRAIN,
// moving_average_fraction 0.9): S = 0.9 S + mean, V = 0.9 V + unbiased var,
// weight = 0.9 weight + 1; the variance top is the biased one meanwhile.
TYPED_TEST(BatchStatsLayerTest, TestRunningStatsAreBatchNorms) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter p = this->Param();
  p.mutable_batch_stats_param()->set_moving_average_fraction(0.9);
  BatchStatsLayer<Dtype> layer(p);
  LayerParameter bn_param;
  bn_param.mutable_batch_norm_param()->set_moving_average_fraction(0.9);
  BatchNormLayer<Dtype> bn(bn_param);
  Blob<Dtype> bn_top;
  vector<Blob<Dtype>*> bn_top_vec(1, &bn_top);
  this->FillGaussian(vector<int>{3, 4, 2, 2});
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  bn.SetUp(this->bottom_vec_, bn_top_vec);
  for (int batch = 0; batch < 3; ++batch) {
    this->FillGaussian(vector<int>{3, 4, 2, 2}, batch);
    layer.Forward(this->bottom_vec_, this->top_vec_);
    bn.Forward(this->bottom_vec_, bn_top_vec);
  }
  for (int i = 0; i < 3; ++i) {
    for (int c = 0; c < bn.blobs()[i]->count(); ++c) {
      EXPECT_NEAR(bn.blobs()[i]->cpu_data()[c],
                  layer.blobs()[i]->cpu_data()[c], 1e-5) << i << " " << c;
    }
  }
  EXPECT_NEAR(0.81 + 0.9 + 1, layer.blobs()[2]->cpu_data()[0], 1e-6);
}

// use_global_stats (the default in TEST): the tops are the running sums
// over their weight, the unbiased variance whatever `unbiased` says; 0
// before any update; no gradient to x. (No GradientChecker here: it would
// perturb the running sums, which the tops then depend on but which take no
// gradient, being statistics.)
TYPED_TEST(BatchStatsLayerTest, TestGlobalStats) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillHand();
  BatchStatsLayer<Dtype> layer(this->Param(TEST));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  for (int c = 0; c < 2; ++c) {
    EXPECT_EQ(0, this->mean_->cpu_data()[c]);
    EXPECT_EQ(0, this->var_->cpu_data()[c]);
  }
  const double sums[3][2] = {{3, 6}, {1.5, 3}, {1.5, 0}};
  for (int i = 0; i < 3; ++i) {
    for (int c = 0; c < layer.blobs()[i]->count(); ++c) {
      layer.blobs()[i]->mutable_cpu_data()[c] = sums[i][c];
    }
  }
  layer.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_NEAR(2, this->mean_->cpu_data()[0], 1e-6);
  EXPECT_NEAR(4, this->mean_->cpu_data()[1], 1e-6);
  EXPECT_NEAR(1, this->var_->cpu_data()[0], 1e-6);
  EXPECT_NEAR(2, this->var_->cpu_data()[1], 1e-6);
  EXPECT_EQ(1.5, layer.blobs()[2]->cpu_data()[0]);  // no update in TEST
  caffe_set(2, Dtype(1), this->mean_->mutable_cpu_diff());
  caffe_set(2, Dtype(1), this->var_->mutable_cpu_diff());
  caffe_set(8, Dtype(5), this->x_->mutable_cpu_diff());
  layer.Backward(this->top_vec_, vector<bool>(1, true), this->bottom_vec_);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(0, this->x_->cpu_diff()[i]);
  }
}

// Batch statistics forced in TEST, global ones forced in TRAIN.
TYPED_TEST(BatchStatsLayerTest, TestUseGlobalStatsOverridesPhase) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillHand();
  LayerParameter p = this->Param(TEST);
  p.mutable_batch_stats_param()->set_use_global_stats(false);
  BatchStatsLayer<Dtype> batch(p);
  batch.SetUp(this->bottom_vec_, this->top_vec_);
  batch.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_NEAR(5, this->var_->cpu_data()[0], 1e-6);
  EXPECT_EQ(1, batch.blobs()[2]->cpu_data()[0]);
  p = this->Param(TRAIN);
  p.mutable_batch_stats_param()->set_use_global_stats(true);
  BatchStatsLayer<Dtype> global(p);
  global.SetUp(this->bottom_vec_, this->top_vec_);
  global.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(0, this->var_->cpu_data()[0]);
  EXPECT_EQ(0, global.blobs()[2]->cpu_data()[0]);
}

TYPED_TEST(BatchStatsLayerTest, TestGradientBiased) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(vector<int>{3, 2, 2, 2});
  BatchStatsLayer<Dtype> layer(this->Param());
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
}

TYPED_TEST(BatchStatsLayerTest, TestGradientUnbiasedPerUnit) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(vector<int>{4, 3});
  BatchStatsLayer<Dtype> layer(this->Param(TRAIN, true));
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
}

TYPED_TEST(BatchStatsLayerTest, TestUnbiasedNeedsTwoValues) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  this->FillGaussian(vector<int>{1, 3});
  BatchStatsLayer<Dtype> layer(this->Param(TRAIN, true));
  EXPECT_DEATH(layer.SetUp(this->bottom_vec_, this->top_vec_),
               "BatchStats layer 'stats': 1 value\\(s\\) a channel in 1 3 "
               "\\(3\\) give no unbiased variance");
}

}  // namespace caffe
