// recon-dec: the batch-parallel CPU paths of Convolution and Deconvolution
// (patch 0006: the images of a batch over CpuThreads() threads, on the pool
// of caffe/util/cpu_threads.hpp) give the serial path's outputs and
// gradients: image by image, forward and data gradients exactly (each image
// is the same single-threaded computation), weight and bias gradients
// within float rounding (summed per thread, then over threads); with
// several small images per GEMM, everything within float rounding; 3x3
// (strided, grouped) and 1x1 kernels, one and two bottoms, more threads
// than images; their gradients pass an exhaustive GradientChecker with 1
// and 3 threads, in image groups and in chunks; and the column buffer
// filled and multiplied in chunks of output rows, and images side by side
// in one GEMM, give what all rows at once and image by image give.
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
  // the layers, with the images per GEMM their last pass used
  struct ProbedConvolution : public ConvolutionLayer<Dtype> {
    explicit ProbedConvolution(const LayerParameter& p)
        : ConvolutionLayer<Dtype>(p) {}
    int images_per_gemm() const { return this->images_per_gemm_; }
  };
  struct ProbedDeconvolution : public DeconvolutionLayer<Dtype> {
    explicit ProbedDeconvolution(const LayerParameter& p)
        : DeconvolutionLayer<Dtype>(p) {}
    int images_per_gemm() const { return this->images_per_gemm_; }
  };

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
        static_cast<Layer<Dtype>*>(new ProbedDeconvolution(p)) :
        static_cast<Layer<Dtype>*>(new ProbedConvolution(p)));
    layer->SetUp(bottom_vec, top_vec);
    ScopedCpuThreads scoped(threads);
    layer->Forward(bottom_vec, top_vec);
    last_images_ = deconv
        ? static_cast<ProbedDeconvolution*>(layer.get())->images_per_gemm()
        : static_cast<ProbedConvolution*>(layer.get())->images_per_gemm();
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

  // Image by image (images_per_gemm 1), tops and bottom diffs at any
  // thread count equal one thread's exactly; with several images per GEMM
  // (`grouped`: chosen by size, the blocks' sizes differ with the thread
  // count) within float rounding, as the weight and bias diffs.
  void Compare(bool deconv, int kernel, int stride, int group,
               int bottoms = 1, bool grouped = false) {
    const LayerParameter p = Param(kernel, stride, group);
    BaseConvolutionLayer<Dtype>::set_cpu_images_per_gemm_for_test(
        grouped ? 0 : 1);
    const vector<vector<Dtype> > serial = Run(deconv, p, bottoms, 1);
    const int exact = grouped ? 0 : 2 * bottoms;
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
                << "threads " << threads << " result " << k << ": " << i;
          }
        }
      }
    }
    BaseConvolutionLayer<Dtype>::set_cpu_images_per_gemm_for_test(0);
  }

  // Several images per GEMM (cpu_images_per_gemm: the fixture's 7 x 6
  // outputs are small enough) against image by image, one and two threads:
  // outputs and all gradients within float rounding, and the layer did
  // group `images` images (the last group of a block smaller).
  void CompareImageGroups(bool deconv, int kernel, int stride, int group) {
    const LayerParameter p = Param(kernel, stride, group);
    for (int threads = 1; threads <= 2; ++threads) {
      BaseConvolutionLayer<Dtype>::set_cpu_images_per_gemm_for_test(1);
      const vector<vector<Dtype> > single = Run(deconv, p, 1, threads);
      for (int images = 2; images <= 5; ++images) {
        BaseConvolutionLayer<Dtype>::set_cpu_images_per_gemm_for_test(images);
        const vector<vector<Dtype> > grouped = Run(deconv, p, 1, threads);
        EXPECT_EQ(std::min(images, threads == 1 ? 5 : 3), last_images_);
        ASSERT_EQ(single.size(), grouped.size());
        for (int k = 0; k < single.size(); ++k) {
          const Dtype scale = MaxAbs(single[k]);
          for (int i = 0; i < single[k].size(); ++i) {
            ASSERT_NEAR(single[k][i], grouped[k][i], 1e-5 * scale)
                << "threads " << threads << ", " << images
                << " images per GEMM, result " << k << ": " << i;
          }
        }
      }
    }
    BaseConvolutionLayer<Dtype>::set_cpu_images_per_gemm_for_test(0);
  }

  // Exhaustive gradient check (every top value to every bottom value and
  // parameter) on a batch of 3, small enough for float finite differences.
  void CheckGradient(bool deconv, int threads, int chunk_rows = 0,
                     int images_per_gemm = 0) {
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
    BaseConvolutionLayer<Dtype>::set_cpu_images_per_gemm_for_test(
        images_per_gemm);
    GradientChecker<Dtype> checker(1e-2, 1e-3);
    if (deconv) {
      DeconvolutionLayer<Dtype> layer(p);
      checker.CheckGradientExhaustive(&layer, bottom_vec, top_vec);
    } else {
      ConvolutionLayer<Dtype> layer(p);
      checker.CheckGradientExhaustive(&layer, bottom_vec, top_vec);
    }
    BaseConvolutionLayer<Dtype>::set_cpu_chunk_rows_for_test(0);
    BaseConvolutionLayer<Dtype>::set_cpu_images_per_gemm_for_test(0);
  }

  // The column buffer in chunks of `rows` output rows (patch 0006,
  // cpu_chunk_rows) against all rows at once, one thread: what col2im
  // writes (the convolution's data gradient, the deconvolution's output)
  // exactly, since the chunks are added from the last to the first; the
  // rest within float rounding (GEMMs over column blocks).
  void CompareChunks(bool deconv, int kernel, int stride, int group) {
    const LayerParameter p = Param(kernel, stride, group);
    BaseConvolutionLayer<Dtype>::set_cpu_images_per_gemm_for_test(1);
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
    BaseConvolutionLayer<Dtype>::set_cpu_images_per_gemm_for_test(0);
  }

  int last_images_;  // images_per_gemm_ of Run's layer (its Forward)
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
  this->Compare(false, 3, 1, 1, 1, true);
  this->Compare(false, 3, 2, 2, 2, true);
}

TYPED_TEST(ConvBatchParallelTest, DeconvolutionMatchesSerial) {
  this->Compare(true, 3, 1, 1);
  this->Compare(true, 3, 2, 2);
  this->Compare(true, 1, 1, 1);
  this->Compare(true, 3, 1, 1, 2);
  this->Compare(true, 3, 1, 1, 1, true);
  this->Compare(true, 3, 2, 2, 2, true);
}

TYPED_TEST(ConvBatchParallelTest, ImageGroupsMatchOneByOne) {
  this->CompareImageGroups(false, 3, 1, 1);
  this->CompareImageGroups(false, 3, 2, 2);
  this->CompareImageGroups(true, 3, 1, 1);
  this->CompareImageGroups(true, 3, 2, 2);
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
  this->CheckGradient(false, 1, 1, 1);
  this->CheckGradient(true, 3, 2, 1);
}

TYPED_TEST(ConvBatchParallelTest, ImageGroupsGradient) {
  this->CheckGradient(false, 1, 0, 2);  // groups of 2 and 1
  this->CheckGradient(true, 1, 0, 3);
  this->CheckGradient(false, 2, 0, 2);
}

}  // namespace caffe
