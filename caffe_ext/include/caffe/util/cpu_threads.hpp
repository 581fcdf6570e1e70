#ifndef CAFFE_UTIL_CPU_THREADS_HPP_
#define CAFFE_UTIL_CPU_THREADS_HPP_

#include <functional>

namespace caffe {

/**
 * recon-dec (issue 14): Caffe's own CPU threads. The CPU paths that split
 * work over threads (convolution and deconvolution over a batch's images,
 * large GEMMs in column or row blocks, pooling, Unpooling and ReLU over
 * planes or ranges) all run on one persistent pool of CpuThreads() threads.
 *
 * The count is taken once, at first use, from OpenBLAS
 * (openblas_get_num_threads(), i.e. OPENBLAS_NUM_THREADS, else the cores),
 * and OpenBLAS is then set to one thread for good: its idle workers spin
 * (sched_yield) for a long while after every threaded BLAS call, and on a
 * 2-core machine they took the second core from ours (two threads were
 * slower than one). With another BLAS than OpenBLAS the count starts at 1.
 */
int CpuThreads();

/**
 * Sets the count (>= 1) for the whole process; the pool grows to match.
 * Also callable as extern "C" caffe_set_cpu_threads (and the count read as
 * caffe_cpu_threads) from Python's ctypes.
 */
void SetCpuThreads(int threads);

/** CpuThreads() set to `threads` while alive (tests, benchmarks). */
class ScopedCpuThreads {
 public:
  explicit ScopedCpuThreads(int threads) : saved_(CpuThreads()) {
    SetCpuThreads(threads);
  }
  ~ScopedCpuThreads() { SetCpuThreads(saved_); }

 private:
  int saved_;
};

/**
 * Runs fn(t, begin, end) for t = 0 .. threads - 1 on the contiguous blocks
 * [n t / threads, n (t + 1) / threads) of [0, n), block 0 on the calling
 * thread, the others on the pool, and returns when all are done. Serial
 * (one call, fn(0, 0, n)) when threads <= 1 or when called from inside a
 * block: nested parallel regions do not multiply the threads. fn must not
 * touch Caffe's thread-local state (the Caffe singleton, Blob syncing).
 */
void ParallelFor(int threads, int n,
    const std::function<void(int, int, int)>& fn);

/** True on a thread that is running a block of ParallelFor. */
bool InParallelRegion();

/**
 * Threads worth using for `work` units (e.g. elements touched, or FLOPs)
 * when a block should hold at least `min_per_thread` of them: at most
 * CpuThreads(), 1 inside a parallel region.
 */
int ThreadsFor(double work, double min_per_thread);

/**
 * How many values a thread should get at least before a plane-wise or
 * element-wise loop is split (below it a hand-off costs more than the work):
 * our layers' default.
 */
const int kMinValuesPerThread = 1 << 15;

/**
 * For an array of `planes` planes of `spatial` values each, plane p being of
 * channel p % channels (N x C x S in Caffe's layout): calls fn(offset, c)
 * for every plane, offset = p * spatial its first value, planes in blocks
 * over the threads when there are at least `min_values_per_thread` values a
 * thread. No division per plane: for S = 1 (an MLP's units) a plane is one
 * value.
 */
template <typename Fn>
void ForEachPlane(int planes, int channels, int spatial,
                  double min_values_per_thread, const Fn& fn) {
  ParallelFor(ThreadsFor(static_cast<double>(planes) * spatial,
                         min_values_per_thread), planes,
      [&](int t, int begin, int end) {
    int c = begin % channels;
    for (int p = begin; p < end; ++p) {
      fn(p * spatial, c);
      if (++c == channels) {
        c = 0;
      }
    }
  });
}

}  // namespace caffe

#endif  // CAFFE_UTIL_CPU_THREADS_HPP_
