// A small fork-join helper for the CPU backend: run f(task) for task in [0, n_tasks) on up to
// num_threads threads (0 = all hardware threads). The first exception thrown by a task is
// re-thrown in the caller after all threads have joined.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace fluororeg {

inline int ResolveThreadCount(int num_threads) {
  if (num_threads > 0) return num_threads;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

template <typename F>
void ParallelFor(long long n_tasks, int num_threads, F&& f) {
  if (n_tasks <= 0) return;
  const int n_threads =
      static_cast<int>(std::min<long long>(ResolveThreadCount(num_threads), n_tasks));
  if (n_threads <= 1) {
    for (long long t = 0; t < n_tasks; ++t) f(t);
    return;
  }
  std::atomic<long long> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&]() {
    for (;;) {
      const long long t = next.fetch_add(1);
      if (t >= n_tasks) return;
      try {
        f(t);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next.store(n_tasks);  // stop handing out work
      }
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(n_threads - 1);
  for (int i = 0; i < n_threads - 1; ++i) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace fluororeg
