#ifndef CAFFE_UTIL_CHANNEL_SUM_HPP_
#define CAFFE_UTIL_CHANNEL_SUM_HPP_

#include <algorithm>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

/**
 * recon-dec (BatchStats, Normalize): per-channel sums of an N x C x S array,
 *   out[c] = alpha sum_{n, s} in[(n C + c) S + s] + beta out[c],
 * as two gemv with ones, the way Caffe's BatchNorm reduces; on the GPU in
 * Caffe's GPU mode (pointers from gpu_data()), else on the CPU.
 */
template <typename Dtype>
class ChannelSum {
 public:
  ChannelSum() : num_(0), channels_(0), spatial_(0) {}

  void Reshape(int num, int channels, int spatial) {
    num_ = num;
    channels_ = channels;
    spatial_ = spatial;
    num_by_chans_.Reshape(std::vector<int>(1, num * channels));
    const int ones = std::max(num, spatial);
    if (ones_.count() != ones) {
      ones_.Reshape(std::vector<int>(1, ones));
      caffe_set(ones, Dtype(1), ones_.mutable_cpu_data());
    }
  }

  void Sum(Dtype alpha, const Dtype* in, Dtype beta, Dtype* out) {
    if (Caffe::mode() == Caffe::CPU) {
      caffe_cpu_gemv<Dtype>(CblasNoTrans, num_ * channels_, spatial_,
          Dtype(1), in, ones_.cpu_data(), Dtype(0),
          num_by_chans_.mutable_cpu_data());
      caffe_cpu_gemv<Dtype>(CblasTrans, num_, channels_, alpha,
          num_by_chans_.cpu_data(), ones_.cpu_data(), beta, out);
    } else {
#ifndef CPU_ONLY
      caffe_gpu_gemv<Dtype>(CblasNoTrans, num_ * channels_, spatial_,
          Dtype(1), in, ones_.gpu_data(), Dtype(0),
          num_by_chans_.mutable_gpu_data());
      caffe_gpu_gemv<Dtype>(CblasTrans, num_, channels_, alpha,
          num_by_chans_.gpu_data(), ones_.gpu_data(), beta, out);
#else
      NO_GPU;
#endif
    }
  }

 private:
  int num_, channels_, spatial_;
  Blob<Dtype> num_by_chans_;  // N x C: the sums over S
  Blob<Dtype> ones_;          // max(N, S) ones
};

}  // namespace caffe

#endif  // CAFFE_UTIL_CHANNEL_SUM_HPP_
