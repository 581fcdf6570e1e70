#include <stdint.h>

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/gaussian_noise_layer.hpp"
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
class RewoundGaussianNoiseLayer : public GaussianNoiseLayer<Dtype> {
 public:
  explicit RewoundGaussianNoiseLayer(const LayerParameter& param)
      : GaussianNoiseLayer<Dtype>(param) {}

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
    noise_stream::SetCounter(0, this->blobs_[0].get());
    GaussianNoiseLayer<Dtype>::Forward_cpu(bottom, top);
  }
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
    noise_stream::SetCounter(0, this->blobs_[0].get());
    GaussianNoiseLayer<Dtype>::Forward_gpu(bottom, top);
  }
};

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
  // The noise the stream in `state` gives a pass over `count` values, by the
  // header's host code: the layer must give exactly these values, on the CPU
  // and on the GPU.
  static void ExpectedNoise(const Blob<Dtype>& state, int count, float std,
                            vector<Dtype>* noise) {
    const counter_rng::Stream s = noise_stream::CurrentStream(state);
    noise->resize(count + 1);
    for (int j = 0; 2 * j < count; ++j) {
      counter_rng::GaussianNoisePair(s, j, static_cast<double>(std),
                                     &(*noise)[2 * j], &(*noise)[2 * j + 1]);
    }
    noise->resize(count);
  }
  // top_ - bottom_ must be the stream's noise, bit for bit (x + n rounded).
  void ExpectTopIsBottomPlus(const vector<Dtype>& noise) {
    ASSERT_EQ(top_->count(), static_cast<int>(noise.size()));
    int differs = 0;
    for (int i = 0; i < top_->count(); ++i) {
      const Dtype x = bottom_->cpu_data()[i];
      EXPECT_EQ(Dtype(x + noise[i]), top_->cpu_data()[i]) << "at " << i;
      differs += top_->cpu_data()[i] != x;
    }
    EXPECT_GT(differs, 0);
  }
  vector<Dtype> TopMinusBottom() {
    vector<Dtype> d(top_->count());
    for (int i = 0; i < top_->count(); ++i) {
      d[i] = top_->cpu_data()[i] - bottom_->cpu_data()[i];
    }
    return d;
  }

  Blob<Dtype>* const bottom_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(GaussianNoiseLayerTest, TestDtypesAndDevices);

// One blob of 8 values, the stream's state, counter 0; not learned.
TYPED_TEST(GaussianNoiseLayerTest, TestSetUp) {
  GaussianNoiseLayer<typename TypeParam::Dtype> layer(
      this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(this->top_->shape_string(), "2 3 4 5 (120)");
  EXPECT_STREQ(layer.type(), "GaussianNoise");
  ASSERT_EQ(1, layer.blobs().size());
  EXPECT_EQ("8 (8)", layer.blobs()[0]->shape_string());
  EXPECT_EQ(0u, noise_stream::Counter(*layer.blobs()[0]));
  for (int i = 0; i < 8; ++i) {
    const double v = layer.blobs()[0]->cpu_data()[i];
    EXPECT_TRUE(v >= 0 && v <= 65535 && v == std::floor(v)) << v;
  }
  ASSERT_EQ(1, layer.layer_param().param_size());
  EXPECT_EQ(0, layer.layer_param().param(0).lr_mult());
  EXPECT_EQ(0, layer.layer_param().param(0).decay_mult());
}

TYPED_TEST(GaussianNoiseLayerTest, TestDefaultStd) {
  LayerParameter p;
  EXPECT_FLOAT_EQ(0.3, p.gaussian_noise_param().std());
}

// The key: two caffe_rng_rand() after the seed (low word first), so the
// solver's random_seed fixes it; TEST-phase layers have one too.
TYPED_TEST(GaussianNoiseLayerTest, TestKeyFromCaffeRng) {
  typedef typename TypeParam::Dtype Dtype;
  Caffe::set_random_seed(5);
  const uint64_t lo = caffe_rng_rand(), hi = caffe_rng_rand();
  const Phase phases[2] = {TRAIN, TEST};
  for (int k = 0; k < 2; ++k) {
    GaussianNoiseLayer<Dtype> layer(this->Param(phases[k], 0.5));
    Caffe::set_random_seed(5);
    layer.SetUp(this->bottom_vec_, this->top_vec_);
    EXPECT_EQ((hi << 32) | lo, noise_stream::Key(*layer.blobs()[0]));
  }
  GaussianNoiseLayer<Dtype> other(this->Param(TRAIN, 0.5));
  Caffe::set_random_seed(6);
  other.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_NE((hi << 32) | lo, noise_stream::Key(*other.blobs()[0]));
}

// TRAIN: top = bottom + exactly the stream's noise for (key, counter), on
// the CPU and the GPU alike; an odd count (3 x 5 x 7) leaves the last block's
// second value unused; 100,233 values exercise many angles and radii.
TYPED_TEST(GaussianNoiseLayerTest, TestForwardTrainIsBottomPlusStreamNoise) {
  typedef typename TypeParam::Dtype Dtype;
  const int shapes[2][2] = {{15, 7}, {333, 301}};
  for (int k = 0; k < 2; ++k) {
    this->bottom_->Reshape(1, 1, shapes[k][0], shapes[k][1]);
    FillerParameter filler_param;
    GaussianFiller<Dtype>(filler_param).Fill(this->bottom_);
    GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.7));
    layer.SetUp(this->bottom_vec_, this->top_vec_);
    noise_stream::SetCounter(12345678901ULL, layer.blobs()[0].get());
    vector<Dtype> noise;
    this->ExpectedNoise(*layer.blobs()[0], this->bottom_->count(), 0.7,
                        &noise);
    layer.Forward(this->bottom_vec_, this->top_vec_);
    this->ExpectTopIsBottomPlus(noise);
    EXPECT_EQ(12345678902ULL, noise_stream::Counter(*layer.blobs()[0]));
  }
}

// Each TRAIN pass advances the counter by one and draws new noise; the key
// stays; rewinding the counter draws the same noise again; a TEST pass
// leaves the state alone.
TYPED_TEST(GaussianNoiseLayerTest, TestCounterAdvances) {
  typedef typename TypeParam::Dtype Dtype;
  GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  const uint64_t key = noise_stream::Key(*layer.blobs()[0]);
  vector<vector<Dtype> > passes;
  for (int pass = 0; pass < 3; ++pass) {
    EXPECT_EQ(static_cast<uint64_t>(pass),
              noise_stream::Counter(*layer.blobs()[0]));
    layer.Forward(this->bottom_vec_, this->top_vec_);
    passes.push_back(this->TopMinusBottom());
    EXPECT_EQ(key, noise_stream::Key(*layer.blobs()[0]));
  }
  EXPECT_EQ(3u, noise_stream::Counter(*layer.blobs()[0]));
  EXPECT_NE(passes[0], passes[1]);
  EXPECT_NE(passes[1], passes[2]);
  noise_stream::SetCounter(1, layer.blobs()[0].get());
  layer.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(passes[1], this->TopMinusBottom());
  GaussianNoiseLayer<Dtype> test(this->Param(TEST, 0.5));
  test.SetUp(this->bottom_vec_, this->top_vec_);
  vector<Dtype> state(test.blobs()[0]->cpu_data(),
                      test.blobs()[0]->cpu_data() + 8);
  test.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(state, vector<Dtype>(test.blobs()[0]->cpu_data(),
                                 test.blobs()[0]->cpu_data() + 8));
}

// Two layers with the same key and counter draw the same noise, whatever
// Caffe's RNG does in between; another key draws other noise.
TYPED_TEST(GaussianNoiseLayerTest, TestSameKeyAndCounterSameNoise) {
  typedef typename TypeParam::Dtype Dtype;
  GaussianNoiseLayer<Dtype> a(this->Param(TRAIN, 0.5));
  GaussianNoiseLayer<Dtype> b(this->Param(TRAIN, 0.5));
  Caffe::set_random_seed(1);
  a.SetUp(this->bottom_vec_, this->top_vec_);
  Caffe::set_random_seed(2);
  b.SetUp(this->bottom_vec_, this->top_vec_);
  a.Forward(this->bottom_vec_, this->top_vec_);
  const vector<Dtype> first = this->TopMinusBottom();
  b.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_NE(first, this->TopMinusBottom());  // another key
  b.blobs()[0]->CopyFrom(*a.blobs()[0]);
  noise_stream::SetCounter(0, b.blobs()[0].get());
  caffe_rng_rand();
  b.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(first, this->TopMinusBottom());
}

// What a snapshot and a resume do: the layer's blobs written (Layer::ToProto,
// as Net::ToProto for a .caffemodel) after two passes, then read into a new
// layer, by its LayerParameter (Layer's constructor) or into the blob it has
// set up (Net::CopyTrainedLayersFrom: Blob::FromProto). Both continue the
// stream: their next pass draws the noise of the original's third pass,
// whatever Caffe's RNG was seeded with.
TYPED_TEST(GaussianNoiseLayerTest, TestRestoredLayerContinuesTheStream) {
  typedef typename TypeParam::Dtype Dtype;
  GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  LayerParameter saved;
  layer.ToProto(&saved);
  ASSERT_EQ(1, saved.blobs_size());
  layer.Forward(this->bottom_vec_, this->top_vec_);
  const vector<Dtype> third = this->TopMinusBottom();

  Caffe::set_random_seed(99);
  GaussianNoiseLayer<Dtype> from_param(saved);
  from_param.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(2u, noise_stream::Counter(*from_param.blobs()[0]));
  from_param.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(third, this->TopMinusBottom());

  Caffe::set_random_seed(98);
  GaussianNoiseLayer<Dtype> copied(this->Param(TRAIN, 0.5));
  copied.SetUp(this->bottom_vec_, this->top_vec_);
  copied.blobs()[0]->FromProto(saved.blobs(0));
  copied.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(third, this->TopMinusBottom());
  EXPECT_EQ(noise_stream::Counter(*layer.blobs()[0]),
            noise_stream::Counter(*copied.blobs()[0]));
}

// In place gives what out of place does with the same state.
TYPED_TEST(GaussianNoiseLayerTest, TestForwardTrainInPlace) {
  typedef typename TypeParam::Dtype Dtype;
  GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.3));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  Blob<Dtype> in_place;
  in_place.CopyFrom(*this->bottom_, false, true);
  vector<Blob<Dtype>*> in_place_vec(1, &in_place);
  GaussianNoiseLayer<Dtype> layer2(this->Param(TRAIN, 0.3));
  layer2.SetUp(in_place_vec, in_place_vec);
  layer2.blobs()[0]->CopyFrom(*layer.blobs()[0]);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  layer2.Forward(in_place_vec, in_place_vec);
  for (int i = 0; i < in_place.count(); ++i) {
    EXPECT_EQ(this->top_->cpu_data()[i], in_place.cpu_data()[i]);
  }
}

// Over 100,233 values (odd) of a zero input: mean ~ 0, std ~ sigma
// (standard errors 0.0016 and 0.0011 for sigma = 0.5), kurtosis ~ 3
// (standard error 0.015), and the fractions within 1, 2, 3 sigma (standard
// errors <= 0.0015).
TYPED_TEST(GaussianNoiseLayerTest, TestForwardTrainStatistics) {
  typedef typename TypeParam::Dtype Dtype;
  this->bottom_->Reshape(1, 1, 333, 301);
  caffe_set(this->bottom_->count(), Dtype(0),
            this->bottom_->mutable_cpu_data());
  GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  const int n = this->top_->count();
  double sum = 0, sum_sq = 0, sum_4 = 0;
  int within[3] = {0, 0, 0};
  for (int i = 0; i < n; ++i) {
    const double v = this->top_->cpu_data()[i];
    sum += v;
    sum_sq += v * v;
    sum_4 += v * v * v * v;
    for (int k = 0; k < 3; ++k) {
      within[k] += std::fabs(v) < 0.5 * (k + 1);
    }
  }
  const double mean = sum / n, var = sum_sq / n - mean * mean;
  EXPECT_NEAR(0, mean, 0.01);
  EXPECT_NEAR(0.5, std::sqrt(var), 0.01);
  EXPECT_NEAR(3, sum_4 / n / (var * var), 0.1);
  const double expected[3] = {0.682689, 0.954500, 0.997300};
  for (int k = 0; k < 3; ++k) {
    EXPECT_NEAR(expected[k], static_cast<double>(within[k]) / n, 0.008);
  }
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

// TRAIN: the gradient is the top diff, unchanged; the state's diff is 0 and
// Backward leaves the state alone.
TYPED_TEST(GaussianNoiseLayerTest, TestBackwardTrainIsIdentity) {
  typedef typename TypeParam::Dtype Dtype;
  GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  Blob<Dtype>* state = layer.blobs()[0].get();
  caffe_set(8, Dtype(7), state->mutable_cpu_diff());
  const vector<Dtype> before(state->cpu_data(), state->cpu_data() + 8);
  for (int i = 0; i < this->top_->count(); ++i) {
    this->top_->mutable_cpu_diff()[i] = Dtype(i) - 60;
  }
  layer.Backward(this->top_vec_, vector<bool>(1, true), this->bottom_vec_);
  for (int i = 0; i < this->bottom_->count(); ++i) {
    EXPECT_EQ(Dtype(i) - 60, this->bottom_->cpu_diff()[i]);
  }
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(0, state->cpu_diff()[i]);
    EXPECT_EQ(before[i], state->cpu_data()[i]);
  }
}

// CheckGradientExhaustive, not ...Eltwise (which takes layers without
// blobs): every top value against every bottom value and the state's 8
// values, whose computed gradient is 0 and whose finite differences are 0
// (a value read rounded to the nearest integer: +-1e-2 changes nothing).
TYPED_TEST(GaussianNoiseLayerTest, TestGradientTest) {
  typedef typename TypeParam::Dtype Dtype;
  GaussianNoiseLayer<Dtype> layer(this->Param(TEST, 0.5));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
}

// Every pass of the checker draws the same noise (the counter rewound), so
// the TRAIN phase can be checked too; it also checks the state's zero diff.
TYPED_TEST(GaussianNoiseLayerTest, TestGradientTrain) {
  typedef typename TypeParam::Dtype Dtype;
  RewoundGaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, 0.5));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_);
}

TYPED_TEST(GaussianNoiseLayerTest, TestNegativeStd) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  GaussianNoiseLayer<Dtype> layer(this->Param(TRAIN, -1));
  EXPECT_DEATH(layer.SetUp(this->bottom_vec_, this->top_vec_),
               "GaussianNoise layer 'noise': std must be >= 0, got -1");
}

// The state is no parameter: a learning rate is refused; a blob of another
// size is no state.
TYPED_TEST(GaussianNoiseLayerTest, TestStateIsNotAParameter) {
  typedef typename TypeParam::Dtype Dtype;
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  LayerParameter p = this->Param(TRAIN, 0.5);
  p.add_param()->set_lr_mult(1);
  GaussianNoiseLayer<Dtype> learned(p);
  EXPECT_DEATH(learned.SetUp(this->bottom_vec_, this->top_vec_),
               "GaussianNoise layer 'noise': its blob is the noise stream's "
               "state");
  LayerParameter q = this->Param(TRAIN, 0.5);
  q.add_blobs()->mutable_shape()->add_dim(3);
  q.mutable_blobs(0)->add_data(0);
  q.mutable_blobs(0)->add_data(0);
  q.mutable_blobs(0)->add_data(0);
  GaussianNoiseLayer<Dtype> bad(q);
  EXPECT_DEATH(bad.SetUp(this->bottom_vec_, this->top_vec_),
               "GaussianNoise layer 'noise': its one blob is the noise "
               "stream's state");
}

}  // namespace caffe
