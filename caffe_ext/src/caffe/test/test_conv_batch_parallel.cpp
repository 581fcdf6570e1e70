// recon-dec: the batch-parallel CPU paths of Convolution and Deconvolution
// (patch 0006: the images of a batch over CpuThreads() threads, on the pool
// of caffe/util/cpu_threads.hpp) give the serial path's outputs and
// gradients: forward and data gradients exactly (each image is the same
// single-threaded computation), weight and bias gradients within float
// rounding (summed per thread, then over threads); 3x3 (strided, grouped)
// and 1x1 kernels, one and two bottoms, more threads than images; their
// gradients pass an exhaustive GradientChecker with 1 and 3 threads; and the
// column buffer filled and multiplied in chunks of output rows gives what
// all rows at once give.
#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/base_conv_layer.hpp"
#include "caffe/layers/conv_layer.hpp"
#include "caffe/layers/deconv_layer.hpp"
#include "caffe/util/cpu_threads.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename Dtype>
class ConvBatchParallelTest : public CPUDeviceTest<Dtype> {
 protected:
  ConvBatchParallelTest()
      : bottom_(new Blob<Dtype>(5, 4, 7, 6)),
        bottom2_(new Blob<Dtype>(5, 4, 7, 6)),
        top_(new Blob<Dtype>()), top2_(new Blob<Dtype>()) {
    FillerParameter filler_param;
    filler_param.set_std(1);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(bottom_);
    filler.Fill(bottom2_);
  }
  virtual ~ConvBatchParallelTest() {
    delete bottom_;
    delete bottom2_;
    delete top_;
    delete top2_;
  }

  LayerParameter Param(int kernel, int stride, int group) {
    LayerParameter p;
    ConvolutionParameter* c = p.mutable_convolution_param();
    c->add_kernel_size(kernel);
    c->add_stride(stride);
    c->add_pad(kernel / 2);
    c->set_num_output(4);
    c->set_group(group);
    c->mutable_weight_filler()->set_type("gaussian");
    c->mutable_bias_filler()->set_type("gaussian");
    return p;
  }

  // Forward and backward of a fresh layer (same seed: same weights) on
  // `bottoms` bottoms at `threads` CPU threads; returns each top's
  // data, each bottom's diff, the weight diff and the bias diff.
  vector<vector<Dtype> > Run(bool deconv, const LayerParameter& p,
                             int bottoms, int threads) {
    vector<Blob<Dtype>*> bottom_vec(1, bottom_), top_vec(1, top_);
    if (bottoms == 2) {
      bottom_vec.push_back(bottom2_);
      top_vec.push_back(top2_);
    }
    Caffe::set_random_seed(1701);
    shared_ptr<Layer<Dtype> > layer(deconv ?
        static_cast<Layer<Dtype>*>(new DeconvolutionLayer<Dtype>(p)) :
        static_cast<Layer<Dtype>*>(new ConvolutionLayer<Dtype>(p)));
    layer->SetUp(bottom_vec, top_vec);
    ScopedCpuThreads scoped(threads);
    layer->Forward(bottom_vec, top_vec);
    FillerParameter filler_param;  // random top diffs
    filler_param.set_std(1);
    GaussianFiller<Dtype> filler(filler_param);
    Caffe::set_random_seed(1702);
    for (int j = 0; j < bottoms; ++j) {
      Blob<Dtype> top_diff(top_vec[j]->shape());
      filler.Fill(&top_diff);
      caffe_copy(top_diff.count(), top_diff.cpu_data(),
                 top_vec[j]->mutable_cpu_diff());
    }
    for (int i = 0; i < 2; ++i) {  // the diffs accumulate: start from 0
      caffe_set(layer->blobs()[i]->count(), Dtype(0),
                layer->blobs()[i]->mutable_cpu_diff());
    }
    layer->Backward(top_vec, vector<bool>(bottoms, true), bottom_vec);
    vector<vector<Dtype> > out;
    for (int j = 0; j < bottoms; ++j) {
      out.push_back(vector<Dtype>(top_vec[j]->cpu_data(),
                                  top_vec[j]->cpu_data() + top_vec[j]->count()));
      out.push_back(vector<Dtype>(bottom_vec[j]->cpu_diff(),
          bottom_vec[j]->cpu_diff() + bottom_vec[j]->count()));
    }
    for (int i = 0; i < 2; ++i) {
      const Blob<Dtype>& b = *layer->blobs()[i];
      out.push_back(vector<Dtype>(b.cpu_diff(), b.cpu_diff() + b.count()));
    }
    return out;
  }

  static Dtype MaxAbs(const vector<Dtype>& values) {
    Dtype m = 0;
    for (int i = 0; i < values.size(); ++i) {
      m = std::max(m, Dtype(std::fabs(values[i])));
    }
    return m;
  }

  void Compare(bool deconv, int kernel, int stride, int group,
               int bottoms = 1) {
    const LayerParameter p = Param(kernel, stride, group);
    const vector<vector<Dtype> > serial = Run(deconv, p, bottoms, 1);
    const int exact = 2 * bottoms;  // tops and bottom diffs: exactly equal
    for (int threads = 2; threads <= 6; threads += 2) {  // 6 > batch of 5
      const vector<vector<Dtype> > parallel = Run(deconv, p, bottoms, threads);
      ASSERT_EQ(serial.size(), parallel.size());
      for (int k = 0; k < serial.size(); ++k) {
        ASSERT_EQ(serial[k].size(), parallel[k].size());
        const Dtype scale = MaxAbs(serial[k]);
        for (int i = 0; i < serial[k].size(); ++i) {
          if (k < exact) {
            ASSERT_EQ(serial[k][i], parallel[k][i]) << "threads " << threads
                << (k % 2 ? " bottom diff " : " top ") << k / 2 << ": " << i;
          } else {  // weight, bias diff: within float rounding
            ASSERT_NEAR(serial[k][i], parallel[k][i], 1e-5 * scale)
                << "threads " << threads << (k == exact ? " weight" : " bias")
                << " diff " << i;
          }
        }
      }
    }
  }

  // Exhaustive gradient check (every top value to every bottom value and
  // parameter) on a batch of 3, small enough for float finite differences.
  void CheckGradient(bool deconv, int threads, int chunk_rows = 0) {
    Blob<Dtype> bottom(3, 2, 5, 4), top;
    FillerParameter filler_param;
    filler_param.set_std(1);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(&bottom);
    vector<Blob<Dtype>*> bottom_vec(1, &bottom), top_vec(1, &top);
    LayerParameter p = Param(3, 2, 2);
    p.mutable_convolution_param()->set_num_output(2);
    ScopedCpuThreads scoped(threads);
    BaseConvolutionLayer<Dtype>::set_cpu_chunk_rows_for_test(chunk_rows);
    GradientChecker<Dtype> checker(1e-2, 1e-3);
    if (deconv) {
      DeconvolutionLayer<Dtype> layer(p);
      checker.CheckGradientExhaustive(&layer, bottom_vec, top_vec);
    } else {
      ConvolutionLayer<Dtype> layer(p);
      checker.CheckGradientExhaustive(&layer, bottom_vec, top_vec);
    }
    BaseConvolutionLayer<Dtype>::set_cpu_chunk_rows_for_test(0);
  }

  // The column buffer in chunks of `rows` output rows (patch 0006,
  // cpu_chunk_rows) against all rows at once, one thread: what col2im
  // writes (the convolution's data gradient, the deconvolution's output)
  // exactly, since the chunks are added from the last to the first; the
  // rest within float rounding (GEMMs over column blocks).
  void CompareChunks(bool deconv, int kernel, int stride, int group) {
    const LayerParameter p = Param(kernel, stride, group);
    BaseConvolutionLayer<Dtype>::set_cpu_chunk_rows_for_test(1000);  // whole
    const vector<vector<Dtype> > whole = Run(deconv, p, 1, 1);
    for (int rows = 1; rows <= 3; ++rows) {
      BaseConvolutionLayer<Dtype>::set_cpu_chunk_rows_for_test(rows);
      const vector<vector<Dtype> > chunked = Run(deconv, p, 1, 1);
      ASSERT_EQ(whole.size(), chunked.size());
      for (int k = 0; k < whole.size(); ++k) {
        const Dtype scale = MaxAbs(whole[k]);
        for (int i = 0; i < whole[k].size(); ++i) {
          if (k == (deconv ? 0 : 1)) {
            ASSERT_EQ(whole[k][i], chunked[k][i]) << "rows " << rows << ": "
                << i;
          } else {
            ASSERT_NEAR(whole[k][i], chunked[k][i], 1e-5 * scale)
                << "rows " << rows << ", result " << k << ": " << i;
          }
        }
      }
    }
    BaseConvolutionLayer<Dtype>::set_cpu_chunk_rows_for_test(0);
  }

  Blob<Dtype>* const bottom_;
  Blob<Dtype>* const bottom2_;
  Blob<Dtype>* const top_;
  Blob<Dtype>* const top2_;
};

TYPED_TEST_CASE(ConvBatchParallelTest, TestDtypes);

TYPED_TEST(ConvBatchParallelTest, ConvolutionMatchesSerial) {
  this->Compare(false, 3, 1, 1);
  this->Compare(false, 3, 2, 2);
  this->Compare(false, 1, 1, 1);
  this->Compare(false, 3, 1, 1, 2);
}

TYPED_TEST(ConvBatchParallelTest, DeconvolutionMatchesSerial) {
  this->Compare(true, 3, 1, 1);
  this->Compare(true, 3, 2, 2);
  this->Compare(true, 1, 1, 1);
  this->Compare(true, 3, 1, 1, 2);
}

TYPED_TEST(ConvBatchParallelTest, ConvolutionGradientThreads) {
  this->CheckGradient(false, 1);
  this->CheckGradient(false, 3);
}

TYPED_TEST(ConvBatchParallelTest, DeconvolutionGradientThreads) {
  this->CheckGradient(true, 1);
  this->CheckGradient(true, 3);
}

TYPED_TEST(ConvBatchParallelTest, ChunkedColumnsMatchWhole) {
  this->CompareChunks(false, 3, 1, 1);
  this->CompareChunks(false, 3, 2, 2);
  this->CompareChunks(true, 3, 1, 1);
  this->CompareChunks(true, 3, 2, 2);
}

TYPED_TEST(ConvBatchParallelTest, ChunkedColumnsGradient) {
  this->CheckGradient(false, 1, 1);
  this->CheckGradient(true, 3, 2);
}

}  // namespace caffe
