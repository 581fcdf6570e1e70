#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/ladder_combinator_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class LadderCombinatorLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  LadderCombinatorLayerTest()
      : z_(new Blob<Dtype>()), u_(new Blob<Dtype>()), top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    bottom_vec_.push_back(z_);
    bottom_vec_.push_back(u_);
    top_vec_.push_back(top_);
  }
  virtual ~LadderCombinatorLayerTest() {
    delete z_;
    delete u_;
    delete top_;
  }

  static LayerParameter Param(int num_axes = -1) {
    LayerParameter p;
    p.set_name("comb");
    p.mutable_ladder_combinator_param()->set_num_axes(num_axes);
    return p;
  }
  static void Set(Blob<Dtype>* blob, const double* values) {
    for (int i = 0; i < blob->count(); ++i) {
      blob->mutable_cpu_data()[i] = values[i];
    }
  }
  void FillGaussian(const vector<int>& shape) {
    z_->Reshape(shape);
    u_->Reshape(shape);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(z_);
    filler.Fill(u_);
  }
  // Random a1..a10 (N(0, 1)), so that every term of g matters.
  static void RandomParams(LadderCombinatorLayer<Dtype>* layer) {
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    for (int k = 0; k < 10; ++k) {
      filler.Fill(layer->blobs()[k].get());
    }
  }
  // The forward pass and the gradients of sum(top_diff * top), in double,
  // with the parameters' entry of flat index i at (i / inner) % dim; checks
  // the layer's top and diffs (parameter diffs `times` backward passes).
  void ExpectReference(LadderCombinatorLayer<Dtype>* layer, int inner,
                       int times) {
    const int n = z_->count();
    const int dim = layer->blobs()[0]->count();
    vector<double> da(10 * dim, 0);
    for (int i = 0; i < n; ++i) {
      const int d = (i / inner) % dim;
      double a[10];
      for (int k = 0; k < 10; ++k) {
        a[k] = layer->blobs()[k]->cpu_data()[d];
      }
      const double z = z_->cpu_data()[i], u = u_->cpu_data()[i];
      const double g = top_->cpu_diff()[i];
      const double s1 = 1 / (1 + std::exp(-(a[1] * u + a[2])));
      const double s2 = 1 / (1 + std::exp(-(a[6] * u + a[7])));
      const double mu = a[0] * s1 + a[3] * u + a[4];
      const double v = a[5] * s2 + a[8] * u + a[9];
      EXPECT_NEAR((z - mu) * v + mu, top_->cpu_data()[i], 1e-4) << i;
      EXPECT_NEAR(g * v, z_->cpu_diff()[i], 1e-4) << i;
      const double dmu_du = a[0] * s1 * (1 - s1) * a[1] + a[3];
      const double dv_du = a[5] * s2 * (1 - s2) * a[6] + a[8];
      EXPECT_NEAR(g * ((1 - v) * dmu_du + (z - mu) * dv_du),
                  u_->cpu_diff()[i], 1e-4) << i;
      const double gm = g * (1 - v), gv = g * (z - mu);
      const double t1 = a[0] * s1 * (1 - s1), t2 = a[5] * s2 * (1 - s2);
      const double terms[10] = {gm * s1, gm * t1 * u, gm * t1, gm * u, gm,
                                gv * s2, gv * t2 * u, gv * t2, gv * u, gv};
      for (int k = 0; k < 10; ++k) {
        da[k * dim + d] += terms[k];
      }
    }
    for (int k = 0; k < 10; ++k) {
      for (int d = 0; d < dim; ++d) {
        EXPECT_NEAR(times * da[k * dim + d],
                    layer->blobs()[k]->cpu_diff()[d], 1e-4)
            << "a" << k + 1 << "[" << d << "]";
      }
    }
  }

  Blob<Dtype>* const z_;
  Blob<Dtype>* const u_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(LadderCombinatorLayerTest, TestDtypesAndDevices);

TYPED_TEST(LadderCombinatorLayerTest, TestDefaults) {
  LayerParameter p;
  EXPECT_EQ(1, p.ladder_combinator_param().axis());
  EXPECT_EQ(-1, p.ladder_combinator_param().num_axes());
  EXPECT_FALSE(p.ladder_combinator_param().has_a1_filler());
}

// Per unit by default: each a_i has one sample's shape; the official
// initialisation a2 = a7 = 1, others 0, for which mu = v = 0 and z^ = 0.
TYPED_TEST(LadderCombinatorLayerTest, TestSetUpPerUnitAndInit) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(vector<int>{2, 3, 4, 5});
  LadderCombinatorLayer<Dtype> layer(this->Param());
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_STREQ("LadderCombinator", layer.type());
  EXPECT_EQ("2 3 4 5 (120)", this->top_->shape_string());
  ASSERT_EQ(10, static_cast<int>(layer.blobs().size()));
  for (int k = 0; k < 10; ++k) {
    EXPECT_EQ("3 4 5 (60)", layer.blobs()[k]->shape_string());
    for (int d = 0; d < 60; ++d) {
      EXPECT_EQ(k == 1 || k == 6 ? 1 : 0, layer.blobs()[k]->cpu_data()[d]);
    }
  }
  layer.Forward(this->bottom_vec_, this->top_vec_);
  for (int i = 0; i < 120; ++i) {
    EXPECT_EQ(0, this->top_->cpu_data()[i]);
  }
}

TYPED_TEST(LadderCombinatorLayerTest, TestSetUpPerChannel) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(vector<int>{2, 3, 4, 5});
  LadderCombinatorLayer<Dtype> layer(this->Param(1));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  for (int k = 0; k < 10; ++k) {
    EXPECT_EQ("3 (3)", layer.blobs()[k]->shape_string());
  }
}

TYPED_TEST(LadderCombinatorLayerTest, TestFillerOverride) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(vector<int>{2, 4});
  LayerParameter p = this->Param();
  p.mutable_ladder_combinator_param()->mutable_a1_filler()->set_value(0.5);
  p.mutable_ladder_combinator_param()->mutable_a7_filler()->set_value(-2);
  LadderCombinatorLayer<Dtype> layer(p);
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  const double want[10] = {0.5, 1, 0, 0, 0, 0, -2, 0, 0, 0};
  for (int k = 0; k < 10; ++k) {
    for (int d = 0; d < 4; ++d) {
      EXPECT_EQ(Dtype(want[k]), layer.blobs()[k]->cpu_data()[d]) << k;
    }
  }
}

// N = 2, D = 2. Unit 0: a = (2, 0, 0, 1, 0.5, 4, 0, 0, -1, 1), so both
// sigmoids are 1/2, mu = 1.5 + u, v = 3 - u. Unit 1: a1 = a2 = a6 = a7 = 1,
// others 0: mu = v = sigmoid(u), 1/2 at u = 0 and 3/4 at u = ln 3.
//   z~ = [[1, 2], [-1, 1.75]], u = [[0, 0], [2, ln 3]]
//   mu = [[1.5, .5], [3.5, .75]], v = [[3, .5], [1, .75]]
//   z^ = (z~ - mu) v + mu = [[0, 1.25], [-1, 1.5]].
// Top diff g = [[1, 2], [-1, 4]]: dz~ = g v = [[3, 1], [-1, 3]];
// du = g ((1 - v) dmu/du + (z~ - mu) dv/du) with dmu/du = 1, dv/du = -1
// (unit 0) and s(1 - s) = 1/4, 3/16 (unit 1): [[-1.5, 1], [-4.5, .9375]].
// With g_mu = g (1 - v) = [[-2, 1], [0, 1]], g_v = g (z~ - mu) = [[-.5, 3],
// [4.5, 4]], a_i's gradient sums over the batch: a1: sum g_mu s1, a2: sum
// g_mu a1 s1' u, a3: sum g_mu a1 s1', a4: sum g_mu u, a5: sum g_mu, and the
// same with g_v, a6 s2' for a6..a10:
//   unit 0: -1, 0, -1, 0, -2, 2, 9, 4, 9, 4
//   unit 1: 1.25, 0.1875 ln 3, 0.4375, ln 3, 2, 4.5, 0.75 ln 3, 1.5,
//           4 ln 3, 7.
TYPED_TEST(LadderCombinatorLayerTest, TestHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const double ln3 = std::log(3.0);
  this->z_->Reshape(vector<int>{2, 2});
  this->u_->Reshape(vector<int>{2, 2});
  const double z[4] = {1, 2, -1, 1.75};
  const double u[4] = {0, 0, 2, ln3};
  this->Set(this->z_, z);
  this->Set(this->u_, u);
  LadderCombinatorLayer<Dtype> layer(this->Param());
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  const double a[10][2] = {{2, 1}, {0, 1}, {0, 0}, {1, 0}, {0.5, 0},
                           {4, 1}, {0, 1}, {0, 0}, {-1, 0}, {1, 0}};
  for (int k = 0; k < 10; ++k) {
    this->Set(layer.blobs()[k].get(), a[k]);
  }
  layer.Forward(this->bottom_vec_, this->top_vec_);
  const double want[4] = {0, 1.25, -1, 1.5};
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(want[i], this->top_->cpu_data()[i], 1e-6) << i;
  }
  const double g[4] = {1, 2, -1, 4};
  for (int i = 0; i < 4; ++i) {
    this->top_->mutable_cpu_diff()[i] = g[i];
  }
  for (int k = 0; k < 10; ++k) {
    caffe_set(2, Dtype(0), layer.blobs()[k]->mutable_cpu_diff());
  }
  layer.Backward(this->top_vec_, vector<bool>(2, true), this->bottom_vec_);
  const double dz[4] = {3, 1, -1, 3};
  const double du[4] = {-1.5, 1, -4.5, 0.9375};
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(dz[i], this->z_->cpu_diff()[i], 1e-6) << i;
    EXPECT_NEAR(du[i], this->u_->cpu_diff()[i], 1e-6) << i;
  }
  const double da[10][2] = {{-1, 1.25}, {0, 0.1875 * ln3}, {-1, 0.4375},
                            {0, ln3}, {-2, 2}, {2, 4.5}, {9, 0.75 * ln3},
                            {4, 1.5}, {9, 4 * ln3}, {4, 7}};
  for (int k = 0; k < 10; ++k) {
    for (int d = 0; d < 2; ++d) {
      EXPECT_NEAR(da[k][d], layer.blobs()[k]->cpu_diff()[d], 1e-5)
          << "a" << k + 1 << "[" << d << "]";
    }
  }
}

// Random inputs and parameters, per unit on N x C x H x W: the formula
// computed here; a second backward pass adds to the parameters' diffs.
TYPED_TEST(LadderCombinatorLayerTest, TestForwardBackwardPerUnit) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(vector<int>{3, 2, 3, 2});
  LadderCombinatorLayer<Dtype> layer(this->Param());
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  this->RandomParams(&layer);
  FillerParameter filler_param;
  GaussianFiller<Dtype>(filler_param).Fill(this->top_);  // the top diff
  caffe_copy(this->top_->count(), this->top_->cpu_data(),
             this->top_->mutable_cpu_diff());
  layer.Forward(this->bottom_vec_, this->top_vec_);
  for (int k = 0; k < 10; ++k) {
    caffe_set(12, Dtype(0), layer.blobs()[k]->mutable_cpu_diff());
  }
  layer.Backward(this->top_vec_, vector<bool>(2, true), this->bottom_vec_);
  layer.Backward(this->top_vec_, vector<bool>(2, true), this->bottom_vec_);
  this->ExpectReference(&layer, 1, 2);
}

// One value per channel on N x C x H x W, broadcast over H x W: the
// parameter gradients sum over the batch and the spatial axes.
TYPED_TEST(LadderCombinatorLayerTest, TestForwardBackwardPerChannel) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(vector<int>{3, 4, 2, 3});
  LadderCombinatorLayer<Dtype> layer(this->Param(1));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  this->RandomParams(&layer);
  FillerParameter filler_param;
  GaussianFiller<Dtype>(filler_param).Fill(this->top_);
  caffe_copy(this->top_->count(), this->top_->cpu_data(),
             this->top_->mutable_cpu_diff());
  layer.Forward(this->bottom_vec_, this->top_vec_);
  for (int k = 0; k < 10; ++k) {
    caffe_set(4, Dtype(0), layer.blobs()[k]->mutable_cpu_diff());
  }
  layer.Backward(this->top_vec_, vector<bool>(2, true), this->bottom_vec_);
  this->ExpectReference(&layer, 6, 1);
}

// propagate_down false and a parameter's param_propagate_down false: their
// diffs untouched.
TYPED_TEST(LadderCombinatorLayerTest, TestNoPropagation) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(vector<int>{2, 3});
  LayerParameter p = this->Param();
  LadderCombinatorLayer<Dtype> layer(p);
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  this->RandomParams(&layer);
  layer.set_param_propagate_down(4, false);
  caffe_set(6, Dtype(7), this->u_->mutable_cpu_diff());
  caffe_set(3, Dtype(7), layer.blobs()[4]->mutable_cpu_diff());
  caffe_set(3, Dtype(0), layer.blobs()[0]->mutable_cpu_diff());
  caffe_set(6, Dtype(1), this->top_->mutable_cpu_diff());
  layer.Forward(this->bottom_vec_, this->top_vec_);
  vector<bool> down(2, true);
  down[1] = false;
  layer.Backward(this->top_vec_, down, this->bottom_vec_);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(7, this->u_->cpu_diff()[i]);
  }
  for (int d = 0; d < 3; ++d) {
    EXPECT_EQ(7, layer.blobs()[4]->cpu_diff()[d]);
  }
  double a1_diff = 0;
  for (int d = 0; d < 3; ++d) {
    a1_diff += std::fabs(layer.blobs()[0]->cpu_diff()[d]);
  }
  EXPECT_GT(a1_diff, 0);
}

TYPED_TEST(LadderCombinatorLayerTest, TestGradientPerUnit) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(vector<int>{2, 3});
  LadderCombinatorLayer<Dtype> layer(this->Param());
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  this->RandomParams(&layer);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  // z~, u and a1..a10
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
}

// At the official initialisation too (the gradient to a1..a10 there is what
// the first update uses).
TYPED_TEST(LadderCombinatorLayerTest, TestGradientAtInit) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(vector<int>{2, 3});
  LadderCombinatorLayer<Dtype> layer(this->Param());
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
}

TYPED_TEST(LadderCombinatorLayerTest, TestGradientPerChannel) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(vector<int>{2, 2, 2, 1});
  LadderCombinatorLayer<Dtype> layer(this->Param(1));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  this->RandomParams(&layer);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
}

TYPED_TEST(LadderCombinatorLayerTest, TestShapeMismatch) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  this->z_->Reshape(vector<int>{2, 3});
  this->u_->Reshape(vector<int>{2, 4});
  LadderCombinatorLayer<Dtype> layer(this->Param());
  EXPECT_DEATH(layer.SetUp(this->bottom_vec_, this->top_vec_),
               "LadderCombinator layer 'comb': z~ \\(2 3 \\(6\\)\\) and u "
               "\\(2 4 \\(8\\)\\) must have one shape");
}

}  // namespace caffe
