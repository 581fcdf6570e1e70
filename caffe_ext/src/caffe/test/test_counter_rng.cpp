#include <stdint.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/util/counter_rng.hpp"
#include "caffe/util/noise_stream.hpp"

#include "caffe/test/test_caffe_main.hpp"

namespace caffe {

using counter_rng::Block;
using counter_rng::Philox4x32_10;

// Random123's known-answer vectors for Philox-4x32-10 (kat_vectors).
TEST(CounterRngTest, TestPhiloxKnownAnswers) {
  const uint32_t kat[3][10] = {
    {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
    {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
     0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
    {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
     0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}};
  for (int t = 0; t < 3; ++t) {
    const uint32_t* k = kat[t];
    const Block b = Philox4x32_10(k[0], k[1], k[2], k[3], k[4], k[5]);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(k[6 + i], b.v[i]) << "vector " << t << " word " << i;
    }
  }
}

// Our log of n / 2^53 (1 <= n <= 2^53) against libm's, in long double.
TEST(CounterRngTest, TestLogUniform53) {
  const double two_m53 = 1.0 / 9007199254740992.0;
  std::vector<uint64_t> ns;
  const uint64_t edges[] = {1, 2, 3, 4, 5, 1000, 1ULL << 26, (1ULL << 52) - 1,
      1ULL << 52, (1ULL << 52) + 1, 6369051672525772ULL, 6369051672525773ULL,
      (1ULL << 53) - 2, (1ULL << 53) - 1, 1ULL << 53};
  ns.assign(edges, edges + sizeof(edges) / sizeof(edges[0]));
  for (uint32_t j = 0; j < 200000; ++j) {
    const Block b = Philox4x32_10(j, 0, 0, 0, 17, 4);
    const uint64_t bits = (static_cast<uint64_t>(b.v[0] >> 5) << 26)
                          | (b.v[1] >> 6);
    ns.push_back((bits >> (b.v[2] % 53)) + 1);  // every scale of u
  }
  double worst = 0;
  for (size_t i = 0; i < ns.size(); ++i) {
    const long double ref =
        std::log(static_cast<long double>(ns[i]) * two_m53);
    const double got = counter_rng::LogUniform53(ns[i]);
    const double err = static_cast<double>(std::fabs(got - ref) /
        std::max(std::fabs(ref), static_cast<long double>(1e-300)));
    worst = std::max(worst, err);
    ASSERT_LT(err, 2e-15) << "n = " << ns[i] << ": " << got << " vs "
                          << static_cast<double>(ref);
  }
  EXPECT_EQ(0, counter_rng::LogUniform53(1ULL << 53));
  std::cout << "largest relative error of LogUniform53: " << worst
            << std::endl;
}

// Our sin and cos of 2 pi t / 2^64 against libm's, in long double.
TEST(CounterRngTest, TestSinCosTurns64) {
  std::vector<uint64_t> ts;
  for (uint64_t q = 0; q < 8; ++q) {  // the octants' edges, exact angles
    ts.push_back(q << 61);
    ts.push_back((q << 61) + 1);
    ts.push_back((q << 61) - 1);
  }
  for (uint32_t j = 0; j < 200000; ++j) {
    const Block b = Philox4x32_10(j, 1, 0, 0, 17, 4);
    ts.push_back((static_cast<uint64_t>(b.v[2]) << 32) | b.v[3]);
  }
  const long double two_pi = 6.283185307179586476925286766559L;
  double worst = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const long double angle = two_pi * (static_cast<long double>(ts[i])
                                        / 18446744073709551616.0L);
    double s, c;
    counter_rng::SinCosTurns64(ts[i], &s, &c);
    const double es = static_cast<double>(std::fabs(s - std::sin(angle)));
    const double ec = static_cast<double>(std::fabs(c - std::cos(angle)));
    worst = std::max(worst, std::max(es, ec));
    ASSERT_LT(std::max(es, ec), 1e-15) << "t = " << ts[i];
  }
  double s, c;
  counter_rng::SinCosTurns64(0, &s, &c);
  EXPECT_EQ(0, s);
  EXPECT_EQ(1, c);
  counter_rng::SinCosTurns64(1ULL << 62, &s, &c);  // a quarter turn
  EXPECT_EQ(1, s);
  EXPECT_EQ(0, c);
  std::cout << "largest absolute error of SinCosTurns64: " << worst
            << std::endl;
}

// 400,000 values of GaussianPair: the moments of N(0, 1), the fractions
// within 1, 2, 3 standard deviations, no correlation between a pair's two
// values; the largest |z| is below Box-Muller's bound sqrt(-2 ln 2^-53).
TEST(CounterRngTest, TestGaussianPairStatistics) {
  const int pairs = 200000;
  double m1 = 0, m2 = 0, m3 = 0, m4 = 0, cross = 0, largest = 0;
  int within[3] = {0, 0, 0};
  for (int j = 0; j < pairs; ++j) {
    double z[2];
    counter_rng::GaussianPair(Philox4x32_10(j, 0, 3, 0, 123, 456), &z[0],
                              &z[1]);
    cross += z[0] * z[1];
    for (int k = 0; k < 2; ++k) {
      const double v = z[k];
      m1 += v;
      m2 += v * v;
      m3 += v * v * v;
      m4 += v * v * v * v;
      largest = std::max(largest, std::fabs(v));
      for (int w = 0; w < 3; ++w) {
        within[w] += std::fabs(v) < w + 1;
      }
    }
  }
  const double n = 2.0 * pairs;
  EXPECT_NEAR(0, m1 / n, 0.006);       // standard errors: 0.0016,
  EXPECT_NEAR(1, m2 / n, 0.009);       // 0.0022,
  EXPECT_NEAR(0, m3 / n, 0.02);        // 0.0039,
  EXPECT_NEAR(3, m4 / n, 0.06);        // 0.015,
  EXPECT_NEAR(0, cross / pairs, 0.01);  // 0.0022
  const double expected[3] = {0.682689, 0.954500, 0.997300};
  for (int w = 0; w < 3; ++w) {
    EXPECT_NEAR(expected[w], within[w] / n, 0.004);
  }
  EXPECT_LT(largest, 8.58);
  EXPECT_GT(largest, 4);
}

// The state's 16-bit pieces hold any 64-bit key and counter exactly in
// float; a value off an integer (a stray update) reads as the nearest one.
TEST(CounterRngTest, TestStateHoldsKeyAndCounterExactly) {
  Blob<float> state(std::vector<int>(1, noise_stream::kStateSize));
  const uint64_t values[] = {0, 1, 65535, 65536, 0xFFFFFFFFULL,
      0x123456789ABCDEF0ULL, 0xFFFFFFFFFFFFFFFFULL};
  for (int i = 0; i < 7; ++i) {
    noise_stream::SetKey(values[i], &state);
    noise_stream::SetCounter(values[6 - i], &state);
    EXPECT_EQ(values[i], noise_stream::Key(state));
    EXPECT_EQ(values[6 - i], noise_stream::Counter(state));
    for (int k = 0; k < noise_stream::kStateSize; ++k) {
      const float v = state.cpu_data()[k];
      EXPECT_TRUE(v >= 0 && v <= 65535 && v == std::floor(v));
    }
  }
  noise_stream::SetKey(0x0001000200030004ULL, &state);
  state.mutable_cpu_data()[0] += 0.3f;
  state.mutable_cpu_data()[1] -= 0.3f;
  EXPECT_EQ(0x0001000200030004ULL, noise_stream::Key(state));
  noise_stream::Advance(&state);
  EXPECT_EQ(values[0] + 1, noise_stream::Counter(state));
}

}  // namespace caffe
