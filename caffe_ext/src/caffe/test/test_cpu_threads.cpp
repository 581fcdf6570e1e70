// recon-dec: Caffe's CPU thread pool (caffe/util/cpu_threads.hpp) and the
// GEMM split on it (patch 0006, caffe_cpu_gemm): every index of a
// ParallelFor runs exactly once, in the documented blocks, over many regions
// in a row; a region inside a region is serial; a GEMM split over 2 and 3
// threads (by columns, and by rows) equals the single-threaded GEMM for
// every transpose combination, accumulation (beta) included; the split
// element-wise calls (set, copy, axpy, axpby, add, sub, mul, div, scale)
// equal one thread's; MAX pooling (with and without a mask top, ragged
// windows), leaky ReLU, Sigmoid, TanH, Unpooling (known and fixed
// switches), and the ladder's BatchStats, Normalize and LadderCombinator,
// forward and backward (parameter gradients included), over 2 and 3
// threads equal one thread's result bit for bit.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layer_factory.hpp"
#include "caffe/layers/pooling_layer.hpp"
#include "caffe/util/cpu_threads.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"

namespace caffe {

TEST(CpuThreadsTest, EveryIndexOnceInItsBlock) {
  for (int threads = 1; threads <= 4; ++threads) {
    ScopedCpuThreads scoped(threads);
    for (int n = 0; n <= 9; ++n) {
      std::vector<std::atomic<int> > hits(n);
      std::vector<int> owner(n, -1);
      for (int i = 0; i < n; ++i) {
        hits[i] = 0;
      }
      ParallelFor(threads, n, [&](int t, int begin, int end) {
        EXPECT_TRUE(InParallelRegion() || threads == 1 || n <= 1);
        for (int i = begin; i < end; ++i) {
          ++hits[i];
          owner[i] = t;
        }
      });
      const int used = std::max(1, std::min(threads, n));
      for (int i = 0; i < n; ++i) {
        EXPECT_EQ(1, hits[i].load()) << "n " << n << " threads " << threads;
        // block t is [n t / used, n (t + 1) / used)
        EXPECT_LE(static_cast<int64_t>(n) * owner[i] / used, i);
        EXPECT_GT(static_cast<int64_t>(n) * (owner[i] + 1) / used, i);
      }
      EXPECT_FALSE(InParallelRegion());
    }
  }
}

TEST(CpuThreadsTest, ManyRegionsInARow) {
  ScopedCpuThreads scoped(3);
  std::vector<int> data(999);
  for (int round = 0; round < 2000; ++round) {
    ParallelFor(3, static_cast<int>(data.size()),
        [&](int t, int begin, int end) {
      for (int i = begin; i < end; ++i) {
        data[i] += i % 7;
      }
    });
  }
  for (int i = 0; i < static_cast<int>(data.size()); ++i) {
    ASSERT_EQ(2000 * (i % 7), data[i]) << i;
  }
}

TEST(CpuThreadsTest, NestedRegionIsSerial) {
  ScopedCpuThreads scoped(2);
  std::atomic<int> inner_calls(0);
  std::atomic<int> outer_blocks(0);
  ParallelFor(2, 2, [&](int t, int begin, int end) {
    ++outer_blocks;
    EXPECT_TRUE(InParallelRegion());
    EXPECT_EQ(1, ThreadsFor(1e12, 1));
    ParallelFor(2, 10, [&](int u, int b, int e) {
      ++inner_calls;
      EXPECT_EQ(0, u);
      EXPECT_EQ(0, b);
      EXPECT_EQ(10, e);
    });
  });
  EXPECT_EQ(2, outer_blocks.load());
  EXPECT_EQ(2, inner_calls.load());
  EXPECT_EQ(2, ThreadsFor(1e12, 1));
  EXPECT_EQ(1, ThreadsFor(10, 100));
}

template <typename Dtype>
class CpuGemmSplitTest : public ::testing::Test {};

TYPED_TEST_CASE(CpuGemmSplitTest, TestDtypes);

TYPED_TEST(CpuGemmSplitTest, SplitEqualsSerial) {
  typedef TypeParam Dtype;
  // (M, N, K): wide (split by columns), tall (split by rows), both ragged
  // against the 16-wide blocks, each large enough for 3 threads
  const int shapes[][3] = {{37, 301, 1200}, {299, 21, 2000}, {64, 64, 2000}};
  const CBLAS_TRANSPOSE trans[] = {CblasNoTrans, CblasTrans};
  for (int s = 0; s < 3; ++s) {
    const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
    std::vector<Dtype> A(M * K), B(K * N), C0(M * N);
    for (int i = 0; i < M * K; ++i) {
      A[i] = std::sin(0.37 * i);
    }
    for (int i = 0; i < K * N; ++i) {
      B[i] = std::cos(0.11 * i);
    }
    for (int i = 0; i < M * N; ++i) {
      C0[i] = std::sin(0.5 * i);
    }
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        std::vector<Dtype> serial(C0);
        {
          ScopedCpuThreads one(1);
          caffe_cpu_gemm<Dtype>(trans[ta], trans[tb], M, N, K, Dtype(0.5),
              &A[0], &B[0], Dtype(0.25), &serial[0]);
        }
        for (int threads = 2; threads <= 3; ++threads) {
          ScopedCpuThreads scoped(threads);
          ASSERT_EQ(threads, ThreadsFor(2.0 * M * N * K, 4e6));
          std::vector<Dtype> split(C0);
          caffe_cpu_gemm<Dtype>(trans[ta], trans[tb], M, N, K, Dtype(0.5),
              &A[0], &B[0], Dtype(0.25), &split[0]);
          for (int i = 0; i < M * N; ++i) {
            ASSERT_NEAR(serial[i], split[i],
                        1e-5 * (1 + std::fabs(serial[i])))
                << "M " << M << " N " << N << " K " << K << " ta " << ta
                << " tb " << tb << " threads " << threads << " at " << i;
          }
        }
      }
    }
  }
}

// caffe_set (zero and not), caffe_copy, caffe_axpy, caffe_cpu_axpby,
// caffe_add / sub / mul / div and caffe_cpu_scale on a vector long enough
// for 3 threads (64 Ki values each at least, ragged) equal one thread's
// result exactly: each block is the same call.
TYPED_TEST(CpuGemmSplitTest, ElementWiseSplitEqualsSerial) {
  typedef TypeParam Dtype;
  const int n = 3 * (1 << 16) + 7;
  std::vector<Dtype> x(n), y0(n);
  for (int i = 0; i < n; ++i) {
    x[i] = std::sin(0.37 * i);
    y0[i] = std::cos(0.11 * i);
  }
  std::vector<std::vector<Dtype> > results[2];
  for (int run = 0; run < 2; ++run) {
    ScopedCpuThreads scoped(run == 0 ? 1 : 3);
    if (run == 1) {
      ASSERT_EQ(3, ThreadsFor(n, 1 << 16));
    }
    std::vector<Dtype> y(y0);
    caffe_axpy<Dtype>(n, Dtype(-0.3), &x[0], &y[0]);
    results[run].push_back(y);
    caffe_cpu_axpby<Dtype>(n, Dtype(0.7), &x[0], Dtype(0.9), &y[0]);
    results[run].push_back(y);
    caffe_copy<Dtype>(n, &x[0], &y[0]);
    results[run].push_back(y);
    caffe_set<Dtype>(n, Dtype(0.25), &y[0]);
    results[run].push_back(y);
    y = y0;
    caffe_set<Dtype>(n, Dtype(0), &y[0]);
    results[run].push_back(y);
    caffe_add<Dtype>(n, &x[0], &y0[0], &y[0]);
    results[run].push_back(y);
    caffe_sub<Dtype>(n, &x[0], &y0[0], &y[0]);
    results[run].push_back(y);
    caffe_mul<Dtype>(n, &x[0], &y0[0], &y[0]);
    results[run].push_back(y);
    caffe_div<Dtype>(n, &x[0], &y0[0], &y[0]);
    results[run].push_back(y);
    caffe_cpu_scale<Dtype>(n, Dtype(1.7), &x[0], &y[0]);
    results[run].push_back(y);
  }
  ASSERT_EQ(results[0].size(), results[1].size());
  for (int k = 0; k < results[0].size(); ++k) {
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(results[0][k][i], results[1][k][i]) << "call " << k << ", "
          << i;
    }
  }
  // and they did what they say (against the serial arithmetic)
  EXPECT_EQ(y0[5] + Dtype(-0.3) * x[5], results[0][0][5]);
  EXPECT_EQ(x[n - 1], results[0][2][n - 1]);
  EXPECT_EQ(Dtype(0.25), results[0][3][n / 2]);
  EXPECT_EQ(Dtype(0), results[0][4][n - 1]);
  EXPECT_EQ(x[7] * y0[7], results[0][7][7]);
  EXPECT_EQ(Dtype(1.7) * x[n - 2], results[0][9][n - 2]);
}

template <typename Dtype>
class CpuThreadedLayersTest : public CPUDeviceTest<Dtype> {
 protected:
  // Forward and backward of the layer `param` describes, on fixed random
  // inputs and top diffs, at `threads` threads: every top's data, then the
  // diffs of the bottoms it propagates to, then its parameters' diffs. The
  // bottoms: a random x (4 x 16 x 63 x 65); Normalize also a mean and a
  // positive variance per channel, LadderCombinator a second x (u); Unpooling
  // a 2x2/2 MAX pooling's values of x and (`switches`) its switches.
  std::vector<std::vector<Dtype> > Run(const LayerParameter& param,
                                       int tops, int threads,
                                       int switches = 0) {
    ScopedCpuThreads scoped(threads);
    // 262,080 values: enough for 3 threads of ReLU (65,536 values each at
    // least), of pooling, Unpooling and the ladder layers (32,768 or less);
    // 63 x 65 leaves ragged 2x2/2 windows
    Blob<Dtype> x(4, 16, 63, 65), u(4, 16, 63, 65);
    Blob<Dtype> mean(vector<int>(1, 16)), var(vector<int>(1, 16));
    FillerParameter filler_param;
    filler_param.set_std(1);
    Caffe::set_random_seed(1701);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(&x);
    std::vector<Blob<Dtype>*> bottoms(1, &x);
    std::vector<bool> propagate_down(1, true);
    Blob<Dtype> pooled, mask;
    if (param.type() == "Unpooling") {
      LayerParameter pool_param;
      pool_param.mutable_pooling_param()->set_kernel_size(2);
      pool_param.mutable_pooling_param()->set_stride(2);
      std::vector<Blob<Dtype>*> pool_tops(1, &pooled);
      pool_tops.push_back(&mask);
      PoolingLayer<Dtype> pool(pool_param);
      pool.SetUp(bottoms, pool_tops);
      pool.Forward(bottoms, pool_tops);
      bottoms.assign(1, &pooled);
      if (switches) {
        bottoms.push_back(&mask);
        propagate_down.push_back(false);
      }
    } else if (param.type() == "Normalize") {
      filler.Fill(&mean);
      for (int c = 0; c < 16; ++c) {
        var.mutable_cpu_data()[c] = Dtype(0.5 + 0.1 * c);
      }
      bottoms.push_back(&mean);
      bottoms.push_back(&var);
      propagate_down.resize(3, true);
    } else if (param.type() == "LadderCombinator") {
      filler.Fill(&u);
      bottoms.push_back(&u);
      propagate_down.push_back(true);
    }
    std::vector<shared_ptr<Blob<Dtype> > > owned;
    std::vector<Blob<Dtype>*> top_vec;
    for (int i = 0; i < tops; ++i) {
      owned.push_back(shared_ptr<Blob<Dtype> >(new Blob<Dtype>()));
      top_vec.push_back(owned.back().get());
    }
    shared_ptr<Layer<Dtype> > layer = LayerRegistry<Dtype>::CreateLayer(param);
    layer->SetUp(bottoms, top_vec);
    layer->Forward(bottoms, top_vec);
    for (int i = 0; i < tops; ++i) {  // the top diffs: the same every run
      filler.Fill(top_vec[i]);
      caffe_copy(top_vec[i]->count(), top_vec[i]->cpu_data(),
                 top_vec[i]->mutable_cpu_diff());
    }
    std::vector<std::vector<Dtype> > out;
    layer->Forward(bottoms, top_vec);
    for (int i = 0; i < tops; ++i) {
      out.push_back(std::vector<Dtype>(top_vec[i]->cpu_data(),
          top_vec[i]->cpu_data() + top_vec[i]->count()));
    }
    layer->Backward(top_vec, propagate_down, bottoms);
    for (int b = 0; b < bottoms.size(); ++b) {
      if (propagate_down[b]) {
        out.push_back(std::vector<Dtype>(bottoms[b]->cpu_diff(),
            bottoms[b]->cpu_diff() + bottoms[b]->count()));
      }
    }
    for (int k = 0; k < layer->blobs().size(); ++k) {
      const Blob<Dtype>& blob = *layer->blobs()[k];
      out.push_back(std::vector<Dtype>(blob.cpu_diff(),
                                       blob.cpu_diff() + blob.count()));
    }
    return out;
  }

  void CheckThreadsMatchOne(const LayerParameter& param, int tops,
                            const char* what, int switches = 0) {
    const std::vector<std::vector<Dtype> > one =
        Run(param, tops, 1, switches);
    for (int threads = 2; threads <= 3; ++threads) {
      const std::vector<std::vector<Dtype> > many =
          Run(param, tops, threads, switches);
      ASSERT_EQ(one.size(), many.size());
      for (size_t k = 0; k < one.size(); ++k) {
        ASSERT_EQ(one[k].size(), many[k].size());
        for (size_t i = 0; i < one[k].size(); ++i) {
          ASSERT_EQ(one[k][i], many[k][i]) << what << " threads " << threads
              << " output " << k << " (tops, bottom diffs, parameter diffs)"
              << " at " << i;
        }
      }
    }
  }
};

TYPED_TEST_CASE(CpuThreadedLayersTest, TestDtypes);

TYPED_TEST(CpuThreadedLayersTest, MaxPoolingMatchesOneThread) {
  LayerParameter param;
  param.set_type("Pooling");
  PoolingParameter* pooling = param.mutable_pooling_param();
  pooling->set_pool(PoolingParameter_PoolMethod_MAX);
  pooling->set_kernel_size(2);
  pooling->set_stride(2);
  this->CheckThreadsMatchOne(param, 1, "max pooling, mask inside");
  this->CheckThreadsMatchOne(param, 2, "max pooling, mask top");
  pooling->set_kernel_size(3);
  pooling->set_pad(1);
  this->CheckThreadsMatchOne(param, 1, "max pooling 3x3/2 pad 1");
}

// 2x2/2 MAX pooling's whole windows (float: four at a time, without
// branches) against the definition, the generic loop's order and strict >
// from -FLT_MAX and index -1: ties keep the first value (+0 before -0 and the
// reverse), NaN never wins, a window of NaN, -inf and -FLT_MAX only gives
// -FLT_MAX at index -1. Rows of 1-13, 31 and 64-65 values (windows left
// over after the last four; the ragged last column and row), the argmax as
// the mask top and, through the backward pass, as the layer's own mask.
TYPED_TEST(CpuThreadedLayersTest, MaxPooling2x2MatchesDefinition) {
  typedef TypeParam Dtype;
  const int shapes[][2] = {{2, 1}, {3, 2}, {2, 3}, {5, 5}, {4, 7}, {2, 8},
      {3, 9}, {6, 10}, {2, 11}, {4, 12}, {5, 13}, {2, 31}, {4, 64}, {3, 65}};
  const Dtype specials[] = {Dtype(0), -Dtype(0), Dtype(NAN), -Dtype(INFINITY),
                            Dtype(-FLT_MAX), Dtype(1), Dtype(-1)};
  for (int si = 0; si < sizeof(shapes) / sizeof(shapes[0]); ++si) {
    const int height = shapes[si][0], width = shapes[si][1];
    for (int backward = 0; backward < 2; ++backward) {
      Blob<Dtype> x(2, 3, height, width), top, top_mask;
      caffe_rng_uniform(x.count(), Dtype(-2), Dtype(2), x.mutable_cpu_data());
      Dtype* data = x.mutable_cpu_data();
      for (int i = 0; i < x.count(); ++i) {
        const unsigned r = caffe_rng_rand() % 16;
        if (r < 7) {  // ties and special values, about half of them
          data[i] = specials[r];
        }
        if (backward && !(data[i] > Dtype(-FLT_MAX))) {
          // (NaN, -inf, -FLT_MAX:) every window has a winner; the backward
          // pass would write through a -1 index
          data[i] = 3;
        }
      }
      LayerParameter param;
      PoolingParameter* pooling = param.mutable_pooling_param();
      pooling->set_pool(PoolingParameter_PoolMethod_MAX);
      pooling->set_kernel_size(2);
      pooling->set_stride(2);
      PoolingLayer<Dtype> layer(param);
      vector<Blob<Dtype>*> bottoms(1, &x), tops(1, &top);
      if (!backward) {
        tops.push_back(&top_mask);
      }
      layer.SetUp(bottoms, tops);
      layer.Forward(bottoms, tops);
      const int ph_n = top.height(), pw_n = top.width();
      if (backward) {
        caffe_rng_uniform(top.count(), Dtype(-1), Dtype(1),
                          top.mutable_cpu_diff());
        layer.Backward(tops, vector<bool>(1, true), bottoms);
      }
      vector<Dtype> want_diff(x.count(), Dtype(0));
      for (int p = 0; p < 6; ++p) {
        const Dtype* plane = x.cpu_data() + p * height * width;
        for (int ph = 0; ph < ph_n; ++ph) {
          for (int pw = 0; pw < pw_n; ++pw) {
            Dtype best = -FLT_MAX;
            int arg = -1;
            for (int h = 2 * ph; h < std::min(2 * ph + 2, height); ++h) {
              for (int w = 2 * pw; w < std::min(2 * pw + 2, width); ++w) {
                if (plane[h * width + w] > best) {
                  best = plane[h * width + w];
                  arg = h * width + w;
                }
              }
            }
            const int i = (p * ph_n + ph) * pw_n + pw;
            const Dtype got = top.cpu_data()[i];
            ASSERT_TRUE(got == best && std::signbit(got) == std::signbit(best))
                << height << " x " << width << " plane " << p << " (" << ph
                << ", " << pw << "): " << got << ", want " << best;
            if (backward) {
              want_diff[p * height * width + arg] += top.cpu_diff()[i];
            } else {
              ASSERT_EQ(Dtype(arg), top_mask.cpu_data()[i])
                  << height << " x " << width << " plane " << p << " (" << ph
                  << ", " << pw << ")";
            }
          }
        }
      }
      for (int i = 0; backward && i < x.count(); ++i) {
        ASSERT_EQ(want_diff[i], x.cpu_diff()[i])
            << height << " x " << width << " bottom diff at " << i;
      }
    }
  }
}

TYPED_TEST(CpuThreadedLayersTest, LeakyReLUMatchesOneThread) {
  LayerParameter param;
  param.set_type("ReLU");
  param.mutable_relu_param()->set_negative_slope(0.1);
  this->CheckThreadsMatchOne(param, 1, "leaky ReLU");
}

TYPED_TEST(CpuThreadedLayersTest, SigmoidAndTanHMatchOneThread) {
  LayerParameter param;
  param.set_type("Sigmoid");
  this->CheckThreadsMatchOne(param, 1, "Sigmoid");
  param.set_type("TanH");
  this->CheckThreadsMatchOne(param, 1, "TanH");
}

TYPED_TEST(CpuThreadedLayersTest, UnpoolingMatchesOneThread) {
  LayerParameter param;
  param.set_type("Unpooling");
  param.mutable_pooling_param()->set_kernel_size(2);
  param.mutable_pooling_param()->set_stride(2);
  param.mutable_unpooling_param()->set_out_h(63);
  param.mutable_unpooling_param()->set_out_w(65);
  this->CheckThreadsMatchOne(param, 1, "unpooling, known switches", 1);
  this->CheckThreadsMatchOne(param, 1, "unpooling, fixed switches", 0);
}

TYPED_TEST(CpuThreadedLayersTest, LadderLayersMatchOneThread) {
  LayerParameter param;
  param.set_type("BatchStats");
  this->CheckThreadsMatchOne(param, 2, "batch statistics");
  param.set_type("Normalize");
  this->CheckThreadsMatchOne(param, 1, "normalize");
  param.set_type("LadderCombinator");
  this->CheckThreadsMatchOne(param, 1, "ladder combinator");
}

}  // namespace caffe
