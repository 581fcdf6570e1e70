#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/gaussian_noise_layer.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class GaussianNoiseLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  GaussianNoiseLayerTest()
      : bottom_(new Blob<Dtype>(2, 3, 4, 5)), top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    GaussianFiller<Dtype>(filler_param).Fill(bottom_);
    bottom_vec_.push_back(bottom_);
    top_vec_.push_back(top_);
  }
  virtual ~GaussianNoiseLayerTest() {
    delete bottom_;
    delete top_;
  }

  static LayerParameter Param(Phase phase, float std) {
    LayerParameter p;
    p.set_name("noise");
    p.set_phase(phase);
    p.mutable_gaussian_noise_param()->set_std(std);
    return p;
  }
  // What the layer must draw after Caffe::set_random_seed(seed): Caffe's
  // Gaussian generator of the current mode, over an even length on the GPU.
  void ExpectedNoise(int count, Dtype std, unsigned int seed,
                     Blob<Dtype>* noise) {
    noise->Reshape(vector<int>(1, count + count % 2));
    Caffe::set_random_seed(seed);
    if (Caffe::mode() == Caffe::CPU) {
      caffe_rng_gaussian<Dtype>(count, Dtype(0), std,
                                noise->mutable_cpu_data());
    } else {
#ifndef CPU_ONLY
      caffe_gpu_rng_gaussian<Dtype>(noise->count(), Dtype(0), std,
                                    noise->mutable_gpu_data());
#endif
    }
  }

  Blob<Dtype>* const bottom_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(GaussianNoiseLayerTest, TestDtypesAndDevices);

TYPED_TEST(GaussianNoiseLayerTest, TestSetUp) {
  GaussianNoiseLayer<typename TypeParam::Dtype> layer(
      this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(this->top_->shape_string(), "2 3 4 5 (120)");
  EXPECT_STREQ(layer.type(), "GaussianNoise");
}

TYPED_TEST(GaussianNoiseLayerTest, TestDefaultStd) {
  LayerParameter p;
  EXPECT_FLOAT_EQ(0.3, p.gaussian_noise_param().std());
}

// TRAIN: top = bottom + exactly the values Caffe's RNG gives for the seed;
// an odd count (3 x 5 x 7) covers cuRAND's even-length rule on the GPU.
TYPED_TEST(GaussianNoiseLayerTest, TestForwardTrainIsBottomPlusCaffeNoise) {
  typedef typename TypeParam::Dtype Dtype;
  this->bottom_->Reshape(3, 5, 7, 1);
  FillerParameter filler_param;
  GaussianFiller<Dtype>(filler_param).Fill(this->bottom_);
  GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.7));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  Caffe::set_random_seed(42);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  Blob<Dtype> noise;
  this->ExpectedNoise(this->bottom_->count(), Dtype(0.7), 42, &noise);
  double differs = 0;
  for (int i = 0; i < this->bottom_->count(); ++i) {
    const Dtype x = this->bottom_->cpu_data()[i];
    EXPECT_NEAR(x + noise.cpu_data()[i], this->top_->cpu_data()[i], 1e-5);
    differs += std::fabs(this->top_->cpu_data()[i] - x);
  }
  EXPECT_GT(differs, 0);
}

// The same seed gives the same noise; in place gives what out of place does.
TYPED_TEST(GaussianNoiseLayerTest, TestForwardTrainReproducibleInPlace) {
  typedef typename TypeParam::Dtype Dtype;
  GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.3));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  Caffe::set_random_seed(7);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  Blob<Dtype> in_place;
  in_place.CopyFrom(*this->bottom_, false, true);
  vector<Blob<Dtype>*> in_place_vec(1, &in_place);
  GaussianNoiseLayer<Dtype> layer2(this->Param(TRAIN, 0.3));
  layer2.SetUp(in_place_vec, in_place_vec);
  Caffe::set_random_seed(7);
  layer2.Forward(in_place_vec, in_place_vec);
  for (int i = 0; i < in_place.count(); ++i) {
    EXPECT_EQ(this->top_->cpu_data()[i], in_place.cpu_data()[i]);
  }
}

// Over 100,233 values (odd) of a zero input: mean ~ 0 and std ~ sigma
// (standard errors 0.0016 and 0.0011 for sigma = 0.5).
TYPED_TEST(GaussianNoiseLayerTest, TestForwardTrainStatistics) {
  typedef typename TypeParam::Dtype Dtype;
  this->bottom_->Reshape(1, 1, 333, 301);
  caffe_set(this->bottom_->count(), Dtype(0),
            this->bottom_->mutable_cpu_data());
  GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  const int n = this->top_->count();
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < n; ++i) {
    const double v = this->top_->cpu_data()[i];
    sum += v;
    sum_sq += v * v;
  }
  const double mean = sum / n;
  EXPECT_NEAR(0, mean, 0.01);
  EXPECT_NEAR(0.5, std::sqrt(sum_sq / n - mean * mean), 0.01);
}

// TEST phase, and std 0 in TRAIN: top = bottom.
TYPED_TEST(GaussianNoiseLayerTest, TestForwardIdentity) {
  typedef typename TypeParam::Dtype Dtype;
  const LayerParameter params[2] = {this->Param(TEST, 0.5),
                                    this->Param(TRAIN, 0)};
  for (int k = 0; k < 2; ++k) {
    GaussianNoiseLayer<Dtype> layer(params[k]);
    layer.SetUp(this->bottom_vec_, this->top_vec_);
    layer.Forward(this->bottom_vec_, this->top_vec_);
    for (int i = 0; i < this->bottom_->count(); ++i) {
      EXPECT_EQ(this->bottom_->cpu_data()[i], this->top_->cpu_data()[i]);
    }
  }
}

// TRAIN: the gradient is the top diff, unchanged.
TYPED_TEST(GaussianNoiseLayerTest, TestBackwardTrainIsIdentity) {
  typedef typename TypeParam::Dtype Dtype;
  GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  for (int i = 0; i < this->top_->count(); ++i) {
    this->top_->mutable_cpu_diff()[i] = Dtype(i) - 60;
  }
  layer.Backward(this->top_vec_, vector<bool>(1, true), this->bottom_vec_);
  for (int i = 0; i < this->bottom_->count(); ++i) {
    EXPECT_EQ(Dtype(i) - 60, this->bottom_->cpu_diff()[i]);
  }
}

TYPED_TEST(GaussianNoiseLayerTest, TestGradientTest) {
  typedef typename TypeParam::Dtype Dtype;
  GaussianNoiseLayer<Dtype> layer(this->Param(TEST, 0.5));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientEltwise(&layer, this->bottom_vec_, this->top_vec_);
}

// The checker reseeds Caffe's RNG before every forward pass, so the noise
// is the same in each and the TRAIN phase can be checked too.
TYPED_TEST(GaussianNoiseLayerTest, TestGradientTrain) {
  typedef typename TypeParam::Dtype Dtype;
  GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientEltwise(&layer, this->bottom_vec_, this->top_vec_);
}

TYPED_TEST(GaussianNoiseLayerTest, TestNegativeStd) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, -1));
  EXPECT_DEATH(layer.SetUp(this->bottom_vec_, this->top_vec_),
               "GaussianNoise layer 'noise': std must be >= 0, got -1");
}

}  // namespace caffe
