// recon-dec: ScaleJitterData layer; see scale_jitter_data_layer.hpp.
#ifdef USE_OPENCV
#include <opencv2/core/core.hpp>
#include <opencv2/imgcodecs/imgcodecs.hpp>
#include <opencv2/imgproc/imgproc.hpp>
#endif  // USE_OPENCV
#include <stdint.h>

#include <boost/thread.hpp>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "caffe/layers/scale_jitter_data_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
LayerParameter ScaleJitterDataLayer<Dtype>::WithPrefetch(
    const LayerParameter& param) {
  LayerParameter p(param);
  p.mutable_data_param()->set_prefetch(
      param.scale_jitter_data_param().prefetch());
  return p;
}

template <typename Dtype>
ScaleJitterDataLayer<Dtype>::ScaleJitterDataLayer(const LayerParameter& param)
  : BasePrefetchingDataLayer<Dtype>(WithPrefetch(param)),
    offset_(0), batch_index_(0), seed_(0), channels_(3) {
  const ScaleJitterDataParameter& p = param.scale_jitter_data_param();
  CHECK(p.has_source()) << "layer '" << param.name()
      << "': scale_jitter_data_param.source is required";
  db_.reset(db::GetDB(p.backend()));
  db_->Open(p.source(), db::READ);
  cursor_.reset(db_->NewCursor());
}

template <typename Dtype>
ScaleJitterDataLayer<Dtype>::~ScaleJitterDataLayer() {
  this->StopInternalThread();
}

template <typename Dtype>
void ScaleJitterDataLayer<Dtype>::DataLayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
#ifndef USE_OPENCV
  LOG(FATAL) << "ScaleJitterData needs Caffe built with USE_OPENCV";
#endif
  const ScaleJitterDataParameter& p =
      this->layer_param_.scale_jitter_data_param();
  const string& name = this->layer_param_.name();
  const int batch_size = p.batch_size();
  CHECK_GT(batch_size, 0) << "layer '" << name << "': batch_size must be > 0";
  CHECK_GT(p.crop_size(), 0) << "layer '" << name << "': crop_size must be > 0";
  CHECK_GT(p.threads(), 0) << "layer '" << name << "': threads must be > 0";
  if (p.mode() == ScaleJitterDataParameter_Mode_SCALE_JITTER) {
    if (this->phase_ == TRAIN) {
      CHECK_LE(p.min_size(), p.max_size()) << "layer '" << name
          << "': min_size must be <= max_size";
      CHECK_GE(p.min_size(), p.crop_size()) << "layer '" << name
          << "': min_size must be >= crop_size";
    } else {
      CHECK_GE(p.test_size(), p.crop_size()) << "layer '" << name
          << "': test_size must be >= crop_size";
    }
  } else {
    CHECK_GE(p.square_size(), p.crop_size()) << "layer '" << name
        << "': square_size must be >= crop_size";
  }
  CHECK(cursor_->valid()) << p.source() << ": the database is empty";
  channels_ = p.color() ? 3 : 1;
  mean_.assign(channels_, Dtype(0));
  if (p.mean_value_size() == 1) {
    mean_.assign(channels_, p.mean_value(0));
  } else if (p.mean_value_size() > 0) {
    CHECK_EQ(p.mean_value_size(), channels_) << "layer '" << name
        << "': give one mean_value or one per channel";
    for (int c = 0; c < channels_; ++c) mean_[c] = p.mean_value(c);
  }
  seed_ = p.seed() >= 0 ? static_cast<uint64_t>(p.seed())
                        : static_cast<uint64_t>(caffe_rng_rand());
  const int crop = p.crop_size();
  vector<int> shape;
  shape.push_back(batch_size);
  shape.push_back(channels_);
  shape.push_back(crop);
  shape.push_back(crop);
  top[0]->Reshape(shape);
  for (int i = 0; i < this->prefetch_.size(); ++i) {
    this->prefetch_[i]->data_.Reshape(shape);
  }
  vector<int> label_shape(1, batch_size);
  if (this->output_labels_) {
    top[1]->Reshape(label_shape);
    for (int i = 0; i < this->prefetch_.size(); ++i) {
      this->prefetch_[i]->label_.Reshape(label_shape);
    }
  }
  vector<int> info_shape;
  info_shape.push_back(batch_size);
  info_shape.push_back(4);
  if (top.size() > 2) top[2]->Reshape(info_shape);
  for (int i = 0; i < this->prefetch_.size(); ++i) {
    shared_ptr<Blob<Dtype> > b(new Blob<Dtype>(info_shape));
    b->mutable_cpu_data();
    info_[this->prefetch_[i].get()] = b;
  }
  LOG_IF(INFO, Caffe::root_solver()) << "ScaleJitterData '" << name
      << "': " << batch_size << "x" << channels_ << "x" << crop << "x" << crop
      << ", seed " << seed_ << ", " << p.threads() << " thread(s)";
}

#ifdef USE_OPENCV
template <typename Dtype>
void ScaleJitterDataLayer<Dtype>::ProcessItem(const string& value,
    uint64_t batch_index, int item, Dtype* out, Dtype* label, Dtype* info) {
  const ScaleJitterDataParameter& p =
      this->layer_param_.scale_jitter_data_param();
  const bool train = this->phase_ == TRAIN;
  Datum datum;
  CHECK(datum.ParseFromString(value)) << p.source()
      << ": an entry is not a caffe Datum (batch " << batch_index
      << ", item " << item << ")";
  cv::Mat img;
  if (datum.encoded()) {
    const string& d = datum.data();
    cv::Mat buf(1, static_cast<int>(d.size()), CV_8UC1,
                const_cast<char*>(d.data()));
    img = cv::imdecode(buf, p.color() ? cv::IMREAD_COLOR
                                      : cv::IMREAD_GRAYSCALE);
    CHECK(!img.empty()) << p.source() << ": an image could not be decoded"
        << " (batch " << batch_index << ", item " << item << ")";
  } else {
    const int c = datum.channels(), h = datum.height(), w = datum.width();
    CHECK(c == 1 || c == 3) << p.source() << ": raw Datum with " << c
        << " channels";
    img.create(h, w, c == 1 ? CV_8UC1 : CV_8UC3);
    const string& d = datum.data();
    CHECK_EQ(d.size(), static_cast<size_t>(c * h * w)) << p.source()
        << ": raw Datum of the wrong size";
    for (int y = 0; y < h; ++y) {
      uchar* row = img.ptr<uchar>(y);
      for (int x = 0; x < w; ++x)
        for (int k = 0; k < c; ++k)
          row[x * c + k] = static_cast<uchar>(d[(k * h + y) * w + x]);
    }
    if (c == 1 && channels_ == 3) cv::cvtColor(img, img, cv::COLOR_GRAY2BGR);
    if (c == 3 && channels_ == 1) cv::cvtColor(img, img, cv::COLOR_BGR2GRAY);
  }
  // Per-item RNG: depends on (seed, batch, item, rank) only.
  std::seed_seq seq{static_cast<uint32_t>(seed_),
                    static_cast<uint32_t>(seed_ >> 32),
                    static_cast<uint32_t>(batch_index),
                    static_cast<uint32_t>(batch_index >> 32),
                    static_cast<uint32_t>(item),
                    static_cast<uint32_t>(Caffe::solver_rank())};
  std::mt19937 rng(seq);
  const int crop = p.crop_size();
  int size;
  cv::Mat scaled;
  if (p.mode() == ScaleJitterDataParameter_Mode_CENTER_SQUARE) {
    size = p.square_size();
    const int side = std::min(img.rows, img.cols);
    cv::Mat sq = img(cv::Rect((img.cols - side) / 2, (img.rows - side) / 2,
                              side, side));
    if (side == size) scaled = sq;
    else cv::resize(sq, scaled, cv::Size(size, size), 0, 0, cv::INTER_LINEAR);
  } else {
    if (train) {
      std::uniform_int_distribution<int> d(p.min_size(), p.max_size());
      size = d(rng);
    } else {
      size = p.test_size();
    }
    const int h = img.rows, w = img.cols;
    int nh, nw;  // shorter edge -> size, aspect ratio kept (rounded)
    if (h <= w) {
      nh = size;
      nw = static_cast<int>(std::floor(static_cast<double>(w) * size / h + 0.5));
    } else {
      nw = size;
      nh = static_cast<int>(std::floor(static_cast<double>(h) * size / w + 0.5));
    }
    if (nh == h && nw == w) scaled = img;
    else cv::resize(img, scaled, cv::Size(nw, nh), 0, 0, cv::INTER_LINEAR);
  }
  int y, x;
  bool mirror = false;
  if (train) {
    std::uniform_int_distribution<int> dy(0, scaled.rows - crop);
    y = dy(rng);
    std::uniform_int_distribution<int> dx(0, scaled.cols - crop);
    x = dx(rng);
    if (p.mirror()) {
      std::uniform_int_distribution<int> dm(0, 1);
      mirror = dm(rng) == 1;
    }
  } else {
    y = (scaled.rows - crop) / 2;
    x = (scaled.cols - crop) / 2;
  }
  const Dtype scale = p.scale();
  const int c = channels_;
  for (int i = 0; i < crop; ++i) {
    const uchar* row = scaled.ptr<uchar>(y + i);
    for (int j = 0; j < crop; ++j) {
      const int sx = mirror ? x + crop - 1 - j : x + j;
      for (int k = 0; k < c; ++k) {
        out[(k * crop + i) * crop + j] =
            (static_cast<Dtype>(row[sx * c + k]) - mean_[k]) * scale;
      }
    }
  }
  if (label) *label = datum.label();
  info[0] = size;
  info[1] = y;
  info[2] = x;
  info[3] = mirror ? 1 : 0;
}
#else
template <typename Dtype>
void ScaleJitterDataLayer<Dtype>::ProcessItem(const string& value,
    uint64_t batch_index, int item, Dtype* out, Dtype* label, Dtype* info) {
  LOG(FATAL) << "ScaleJitterData needs Caffe built with USE_OPENCV";
}
#endif  // USE_OPENCV

template <typename Dtype>
void ScaleJitterDataLayer<Dtype>::ProcessRange(const vector<string>* values,
    uint64_t batch_index, int begin, int step, Dtype* data, Dtype* label,
    Dtype* info) {
  const int item_size = data ? channels_ *
      this->layer_param_.scale_jitter_data_param().crop_size() *
      this->layer_param_.scale_jitter_data_param().crop_size() : 0;
  for (int i = begin; i < values->size(); i += step) {
    ProcessItem((*values)[i], batch_index, i, data + i * item_size,
                label ? label + i : NULL, info + 4 * i);
  }
}

// Runs on the prefetch thread.
template <typename Dtype>
void ScaleJitterDataLayer<Dtype>::load_batch(Batch<Dtype>* batch) {
  const ScaleJitterDataParameter& p =
      this->layer_param_.scale_jitter_data_param();
  const int batch_size = p.batch_size();
  vector<string> values(batch_size);
  const int size = Caffe::solver_count(), rank = Caffe::solver_rank();
  for (int i = 0; i < batch_size; ++i) {
    // With several solvers each takes every size-th entry (like Data).
    while (this->phase_ != TEST && (offset_ % size) != rank) {
      cursor_->Next();
      if (!cursor_->valid()) cursor_->SeekToFirst();
      ++offset_;
    }
    values[i] = cursor_->value();
    cursor_->Next();
    if (!cursor_->valid()) cursor_->SeekToFirst();
    ++offset_;
  }
  Dtype* data = batch->data_.mutable_cpu_data();
  Dtype* label = this->output_labels_ ? batch->label_.mutable_cpu_data()
                                      : NULL;
  Dtype* info = info_[batch]->mutable_cpu_data();
  const int threads = std::min<int>(p.threads(), batch_size);
  if (threads <= 1) {
    ProcessRange(&values, batch_index_, 0, 1, data, label, info);
  } else {
    // The workers read `values` on this stack: never leave before they end.
    boost::this_thread::disable_interruption no_interrupt;
    boost::thread_group group;
    for (int t = 0; t < threads; ++t) {
      group.create_thread(boost::bind(
          &ScaleJitterDataLayer<Dtype>::ProcessRange, this, &values,
          batch_index_, t, threads, data, label, info));
    }
    group.join_all();
  }
  ++batch_index_;
}

template <typename Dtype>
void ScaleJitterDataLayer<Dtype>::CopyInfo(const vector<Blob<Dtype>*>& top) {
  if (top.size() > 2) {
    const Blob<Dtype>& info = *info_[this->prefetch_current_];
    top[2]->ReshapeLike(info);
    caffe_copy(info.count(), info.cpu_data(), top[2]->mutable_cpu_data());
  }
}

template <typename Dtype>
void ScaleJitterDataLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  BasePrefetchingDataLayer<Dtype>::Forward_cpu(bottom, top);
  CopyInfo(top);
}

template <typename Dtype>
void ScaleJitterDataLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  BasePrefetchingDataLayer<Dtype>::Forward_gpu(bottom, top);
  CopyInfo(top);
}

INSTANTIATE_CLASS(ScaleJitterDataLayer);
REGISTER_LAYER_CLASS(ScaleJitterData);

}  // namespace caffe
