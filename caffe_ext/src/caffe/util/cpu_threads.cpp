#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>  // NOLINT(build/c++11)
#include <condition_variable>  // NOLINT(build/c++11)
#include <cstdint>
#include <functional>
#include <mutex>  // NOLINT(build/c++11)
#include <thread>  // NOLINT(build/c++11)

#include "caffe/util/cpu_threads.hpp"

// OpenBLAS's thread controls (cblas.h), weak: NULL when the BLAS linked is
// another (the GPU bundle links Debian's reference libblas).
extern "C" int openblas_get_num_threads(void) __attribute__((weak));
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace caffe {

namespace {

thread_local bool in_parallel_region = false;

// Marks the current thread as inside a block while alive.
class RegionGuard {
 public:
  RegionGuard() { in_parallel_region = true; }
  ~RegionGuard() { in_parallel_region = false; }
};

// Busy-waits up to ~kSpin for `done()`, then gives up (returns false): the
// next parallel region usually follows within a few layers' time, and a
// futex wake-up costs more than that wait on a small layer.
const std::chrono::microseconds kSpin(50);

template <typename Done>
bool SpinUntil(const Done& done) {
  const std::chrono::steady_clock::time_point end =
      std::chrono::steady_clock::now() + kSpin;
  for (int i = 0; ; ++i) {
    if (done()) {
      return true;
    }
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > end) {
      return false;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

// Workers wait for a new generation, run their block of it, and count down
// `pending_`; the caller runs block 0 and waits for the count to reach 0.
// One region at a time (run_mutex_). Never destroyed: workers may still be
// parked at exit, and a destructor would race static destruction order.
class Pool {
 public:
  Pool() : pid_(getpid()), workers_(0), fn_(NULL), threads_(0), n_(0),
           generation_(0), pending_(0) {}

  pid_t pid() const { return pid_; }

  void Run(int threads, int n, const std::function<void(int, int, int)>& fn) {
    std::lock_guard<std::mutex> run(run_mutex_);
    while (workers_ < threads - 1) {
      std::thread(&Pool::Work, this, ++workers_).detach();
    }
    fn_ = &fn;
    threads_ = threads;
    n_ = n;
    pending_.store(workers_, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    {
      RegionGuard region;
      fn(0, 0, Begin(1));
    }
    if (!SpinUntil([this]() {
          return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this]() {
        return pending_.load(std::memory_order_acquire) == 0; });
    }
    fn_ = NULL;
  }

 private:
  int Begin(int t) const {
    return static_cast<int>(static_cast<int64_t>(n_) * t / threads_);
  }

  void Work(int id) {
    uint64_t seen = 0;
    for (;;) {
      if (!SpinUntil([this, seen]() {
            return generation_.load(std::memory_order_acquire) != seen; })) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this, seen]() {
          return generation_.load(std::memory_order_acquire) != seen; });
      }
      seen = generation_.load(std::memory_order_acquire);
      if (id < threads_) {
        RegionGuard region;
        (*fn_)(id, Begin(id), Begin(id + 1));
      }
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_one();
      }
    }
  }

  const pid_t pid_;
  int workers_;  // threads started (detached), ids 1 .. workers_
  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int, int, int)>* fn_;
  int threads_;
  int n_;
  std::atomic<uint64_t> generation_;
  std::atomic<int> pending_;
};

std::mutex pool_mutex;
Pool* pool = NULL;

// The pool of this process: a child of fork() has none of its parent's
// workers, so it starts its own.
Pool* ThePool() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  if (pool == NULL || pool->pid() != getpid()) {
    pool = new Pool();  // the parent's (if any) is left: its threads are gone
  }
  return pool;
}

int& ThreadCount() {
  static int count = []() {
    const int threads =
        openblas_get_num_threads ? openblas_get_num_threads() : 1;
    if (openblas_set_num_threads) {
      openblas_set_num_threads(1);
    }
    return std::max(1, threads);
  }();
  return count;
}

}  // namespace

int CpuThreads() {
  return ThreadCount();
}

void SetCpuThreads(int threads) {
  ThreadCount() = std::max(1, threads);
}

bool InParallelRegion() {
  return in_parallel_region;
}

int ThreadsFor(double work, double min_per_thread) {
  if (in_parallel_region) {
    return 1;
  }
  const double fit = work / std::max(min_per_thread, 1.0);
  return std::max(1, std::min(CpuThreads(),
      static_cast<int>(std::min(fit, 1e6))));
}

void ParallelFor(int threads, int n,
    const std::function<void(int, int, int)>& fn) {
  threads = std::min(threads, n);
  if (threads <= 1 || in_parallel_region) {
    fn(0, 0, n);
    return;
  }
  ThePool()->Run(threads, n, fn);
}

}  // namespace caffe

// C entries for Python's ctypes (pycaffe has no binding): recon-dec's job
// runner sets one thread in a process that may have used Caffe already.
extern "C" int caffe_cpu_threads() {
  return caffe::CpuThreads();
}

extern "C" void caffe_set_cpu_threads(int threads) {
  caffe::SetCpuThreads(threads);
}
