#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/masking_noise_layer.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class MaskingNoiseLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  MaskingNoiseLayerTest()
      : bottom_(new Blob<Dtype>(2, 3, 4, 5)), top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillNonZero(bottom_);
    bottom_vec_.push_back(bottom_);
    top_vec_.push_back(top_);
  }
  virtual ~MaskingNoiseLayerTest() {
    delete bottom_;
    delete top_;
  }

  // Values 1..7 and their negatives: nonzero, so a zero in the top is a drop.
  static void FillNonZero(Blob<Dtype>* blob) {
    for (int i = 0; i < blob->count(); ++i) {
      blob->mutable_cpu_data()[i] = (i % 2 ? -1 : 1) * Dtype(1 + i % 7);
    }
  }
  static LayerParameter Param(Phase phase, float ratio) {
    LayerParameter p;
    p.set_name("mask");
    p.set_phase(phase);
    p.mutable_masking_noise_param()->set_ratio(ratio);
    return p;
  }
  // Fraction of zeros in top_; every other value equals the bottom's.
  double DroppedFraction() {
    int dropped = 0;
    for (int i = 0; i < top_->count(); ++i) {
      const Dtype v = top_->cpu_data()[i];
      if (v == 0) {
        ++dropped;
      } else {
        EXPECT_EQ(bottom_->cpu_data()[i], v) << "at " << i;
      }
    }
    return static_cast<double>(dropped) / top_->count();
  }

  Blob<Dtype>* const bottom_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(MaskingNoiseLayerTest, TestDtypesAndDevices);

TYPED_TEST(MaskingNoiseLayerTest, TestSetUp) {
  MaskingNoiseLayer<typename TypeParam::Dtype> layer(this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(this->top_->shape_string(), "2 3 4 5 (120)");
  EXPECT_STREQ(layer.type(), "MaskingNoise");
  LayerParameter p;
  EXPECT_FLOAT_EQ(0.25, p.masking_noise_param().ratio());
}

// 100,000 values: the dropped fraction is ratio (standard error <= 0.0016);
// the kept ones are not rescaled.
TYPED_TEST(MaskingNoiseLayerTest, TestForwardTrainDropsRatio) {
  typedef typename TypeParam::Dtype Dtype;
  this->bottom_->Reshape(4, 1, 250, 100);
  this->FillNonZero(this->bottom_);
  const float ratios[3] = {0.25, 0.5, 0.9};
  for (int r = 0; r < 3; ++r) {
    MaskingNoiseLayer<Dtype> layer(this->Param(TRAIN, ratios[r]));
    layer.SetUp(this->bottom_vec_, this->top_vec_);
    layer.Forward(this->bottom_vec_, this->top_vec_);
    EXPECT_NEAR(ratios[r], this->DroppedFraction(), 0.01);
  }
}

TYPED_TEST(MaskingNoiseLayerTest, TestForwardTrainRatioZeroAndOne) {
  typedef typename TypeParam::Dtype Dtype;
  MaskingNoiseLayer<Dtype> keep(this->Param(TRAIN, 0));
  keep.SetUp(this->bottom_vec_, this->top_vec_);
  keep.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(0, this->DroppedFraction());
  MaskingNoiseLayer<Dtype> drop(this->Param(TRAIN, 1));
  drop.SetUp(this->bottom_vec_, this->top_vec_);
  drop.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(1, this->DroppedFraction());
}

TYPED_TEST(MaskingNoiseLayerTest, TestForwardTestIsIdentity) {
  typedef typename TypeParam::Dtype Dtype;
  MaskingNoiseLayer<Dtype> layer(this->Param(TEST, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  for (int i = 0; i < this->bottom_->count(); ++i) {
    EXPECT_EQ(this->bottom_->cpu_data()[i], this->top_->cpu_data()[i]);
  }
  for (int i = 0; i < this->top_->count(); ++i) {
    this->top_->mutable_cpu_diff()[i] = Dtype(i + 1);
  }
  layer.Backward(this->top_vec_, vector<bool>(1, true), this->bottom_vec_);
  for (int i = 0; i < this->bottom_->count(); ++i) {
    EXPECT_EQ(Dtype(i + 1), this->bottom_->cpu_diff()[i]);
  }
}

// Backward passes the top diff where the last forward kept the value, zero
// where it dropped it; a second forward draws a new mask that backward uses.
TYPED_TEST(MaskingNoiseLayerTest, TestBackwardUsesTheForwardMask) {
  typedef typename TypeParam::Dtype Dtype;
  MaskingNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  Blob<Dtype> first;
  for (int pass = 0; pass < 2; ++pass) {
    layer.Forward(this->bottom_vec_, this->top_vec_);
    const double dropped = this->DroppedFraction();
    EXPECT_GT(dropped, 0.2);
    EXPECT_LT(dropped, 0.8);
    for (int i = 0; i < this->top_->count(); ++i) {
      this->top_->mutable_cpu_diff()[i] = Dtype(i + 1);
    }
    layer.Backward(this->top_vec_, vector<bool>(1, true), this->bottom_vec_);
    for (int i = 0; i < this->bottom_->count(); ++i) {
      const bool kept = this->top_->cpu_data()[i] != 0;
      EXPECT_EQ(kept ? Dtype(i + 1) : Dtype(0), this->bottom_->cpu_diff()[i]);
    }
    if (pass == 0) {
      first.CopyFrom(*this->top_, false, true);
    }
  }
  int same = 0;
  for (int i = 0; i < first.count(); ++i) {
    same += first.cpu_data()[i] == this->top_->cpu_data()[i];
  }
  EXPECT_LT(same, first.count());  // a new mask
}

// In place: the same values and gradient as out of place with the same seed.
TYPED_TEST(MaskingNoiseLayerTest, TestInPlace) {
  typedef typename TypeParam::Dtype Dtype;
  MaskingNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  Caffe::set_random_seed(3);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  Blob<Dtype> in_place;
  in_place.CopyFrom(*this->bottom_, false, true);
  vector<Blob<Dtype>*> vec(1, &in_place);
  MaskingNoiseLayer<Dtype> layer2(this->Param(TRAIN, 0.5));
  layer2.SetUp(vec, vec);
  Caffe::set_random_seed(3);
  layer2.Forward(vec, vec);
  caffe_set(in_place.count(), Dtype(2), in_place.mutable_cpu_diff());
  layer2.Backward(vec, vector<bool>(1, true), vec);
  for (int i = 0; i < in_place.count(); ++i) {
    const Dtype v = this->top_->cpu_data()[i];
    EXPECT_EQ(v, in_place.cpu_data()[i]);
    EXPECT_EQ(v != 0 ? Dtype(2) : Dtype(0), in_place.cpu_diff()[i]);
  }
}

TYPED_TEST(MaskingNoiseLayerTest, TestGradientTrain) {
  typedef typename TypeParam::Dtype Dtype;
  MaskingNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.4));
  GradientChecker<Dtype> checker(1e-2, 1e-3);  // reseeds before each pass
  checker.CheckGradientEltwise(&layer, this->bottom_vec_, this->top_vec_);
}

TYPED_TEST(MaskingNoiseLayerTest, TestGradientTest) {
  typedef typename TypeParam::Dtype Dtype;
  MaskingNoiseLayer<Dtype> layer(this->Param(TEST, 0.4));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientEltwise(&layer, this->bottom_vec_, this->top_vec_);
}

TYPED_TEST(MaskingNoiseLayerTest, TestBadRatio) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  MaskingNoiseLayer<Dtype> layer(this->Param(TRAIN, 1.5));
  EXPECT_DEATH(layer.SetUp(this->bottom_vec_, this->top_vec_),
               "MaskingNoise layer 'mask': ratio must be in \\[0, 1\\], "
               "got 1.5");
}

}  // namespace caffe
