#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/euclidean_loss_layer.hpp"
#include "caffe/layers/masked_euclidean_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class MaskedEuclideanLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  MaskedEuclideanLossLayerTest()
      : pred_(new Blob<Dtype>(1, 2, 1, 3)),
        target_(new Blob<Dtype>(1, 2, 1, 3)),
        mask_(new Blob<Dtype>(1, 1, 1, 3)), top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    // a - b = 1 2 3 | 3 4 5; the mask keeps columns 0 and 2 of both channels
    const Dtype a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {0, 0, 0, 1, 1, 1};
    const Dtype m[3] = {1, 0, 1};
    for (int i = 0; i < 6; ++i) {
      pred_->mutable_cpu_data()[i] = a[i];
      target_->mutable_cpu_data()[i] = b[i];
    }
    for (int i = 0; i < 3; ++i) {
      mask_->mutable_cpu_data()[i] = m[i];
    }
    bottom_vec_.push_back(pred_);
    bottom_vec_.push_back(target_);
    bottom_vec_.push_back(mask_);
    top_vec_.push_back(top_);
  }
  virtual ~MaskedEuclideanLossLayerTest() {
    delete pred_;
    delete target_;
    delete mask_;
    delete top_;
  }

  static LayerParameter Param(int normalization = -1) {
    LayerParameter p;
    p.set_name("masked");
    if (normalization >= 0) {
      p.mutable_loss_param()->set_normalization(
          static_cast<LossParameter_NormalizationMode>(normalization));
    }
    return p;
  }
  void FillRandom(int num, int channels, int height, int width,
                  bool broadcast) {
    pred_->Reshape(num, channels, height, width);
    target_->Reshape(num, channels, height, width);
    mask_->Reshape(num, broadcast ? 1 : channels, height, width);
    FillerParameter filler_param;
    GaussianFiller<Dtype>(filler_param).Fill(pred_);
    GaussianFiller<Dtype>(filler_param).Fill(target_);
    for (int i = 0; i < mask_->count(); ++i) {
      mask_->mutable_cpu_data()[i] = (i % 3) ? 1 : 0;
    }
  }

  Blob<Dtype>* const pred_;
  Blob<Dtype>* const target_;
  Blob<Dtype>* const mask_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(MaskedEuclideanLossLayerTest, TestDtypesAndDevices);

// sum m (a - b)^2 = 1 + 9 + 9 + 25 = 44 over 4 masked values of 6, N = 1:
// BATCH_SIZE (default) 44 / 2 = 22, VALID 44 / 8, FULL 44 / 12, NONE 22.
// Gradient with BATCH_SIZE: m (a - b) = 1 0 3 | 3 0 5 for a, its negative
// for b, none for the mask.
TYPED_TEST(MaskedEuclideanLossLayerTest, TestHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const int modes[5] = {-1, LossParameter_NormalizationMode_BATCH_SIZE,
                        LossParameter_NormalizationMode_VALID,
                        LossParameter_NormalizationMode_FULL,
                        LossParameter_NormalizationMode_NONE};
  const Dtype loss[5] = {22, 22, 5.5, 44. / 12, 22};
  for (int k = 0; k < 5; ++k) {
    MaskedEuclideanLossLayer<Dtype> layer(this->Param(modes[k]));
    layer.SetUp(this->bottom_vec_, this->top_vec_);
    layer.Forward(this->bottom_vec_, this->top_vec_);
    EXPECT_NEAR(loss[k], this->top_->cpu_data()[0], 1e-5) << "mode " << k;
  }
  MaskedEuclideanLossLayer<Dtype> layer(this->Param());
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  caffe_set(3, Dtype(9), this->mask_->mutable_cpu_diff());
  layer.Backward(this->top_vec_, vector<bool>(3, true), this->bottom_vec_);
  const Dtype grad[6] = {1, 0, 3, 3, 0, 5};
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR(grad[i], this->pred_->cpu_diff()[i], 1e-5);
    EXPECT_NEAR(-grad[i], this->target_->cpu_diff()[i], 1e-5);
  }
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(0, this->mask_->cpu_diff()[i]);
  }
}

// An all-ones mask of the full shape gives Caffe's EuclideanLoss.
TYPED_TEST(MaskedEuclideanLossLayerTest, TestOnesIsEuclideanLoss) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillRandom(3, 2, 4, 5, false);
  caffe_set(this->mask_->count(), Dtype(1), this->mask_->mutable_cpu_data());
  MaskedEuclideanLossLayer<Dtype> layer(this->Param());
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  const Dtype masked = this->top_->cpu_data()[0];
  vector<Blob<Dtype>*> two(this->bottom_vec_.begin(),
                           this->bottom_vec_.begin() + 2);
  LayerParameter p;
  EuclideanLossLayer<Dtype> euclidean(p);
  euclidean.SetUp(two, this->top_vec_);
  euclidean.Forward(two, this->top_vec_);
  EXPECT_NEAR(this->top_->cpu_data()[0], masked, 1e-4);
}

TYPED_TEST(MaskedEuclideanLossLayerTest, TestGradientBroadcastMask) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillRandom(2, 3, 3, 2, true);
  for (int mode = 0; mode < 4; ++mode) {
    LayerParameter p = this->Param(mode);
    p.add_loss_weight(2);
    MaskedEuclideanLossLayer<Dtype> layer(p);
    GradientChecker<Dtype> checker(1e-2, 1e-2, 1701);
    checker.CheckGradientExhaustive(&layer, this->bottom_vec_,
                                    this->top_vec_, 0);
    checker.CheckGradientExhaustive(&layer, this->bottom_vec_,
                                    this->top_vec_, 1);
  }
}

TYPED_TEST(MaskedEuclideanLossLayerTest, TestGradientWeightedFullMask) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillRandom(2, 3, 2, 2, false);
  FillerParameter filler_param;
  UniformFiller<Dtype>(filler_param).Fill(this->mask_);  // weights in [0, 1]
  MaskedEuclideanLossLayer<Dtype> layer(
      this->Param(LossParameter_NormalizationMode_VALID));
  GradientChecker<Dtype> checker(1e-2, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_, 0);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_, 1);
}

TYPED_TEST(MaskedEuclideanLossLayerTest, TestBadMaskShape) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  this->mask_->Reshape(1, 2, 1, 2);
  MaskedEuclideanLossLayer<Dtype> layer(this->Param());
  EXPECT_DEATH(layer.SetUp(this->bottom_vec_, this->top_vec_),
               "MaskedEuclideanLoss layer 'masked': mask 1 2 1 2 \\(4\\) must "
               "have the prediction's shape 1 2 1 3 \\(6\\), or that shape "
               "with 1 channel");
}

}  // namespace caffe
