// recon-dec: tests of the ScaleJitterData layer (statistics of the random
// scale/crop/mirror, exact crop contents, fixed-seed golden batches).
#ifdef USE_OPENCV
#include <opencv2/core/core.hpp>
#include <opencv2/imgcodecs/imgcodecs.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/layers/scale_jitter_data_layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/db.hpp"
#include "caffe/util/io.hpp"

#include "caffe/test/test_caffe_main.hpp"

namespace caffe {

template <typename TypeParam>
class ScaleJitterDataLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  ScaleJitterDataLayerTest()
      : data_(new Blob<Dtype>()), label_(new Blob<Dtype>()),
        info_(new Blob<Dtype>()) {}
  virtual ~ScaleJitterDataLayerTest() {
    delete data_;
    delete label_;
    delete info_;
  }
  virtual void SetUp() {
    Caffe::set_random_seed(1701);
    MakeTempDir(&dir_);
    source_ = dir_ + "/db";
    top_.clear();
    top_.push_back(data_);
    top_.push_back(label_);
    top_.push_back(info_);
    // 5 random colour images, 40 rows x 60 cols, PNG (lossless).
    cv::RNG rng(12345);
    shared_ptr<db::DB> db(db::GetDB(DataParameter_DB_LMDB));
    db->Open(source_, db::NEW);
    shared_ptr<db::Transaction> txn(db->NewTransaction());
    for (int i = 0; i < 5; ++i) {
      cv::Mat img(40, 60, CV_8UC3);
      rng.fill(img, cv::RNG::UNIFORM, 0, 256);
      images_.push_back(img);
      vector<uchar> buf;
      cv::imencode(".png", img, buf);
      Datum datum;
      datum.set_encoded(true);
      datum.set_label(i);
      datum.set_data(string(buf.begin(), buf.end()));
      string value;
      datum.SerializeToString(&value);
      char key[16];
      snprintf(key, sizeof(key), "%08d", i);
      txn->Put(key, value);
    }
    txn->Commit();
    db->Close();
  }

  LayerParameter Param(Phase phase, int seed, int threads) {
    LayerParameter p;
    p.set_name("data");
    p.set_phase(phase);
    ScaleJitterDataParameter* s = p.mutable_scale_jitter_data_param();
    s->set_source(source_);
    s->set_batch_size(50);
    s->set_min_size(24);
    s->set_max_size(48);
    s->set_test_size(30);
    s->set_crop_size(20);
    s->add_mean_value(10);
    s->add_mean_value(20);
    s->add_mean_value(30);
    s->set_seed(seed);
    s->set_threads(threads);
    return p;
  }

  // Runs `batches` forward passes, returning data and info concatenated.
  void Run(const LayerParameter& p, int batches, vector<Dtype>* data,
           vector<Dtype>* info) {
    ScaleJitterDataLayer<Dtype> layer(p);
    vector<Blob<Dtype>*> bottom;
    layer.SetUp(bottom, top_);
    for (int b = 0; b < batches; ++b) {
      layer.Forward(bottom, top_);
      if (data) data->insert(data->end(), data_->cpu_data(),
                             data_->cpu_data() + data_->count());
      if (info) info->insert(info->end(), info_->cpu_data(),
                             info_->cpu_data() + info_->count());
    }
  }

  Blob<Dtype>* const data_;
  Blob<Dtype>* const label_;
  Blob<Dtype>* const info_;
  vector<Blob<Dtype>*> top_;
  vector<cv::Mat> images_;
  string dir_, source_;
};

TYPED_TEST_CASE(ScaleJitterDataLayerTest, TestDtypesAndDevices);

TYPED_TEST(ScaleJitterDataLayerTest, TestShapesAndLabels) {
  typedef typename TypeParam::Dtype Dtype;
  ScaleJitterDataLayer<Dtype> layer(this->Param(TRAIN, 1, 1));
  vector<Blob<Dtype>*> bottom;
  layer.SetUp(bottom, this->top_);
  EXPECT_EQ(this->data_->shape_string(), "50 3 20 20 (60000)");
  EXPECT_EQ(this->label_->num(), 50);
  EXPECT_EQ(this->info_->shape(1), 4);
  layer.Forward(bottom, this->top_);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(this->label_->cpu_data()[i], i % 5);  // key order, wrapping
  }
}

// Over 4000 draws: scale uniform on [24, 48], crop within the resized image,
// half mirrored; and every crop's pixels are the resized image's.
TYPED_TEST(ScaleJitterDataLayerTest, TestTrainStatistics) {
  typedef typename TypeParam::Dtype Dtype;
  vector<Dtype> info;
  this->Run(this->Param(TRAIN, 3, 2), 80, NULL, &info);
  const int n = info.size() / 4;
  ASSERT_EQ(n, 4000);
  double sum_size = 0, mirrored = 0, sum_rel_y = 0;
  int min_size = 1000, max_size = 0;
  vector<int> hist(49, 0);
  for (int i = 0; i < n; ++i) {
    const int size = info[4 * i], y = info[4 * i + 1], x = info[4 * i + 2];
    sum_size += size;
    min_size = std::min(min_size, size);
    max_size = std::max(max_size, size);
    hist[size]++;
    mirrored += info[4 * i + 3];
    const int nw = static_cast<int>(std::floor(60.0 * size / 40 + 0.5));
    EXPECT_GE(y, 0);
    EXPECT_LE(y, size - 20);
    EXPECT_GE(x, 0);
    EXPECT_LE(x, nw - 20);
    if (size > 20) sum_rel_y += static_cast<double>(y) / (size - 20);
  }
  EXPECT_EQ(min_size, 24);
  EXPECT_EQ(max_size, 48);
  EXPECT_NEAR(sum_size / n, 36.0, 0.75);       // midpoint; s.e. ~0.11
  EXPECT_NEAR(mirrored / n, 0.5, 0.04);        // s.e. ~0.008
  EXPECT_NEAR(sum_rel_y / n, 0.5, 0.04);       // crop position uniform
  for (int s = 24; s <= 48; ++s) {             // each size ~160 times
    EXPECT_GT(hist[s], 100) << "size " << s;
    EXPECT_LT(hist[s], 230) << "size " << s;
  }
}

// No resizing (min = max = shorter edge): the crop must be exactly the
// image's pixels at the recorded offset, mirrored when recorded so.
TYPED_TEST(ScaleJitterDataLayerTest, TestCropContentsExact) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter p = this->Param(TRAIN, 5, 1);
  p.mutable_scale_jitter_data_param()->set_min_size(40);
  p.mutable_scale_jitter_data_param()->set_max_size(40);
  vector<Dtype> data, info;
  this->Run(p, 1, &data, &info);
  const Dtype mean[3] = {10, 20, 30};
  int n_mirrored = 0;
  for (int i = 0; i < 50; ++i) {
    const cv::Mat& img = this->images_[i % 5];
    const int y = info[4 * i + 1], x = info[4 * i + 2];
    const bool m = info[4 * i + 3] > 0;
    n_mirrored += m;
    EXPECT_EQ(info[4 * i], 40);
    for (int k = 0; k < 3; ++k)
      for (int r = 0; r < 20; ++r)
        for (int c = 0; c < 20; ++c) {
          const int sx = m ? x + 19 - c : x + c;
          const Dtype want = img.at<cv::Vec3b>(y + r, sx)[k] - mean[k];
          ASSERT_EQ(data[((i * 3 + k) * 20 + r) * 20 + c], want);
        }
  }
  EXPECT_GT(n_mirrored, 0);
  EXPECT_LT(n_mirrored, 50);
}

// TEST phase: shorter edge test_size, centre crop, never mirrored, and the
// same every time whatever the seed.
TYPED_TEST(ScaleJitterDataLayerTest, TestTestPhaseCentreCrop) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter p = this->Param(TEST, 1, 2);
  p.mutable_scale_jitter_data_param()->set_test_size(40);  // no resize
  vector<Dtype> data, info, data2;
  this->Run(p, 1, &data, &info);
  p.mutable_scale_jitter_data_param()->set_seed(99);
  this->Run(p, 1, &data2, NULL);
  EXPECT_TRUE(data == data2);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(info[4 * i + 1], 10);  // (40 - 20) / 2
    EXPECT_EQ(info[4 * i + 2], 20);  // (60 - 20) / 2
    EXPECT_EQ(info[4 * i + 3], 0);
  }
  const cv::Mat& img = this->images_[0];
  for (int r = 0; r < 20; ++r)
    for (int c = 0; c < 20; ++c)
      EXPECT_EQ(data[(1 * 20 + r) * 20 + c],
                img.at<cv::Vec3b>(10 + r, 20 + c)[1] - 20);
}

// Golden batches: same seed -> equal; other seed -> different;
// threads = 1 and threads = 3 -> equal.
TYPED_TEST(ScaleJitterDataLayerTest, TestDeterministicGivenSeed) {
  typedef typename TypeParam::Dtype Dtype;
  vector<Dtype> a, b, c, d;
  this->Run(this->Param(TRAIN, 7, 1), 3, &a, NULL);
  this->Run(this->Param(TRAIN, 7, 1), 3, &b, NULL);
  this->Run(this->Param(TRAIN, 8, 1), 3, &c, NULL);
  this->Run(this->Param(TRAIN, 7, 3), 3, &d, NULL);
  ASSERT_EQ(a.size(), 3u * 50 * 3 * 20 * 20);
  EXPECT_TRUE(a == b);
  EXPECT_TRUE(a == d);
  int differ = 0;
  for (size_t i = 0; i < a.size(); ++i) differ += a[i] != c[i];
  EXPECT_GT(differ, a.size() / 2);
}

// Golden draws: the (size, y, x, mirror) stream of seed 7 is fixed (it
// depends only on std::mt19937 / std::seed_seq / libstdc++'s
// uniform_int_distribution), whatever the thread count.
TYPED_TEST(ScaleJitterDataLayerTest, TestGoldenDraws) {
  typedef typename TypeParam::Dtype Dtype;
  const int golden[9][4] = {{39, 11, 32, 0}, {29, 7, 14, 0}, {27, 5, 13, 0},
      {27, 7, 1, 1}, {47, 13, 24, 1}, {39, 11, 24, 1},   // batch 0, items 0..5
      {40, 14, 20, 1}, {41, 15, 37, 1}, {44, 3, 12, 1}};  // batch 1, items 0..2
  for (int threads = 1; threads <= 3; threads += 2) {
    vector<Dtype> info;
    this->Run(this->Param(TRAIN, 7, threads), 2, NULL, &info);
    for (int g = 0; g < 9; ++g) {
      const int item = g < 6 ? g : 50 + g - 6;
      for (int j = 0; j < 4; ++j) {
        EXPECT_EQ(info[4 * item + j], golden[g][j])
            << "threads " << threads << ", draw " << g << ", field " << j;
      }
    }
  }
}

TYPED_TEST(ScaleJitterDataLayerTest, TestCenterSquareMode) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter p = this->Param(TRAIN, 11, 2);
  p.mutable_scale_jitter_data_param()->set_mode(
      ScaleJitterDataParameter_Mode_CENTER_SQUARE);
  p.mutable_scale_jitter_data_param()->set_square_size(40);  // no resize
  vector<Dtype> data, info;
  this->Run(p, 2, &data, &info);
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(info[4 * i], 40);
    EXPECT_LE(info[4 * i + 1], 20);
    EXPECT_LE(info[4 * i + 2], 20);
  }
  // Item 0: its pixels come from the centre 40x40 square (columns 10..49).
  const cv::Mat& img = this->images_[0];
  const int y = info[1], x = info[2];
  const bool m = info[3] > 0;
  for (int r = 0; r < 20; ++r)
    for (int c = 0; c < 20; ++c) {
      const int sx = 10 + (m ? x + 19 - c : x + c);
      EXPECT_EQ(data[(0 * 20 + r) * 20 + c],
                img.at<cv::Vec3b>(y + r, sx)[0] - 10);
    }
}

}  // namespace caffe
#endif  // USE_OPENCV
