#include <stdint.h>

#include <algorithm>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/masking_noise_layer.hpp"
#include "caffe/util/counter_rng.hpp"
#include "caffe/util/math_functions.hpp"
#include "caffe/util/noise_stream.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// The gradient checker reseeds Caffe's RNG before every forward pass so that
// each draws the same noise; the stream's equivalent is to rewind its counter
// before every pass (the rest is the layer's own code).
template <typename Dtype>
class RewoundMaskingNoiseLayer : public MaskingNoiseLayer<Dtype> {
 public:
  explicit RewoundMaskingNoiseLayer(const LayerParameter& param)
      : MaskingNoiseLayer<Dtype>(param) {}

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
    noise_stream::SetCounter(0, this->blobs_[0].get());
    MaskingNoiseLayer<Dtype>::Forward_cpu(bottom, top);
  }
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
    noise_stream::SetCounter(0, this->blobs_[0].get());
    MaskingNoiseLayer<Dtype>::Forward_gpu(bottom, top);
  }
};

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
  // The keep mask the stream in `state` gives a pass over `count` values, by
  // the header's host code (threshold ratio 2^32, as the layer's).
  static vector<bool> ExpectedKeep(const Blob<Dtype>& state, int count,
                                   float ratio) {
    const counter_rng::Stream s = noise_stream::CurrentStream(state);
    const unsigned int threshold = static_cast<unsigned int>(
        std::min(static_cast<double>(ratio) * 4294967296.0, 4294967295.0));
    vector<bool> keep(count);
    for (int i = 0; i < count; ++i) {
      keep[i] = counter_rng::Keep(counter_rng::Draw(s, i / 4).v[i % 4],
                                  threshold, ratio >= 1);
    }
    return keep;
  }
  vector<Dtype> Top() {
    return vector<Dtype>(top_->cpu_data(), top_->cpu_data() + top_->count());
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
  ASSERT_EQ(1, layer.blobs().size());  // the stream's state, not learned
  EXPECT_EQ("8 (8)", layer.blobs()[0]->shape_string());
  EXPECT_EQ(0u, noise_stream::Counter(*layer.blobs()[0]));
  ASSERT_EQ(1, layer.layer_param().param_size());
  EXPECT_EQ(0, layer.layer_param().param(0).lr_mult());
  EXPECT_EQ(0, layer.layer_param().param(0).decay_mult());
}

// The key: two caffe_rng_rand() after the seed, so random_seed fixes it.
TYPED_TEST(MaskingNoiseLayerTest, TestKeyFromCaffeRng) {
  typedef typename TypeParam::Dtype Dtype;
  Caffe::set_random_seed(5);
  const uint64_t lo = caffe_rng_rand(), hi = caffe_rng_rand();
  MaskingNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  Caffe::set_random_seed(5);
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ((hi << 32) | lo, noise_stream::Key(*layer.blobs()[0]));
}

// TRAIN: exactly the stream's mask for (key, counter), on the CPU and the
// GPU alike (an odd count: the last block partly used); the counter advances.
TYPED_TEST(MaskingNoiseLayerTest, TestForwardTrainIsStreamMask) {
  typedef typename TypeParam::Dtype Dtype;
  this->bottom_->Reshape(3, 5, 7, 19);
  this->FillNonZero(this->bottom_);
  MaskingNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.3));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  noise_stream::SetCounter(98765432101ULL, layer.blobs()[0].get());
  const vector<bool> keep = this->ExpectedKeep(*layer.blobs()[0],
                                               this->bottom_->count(), 0.3);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  for (int i = 0; i < this->top_->count(); ++i) {
    EXPECT_EQ(keep[i] ? this->bottom_->cpu_data()[i] : Dtype(0),
              this->top_->cpu_data()[i]) << "at " << i;
  }
  EXPECT_EQ(98765432102ULL, noise_stream::Counter(*layer.blobs()[0]));
}

// Each TRAIN pass advances the counter and draws a new mask; rewinding the
// counter draws the same mask again; a TEST pass leaves the state alone.
TYPED_TEST(MaskingNoiseLayerTest, TestCounterAdvances) {
  typedef typename TypeParam::Dtype Dtype;
  MaskingNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  const vector<Dtype> first = this->Top();
  layer.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_NE(first, this->Top());
  EXPECT_EQ(2u, noise_stream::Counter(*layer.blobs()[0]));
  noise_stream::SetCounter(0, layer.blobs()[0].get());
  layer.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(first, this->Top());
  MaskingNoiseLayer<Dtype> test(this->Param(TEST, 0.5));
  test.SetUp(this->bottom_vec_, this->top_vec_);
  test.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(0u, noise_stream::Counter(*test.blobs()[0]));
}

// A snapshot and a resume: the blobs written after two passes (Layer::ToProto)
// and read into a new layer (its LayerParameter, or Blob::FromProto into the
// blob it set up, as Net::CopyTrainedLayersFrom): its next pass draws the
// original's third mask, and Backward uses it.
TYPED_TEST(MaskingNoiseLayerTest, TestRestoredLayerContinuesTheStream) {
  typedef typename TypeParam::Dtype Dtype;
  MaskingNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  LayerParameter saved;
  layer.ToProto(&saved);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  const vector<Dtype> third = this->Top();

  Caffe::set_random_seed(99);
  MaskingNoiseLayer<Dtype> from_param(saved);
  from_param.SetUp(this->bottom_vec_, this->top_vec_);
  from_param.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(third, this->Top());
  caffe_set(this->top_->count(), Dtype(3), this->top_->mutable_cpu_diff());
  from_param.Backward(this->top_vec_, vector<bool>(1, true), this->bottom_vec_);
  for (int i = 0; i < this->bottom_->count(); ++i) {
    EXPECT_EQ(third[i] != 0 ? Dtype(3) : Dtype(0),
              this->bottom_->cpu_diff()[i]);
  }

  Caffe::set_random_seed(98);
  MaskingNoiseLayer<Dtype> copied(this->Param(TRAIN, 0.5));
  copied.SetUp(this->bottom_vec_, this->top_vec_);
  copied.blobs()[0]->FromProto(saved.blobs(0));
  copied.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(third, this->Top());
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

// In place: the same values and gradient as out of place with the same state.
TYPED_TEST(MaskingNoiseLayerTest, TestInPlace) {
  typedef typename TypeParam::Dtype Dtype;
  MaskingNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  Blob<Dtype> in_place;
  in_place.CopyFrom(*this->bottom_, false, true);
  vector<Blob<Dtype>*> vec(1, &in_place);
  MaskingNoiseLayer<Dtype> layer2(this->Param(TRAIN, 0.5));
  layer2.SetUp(vec, vec);
  layer2.blobs()[0]->CopyFrom(*layer.blobs()[0]);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  layer2.Forward(vec, vec);
  caffe_set(in_place.count(), Dtype(2), in_place.mutable_cpu_diff());
  layer2.Backward(vec, vector<bool>(1, true), vec);
  for (int i = 0; i < in_place.count(); ++i) {
    const Dtype v = this->top_->cpu_data()[i];
    EXPECT_EQ(v, in_place.cpu_data()[i]);
    EXPECT_EQ(v != 0 ? Dtype(2) : Dtype(0), in_place.cpu_diff()[i]);
  }
  for (int i = 0; i < 8; ++i) {  // the state's diff
    EXPECT_EQ(0, layer2.blobs()[0]->cpu_diff()[i]);
  }
}

// Every pass of the checker draws the same mask (the counter rewound);
// exhaustive (the state's 8 values too: zero gradient), as Eltwise takes
// layers without blobs only.
TYPED_TEST(MaskingNoiseLayerTest, TestGradientTrain) {
  typedef typename TypeParam::Dtype Dtype;
  RewoundMaskingNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.4));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
}

TYPED_TEST(MaskingNoiseLayerTest, TestGradientTest) {
  typedef typename TypeParam::Dtype Dtype;
  MaskingNoiseLayer<Dtype> layer(this->Param(TEST, 0.4));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
}

TYPED_TEST(MaskingNoiseLayerTest, TestBadRatio) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  MaskingNoiseLayer<Dtype> layer(this->Param(TRAIN, 1.5));
  EXPECT_DEATH(layer.SetUp(this->bottom_vec_, this->top_vec_),
               "MaskingNoise layer 'mask': ratio must be in \\[0, 1\\], "
               "got 1.5");
}

TYPED_TEST(MaskingNoiseLayerTest, TestStateIsNotAParameter) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  LayerParameter p = this->Param(TRAIN, 0.5);
  p.add_param()->set_lr_mult(0.5);
  MaskingNoiseLayer<Dtype> layer(p);
  EXPECT_DEATH(layer.SetUp(this->bottom_vec_, this->top_vec_),
               "MaskingNoise layer 'mask': its blob is the noise stream's "
               "state");
}

}  // namespace caffe
