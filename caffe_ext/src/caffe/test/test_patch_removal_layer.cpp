#include <set>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/patch_removal_layer.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class PatchRemovalLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  PatchRemovalLayerTest()
      : bottom_(new Blob<Dtype>(1, 2, 5, 6)), top_(new Blob<Dtype>()),
        mask_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    for (int i = 0; i < bottom_->count(); ++i) {
      bottom_->mutable_cpu_data()[i] = i + 1;
    }
    bottom_vec_.push_back(bottom_);
    top_vec_.push_back(top_);
    top_vec_.push_back(mask_);
  }
  virtual ~PatchRemovalLayerTest() {
    delete bottom_;
    delete top_;
    delete mask_;
  }

  static LayerParameter Param(Phase phase, int size, bool random,
                              float fill = 0) {
    LayerParameter p;
    p.set_name("patch");
    p.set_phase(phase);
    PatchRemovalParameter* param = p.mutable_patch_removal_param();
    param->set_size(size);
    if (random) {
      param->set_mode(PatchRemovalParameter_Mode_RANDOM);
    }
    param->set_fill(fill);
    return p;
  }
  // The 1 x 2 x 5 x 6 image 1..60 with a 3 x 3 patch at (1, 1) filled with -1
  // and its mask: what CENTER gives, and RANDOM in the TEST phase.
  void ExpectCentre(const PatchRemovalLayer<Dtype>& layer) {
    const Dtype expected[30] = {1,  2,  3,  4,  5,  6,
                                7, -1, -1, -1, 11, 12,
                               13, -1, -1, -1, 17, 18,
                               19, -1, -1, -1, 23, 24,
                               25, 26, 27, 28, 29, 30};
    const Dtype mask[30] = {0, 0, 0, 0, 0, 0,
                            0, 1, 1, 1, 0, 0,
                            0, 1, 1, 1, 0, 0,
                            0, 1, 1, 1, 0, 0,
                            0, 0, 0, 0, 0, 0};
    EXPECT_EQ(top_->shape_string(), "1 2 5 6 (60)");
    EXPECT_EQ(mask_->shape_string(), "1 1 5 6 (30)");
    EXPECT_EQ(1, layer.patch_row(0));
    EXPECT_EQ(1, layer.patch_col(0));
    for (int i = 0; i < 60; ++i) {
      const Dtype want =
          expected[i % 30] < 0 ? -1 : expected[i % 30] + i / 30 * 30;
      EXPECT_EQ(want, top_->cpu_data()[i]) << "at " << i;
    }
    for (int i = 0; i < 30; ++i) {
      EXPECT_EQ(mask[i], mask_->cpu_data()[i]) << "at " << i;
    }
  }
  // Every image's top and mask agree with its reported patch position, and
  // the gradient (top diff 1 + index) passes exactly outside the patch.
  void ExpectConsistent(const PatchRemovalLayer<Dtype>& layer, int size,
                        Dtype fill) {
    const int num = bottom_->num(), channels = bottom_->channels();
    const int height = bottom_->height(), width = bottom_->width();
    for (int n = 0; n < num; ++n) {
      const int y = layer.patch_row(n), x = layer.patch_col(n);
      ASSERT_GE(y, 0);
      ASSERT_GE(x, 0);
      ASSERT_LE(y + size, height);
      ASSERT_LE(x + size, width);
      for (int c = 0; c < channels; ++c) {
        for (int h = 0; h < height; ++h) {
          for (int w = 0; w < width; ++w) {
            const bool inside = h >= y && h < y + size && w >= x &&
                w < x + size;
            const int i = bottom_->offset(n, c, h, w);
            EXPECT_EQ(inside ? fill : bottom_->cpu_data()[i],
                      top_->cpu_data()[i]);
            EXPECT_EQ(inside ? Dtype(0) : Dtype(1 + i),
                      bottom_->cpu_diff()[i]);
            EXPECT_EQ(Dtype(inside), mask_->data_at(n, 0, h, w));
          }
        }
      }
    }
  }
  void ForwardBackward(PatchRemovalLayer<Dtype>* layer) {
    layer->SetUp(bottom_vec_, top_vec_);
    layer->Forward(bottom_vec_, top_vec_);
    for (int i = 0; i < top_->count(); ++i) {
      top_->mutable_cpu_diff()[i] = 1 + i;
    }
    layer->Backward(top_vec_, vector<bool>(1, true), bottom_vec_);
  }

  Blob<Dtype>* const bottom_;
  Blob<Dtype>* const top_;
  Blob<Dtype>* const mask_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(PatchRemovalLayerTest, TestDtypesAndDevices);

TYPED_TEST(PatchRemovalLayerTest, TestCentre) {
  typedef typename TypeParam::Dtype Dtype;
  PatchRemovalLayer<Dtype> layer(this->Param(TRAIN, 3, false, -1));
  this->ForwardBackward(&layer);
  this->ExpectCentre(layer);
  this->ExpectConsistent(layer, 3, -1);
}

TYPED_TEST(PatchRemovalLayerTest, TestRandomInTestPhaseIsCentre) {
  typedef typename TypeParam::Dtype Dtype;
  PatchRemovalLayer<Dtype> layer(this->Param(TEST, 3, true, -1));
  this->ForwardBackward(&layer);
  this->ExpectCentre(layer);
}

// Without the mask top, the image is the same.
TYPED_TEST(PatchRemovalLayerTest, TestWithoutMaskTop) {
  typedef typename TypeParam::Dtype Dtype;
  this->top_vec_.pop_back();
  PatchRemovalLayer<Dtype> layer(this->Param(TRAIN, 3, false, -1));
  this->ForwardBackward(&layer);
  for (int i = 0; i < 60; ++i) {
    const int h = i % 30 / 6, w = i % 6;
    const bool inside = h >= 1 && h < 4 && w >= 1 && w < 4;
    EXPECT_EQ(inside ? Dtype(-1) : Dtype(i + 1), this->top_->cpu_data()[i]);
  }
}

// RANDOM in TRAIN: 300 images of 7 x 9, patch 3: every position lies inside
// the image, each of the 5 x 7 positions occurs, and top, mask and gradient
// follow each image's own position.
TYPED_TEST(PatchRemovalLayerTest, TestRandomPlacement) {
  typedef typename TypeParam::Dtype Dtype;
  this->bottom_->Reshape(300, 2, 7, 9);
  FillerParameter filler_param;
  filler_param.set_min(1);
  filler_param.set_max(2);
  UniformFiller<Dtype>(filler_param).Fill(this->bottom_);
  PatchRemovalLayer<Dtype> layer(this->Param(TRAIN, 3, true, 0.5));
  this->ForwardBackward(&layer);
  this->ExpectConsistent(layer, 3, 0.5);
  std::set<std::pair<int, int> > seen;
  for (int n = 0; n < 300; ++n) {
    seen.insert(std::make_pair(layer.patch_row(n), layer.patch_col(n)));
  }
  EXPECT_EQ(5 * 7, seen.size());
}

// A patch as large as the image removes all of it.
TYPED_TEST(PatchRemovalLayerTest, TestWholeImage) {
  typedef typename TypeParam::Dtype Dtype;
  this->bottom_->Reshape(2, 1, 4, 4);
  PatchRemovalLayer<Dtype> layer(this->Param(TRAIN, 4, true, 7));
  this->ForwardBackward(&layer);
  for (int i = 0; i < this->top_->count(); ++i) {
    EXPECT_EQ(7, this->top_->cpu_data()[i]);
    EXPECT_EQ(0, this->bottom_->cpu_diff()[i]);
    EXPECT_EQ(1, this->mask_->cpu_data()[i]);
  }
}

TYPED_TEST(PatchRemovalLayerTest, TestGradientCentre) {
  typedef typename TypeParam::Dtype Dtype;
  PatchRemovalLayer<Dtype> layer(this->Param(TRAIN, 3, false));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
}

// The checker reseeds Caffe's RNG before every forward pass, so each image's
// random patch stays where it was.
TYPED_TEST(PatchRemovalLayerTest, TestGradientRandom) {
  typedef typename TypeParam::Dtype Dtype;
  this->bottom_->Reshape(3, 2, 5, 4);
  FillerParameter filler_param;
  GaussianFiller<Dtype>(filler_param).Fill(this->bottom_);
  PatchRemovalLayer<Dtype> layer(this->Param(TRAIN, 2, true));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_,
                                  0);
}

TYPED_TEST(PatchRemovalLayerTest, TestBadSize) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  {
    PatchRemovalLayer<Dtype> layer(this->Param(TRAIN, 6, false));
    EXPECT_DEATH(layer.SetUp(this->bottom_vec_, this->top_vec_),
                 "PatchRemoval layer 'patch': patch size 6 is larger than the "
                 "5 x 6 input");
  }
  {
    PatchRemovalLayer<Dtype> layer(this->Param(TRAIN, 0, false));
    EXPECT_DEATH(layer.SetUp(this->bottom_vec_, this->top_vec_),
                 "PatchRemoval layer 'patch': patch_removal_param.size");
  }
}

}  // namespace caffe
