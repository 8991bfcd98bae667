#include "refine/render_gather.h"

#include <algorithm>
#include <chrono>

namespace fluororeg {
namespace internal {

RenderGather::RenderGather(int workers, const RenderOptions& options)
    : active_(workers), options_(options), thread_([this] { Serve(); }) {}

RenderGather::~RenderGather() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  queued_.notify_all();
  thread_.join();
}

void RenderGather::Render(const RenderVolume& volume, const ConePixelRequest* requests, int n) {
  if (n == 0) return;
  std::vector<Item> items(n);
  for (int i = 0; i < n; ++i) {
    items[i].volume = &volume;
    items[i].request = requests[i];
  }
  std::unique_lock<std::mutex> lock(mutex_);
  for (Item& item : items) pending_.push_back(&item);
  ++queued_workers_;
  queued_.notify_one();
  done_.wait(lock, [&] {
    return std::all_of(items.begin(), items.end(), [](const Item& item) { return item.done; });
  });
  for (const Item& item : items) {
    if (item.error) std::rethrow_exception(item.error);
  }
}

void RenderGather::WorkerDone() {
  std::lock_guard<std::mutex> lock(mutex_);
  --active_;
  queued_.notify_one();
}

void RenderGather::Serve() {
  std::vector<Item*> batch;
  std::vector<ConePixelRequest> requests;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    queued_.wait(lock, [&] { return stop_ || !pending_.empty(); });
    if (stop_) return;
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::microseconds(kBatchWaitUs);
    queued_.wait_until(lock, deadline, [&] { return stop_ || queued_workers_ >= active_; });
    batch.swap(pending_);
    queued_workers_ = 0;
    lock.unlock();
    std::stable_sort(batch.begin(), batch.end(),
                     [](const Item* a, const Item* b) { return a->volume < b->volume; });
    for (size_t b = 0; b < batch.size();) {  // one call per volume
      size_t e = b;
      requests.clear();
      while (e < batch.size() && batch[e]->volume == batch[b]->volume) {
        requests.push_back(batch[e++]->request);
      }
      std::exception_ptr error;
      try {
        RenderConePixelsBatch(*batch[b]->volume, requests.data(),
                              static_cast<int>(requests.size()), options_);
      } catch (...) {
        error = std::current_exception();
      }
      for (; b < e; ++b) batch[b]->error = error;
    }
    lock.lock();
    for (Item* item : batch) item->done = true;
    batch.clear();
    done_.notify_all();
  }
}

}  // namespace internal
}  // namespace fluororeg
