// The refinement's render gather (used by refine.cc's driver for CUDA): the region renders of
// the frames refined at once, queued by their worker threads and made as few large
// RenderConePixelsBatch calls by a render thread of its own.
#pragma once

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "fluororeg/render.h"

namespace fluororeg {
namespace internal {

// Gathers the renders of `workers` threads (one per frame in flight) into RenderConePixelsBatch
// calls, one per volume, made by its render thread: while that thread renders one batch, the
// workers do their host work (features, Jacobians, steps, the next level's regions) and queue
// the next. A batch goes as soon as every running worker has queued its requests, or kBatchWaitUs
// after the render thread became free (the frames' host work differs: no frame waits for the
// slowest). On CUDA that turns each frame's dozens of small, synchronised calls into a few large
// launches. Every pixel gets the value its own call would give, so results do not depend on
// how the requests were batched.
class RenderGather {
 public:
  RenderGather(int workers, const RenderOptions& options);
  ~RenderGather();  // after every worker is done
  RenderGather(const RenderGather&) = delete;
  RenderGather& operator=(const RenderGather&) = delete;

  // The n requests of one worker on `volume` (their outputs sized by the caller), rendered in
  // the same batch; blocks until it is rendered; rethrows the batch call's error.
  void Render(const RenderVolume& volume, const ConePixelRequest* requests, int n);

  // A worker has no frame left: batches no longer wait for it.
  void WorkerDone();

 private:
  // How long a batch waits for more requests once the render thread is free (unless every
  // running worker has queued one). Chosen, not measured as an optimum.
  static constexpr int kBatchWaitUs = 200;

  struct Item {
    const RenderVolume* volume = nullptr;
    ConePixelRequest request;
    bool done = false;
    std::exception_ptr error;
  };

  void Serve();  // the render thread

  std::mutex mutex_;
  std::condition_variable queued_, done_;
  int active_;              // workers still refining frames
  int queued_workers_ = 0;  // workers whose requests are in pending_
  bool stop_ = false;
  RenderOptions options_;
  std::vector<Item*> pending_;
  std::thread thread_;  // last: started once the members above exist
};

}  // namespace internal
}  // namespace fluororeg
