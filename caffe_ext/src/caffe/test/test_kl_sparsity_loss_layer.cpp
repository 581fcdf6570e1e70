#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/kl_sparsity_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class KLSparsityLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  KLSparsityLossLayerTest()
      : bottom_(new Blob<Dtype>()), top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    bottom_vec_.push_back(bottom_);
    top_vec_.push_back(top_);
  }
  virtual ~KLSparsityLossLayerTest() {
    delete bottom_;
    delete top_;
  }

  static LayerParameter Param(float rho, float loss_weight = 1) {
    LayerParameter p;
    p.set_name("kl");
    p.add_loss_weight(loss_weight);
    p.mutable_kl_sparsity_param()->set_rho(rho);
    return p;
  }
  void Fill(const vector<int>& shape, const double* values) {
    bottom_->Reshape(shape);
    for (int i = 0; i < bottom_->count(); ++i) {
      bottom_->mutable_cpu_data()[i] = values[i];
    }
  }
  void FillUniform(int num, int c, int h, int w, Dtype min, Dtype max) {
    bottom_->Reshape(num, c, h, w);
    FillerParameter filler_param;
    filler_param.set_min(min);
    filler_param.set_max(max);
    UniformFiller<Dtype>(filler_param).Fill(bottom_);
  }

  Blob<Dtype>* const bottom_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(KLSparsityLossLayerTest, TestDtypesAndDevices);

TYPED_TEST(KLSparsityLossLayerTest, TestDefaults) {
  LayerParameter p;
  EXPECT_FLOAT_EQ(0.05, p.kl_sparsity_param().rho());
  EXPECT_FLOAT_EQ(1e-6, p.kl_sparsity_param().eps());
}

// N = 2, D = 3 given as 2 x 3 x 1 x 1, rho 0.2: batch means 0.2, 0.5, 0.8;
// loss 0 + (0.2 ln 0.4 + 0.8 ln 1.6) + (0.2 ln 0.25 + 0.8 ln 4) = 1.0245214;
// d/da_ij = (-0.2 / rho_j + 0.8 / (1 - rho_j)) / 2 = 0, 0.6, 1.875; both
// scaled by the loss weight 3.
TYPED_TEST(KLSparsityLossLayerTest, TestHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const double a[6] = {0.1, 0.5, 0.9,
                       0.3, 0.5, 0.7};
  vector<int> shape(4, 1);
  shape[0] = 2;
  shape[1] = 3;
  this->Fill(shape, a);
  KLSparsityLossLayer<Dtype> layer(this->Param(0.2, 3));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(0, this->top_->num_axes());
  const Dtype weighted = layer.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_NEAR(1.0245214, this->top_->cpu_data()[0], 1e-5);
  EXPECT_NEAR(3 * 1.0245214, weighted, 3e-5);
  layer.Backward(this->top_vec_, vector<bool>(1, true), this->bottom_vec_);
  const double grad[3] = {0, 0.6, 1.875};
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR(3 * grad[i % 3], this->bottom_->cpu_diff()[i], 1e-5) << i;
  }
}

// A unit at 0 over the whole batch: its mean is clamped to eps = 1e-6, so
// loss 0.2 ln(0.2 / 1e-6) + 0.8 ln(0.8 / (1 - 1e-6)) = 2.2627005 and
// gradient (-0.2 / 1e-6 + 0.8 / (1 - 1e-6)) / 2 = -99999.6, both finite.
TYPED_TEST(KLSparsityLossLayerTest, TestSaturatedUnitIsClamped) {
  typedef typename TypeParam::Dtype Dtype;
  const double a[2] = {0, 0};
  this->Fill(vector<int>(1, 2), a);
  KLSparsityLossLayer<Dtype> layer(this->Param(0.2));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_NEAR(2.2627005, this->top_->cpu_data()[0], 1e-5);
  layer.Backward(this->top_vec_, vector<bool>(1, true), this->bottom_vec_);
  for (int i = 0; i < 2; ++i) {
    EXPECT_NEAR(-99999.6, this->bottom_->cpu_diff()[i], 0.1);
  }
}

// Random input: the loss and gradient of the formula, computed here.
TYPED_TEST(KLSparsityLossLayerTest, TestForwardBackwardRandom) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillUniform(5, 3, 2, 2, 0.01, 0.99);
  const double rho = 0.1;
  KLSparsityLossLayer<Dtype> layer(this->Param(rho));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  layer.Backward(this->top_vec_, vector<bool>(1, true), this->bottom_vec_);
  const int num = 5, dim = 12;
  double loss = 0;
  for (int j = 0; j < dim; ++j) {
    double r = 0;
    for (int i = 0; i < num; ++i) {
      r += this->bottom_->cpu_data()[i * dim + j] / num;
    }
    loss += rho * std::log(rho / r) + (1 - rho) * std::log((1 - rho) / (1 - r));
    const double grad = (-rho / r + (1 - rho) / (1 - r)) / num;
    for (int i = 0; i < num; ++i) {
      EXPECT_NEAR(grad, this->bottom_->cpu_diff()[i * dim + j], 1e-5);
    }
  }
  EXPECT_NEAR(loss, this->top_->cpu_data()[0], 1e-5);
}

TYPED_TEST(KLSparsityLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillUniform(4, 3, 2, 1, 0.05, 0.95);
  KLSparsityLossLayer<Dtype> layer(this->Param(0.1, 2));
  GradientChecker<Dtype> checker(1e-2, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_,
                                  0);
}

TYPED_TEST(KLSparsityLossLayerTest, TestInputOutsideUnitInterval) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  const Dtype bad[3] = {1.5, -0.25, std::numeric_limits<Dtype>::quiet_NaN()};
  const char* shown[3] = {"1.5", "-0.25", "nan"};
  for (int k = 0; k < 3; ++k) {
    this->FillUniform(2, 3, 1, 1, 0.2, 0.8);
    this->bottom_->mutable_cpu_data()[3] = 0;  // the bounds are valid
    this->bottom_->mutable_cpu_data()[4] = 1;
    this->bottom_->mutable_cpu_data()[5] = bad[k];  // sample 1, unit 2
    KLSparsityLossLayer<Dtype> layer(this->Param(0.1));
    layer.SetUp(this->bottom_vec_, this->top_vec_);
    EXPECT_DEATH(layer.Forward(this->bottom_vec_, this->top_vec_),
                 std::string("KLSparsityLoss layer 'kl': input ") + shown[k] +
                 " at \\(sample 1, unit 2\\) is outside \\[0, 1\\]; the KL "
                 "sparsity penalty takes sigmoid activations");
  }
}

TYPED_TEST(KLSparsityLossLayerTest, TestBadRho) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  this->FillUniform(2, 3, 1, 1, 0.2, 0.8);
  KLSparsityLossLayer<Dtype> layer(this->Param(1));
  EXPECT_DEATH(layer.SetUp(this->bottom_vec_, this->top_vec_),
               "KLSparsityLoss layer 'kl': rho must be in \\(0, 1\\), got 1");
}

}  // namespace caffe
