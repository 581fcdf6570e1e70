#ifndef CAFFE_GAUSSIAN_NOISE_LAYER_HPP_
#define CAFFE_GAUSSIAN_NOISE_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/neuron_layer.hpp"

namespace caffe {

/**
 * @brief Additive Gaussian noise (denoising autoencoders, ladder networks).
 *
 * TRAIN phase: top = bottom + n, n ~ N(0, std^2) independently per value.
 * TEST phase: top = bottom. Any shape; may run in place. The gradient is the
 * identity in both phases (the noise does not depend on the input). std = 0
 * adds nothing.
 *
 * The noise comes from the layer's own counter-based stream
 * (util/noise_stream.hpp): blobs_[0] holds a key, drawn from Caffe's RNG at
 * set-up (so the solver's random_seed fixes it), and a counter of TRAIN
 * forward passes; value i of a pass is
 *   std * GaussianPair(Philox(i / 2, rank, counter; key))[i % 2]
 * (util/counter_rng.hpp), the same bits on the CPU and the GPU. A snapshot
 * saves the blob and a resumed run continues the stream exactly. The blob is
 * not learned (lr_mult 0, zero diff).
 */
template <typename Dtype>
class GaussianNoiseLayer : public NeuronLayer<Dtype> {
 public:
  explicit GaussianNoiseLayer(const LayerParameter& param)
      : NeuronLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "GaussianNoise"; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  // Noise is added: TRAIN phase and std > 0.
  bool adds_noise() const { return this->phase_ == TRAIN && std_ > 0; }

  Dtype std_;
};

}  // namespace caffe

#endif  // CAFFE_GAUSSIAN_NOISE_LAYER_HPP_
