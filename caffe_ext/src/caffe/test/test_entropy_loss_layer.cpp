#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/entropy_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class EntropyLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  EntropyLossLayerTest()
      : bottom_(new Blob<Dtype>()), top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    bottom_vec_.push_back(bottom_);
    top_vec_.push_back(top_);
  }
  virtual ~EntropyLossLayerTest() {
    delete bottom_;
    delete top_;
  }

  static LayerParameter Param(float loss_weight = 1, int axis = 1) {
    LayerParameter p;
    p.set_name("entropy");
    p.add_loss_weight(loss_weight);
    p.mutable_softmax_param()->set_axis(axis);
    return p;
  }
  void Fill(int num, int classes, const double* values) {
    bottom_->Reshape(num, classes, 1, 1);
    for (int i = 0; i < bottom_->count(); ++i) {
      bottom_->mutable_cpu_data()[i] = values[i];
    }
  }
  void FillGaussian(int num, int c, int h, int w, Dtype std) {
    bottom_->Reshape(num, c, h, w);
    FillerParameter filler_param;
    filler_param.set_std(std);
    GaussianFiller<Dtype>(filler_param).Fill(bottom_);
  }
  // Forward and Backward (top diff: the loss weight); returns Forward's.
  Dtype Run(EntropyLossLayer<Dtype>* layer) {
    layer->SetUp(bottom_vec_, top_vec_);
    const Dtype weighted = layer->Forward(bottom_vec_, top_vec_);
    layer->Backward(top_vec_, vector<bool>(1, true), bottom_vec_);
    return weighted;
  }

  Blob<Dtype>* const bottom_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(EntropyLossLayerTest, TestDtypesAndDevices);

// Row 0: logits 0, ln 2, ln 3, so p = 1/6, 2/6, 3/6 and
// H = ln 6 / 6 + ln 3 / 3 + ln 2 / 2 = 1.0114043; row 1: 2, 2, 2 + ln 2, so
// p = 1/4, 1/4, 1/2 and H = 3 ln 2 / 2 = 1.0397208; loss (H0 + H1) / 2 =
// 1.0255625, d/dz_j = -p_j (ln p_j + H) / 2; both scaled by loss weight 3.
TYPED_TEST(EntropyLossLayerTest, TestHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const double z[6] = {0, std::log(2.0), std::log(3.0),
                       2, 2, 2 + std::log(2.0)};
  this->Fill(2, 3, z);
  EntropyLossLayer<Dtype> layer(this->Param(3));
  const Dtype weighted = this->Run(&layer);
  EXPECT_EQ(0, this->top_->num_axes());
  EXPECT_NEAR(1.0255625, this->top_->cpu_data()[0], 1e-6);
  EXPECT_NEAR(3 * 1.0255625, weighted, 3e-6);
  const double grad[6] = {0.0650296, 0.0145347, -0.0795643,
                          0.0433217, 0.0433217, -0.0866434};
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR(3 * grad[i], this->bottom_->cpu_diff()[i], 1e-6) << i;
  }
}

// Equal logits: p = 1/K, so the entropy is its maximum ln K and, as
// ln p_j + H = 0, the gradient is 0.
TYPED_TEST(EntropyLossLayerTest, TestUniformLogitsGiveLogK) {
  typedef typename TypeParam::Dtype Dtype;
  this->bottom_->Reshape(4, 10, 1, 1);
  caffe_set(this->bottom_->count(), Dtype(7.5),
            this->bottom_->mutable_cpu_data());
  EntropyLossLayer<Dtype> layer(this->Param());
  this->Run(&layer);
  EXPECT_NEAR(std::log(10.0), this->top_->cpu_data()[0], 1e-6);
  for (int i = 0; i < this->bottom_->count(); ++i) {
    EXPECT_NEAR(0, this->bottom_->cpu_diff()[i], 1e-7) << i;
  }
}

// exp(-2000) underflows to 0: a one-hot row has entropy 0 and two tied
// logits of 1000 give ln 2, all with a zero gradient; so does a row with a
// -inf logit. Nothing is NaN or infinite.
TYPED_TEST(EntropyLossLayerTest, TestLargeLogitsStayFinite) {
  typedef typename TypeParam::Dtype Dtype;
  const double inf = std::numeric_limits<double>::infinity();
  const double z[9] = {1000, -1000, -1000,
                       1000, 1000, -1000,
                       -inf, 2, 2};
  this->Fill(3, 3, z);
  EntropyLossLayer<Dtype> layer(this->Param());
  this->Run(&layer);
  EXPECT_NEAR(2 * std::log(2.0) / 3, this->top_->cpu_data()[0], 1e-6);
  for (int i = 0; i < 9; ++i) {
    EXPECT_TRUE(std::isfinite(this->bottom_->cpu_diff()[i])) << i;
    EXPECT_NEAR(0, this->bottom_->cpu_diff()[i], 1e-7) << i;
  }
  const double one_hot[3] = {-1000, 1000, -1000};
  this->Fill(1, 3, one_hot);
  this->Run(&layer);
  EXPECT_EQ(0, this->top_->cpu_data()[0]);
}

// A 2 x 4 x 3 x 2 input with the class axis 1, 2 or -1 (the others are
// rows), against the formula computed here in double.
TYPED_TEST(EntropyLossLayerTest, TestAxesAndSpatialRows) {
  typedef typename TypeParam::Dtype Dtype;
  const int axes[3] = {1, 2, -1};
  for (int a = 0; a < 3; ++a) {
    this->FillGaussian(2, 4, 3, 2, 3);
    EntropyLossLayer<Dtype> layer(this->Param(1, axes[a]));
    this->Run(&layer);
    const int axis = this->bottom_->CanonicalAxisIndex(axes[a]);
    const int outer = this->bottom_->count(0, axis);
    const int classes = this->bottom_->shape(axis);
    const int inner = this->bottom_->count(axis + 1);
    const Dtype* z = this->bottom_->cpu_data();
    double loss = 0;
    for (int i = 0; i < outer; ++i) {
      for (int s = 0; s < inner; ++s) {
        const int offset = i * classes * inner + s;
        vector<double> p(classes);
        double sum = 0;
        for (int k = 0; k < classes; ++k) {
          p[k] = std::exp(static_cast<double>(z[offset + k * inner]));
          sum += p[k];
        }
        double h = 0;
        for (int k = 0; k < classes; ++k) {
          p[k] /= sum;
          h -= p[k] * std::log(p[k]);
        }
        loss += h / (outer * inner);
        for (int k = 0; k < classes; ++k) {
          EXPECT_NEAR(-p[k] * (std::log(p[k]) + h) / (outer * inner),
                      this->bottom_->cpu_diff()[offset + k * inner], 1e-6)
              << "axis " << axes[a] << ", row " << i << ", " << s;
        }
      }
    }
    EXPECT_NEAR(loss, this->top_->cpu_data()[0], 1e-5) << axes[a];
  }
}

// The loss weight scales Forward's return value and the gradient, not the
// top's value.
TYPED_TEST(EntropyLossLayerTest, TestLossWeight) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(3, 5, 2, 1, 2);
  EntropyLossLayer<Dtype> unit(this->Param(1));
  const Dtype loss = this->Run(&unit);
  EXPECT_EQ(loss, this->top_->cpu_data()[0]);
  vector<Dtype> diff(this->bottom_->cpu_diff(),
                     this->bottom_->cpu_diff() + this->bottom_->count());
  EntropyLossLayer<Dtype> weighted(this->Param(2.5));
  EXPECT_NEAR(2.5 * loss, this->Run(&weighted), 1e-5);
  EXPECT_NEAR(loss, this->top_->cpu_data()[0], 1e-6);
  for (int i = 0; i < this->bottom_->count(); ++i) {
    EXPECT_NEAR(2.5 * diff[i], this->bottom_->cpu_diff()[i], 1e-6) << i;
  }
}

TYPED_TEST(EntropyLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(2, 5, 2, 3, 2);
  EntropyLossLayer<Dtype> layer(this->Param(2));
  GradientChecker<Dtype> checker(1e-2, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_,
                                  0);
}

}  // namespace caffe
