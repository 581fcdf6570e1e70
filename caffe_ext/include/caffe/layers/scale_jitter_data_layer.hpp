#ifndef CAFFE_SCALE_JITTER_DATA_LAYER_HPP_
#define CAFFE_SCALE_JITTER_DATA_LAYER_HPP_

#include <map>
#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/layers/base_data_layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/db.hpp"

namespace caffe {

/**
 * @brief Reads encoded-image Datums from a DB and applies the training
 *        augmentation of Zhang, Lee & Lee (ICML 2016) / Simonyan & Zisserman:
 *        shorter edge resized to a random size in [min_size, max_size],
 *        random crop_size x crop_size crop or its mirror, mean subtraction.
 *        CENTER_SQUARE mode (AlexNet): centre square resized to square_size,
 *        random crop or mirror. TEST phase: fixed size, centre crop.
 *
 * Tops: data (N x C x crop x crop), optional label (N), optional jitter
 * record (N x 4: chosen shorter edge (or square size), crop y, crop x,
 * mirrored 0/1) for checks and statistics.
 *
 * Item i of batch b draws from an RNG seeded by (seed, b, i, solver rank)
 * alone, so results do not depend on `threads` or thread scheduling.
 */
template <typename Dtype>
class ScaleJitterDataLayer : public BasePrefetchingDataLayer<Dtype> {
 public:
  explicit ScaleJitterDataLayer(const LayerParameter& param);
  virtual ~ScaleJitterDataLayer();
  virtual void DataLayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual inline const char* type() const { return "ScaleJitterData"; }
  virtual inline int ExactNumBottomBlobs() const { return 0; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 3; }

  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  /// The output of one item: exposed for tests.
  struct Jitter { int size, y, x; bool mirror; };

 protected:
  static LayerParameter WithPrefetch(const LayerParameter& param);
  virtual void load_batch(Batch<Dtype>* batch);
  // Decodes, augments and writes item `item` of batch number `batch_index`.
  void ProcessItem(const string& value, uint64_t batch_index, int item,
      Dtype* out, Dtype* label, Dtype* info);
  void ProcessRange(const vector<string>* values, uint64_t batch_index,
      int begin, int step, Dtype* data, Dtype* label, Dtype* info);
  void CopyInfo(const vector<Blob<Dtype>*>& top);

  shared_ptr<db::DB> db_;
  shared_ptr<db::Cursor> cursor_;
  uint64_t offset_;       // DB entries passed (for multi-solver skipping)
  uint64_t batch_index_;  // batches produced so far
  uint64_t seed_;
  int channels_;
  vector<Dtype> mean_;
  std::map<Batch<Dtype>*, shared_ptr<Blob<Dtype> > > info_;
};

}  // namespace caffe

#endif  // CAFFE_SCALE_JITTER_DATA_LAYER_HPP_
