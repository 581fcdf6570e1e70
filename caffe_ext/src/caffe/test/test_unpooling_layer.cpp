#include <cmath>
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

// Equal as values (NaN to NaN), -0 apart from +0: the fast paths' outputs
// are the generic path's bit for bit.
template <typename Dtype>
static bool SameValue(Dtype a, Dtype b) {
  if (std::isnan(a) || std::isnan(b)) {
    return std::isnan(a) && std::isnan(b);
  }
  return a == b && std::signbit(a) == std::signbit(b);
}

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
  // GradientChecker on fixed-switch unpooling of random values, one layer
  // per {kernel, stride, pad} case.
  void CheckFixedSwitchGradients(const int (*cases)[3], int n) {
    for (int c = 0; c < n; ++c) {
      values_->Reshape(2, 3, 3, 4);
      FillerParameter filler_param;
      GaussianFiller<Dtype>(filler_param).Fill(values_);
      vector<Blob<Dtype>*> bottom(1, values_), top(1, top_);
      UnpoolingLayer<Dtype> layer(Param(cases[c][0], cases[c][1], cases[c][2]));
      GradientChecker<Dtype> checker(1e-2, 1e-3);
      checker.CheckGradientExhaustive(&layer, bottom, top, 0);
    }
  }
  // values_ (num x channels x ph_n x pw_n, random in [-1, 1), the first -0,
  // the last NaN if `nan`) and switches_ anywhere in their 2x2/2 windows.
  void FillTiling(int num, int channels, int ph_n, int pw_n, bool nan) {
    values_->Reshape(num, channels, ph_n, pw_n);
    switches_->ReshapeLike(*values_);
    caffe_rng_uniform(values_->count(), Dtype(-1), Dtype(1),
                      values_->mutable_cpu_data());
    values_->mutable_cpu_data()[0] = -Dtype(0);
    if (nan) {
      values_->mutable_cpu_data()[values_->count() - 1] = NAN;
    }
    for (int i = 0; i < values_->count(); ++i) {
      const int ph = (i / pw_n) % ph_n, pw = i % pw_n;
      switches_->mutable_cpu_data()[i] =
          (2 * ph + caffe_rng_rand() % 2) * (2 * pw_n) + 2 * pw +
          caffe_rng_rand() % 2;
    }
  }
  // 2x2/2 Unpooling of values_ (mode 0: known switches_; 1-4: fixed at
  // offset ((mode - 1) / 2, (mode - 1) % 2)) with the AVX-512 paths allowed
  // and with SSE2 only: the index of the first output where they differ (as
  // values, -0 apart from +0), or -1; *group_planes: the planes the row
  // groups did.
  int WideAgainstSse2(int mode, int64_t* group_planes) {
    LayerParameter param = Param(2, 2);
    vector<Blob<Dtype>*> bottom(1, values_);
    if (mode == 0) {
      bottom.push_back(switches_);
    } else {
      UnpoolingParameter* u = param.mutable_unpooling_param();
      u->set_switches(UnpoolingParameter_Switches_FIXED);
      u->set_offset_h((mode - 1) / 2);
      u->set_offset_w((mode - 1) % 2);
    }
    Blob<Dtype> wide;
    vector<Blob<Dtype>*> top(1, top_);
    UnpoolingLayer<Dtype> layer(param);
    layer.SetUp(bottom, top);
    const int64_t before = UnpoolingRowGroupPlanes();
    layer.Forward(bottom, top);
    *group_planes = UnpoolingRowGroupPlanes() - before;
    wide.CopyFrom(*top_, false, true);
    SetUnpoolingWideSimdForTest(false);
    EXPECT_FALSE(UnpoolingUsesWideSimd());
    caffe_set(top_->count(), Dtype(7), top_->mutable_cpu_data());
    layer.Forward(bottom, top);
    SetUnpoolingWideSimdForTest(true);
    for (int j = 0; j < top_->count(); ++j) {
      const Dtype a = wide.cpu_data()[j], b = top_->cpu_data()[j];
      if (!SameValue(a, b)) {
        ADD_FAILURE() << "at " << j << ": " << a << " (AVX-512) vs " << b
                      << " (SSE2)";
        return j;
      }
    }
    return -1;
  }
  // TestTilingSwitchOutsideWindow's checks (on the CPU path in force)
  void CheckTilingSwitchOutsideWindow() {
    values_->Reshape(1, 2, 2, 7);
    switches_->ReshapeLike(*values_);
    for (int i = 0; i < values_->count(); ++i) {
      const int ph = (i / 7) % 2, pw = i % 7;
      values_->mutable_cpu_data()[i] = i;
      switches_->mutable_cpu_data()[i] = (2 * ph + 1) * 14 + 2 * pw + 1;
    }
    vector<Blob<Dtype>*> bottom, top(1, top_);
    bottom.push_back(values_);
    bottom.push_back(switches_);
    UnpoolingLayer<Dtype> layer(Param(2, 2));
    layer.SetUp(bottom, top);
    layer.Forward(bottom, top);  // all valid: each at its window's (1, 1)
    EXPECT_EQ(Dtype(8), top_->cpu_data()[(2 * 1 + 1) * 14 + 2 * 1 + 1]);
    // plane 1, window (1, 5): (2, 11) is window (1, 5)'s; (2, 9) is (1, 4)'s.
    // Lane 5 is counted by the overlapping last four only.
    switches_->mutable_cpu_data()[14 + 7 + 5] = 2 * 14 + 9;
    EXPECT_DEATH(layer.Forward(bottom, top),
                 "Unpooling layer 'unpool': switch 37 at \\(plane 1, 1, 5\\) "
                 "lies outside its pooling window");
    switches_->mutable_cpu_data()[14 + 7 + 5] = 2 * 14 + 11;
    switches_->mutable_cpu_data()[2] = NAN;  // plane 0, window (0, 2)
    EXPECT_DEATH(layer.Forward(bottom, top),
                 "switch -?nan at \\(plane 0, 0, 2\\) lies outside");
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
  const int cases[][3] = {{2, 2, 0}, {3, 2, 0}, {3, 2, 1}, {2, 1, 0}};
  this->CheckFixedSwitchGradients(cases, 4);
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

// Non-overlapping windows (kernel <= stride) take the CPU's output-centric
// fast path. Its output and gradient must be exactly (bit for bit: -0 in a
// value becomes +0, as 0 + value does) what the window-centric definition
// gives, computed here independently, and what the generic path gives (a
// count top forces it), at shapes with and without remainders, padding, ceil
// mode, gaps (stride > kernel), kernels the fast path specialises (1-4) and
// one it does not (5).
TYPED_TEST(UnpoolingLayerTest, TestNonOverlappingMatchesReference) {
  typedef typename TypeParam::Dtype Dtype;
  // kernel h, w; stride h, w; pad h, w; ceil (else floor) mode; pooled h, w;
  // out h, w (0: the formula); fixed only (a window wholly outside the
  // output: a known switch there is an error)
  const int cases[][12] = {
      {2, 2, 2, 2, 0, 0, 0, 3, 4, 0, 0, 0},    // VGG: exact tiling
      {2, 2, 2, 2, 0, 0, 0, 3, 4, 7, 9, 0},    // remainders
      {2, 2, 2, 2, 0, 0, 1, 3, 4, 5, 7, 0},    // ceil: clipped last windows
      {2, 2, 2, 2, 1, 1, 0, 3, 4, 0, 0, 0},    // padding
      {2, 2, 2, 2, 1, 0, 1, 3, 4, 4, 7, 0},    // padding, ceil, remainder
      {3, 3, 3, 3, 0, 0, 0, 2, 3, 7, 10, 0},   // 3x3/3 with remainders
      {3, 3, 3, 3, 1, 1, 0, 3, 3, 0, 0, 0},    // 3x3/3 padded
      {2, 3, 3, 4, 0, 0, 0, 3, 3, 0, 0, 0},    // gaps between windows
      {2, 3, 3, 4, 1, 2, 0, 3, 3, 0, 0, 0},    // gaps, padding
      {4, 4, 4, 4, 0, 0, 0, 2, 3, 9, 15, 0},   // 4x4/4 with remainders
      {5, 5, 5, 5, 0, 0, 0, 2, 2, 0, 0, 0},    // kernel not specialised
      {1, 1, 1, 1, 0, 0, 0, 3, 5, 0, 0, 0},    // 1x1/1
      {1, 2, 2, 2, 0, 0, 0, 3, 4, 0, 0, 0},    // 1x2/2
      {1, 1, 3, 3, 0, 0, 1, 3, 3, 5, 5, 1},    // ceil: last window outside
      {2, 2, 2, 2, 0, 0, 0, 1, 1, 0, 0, 0},    // a single window
      {2, 2, 2, 2, 0, 0, 0, 3, 40, 0, 0, 0},   // rows long enough to vectorise
      {2, 2, 2, 2, 0, 0, 0, 2, 7, 0, 0, 0},    // VGG pool5: 4 + 3 per row
      {2, 2, 2, 2, 0, 0, 0, 2, 14, 0, 0, 0},   // VGG pool4: 12 + 2 per row
      {2, 2, 2, 2, 0, 0, 0, 2, 3, 0, 0, 0},    // tiling, fewer than 4 per row
  };
  const int num_cases = sizeof(cases) / sizeof(cases[0]);
  // Each case as given (rows of fewer than 8 windows: the short-row band
  // loop) and 8 windows wider, same remainders (the vectorised row loop).
  for (int c = 0; c < 2 * num_cases; ++c) {
    const int* k = cases[c % num_cases];
    const int wider = c < num_cases ? 0 : 8;
    for (int mode = 0; mode < 3; ++mode) {  // known, fixed, fixed with offset
      if (mode == 0 && k[11]) {
        continue;
      }
      LayerParameter param;
      param.set_name("unpool");
      PoolingParameter* pool = param.mutable_pooling_param();
      pool->set_kernel_h(k[0]);
      pool->set_kernel_w(k[1]);
      pool->set_stride_h(k[2]);
      pool->set_stride_w(k[3]);
      pool->set_pad_h(k[4]);
      pool->set_pad_w(k[5]);
      pool->set_round_mode(k[6] ? PoolingParameter_RoundMode_CEIL
                                : PoolingParameter_RoundMode_FLOOR);
      UnpoolingParameter* unpool = param.mutable_unpooling_param();
      if (k[9]) {
        unpool->set_out_h(k[9]);
        unpool->set_out_w(k[10] + wider * k[3]);
      }
      if (mode == 2) {
        unpool->set_offset_h(0);
        unpool->set_offset_w(k[1] - 1);
      }
      const int off_h = mode == 2 ? 0 : k[0] / 2;
      const int off_w = mode == 2 ? k[1] - 1 : k[1] / 2;
      const int pooled_h = k[7], pooled_w = k[8] + wider;
      const int height = k[9] ? k[9] : (pooled_h - 1) * k[2] + k[0] - 2 * k[4];
      const int width = k[10] ? k[10] + wider * k[3]
          : (pooled_w - 1) * k[3] + k[1] - 2 * k[5];
      const int planes = 2 * 3;
      Blob<Dtype> values(2, 3, pooled_h, pooled_w), switches;
      caffe_rng_uniform(values.count(), Dtype(-1), Dtype(1),
                        values.mutable_cpu_data());
      values.mutable_cpu_data()[0] = -Dtype(0);
      if (values.count() > 5) {
        values.mutable_cpu_data()[5] = NAN;
      }
      // Where each value lands (flat index in its plane), -1: dropped.
      vector<int> target(values.count(), -1);
      for (int p = 0; p < planes; ++p) {
        for (int ph = 0; ph < pooled_h; ++ph) {
          for (int pw = 0; pw < pooled_w; ++pw) {
            const int i = (p * pooled_h + ph) * pooled_w + pw;
            const int hs = ph * k[2] - k[4], ws = pw * k[3] - k[5];
            if (mode == 0) {
              // a random cell of the window, clipped to the output
              const int h0 = std::max(hs, 0), w0 = std::max(ws, 0);
              const int nh = std::min(hs + k[0], height) - h0;
              const int nw = std::min(ws + k[1], width) - w0;
              ASSERT_GT(nh, 0);
              ASSERT_GT(nw, 0);
              target[i] = (h0 + caffe_rng_rand() % nh) * width +
                  w0 + caffe_rng_rand() % nw;
            } else {
              const int h = hs + off_h, w = ws + off_w;
              if (h >= 0 && w >= 0 && h < height && w < width) {
                target[i] = h * width + w;
              }
            }
          }
        }
      }
      vector<Blob<Dtype>*> bottom(1, &values);
      if (mode == 0) {
        switches.ReshapeLike(values);
        for (int i = 0; i < values.count(); ++i) {
          switches.mutable_cpu_data()[i] = target[i];
        }
        bottom.push_back(&switches);
      }
      // The window-centric definition.
      const int plane_out = height * width;
      vector<Dtype> expected(planes * plane_out, Dtype(0));
      for (int i = 0; i < values.count(); ++i) {
        if (target[i] >= 0) {
          const int p = i / (pooled_h * pooled_w);
          expected[p * plane_out + target[i]] += values.cpu_data()[i];
        }
      }
      Blob<Dtype> top, generic_top, generic_count;
      vector<Blob<Dtype>*> fast_tops(1, &top);
      vector<Blob<Dtype>*> generic_tops(1, &generic_top);
      generic_tops.push_back(&generic_count);
      UnpoolingLayer<Dtype> layer(param), generic(param);
      layer.SetUp(bottom, fast_tops);
      generic.SetUp(bottom, generic_tops);
      ASSERT_EQ(planes * plane_out, top.count()) << "case " << c;
      ASSERT_EQ(height, top.height());
      ASSERT_EQ(width, top.width());
      caffe_set(top.count(), Dtype(7), top.mutable_cpu_data());  // stale
      layer.Forward(bottom, fast_tops);
      generic.Forward(bottom, generic_tops);
      int wrong = 0;
      for (int j = 0; j < top.count(); ++j) {
        if (!SameValue(expected[j], top.cpu_data()[j]) ||
            !SameValue(expected[j], generic_top.cpu_data()[j])) {
          if (++wrong <= 5) {
            ADD_FAILURE() << "case " << c << " mode " << mode << " at " << j
                << ": expected " << expected[j] << ", fast "
                << top.cpu_data()[j] << ", generic "
                << generic_top.cpu_data()[j];
          }
        }
      }
      // Backward: each value's gradient is the top diff where it landed.
      caffe_rng_uniform(top.count(), Dtype(-1), Dtype(1),
                        top.mutable_cpu_diff());
      caffe_copy(top.count(), top.cpu_diff(), generic_top.mutable_cpu_diff());
      vector<bool> down(bottom.size(), true);
      layer.Backward(fast_tops, down, bottom);
      Blob<Dtype> fast_diff;
      fast_diff.CopyFrom(values, true, true);
      caffe_set(values.count(), Dtype(7), values.mutable_cpu_diff());
      generic.Backward(generic_tops, down, bottom);
      for (int i = 0; i < values.count(); ++i) {
        const int p = i / (pooled_h * pooled_w);
        const Dtype want = target[i] >= 0
            ? top.cpu_diff()[p * plane_out + target[i]] : Dtype(0);
        if (!SameValue(want, fast_diff.cpu_diff()[i]) ||
            !SameValue(want, values.cpu_diff()[i])) {
          if (++wrong <= 5) {
            ADD_FAILURE() << "case " << c << " mode " << mode << " diff at "
                << i << ": expected " << want << ", fast "
                << fast_diff.cpu_diff()[i] << ", generic "
                << values.cpu_diff()[i];
          }
        }
      }
      EXPECT_EQ(0, wrong) << "case " << c << " mode " << mode;
    }
  }
}

// A known switch outside its window on the fast path, in a later pooled row
// and plane, and one of a window that lies wholly in the padding: reported
// as the generic path reports it (first in raster order).
TYPED_TEST(UnpoolingLayerTest, TestNonOverlappingSwitchOutsideWindow) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  this->values_->Reshape(2, 2, 3, 3);
  this->switches_->ReshapeLike(*this->values_);
  // 2x2/2 on a 6x6 output: window (ph, pw)'s top left cell
  for (int i = 0; i < this->values_->count(); ++i) {
    const int ph = (i / 3) % 3, pw = i % 3;
    this->values_->mutable_cpu_data()[i] = i;
    this->switches_->mutable_cpu_data()[i] = 2 * ph * 6 + 2 * pw;
  }
  // plane 1, window (2, 1): (4, 2) is valid, (4, 1) is window (2, 0)'s;
  // plane 3 is bad too, reported second.
  this->switches_->mutable_cpu_data()[9 + 7] = 4 * 6 + 1;
  this->switches_->mutable_cpu_data()[27 + 7] = 4 * 6 + 1;
  vector<Blob<Dtype>*> bottom, top(1, this->top_);
  bottom.push_back(this->values_);
  bottom.push_back(this->switches_);
  UnpoolingLayer<Dtype> layer(this->Param(2, 2));
  layer.SetUp(bottom, top);
  EXPECT_DEATH(layer.Forward(bottom, top),
               "Unpooling layer 'unpool': switch 25 at \\(plane 1, 2, 1\\) "
               "lies outside its pooling window");
  // 1x1/3 in ceil mode over a 5x5 output: pooled 3x3, the third window row
  // and column start at 6, outside the output; any switch there is bad.
  LayerParameter param = this->Param(1, 3);
  param.mutable_pooling_param()->set_round_mode(
      PoolingParameter_RoundMode_CEIL);
  param.mutable_unpooling_param()->set_out_h(5);
  param.mutable_unpooling_param()->set_out_w(5);
  for (int i = 0; i < this->values_->count(); ++i) {
    const int ph = (i / 3) % 3, pw = i % 3;
    this->switches_->mutable_cpu_data()[i] = 3 * ph * 5 + 3 * pw;
  }
  UnpoolingLayer<Dtype> ceil_layer(param);
  ceil_layer.SetUp(bottom, top);
  EXPECT_DEATH(ceil_layer.Forward(bottom, top),
               "Unpooling layer 'unpool': switch 6 at \\(plane 0, 0, 2\\) "
               "lies outside its pooling window");
}

// The 2x2/2 tiling path's vector loop (four pooled values at a time, the
// last four overlapping the ones before) reports a bad switch in any lane as
// the generic path does, a NaN switch included.
TYPED_TEST(UnpoolingLayerTest, TestTilingSwitchOutsideWindow) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  this->CheckTilingSwitchOutsideWindow();
  SetUnpoolingWideSimdForTest(false);  // the SSE2 path too, where AVX-512 ran
  this->CheckTilingSwitchOutsideWindow();
  SetUnpoolingWideSimdForTest(true);
}

// The 2x2/2 tiling's AVX-512 path (float, where the CPU has it: sixteen
// pooled values at a time, masked remainders) gives the SSE2 path's output
// bit for bit: known switches anywhere in their windows (values of both
// signs, -0 among them), fixed ones at each of the four offsets, rows of 1
// to 40 pooled values (one and several steps, full and partial ones).
TYPED_TEST(UnpoolingLayerTest, TestWideSimdMatchesSse2) {
  typedef typename TypeParam::Dtype Dtype;
  if (sizeof(Dtype) != sizeof(float) ||
      Caffe::mode() != Caffe::CPU) {
    return;  // a float CPU path
  }
  if (!UnpoolingUsesWideSimd()) {
    LOG(WARNING) << "no AVX-512 on this CPU: the path is not tested here";
    return;
  }
  const int widths[] = {1, 3, 7, 8, 9, 14, 15, 16, 17, 28, 31, 33, 40};
  for (int wi = 0; wi < sizeof(widths) / sizeof(widths[0]); ++wi) {
    this->FillTiling(2, 3, 3, widths[wi], false);
    for (int mode = 0; mode < 5; ++mode) {  // known; fixed at 4 offsets
      int64_t group_planes;
      ASSERT_EQ(-1, this->WideAgainstSse2(mode, &group_planes))
          << "width " << widths[wi] << ", mode " << mode;
    }
  }
}

// Rows of up to 32 pooled values take the AVX-512 row groups (float, where
// the CPU has it): groups of whole rows, run on across planes, each output
// vector a permute of the group's values. Bit for bit the SSE2 row loop's
// output: row lengths with 5-8 vectors a group (20-32 values) and none (9,
// 11, 40: no group fits), plane heights that groups cross (7 rows in groups of 4), planes
// left over after the last whole period, known switches anywhere in their
// windows, fixed ones at each of the four offsets, -0 and NaN values. Counts
// the planes the groups did, so the test fails if they never ran.
TYPED_TEST(UnpoolingLayerTest, TestRowGroupsMatchRowLoop) {
  typedef typename TypeParam::Dtype Dtype;
  if (sizeof(Dtype) != sizeof(float) || Caffe::mode() != Caffe::CPU) {
    return;  // a float CPU path
  }
  if (!UnpoolingUsesWideSimd()) {
    LOG(WARNING) << "no AVX-512 on this CPU: the path is not tested here";
    return;
  }
  // pooled h, w; planes the groups must take (of 2 x 17: whole periods)
  const int shapes[][3] = {
      {7, 7, 32}, {14, 14, 34}, {3, 28, 34}, {2, 7, 34}, {1, 1, 32},
      {5, 2, 32}, {3, 3, 32}, {2, 4, 32}, {1, 5, 32}, {4, 6, 34},
      {3, 8, 32}, {2, 10, 34}, {1, 12, 34}, {2, 16, 34}, {1, 32, 34},
      {3, 9, 0}, {2, 11, 0}, {2, 40, 0}};
  for (int si = 0; si < sizeof(shapes) / sizeof(shapes[0]); ++si) {
    const int ph_n = shapes[si][0], pw_n = shapes[si][1];
    this->FillTiling(2, 17, ph_n, pw_n, true);
    for (int mode = 0; mode < 5; ++mode) {  // known; fixed at 4 offsets
      int64_t group_planes;
      ASSERT_EQ(-1, this->WideAgainstSse2(mode, &group_planes))
          << ph_n << " x " << pw_n << ", mode " << mode;
      EXPECT_EQ(shapes[si][2], group_planes)
          << ph_n << " x " << pw_n << ", mode " << mode;
    }
  }
}

// Outputs of 16 MiB and more leave the 2x2/2 path by non-temporal stores
// (float): the same values as the generic path, the overlapping last four
// of each row included (514 pooled values a row).
TYPED_TEST(UnpoolingLayerTest, TestStreamedOutputMatchesGeneric) {
  typedef typename TypeParam::Dtype Dtype;
  if (sizeof(Dtype) != sizeof(float)) {
    return;  // streamed for float only; the double layer is the loop above
  }
  for (int known = 0; known < 2; ++known) {
    this->values_->Reshape(1, 8, 512, 514);  // output 8 x 1024 x 1028: 33.7 MB
    this->switches_->ReshapeLike(*this->values_);
    caffe_rng_uniform(this->values_->count(), Dtype(-1), Dtype(1),
                      this->values_->mutable_cpu_data());
    for (int i = 0; i < this->values_->count(); ++i) {
      const int ph = (i / 514) % 512, pw = i % 514;
      this->switches_->mutable_cpu_data()[i] =
          (2 * ph + caffe_rng_rand() % 2) * 1028 + 2 * pw +
          caffe_rng_rand() % 2;
    }
    vector<Blob<Dtype>*> bottom(1, this->values_);
    if (known) {
      bottom.push_back(this->switches_);
    }
    LayerParameter param = this->Param(2, 2);
    if (!known) {
      param.mutable_unpooling_param()->set_switches(
          UnpoolingParameter_Switches_FIXED);
    }
    Blob<Dtype> generic_top, count;
    vector<Blob<Dtype>*> top(1, this->top_), generic_tops(1, &generic_top);
    generic_tops.push_back(&count);  // a count top: the generic path
    UnpoolingLayer<Dtype> layer(param), generic(param);
    layer.SetUp(bottom, top);
    generic.SetUp(bottom, generic_tops);
    ASSERT_GE(this->top_->count() * sizeof(Dtype), size_t(16) << 20);
    layer.Forward(bottom, top);
    generic.Forward(bottom, generic_tops);
    int wrong = 0;
    for (int j = 0; j < this->top_->count(); ++j) {
      wrong += this->top_->cpu_data()[j] != generic_top.cpu_data()[j];
    }
    EXPECT_EQ(0, wrong) << (known ? "known" : "fixed") << " switches";
  }
}

// Gradients on the fast path with remainders, padding and gaps.
TYPED_TEST(UnpoolingLayerTest, TestGradientNonOverlapping) {
  typedef typename TypeParam::Dtype Dtype;
  // kernel, stride, pad, input h, w
  const int known[][5] = {{2, 2, 0, 7, 5}, {2, 2, 1, 6, 7}, {3, 3, 0, 8, 7}};
  for (int c = 0; c < 3; ++c) {
    const LayerParameter param =
        this->Param(known[c][0], known[c][1], known[c][2]);
    this->PoolRandom(param, known[c][3], known[c][4], false);
    vector<Blob<Dtype>*> bottom, top(1, this->top_);
    bottom.push_back(this->values_);
    bottom.push_back(this->switches_);
    bottom.push_back(this->reference_);
    UnpoolingLayer<Dtype> layer(param);
    GradientChecker<Dtype> checker(1e-2, 1e-3);
    checker.CheckGradientExhaustive(&layer, bottom, top, 0);
  }
  // fixed: kernel, stride, pad
  const int fixed[][3] = {{2, 2, 1}, {2, 3, 0}, {3, 3, 1}};
  this->CheckFixedSwitchGradients(fixed, 3);
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
