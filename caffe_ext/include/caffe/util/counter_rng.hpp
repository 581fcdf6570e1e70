#ifndef CAFFE_UTIL_COUNTER_RNG_HPP_
#define CAFFE_UTIL_COUNTER_RNG_HPP_

#include <stdint.h>

#include <cmath>

/**
 * recon-dec (GaussianNoise, MaskingNoise): a counter-based random stream,
 * the same integer and floating-point operations on the CPU and in CUDA
 * kernels, so both compute bit-identical noise for the same (key, counter).
 *
 * - Philox-4x32-10 (Salmon, Moraes, Dror & Shaw, SC 2011): four 32-bit
 *   words from a 128-bit counter and a 64-bit key, a pure function (checked
 *   against the published known-answer vectors in test_counter_rng.cpp).
 * - GaussianPair: two independent N(0, 1) values by Box-Muller from one
 *   Philox block, u in (0, 1] from 53 bits and the angle from 64 bits,
 *   computed in double with our own log and sin/cos (below) built from
 *   + - * / and sqrt only, each IEEE-754 correctly rounded on both sides:
 *   no libm, whose last bit differs between glibc and CUDA. On the device
 *   every operation is an explicit round-to-nearest intrinsic (__dmul_rn,
 *   __dadd_rn, ...), which nvcc never contracts into an FMA; the host code
 *   must not contract either (the x86-64 baseline has no FMA instruction;
 *   a host build with -mfma / -march=native under GCC's default
 *   -ffp-contract=fast could change the last bit of a CPU value, hence the
 *   warning below). Accuracy: log, sin and cos to a few double ulps, far
 *   below float's resolution.
 */

#if defined(__CUDACC__)
#define RECON_RNG_HD __host__ __device__ __forceinline__
#else
#define RECON_RNG_HD inline
#endif

#if !defined(__CUDA_ARCH__) && defined(__FP_FAST_FMA) && defined(__GNUC__) \
    && !defined(__clang__)
// GCC may contract a*b+c into an FMA here: CPU noise could then differ from
// the GPU's in the last bit (build without -mfma/-march=native, or add
// -ffp-contract=off).
#warning "counter_rng.hpp: host FMA: CPU and GPU noise may differ in a bit"
#endif

namespace caffe {
namespace counter_rng {

// ---- Philox-4x32-10 --------------------------------------------------------

struct Block {
  uint32_t v[4];
};

RECON_RNG_HD Block Philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2,
                                 uint32_t c3, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {  // the key schedule: Weyl sequence
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32);
    const uint32_t lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32);
    const uint32_t lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  Block b;
  b.v[0] = c0;
  b.v[1] = c1;
  b.v[2] = c2;
  b.v[3] = c3;
  return b;
}

/**
 * Where a layer's draws come from: its key, its counter (one value per
 * TRAIN forward pass) and the solver's rank (0 unless several GPUs train
 * one net: each then draws its own noise). Element block i of a forward
 * pass is Philox(i, rank, counter low, counter high; key).
 */
struct Stream {
  uint32_t key0, key1;
  uint32_t counter_lo, counter_hi;
  uint32_t rank;
};

RECON_RNG_HD Block Draw(const Stream& s, uint32_t block) {
  return Philox4x32_10(block, s.rank, s.counter_lo, s.counter_hi, s.key0,
                       s.key1);
}

// ---- correctly rounded double operations, never contracted -----------------

RECON_RNG_HD double Mul(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
RECON_RNG_HD double Add(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
RECON_RNG_HD double Div(double a, double b) {
#ifdef __CUDA_ARCH__
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
RECON_RNG_HD double Sqrt(double a) {
#ifdef __CUDA_ARCH__
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
RECON_RNG_HD float AddRn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
RECON_RNG_HD double AddRn(double a, double b) { return Add(a, b); }

RECON_RNG_HD int HighestBit64(uint64_t n) {  // n > 0
#ifdef __CUDA_ARCH__
  return 63 - __clzll(static_cast<long long>(n));
#else
  return 63 - __builtin_clzll(n);
#endif
}

// 2^-52 and 2^-53, exact.
#define RECON_RNG_TWO_M52 (1.0 / 4503599627370496.0)
#define RECON_RNG_TWO_M53 (1.0 / 9007199254740992.0)

/**
 * ln(n / 2^53) for 1 <= n <= 2^53: n = m 2^e exactly with m in
 * [sqrt(1/2), sqrt(2)], ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <
 * 0.172, by its series to s^23 (truncation < 1e-18 relative).
 */
RECON_RNG_HD double LogUniform53(uint64_t n) {
  int e = HighestBit64(n);
  // n scaled by 2^(52 - e) has its top bit at 52 (e = 53 only for n = 2^53,
  // whose low bits are 0): m = that / 2^52 in [1, 2), exact
  const uint64_t top = e <= 52 ? n << (52 - e) : n >> (e - 52);
  double m = Mul(static_cast<double>(top), RECON_RNG_TWO_M52);
  if (m > 1.4142135623730951) {
    m = Mul(m, 0.5);
    e += 1;
  }
  const double s = Div(Add(m, -1.0), Add(m, 1.0));
  const double s2 = Mul(s, s);
  double p = 0.043478260869565216;                 // 1/23
  p = Add(Mul(p, s2), 0.047619047619047616);       // 1/21
  p = Add(Mul(p, s2), 0.052631578947368418);       // 1/19
  p = Add(Mul(p, s2), 0.058823529411764705);       // 1/17
  p = Add(Mul(p, s2), 0.066666666666666666);       // 1/15
  p = Add(Mul(p, s2), 0.076923076923076927);       // 1/13
  p = Add(Mul(p, s2), 0.090909090909090912);       // 1/11
  p = Add(Mul(p, s2), 0.1111111111111111);         // 1/9
  p = Add(Mul(p, s2), 0.14285714285714285);        // 1/7
  p = Add(Mul(p, s2), 0.20000000000000001);        // 1/5
  p = Add(Mul(p, s2), 0.33333333333333331);        // 1/3
  p = Add(Mul(p, s2), 1.0);
  const double ln_m = Mul(Mul(2.0, s), p);
  return Add(ln_m, Mul(static_cast<double>(e - 53), 0.69314718055994529));
}

/**
 * sin and cos of 2 pi t / 2^64: the quadrant from t's top two bits, the
 * angle within it folded into [0, pi/4] (exactly, in integers), then
 * Taylor series to a^17 / a^18 (truncation < 1e-19).
 */
RECON_RNG_HD void SinCosTurns64(uint64_t t, double* sin_out, double* cos_out) {
  const unsigned int quadrant = static_cast<unsigned int>(t >> 62);
  uint64_t f = t << 2;             // position within the quadrant, / 2^64
  const bool upper = (f >> 63) != 0;
  if (upper) {
    f = static_cast<uint64_t>(0) - f;  // distance to the quadrant's end
  }
  // x = f / 2^64 in [0, 1/2] (f >> 11 < 2^53: exact), a = x pi/2
  const double a = Mul(Mul(static_cast<double>(f >> 11), RECON_RNG_TWO_M53),
                       1.5707963267948966);
  const double a2 = Mul(a, a);
  double sp = 2.8114572543455206e-15;                   // 1/17!
  sp = Add(Mul(sp, a2), -7.6471637318198164e-13);       // -1/15!
  sp = Add(Mul(sp, a2), 1.6059043836821613e-10);        // 1/13!
  sp = Add(Mul(sp, a2), -2.505210838544172e-08);        // -1/11!
  sp = Add(Mul(sp, a2), 2.7557319223985893e-06);        // 1/9!
  sp = Add(Mul(sp, a2), -0.00019841269841269841);       // -1/7!
  sp = Add(Mul(sp, a2), 0.0083333333333333332);         // 1/5!
  sp = Add(Mul(sp, a2), -0.16666666666666666);          // -1/3!
  sp = Add(Mul(sp, a2), 1.0);
  const double sin_a = Mul(a, sp);
  double cp = -1.5619206968586225e-16;                  // -1/18!
  cp = Add(Mul(cp, a2), 4.7794773323873853e-14);        // 1/16!
  cp = Add(Mul(cp, a2), -1.1470745597729725e-11);       // -1/14!
  cp = Add(Mul(cp, a2), 2.08767569878681e-09);          // 1/12!
  cp = Add(Mul(cp, a2), -2.7557319223985888e-07);       // -1/10!
  cp = Add(Mul(cp, a2), 2.4801587301587302e-05);        // 1/8!
  cp = Add(Mul(cp, a2), -0.0013888888888888889);        // -1/6!
  cp = Add(Mul(cp, a2), 0.041666666666666664);          // 1/4!
  cp = Add(Mul(cp, a2), -0.5);                          // -1/2!
  cp = Add(Mul(cp, a2), 1.0);
  const double cos_a = cp;
  // within the quadrant: angle b = a, or pi/2 - a in its upper half
  const double sb = upper ? cos_a : sin_a;
  const double cb = upper ? sin_a : cos_a;
  switch (quadrant) {  // angle = quadrant pi/2 + b
    case 0: *sin_out = sb; *cos_out = cb; break;
    case 1: *sin_out = cb; *cos_out = -sb; break;
    case 2: *sin_out = -sb; *cos_out = -cb; break;
    default: *sin_out = -cb; *cos_out = sb; break;
  }
}

/**
 * Two independent N(0, 1) values from one Philox block by Box-Muller:
 * u = (53 bits of v[0], v[1] + 1) / 2^53 in (0, 1], the angle 2 pi
 * (v[2], v[3]) / 2^64; z0 = r cos, z1 = r sin, r = sqrt(-2 ln u) <= 8.58.
 */
RECON_RNG_HD void GaussianPair(const Block& b, double* z0, double* z1) {
  const uint64_t n = ((static_cast<uint64_t>(b.v[0] >> 5) << 26)
                      | static_cast<uint64_t>(b.v[1] >> 6)) + 1;
  const uint64_t t = (static_cast<uint64_t>(b.v[2]) << 32) | b.v[3];
  const double r = Sqrt(Mul(-2.0, LogUniform53(n)));
  double s, c;
  SinCosTurns64(t, &s, &c);
  *z0 = Mul(r, c);
  *z1 = Mul(r, s);
}

/**
 * GaussianNoise's values i = 2 j and 2 j + 1 come from block j: with
 * mean 0 and standard deviation sigma, rounded once to Dtype.
 */
template <typename Dtype>
RECON_RNG_HD void GaussianNoisePair(const Stream& s, uint32_t j, double sigma,
                                    Dtype* n0, Dtype* n1) {
  double z0, z1;
  GaussianPair(Draw(s, j), &z0, &z1);
  *n0 = static_cast<Dtype>(Mul(z0, sigma));
  *n1 = static_cast<Dtype>(Mul(z1, sigma));
}

/**
 * MaskingNoise keeps value i when word i % 4 of block i / 4 is >= threshold
 * (threshold = ratio 2^32, so P(drop) = ratio); ratio 1 drops all.
 */
RECON_RNG_HD bool Keep(uint32_t word, uint32_t threshold, bool drop_all) {
  return !drop_all && word >= threshold;
}

}  // namespace counter_rng
}  // namespace caffe

#endif  // CAFFE_UTIL_COUNTER_RNG_HPP_
