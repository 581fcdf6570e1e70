#include <string>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/pooling_layer.hpp"
#include "caffe/layers/unpooling_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class UnpoolingLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  UnpoolingLayerTest()
      : values_(new Blob<Dtype>()), switches_(new Blob<Dtype>()),
        reference_(new Blob<Dtype>()), top_(new Blob<Dtype>()),
        count_(new Blob<Dtype>()) {}
  virtual void SetUp() { Caffe::set_random_seed(1701); }
  virtual ~UnpoolingLayerTest() {
    delete values_;
    delete switches_;
    delete reference_;
    delete top_;
    delete count_;
  }

  static LayerParameter Param(int kernel, int stride, int pad = 0) {
    LayerParameter p;
    p.set_name("unpool");
    p.mutable_pooling_param()->set_kernel_size(kernel);
    p.mutable_pooling_param()->set_stride(stride);
    p.mutable_pooling_param()->set_pad(pad);
    return p;
  }
  // One 2x2 plane of values 1, 2, 3, 4 (raster order), repeated over N x C.
  void FillValues(int num, int channels) {
    values_->Reshape(num, channels, 2, 2);
    for (int i = 0; i < values_->count(); ++i) {
      values_->mutable_cpu_data()[i] = (i % 4) + 1;
    }
  }
  void FillSwitches(const int (&s)[4]) {
    switches_->ReshapeLike(*values_);
    for (int i = 0; i < switches_->count(); ++i) {
      switches_->mutable_cpu_data()[i] = s[i % 4];
    }
  }
  // Pools random input with a MAX Pooling layer into values_/switches_.
  void PoolRandom(const LayerParameter& param, int h, int w, bool positive) {
    Blob<Dtype> input(2, 3, h, w);
    FillerParameter filler_param;
    if (positive) {
      filler_param.set_min(0);
      filler_param.set_max(1);
      UniformFiller<Dtype>(filler_param).Fill(&input);
    } else {
      GaussianFiller<Dtype>(filler_param).Fill(&input);
    }
    reference_->ReshapeLike(input);
    caffe_copy(input.count(), input.cpu_data(), reference_->mutable_cpu_data());
    vector<Blob<Dtype>*> bottom(1, &input);
    vector<Blob<Dtype>*> top;
    top.push_back(values_);
    top.push_back(switches_);
    PoolingLayer<Dtype> pool(param);
    pool.SetUp(bottom, top);
    pool.Forward(bottom, top);
  }
  // Checks every plane of top_ against a 1-plane expectation.
  void ExpectPlanes(const Blob<Dtype>& blob, const Dtype* plane, int size) {
    ASSERT_EQ(0, blob.count() % size);
    for (int i = 0; i < blob.count(); ++i) {
      EXPECT_EQ(plane[i % size], blob.cpu_data()[i]) << "at " << i;
    }
  }

  Blob<Dtype>* const values_;
  Blob<Dtype>* const switches_;
  Blob<Dtype>* const reference_;
  Blob<Dtype>* const top_;
  Blob<Dtype>* const count_;
};

TYPED_TEST_CASE(UnpoolingLayerTest, TestDtypesAndDevices);

TYPED_TEST(UnpoolingLayerTest, TestKnownSwitches2x2) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillValues(2, 3);
  // window (0,0) max at (1,0); (0,1) at (1,3); (1,0) at (2,1); (1,1) at (3,3)
  const int switches[4] = {4, 7, 9, 15};
  this->FillSwitches(switches);
  vector<Blob<Dtype>*> bottom, top(1, this->top_);
  bottom.push_back(this->values_);
  bottom.push_back(this->switches_);
  UnpoolingLayer<Dtype> layer(this->Param(2, 2));
  layer.SetUp(bottom, top);
  EXPECT_EQ(this->top_->shape_string(), "2 3 4 4 (96)");
  layer.Forward(bottom, top);
  const Dtype expected[16] = {0, 0, 0, 0,
                              1, 0, 0, 2,
                              0, 3, 0, 0,
                              0, 0, 0, 4};
  this->ExpectPlanes(*this->top_, expected, 16);
}

TYPED_TEST(UnpoolingLayerTest, TestFixedSwitches2x2) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillValues(2, 3);
  vector<Blob<Dtype>*> bottom(1, this->values_), top(1, this->top_);
  UnpoolingLayer<Dtype> layer(this->Param(2, 2));
  layer.SetUp(bottom, top);
  layer.Forward(bottom, top);
  // kernel / 2 = (1,1): the lower-right cell of each window
  const Dtype expected[16] = {0, 0, 0, 0,
                              0, 1, 0, 2,
                              0, 0, 0, 0,
                              0, 3, 0, 4};
  this->ExpectPlanes(*this->top_, expected, 16);
}

TYPED_TEST(UnpoolingLayerTest, TestFixedSwitchesOffset) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillValues(1, 2);
  vector<Blob<Dtype>*> bottom(1, this->values_), top(1, this->top_);
  LayerParameter param = this->Param(2, 2);
  param.mutable_unpooling_param()->set_offset_h(0);
  param.mutable_unpooling_param()->set_offset_w(1);
  UnpoolingLayer<Dtype> layer(param);
  layer.SetUp(bottom, top);
  layer.Forward(bottom, top);
  const Dtype expected[16] = {0, 1, 0, 2,
                              0, 0, 0, 0,
                              0, 3, 0, 4,
                              0, 0, 0, 0};
  this->ExpectPlanes(*this->top_, expected, 16);
}

// AlexNet-style 3x3/2: a 2x2 input unpools to 5x5 and windows overlap on
// row 2 and column 2. Windows (0,0) and (0,1) both had their max at (2,2).
TYPED_TEST(UnpoolingLayerTest, TestKnownSwitches3x3Overlap) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillValues(2, 2);
  const int switches[4] = {12, 12, 10, 24};
  this->FillSwitches(switches);
  vector<Blob<Dtype>*> bottom, top;
  bottom.push_back(this->values_);
  bottom.push_back(this->switches_);
  top.push_back(this->top_);
  top.push_back(this->count_);
  const Dtype expected_avg[25] = {0, 0, 0,   0, 0,
                                  0, 0, 0,   0, 0,
                                  3, 0, 1.5, 0, 0,
                                  0, 0, 0,   0, 0,
                                  0, 0, 0,   0, 4};
  const Dtype expected_sum[25] = {0, 0, 0, 0, 0,
                                  0, 0, 0, 0, 0,
                                  3, 0, 3, 0, 0,
                                  0, 0, 0, 0, 0,
                                  0, 0, 0, 0, 4};
  const Dtype expected_count[25] = {0, 0, 0, 0, 0,
                                    0, 0, 0, 0, 0,
                                    1, 0, 2, 0, 0,
                                    0, 0, 0, 0, 0,
                                    0, 0, 0, 0, 1};
  for (int sum = 0; sum < 2; ++sum) {
    LayerParameter param = this->Param(3, 2);
    if (sum) {
      param.mutable_unpooling_param()->set_overlap(
          UnpoolingParameter_Overlap_SUM);
    }
    UnpoolingLayer<Dtype> layer(param);
    layer.SetUp(bottom, top);
    EXPECT_EQ(this->top_->shape_string(), "2 2 5 5 (100)");
    layer.Forward(bottom, top);
    this->ExpectPlanes(*this->top_, sum ? expected_sum : expected_avg, 25);
    this->ExpectPlanes(*this->count_, expected_count, 25);
    // Backward of a top diff of ones: the two values that shared (2,2) get
    // half each when averaged, all of it when summed.
    caffe_set(this->top_->count(), Dtype(1), this->top_->mutable_cpu_diff());
    layer.Backward(top, vector<bool>(2, true), bottom);
    const Dtype expected_diff[4] = {sum ? Dtype(1) : Dtype(0.5),
                                    sum ? Dtype(1) : Dtype(0.5), 1, 1};
    for (int i = 0; i < this->values_->count(); ++i) {
      EXPECT_EQ(expected_diff[i % 4], this->values_->cpu_diff()[i]);
      EXPECT_EQ(0, this->switches_->cpu_diff()[i]) << "switches got a diff";
    }
  }
}

TYPED_TEST(UnpoolingLayerTest, TestFixedSwitches3x3) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillValues(1, 1);
  vector<Blob<Dtype>*> bottom(1, this->values_), top(1, this->top_);
  UnpoolingLayer<Dtype> layer(this->Param(3, 2));
  layer.SetUp(bottom, top);
  layer.Forward(bottom, top);
  const Dtype expected[25] = {0, 0, 0, 0, 0,
                              0, 1, 0, 2, 0,
                              0, 0, 0, 0, 0,
                              0, 3, 0, 4, 0,
                              0, 0, 0, 0, 0};
  this->ExpectPlanes(*this->top_, expected, 25);
}

// The unpooled sizes of the paper's nets: VGG 7 -> 14 -> ... -> 224 and
// AlexNet 6 -> 13 -> 27 -> 55.
TYPED_TEST(UnpoolingLayerTest, TestOutputSizes) {
  typedef typename TypeParam::Dtype Dtype;
  const int cases[][4] = {{2, 2, 7, 14}, {2, 2, 112, 224}, {3, 2, 6, 13},
                          {3, 2, 13, 27}, {3, 2, 27, 55}};
  for (int c = 0; c < 5; ++c) {
    this->values_->Reshape(1, 2, cases[c][2], cases[c][2]);
    vector<Blob<Dtype>*> bottom(1, this->values_), top(1, this->top_);
    UnpoolingLayer<Dtype> layer(this->Param(cases[c][0], cases[c][1]));
    layer.SetUp(bottom, top);
    EXPECT_EQ(cases[c][3], this->top_->height());
    EXPECT_EQ(cases[c][3], this->top_->width());
  }
}

// Pooling -> Unpooling(known) -> Pooling gives back the pooled values exactly
// for non-negative input (as after a ReLU), also for odd sizes that need the
// reference bottom and for overlapping windows.
TYPED_TEST(UnpoolingLayerTest, TestRoundTrip) {
  typedef typename TypeParam::Dtype Dtype;
  const int cases[][4] = {{2, 2, 8, 6}, {2, 2, 7, 5}, {3, 2, 13, 13},
                          {3, 2, 12, 9}, {3, 1, 6, 5}};
  for (int c = 0; c < 5; ++c) {
    const LayerParameter param = this->Param(cases[c][0], cases[c][1]);
    this->PoolRandom(param, cases[c][2], cases[c][3], true);
    Blob<Dtype> pooled;
    pooled.CopyFrom(*this->values_, false, true);
    vector<Blob<Dtype>*> bottom, top(1, this->top_);
    bottom.push_back(this->values_);
    bottom.push_back(this->switches_);
    bottom.push_back(this->reference_);
    UnpoolingLayer<Dtype> unpool(param);
    unpool.SetUp(bottom, top);
    EXPECT_TRUE(this->top_->shape() == this->reference_->shape());
    unpool.Forward(bottom, top);

    Blob<Dtype> repooled;
    vector<Blob<Dtype>*> pool_bottom(1, this->top_), pool_top(1, &repooled);
    PoolingLayer<Dtype> pool(param);
    pool.SetUp(pool_bottom, pool_top);
    pool.Forward(pool_bottom, pool_top);
    ASSERT_TRUE(repooled.shape() == pooled.shape());
    for (int i = 0; i < pooled.count(); ++i) {
      EXPECT_EQ(pooled.cpu_data()[i], repooled.cpu_data()[i])
          << "case " << c << " at " << i;
    }
  }
}

TYPED_TEST(UnpoolingLayerTest, TestGradientKnownSwitches) {
  typedef typename TypeParam::Dtype Dtype;
  // kernel, stride, pad, overlap mode (0 average, 1 sum), input h, w
  const int cases[][6] = {{2, 2, 0, 0, 6, 6}, {3, 2, 0, 0, 7, 7},
                          {3, 2, 0, 1, 7, 7}, {3, 2, 1, 0, 6, 5}};
  for (int c = 0; c < 4; ++c) {
    LayerParameter param = this->Param(cases[c][0], cases[c][1], cases[c][2]);
    if (cases[c][3]) {
      param.mutable_unpooling_param()->set_overlap(
          UnpoolingParameter_Overlap_SUM);
    }
    this->PoolRandom(param, cases[c][4], cases[c][5], false);
    vector<Blob<Dtype>*> bottom, top(1, this->top_);
    bottom.push_back(this->values_);
    bottom.push_back(this->switches_);
    bottom.push_back(this->reference_);
    UnpoolingLayer<Dtype> layer(param);
    GradientChecker<Dtype> checker(1e-2, 1e-3);
    checker.CheckGradientExhaustive(&layer, bottom, top, 0);
  }
}

TYPED_TEST(UnpoolingLayerTest, TestGradientFixedSwitches) {
  typedef typename TypeParam::Dtype Dtype;
  const int cases[][3] = {{2, 2, 0}, {3, 2, 0}, {3, 2, 1}, {2, 1, 0}};
  for (int c = 0; c < 4; ++c) {
    this->values_->Reshape(2, 3, 3, 4);
    FillerParameter filler_param;
    GaussianFiller<Dtype>(filler_param).Fill(this->values_);
    vector<Blob<Dtype>*> bottom(1, this->values_), top(1, this->top_);
    UnpoolingLayer<Dtype> layer(
        this->Param(cases[c][0], cases[c][1], cases[c][2]));
    GradientChecker<Dtype> checker(1e-2, 1e-3);
    checker.CheckGradientExhaustive(&layer, bottom, top, 0);
  }
}

TYPED_TEST(UnpoolingLayerTest, TestExplicitOutputSize) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillValues(1, 1);
  vector<Blob<Dtype>*> bottom(1, this->values_), top(1, this->top_);
  LayerParameter param = this->Param(2, 2);
  param.mutable_unpooling_param()->set_out_h(3);
  param.mutable_unpooling_param()->set_out_w(4);
  UnpoolingLayer<Dtype> layer(param);
  layer.SetUp(bottom, top);
  EXPECT_EQ(this->top_->shape_string(), "1 1 3 4 (12)");
  layer.Forward(bottom, top);
  // The second window row starts at row 2; its fixed cell (3, *) is cut off.
  const Dtype expected[12] = {0, 0, 0, 0,
                              0, 1, 0, 2,
                              0, 0, 0, 0};
  this->ExpectPlanes(*this->top_, expected, 12);
}

TYPED_TEST(UnpoolingLayerTest, TestShapeErrors) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  this->FillValues(1, 1);
  {
    // 2x2 never pools 5x5 (-> 3x3 in ceil mode) down to 2x2.
    LayerParameter param = this->Param(2, 2);
    param.mutable_unpooling_param()->set_out_h(5);
    param.mutable_unpooling_param()->set_out_w(5);
    vector<Blob<Dtype>*> bottom(1, this->values_), top(1, this->top_);
    UnpoolingLayer<Dtype> layer(param);
    EXPECT_DEATH(layer.SetUp(bottom, top),
                 "Unpooling layer 'unpool': cannot mirror");
  }
  {
    this->switches_->Reshape(1, 1, 3, 2);
    vector<Blob<Dtype>*> bottom, top(1, this->top_);
    bottom.push_back(this->values_);
    bottom.push_back(this->switches_);
    UnpoolingLayer<Dtype> layer(this->Param(2, 2));
    EXPECT_DEATH(layer.SetUp(bottom, top),
                 "Unpooling layer 'unpool': switches .* must have the shape");
  }
}

// A known switch outside its pooling window stops Forward with an error that
// names the layer and the switch, in CPU and GPU mode alike (the GPU reports
// the first bad switch in raster order, as the CPU does).
TYPED_TEST(UnpoolingLayerTest, TestSwitchOutsideWindow) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  this->FillValues(2, 3);
  const int valid[4] = {4, 7, 9, 15};
  // plane 2, window (1, 1) = rows and columns 2-3, gets: 5, in window (0, 0);
  // 16, past the 4x4 plane; -1, before it. Plane 4 is bad too, reported second.
  const Dtype bad[3] = {5, 16, -1};
  const char* expected[3] = {"switch 5 at \\(plane 2, 1, 1\\)",
                             "switch 16 at \\(plane 2, 1, 1\\)",
                             "switch -1 at \\(plane 2, 1, 1\\)"};
  for (int c = 0; c < 3; ++c) {
    this->FillSwitches(valid);
    this->switches_->mutable_cpu_data()[2 * 4 + 3] = bad[c];
    this->switches_->mutable_cpu_data()[4 * 4 + 3] = bad[c];
    vector<Blob<Dtype>*> bottom, top(1, this->top_);
    bottom.push_back(this->values_);
    bottom.push_back(this->switches_);
    UnpoolingLayer<Dtype> layer(this->Param(2, 2));
    layer.SetUp(bottom, top);
    EXPECT_DEATH(layer.Forward(bottom, top),
                 std::string("Unpooling layer 'unpool': ") + expected[c] +
                 " lies outside its pooling window");
  }
}

#ifndef CPU_ONLY
// GPU mode only: Backward_gpu indexes the top diff with the switches, so it
// validates them itself (a backward without a forward over the same switches
// must not read out of bounds). The CPU's backward trusts its forward.
template <typename Dtype>
class UnpoolingLayerGPUTest : public UnpoolingLayerTest<GPUDevice<Dtype> > {
};

TYPED_TEST_CASE(UnpoolingLayerGPUTest, TestDtypes);

TYPED_TEST(UnpoolingLayerGPUTest, TestBackwardSwitchOutsideWindow) {
  typedef TypeParam Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  this->FillValues(2, 3);
  const int valid[4] = {4, 7, 9, 15};
  this->FillSwitches(valid);
  vector<Blob<Dtype>*> bottom, top(1, this->top_);
  bottom.push_back(this->values_);
  bottom.push_back(this->switches_);
  UnpoolingLayer<Dtype> layer(this->Param(2, 2));
  layer.SetUp(bottom, top);
  layer.Forward(bottom, top);
  caffe_set(this->top_->count(), Dtype(1), this->top_->mutable_cpu_diff());
  this->switches_->mutable_cpu_data()[3 * 4 + 1] = 1000;  // past the plane
  EXPECT_DEATH(layer.Backward(top, vector<bool>(2, true), bottom),
               "Unpooling layer 'unpool': switch 1000 at \\(plane 3, 0, 1\\) "
               "lies outside its pooling window");
}
#endif  // CPU_ONLY

}  // namespace caffe
