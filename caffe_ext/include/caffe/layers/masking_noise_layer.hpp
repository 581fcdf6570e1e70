#ifndef CAFFE_MASKING_NOISE_LAYER_HPP_
#define CAFFE_MASKING_NOISE_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/neuron_layer.hpp"

namespace caffe {

/**
 * @brief Masking noise (denoising autoencoders): in the TRAIN phase every
 *        value is zeroed with probability `ratio`, the others kept as they
 *        are.
 *
 * Unlike Caffe's Dropout the kept values are not rescaled by 1 / (1 - ratio):
 * the corrupted input of a denoising autoencoder is the input with some
 * values missing. The mask is kept for the backward pass, which passes the
 * gradient where the value was kept and zero elsewhere. TEST phase:
 * identity. Any shape; may run in place.
 *
 * The mask comes from the layer's own counter-based stream
 * (util/noise_stream.hpp): blobs_[0] holds a key, drawn from Caffe's RNG at
 * set-up (so the solver's random_seed fixes it), and a counter of TRAIN
 * forward passes; value i of a pass is dropped when word i % 4 of
 * Philox(i / 4, rank, counter; key) (util/counter_rng.hpp) is below
 * ratio 2^32 (all dropped when ratio is 1): the same mask on the CPU and the
 * GPU. A snapshot saves the blob and a resumed run continues the stream
 * exactly. The blob is not learned (lr_mult 0, zero diff).
 */
template <typename Dtype>
class MaskingNoiseLayer : public NeuronLayer<Dtype> {
 public:
  explicit MaskingNoiseLayer(const LayerParameter& param)
      : NeuronLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "MaskingNoise"; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  // out = in where the mask keeps it, 0 elsewhere (TRAIN); out = in (TEST):
  // the CPU's forward pass of the values and backward pass of their diffs.
  void ApplyMask_cpu(const Dtype* in, Dtype* out);

  Dtype ratio_;
  // A uniform 32-bit word below threshold_ drops the value (probability
  // threshold_ / 2^32 = ratio); drop_all_ when ratio is 1.
  unsigned int threshold_;
  bool drop_all_;
  // 1 where the last TRAIN forward pass kept the value, 0 where it dropped it.
  Blob<unsigned int> mask_;
};

}  // namespace caffe

#endif  // CAFFE_MASKING_NOISE_LAYER_HPP_
