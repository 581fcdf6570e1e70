#ifndef CAFFE_UTIL_NOISE_STREAM_HPP_
#define CAFFE_UTIL_NOISE_STREAM_HPP_

#include <stdint.h>

#include <cmath>
#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/counter_rng.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

/**
 * recon-dec (GaussianNoise, MaskingNoise): the state of a layer's noise
 * stream, kept in the layer's blobs_[0] so that a snapshot (.caffemodel,
 * .solverstate's net) saves it and a restore continues it exactly.
 *
 * blobs_[0] holds 8 values, each an integer in [0, 65535] (exact in float):
 *   [0..3] the 64-bit key, 16 bits each, least significant first;
 *   [4..7] the 64-bit counter, the same way.
 * The key is drawn from Caffe's RNG (two caffe_rng_rand()) when the layer is
 * set up without blobs, so the solver's random_seed fixes it; the counter
 * starts at 0 and counts the layer's TRAIN forward passes. A value is read
 * rounded to the nearest integer and clamped into [0, 65535].
 *
 * The blob is not a parameter: the layer gives it param { lr_mult: 0
 * decay_mult: 0 } when the net gives it no ParamSpec and refuses a nonzero
 * lr_mult; Backward sets its diff to 0.
 */
namespace noise_stream {

const int kStateSize = 8;

template <typename Dtype>
inline uint32_t Piece(const Dtype* s, int i) {
  const double v = std::floor(static_cast<double>(s[i]) + 0.5);
  return v <= 0 ? 0u : (v >= 65535 ? 65535u : static_cast<uint32_t>(v));
}

template <typename Dtype>
inline uint64_t Read64(const Dtype* s, int first) {
  uint64_t x = 0;
  for (int i = 3; i >= 0; --i) {
    x = (x << 16) | Piece(s, first + i);
  }
  return x;
}

template <typename Dtype>
inline void Write64(uint64_t x, Dtype* s, int first) {
  for (int i = 0; i < 4; ++i) {
    s[first + i] = static_cast<Dtype>((x >> (16 * i)) & 0xFFFFu);
  }
}

template <typename Dtype>
inline uint64_t Key(const Blob<Dtype>& state) {
  return Read64(state.cpu_data(), 0);
}

template <typename Dtype>
inline uint64_t Counter(const Blob<Dtype>& state) {
  return Read64(state.cpu_data(), 4);
}

template <typename Dtype>
inline void SetCounter(uint64_t counter, Blob<Dtype>* state) {
  Write64(counter, state->mutable_cpu_data(), 4);
}

template <typename Dtype>
inline void SetKey(uint64_t key, Blob<Dtype>* state) {
  Write64(key, state->mutable_cpu_data(), 0);
}

// The stream of the pass about to run (the state's key and counter).
template <typename Dtype>
inline counter_rng::Stream CurrentStream(const Blob<Dtype>& state) {
  const uint64_t key = Key(state), counter = Counter(state);
  counter_rng::Stream s;
  s.key0 = static_cast<uint32_t>(key);
  s.key1 = static_cast<uint32_t>(key >> 32);
  s.counter_lo = static_cast<uint32_t>(counter);
  s.counter_hi = static_cast<uint32_t>(counter >> 32);
  s.rank = static_cast<uint32_t>(Caffe::solver_rank());
  return s;
}

template <typename Dtype>
inline void Advance(Blob<Dtype>* state) {
  SetCounter(Counter(*state) + 1, state);
}

/**
 * LayerSetUp of a noise layer: creates blobs_[0] with a key drawn from
 * Caffe's RNG and counter 0 unless the layer already has it (from its
 * LayerParameter's blobs); fixes or checks its ParamSpec.
 */
template <typename Dtype>
inline void SetUp(const std::string& what, LayerParameter* param,
                  std::vector<shared_ptr<Blob<Dtype> > >* blobs) {
  if (blobs->empty()) {
    blobs->resize(1);
    (*blobs)[0].reset(new Blob<Dtype>(std::vector<int>(1, kStateSize)));
    const uint64_t lo = caffe_rng_rand(), hi = caffe_rng_rand();
    SetKey((hi << 32) | lo, (*blobs)[0].get());
    SetCounter(0, (*blobs)[0].get());
  } else {
    CHECK(blobs->size() == 1 && (*blobs)[0]->count() == kStateSize)
        << what << ": its one blob is the noise stream's state ("
        << kStateSize << " values: key and counter), got " << blobs->size()
        << " blob(s) of " << (*blobs)[0]->shape_string();
  }
  if (param->param_size() == 0) {
    ParamSpec* spec = param->add_param();
    spec->set_lr_mult(0);
    spec->set_decay_mult(0);
  } else {
    CHECK_EQ(param->param_size(), 1) << what << ": one blob, one ParamSpec";
    CHECK_EQ(param->param(0).lr_mult(), 0) << what << ": its blob is the "
        "noise stream's state (key and counter), not a parameter: give it "
        "param { lr_mult: 0 decay_mult: 0 } or no param";
  }
  caffe_set((*blobs)[0]->count(), Dtype(0), (*blobs)[0]->mutable_cpu_diff());
}

}  // namespace noise_stream
}  // namespace caffe

#endif  // CAFFE_UTIL_NOISE_STREAM_HPP_
