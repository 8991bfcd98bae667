"""Running a study on Dask (``dask.distributed``): the cluster, submission with retries and
resources, progress, failures and Ctrl-C.

:func:`run_study` checks every file the manifest names, builds the task graph
(:mod:`fluororeg.study.graph`) and submits it to

* a ``LocalCluster`` by default: one worker process per core (``workers``), one thread per
  worker, native thread pools pinned through the workers' environment (``OMP_NUM_THREADS``,
  ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` = ``threads_per_task``) and inside each task
  (torch, onnxruntime sessions, the C++ core's ``num_threads``), so that N workers use N cores
  and do not oversubscribe them; when a subject or recording asks for ``device = "cuda"`` the
  local workers get the resource ``GPU=1``;
* an existing cluster with ``scheduler="tcp://host:8786"``: its workers must see the same
  file system paths and have fluororeg installed; tasks with ``device = "cuda"`` carry the
  resource annotation ``GPU=1`` (start GPU workers with ``dask worker ... --resources GPU=1``).

Each task is retried ``retries`` times (Dask ``retries=``); a worker that dies mid-task has
its tasks rescheduled on the others, and since every task resumes from what is on disk
(fingerprinted model stages, per-chunk detections) the study ends with the same results. A
task that still fails is reported (its dependents are reported as not run), never dropped:
:attr:`StudyRun.ok` is False and the summary lists the failures. Progress of the whole study
(tasks done / running / failed, frame pairs processed and frame pairs/s) is printed every
``progress_every_s`` seconds. Ctrl-C cancels the study's tasks, shuts the local cluster down
and raises ``KeyboardInterrupt``; finished work stays on disk and a rerun resumes.
"""

from __future__ import annotations

import os
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fluororeg.study.graph import Dep, Task, build_graph
from fluororeg.study.manifest import ManifestError, Study

__all__ = ["TaskOutcome", "StudyRun", "run_study", "start_local_cluster", "require_dask", "default_out"]

DASK_HINT = "fluororeg study run needs Dask: pip install fluororeg[study]  (or: pip install \"dask[distributed]\")"


def require_dask():
    """Import ``dask.distributed`` or raise a one-line ImportError naming the extra."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ImportError(DASK_HINT) from None
    return distributed


def default_out(study: Study) -> Path:
    return study.out if study.out is not None else Path("out") / "study" / study.name


@dataclass
class TaskOutcome:
    key: str
    kind: str
    label: str
    status: str = "pending"     # pending | done | failed | not_run | cancelled
    result: Any = None
    error: str | None = None    # one line
    traceback: str | None = None


@dataclass
class StudyRun:
    study: Study
    out: Path
    outcomes: dict[str, TaskOutcome]
    seconds: float                       # from submission to the last task
    frame_pairs_processed: int           # frame pairs this run registered or flagged (resumed ones excluded)
    workers: int
    summary: dict = field(default_factory=dict)   # paths written by fluororeg.study.summary

    @property
    def failures(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes.values() if o.status in ("failed", "not_run", "cancelled")]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def frame_pairs_per_s(self) -> float:
        return self.frame_pairs_processed / self.seconds if self.seconds > 0 else float("nan")


def start_local_cluster(workers: int | None = None, *, threads_per_task: int = 1, gpu: bool = False):
    """A ``LocalCluster`` of ``workers`` processes (default: one per core) with one thread each
    and pinned native thread pools; returns ``(cluster, client)``. Dask's own log lines are
    silenced below CRITICAL: a failed task is the study's to report (its table, and the
    traceback in ``failures.log``), not a worker's "Compute Failed" traceback beside it."""
    import logging

    from distributed import Client, LocalCluster

    n = workers if workers is not None else (os.cpu_count() or 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"workers = {workers!r}: expected an integer >= 1")
    env = {var: str(threads_per_task) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, env=env, dashboard_address=None,
                           silence_logs=logging.CRITICAL, resources={"GPU": 1} if gpu else None)
    client = Client(cluster)
    # Ctrl-C in a terminal reaches the local workers too: they leave it to the study (which
    # cancels the tasks and closes the cluster) instead of dying with tracebacks. A plugin, so
    # that workers restarted by their nanny get it as well.
    from fluororeg.study._worker import IgnoreInterrupt, PlainWarnings

    client.register_plugin(IgnoreInterrupt(), name="fluororeg-ignore-sigint")
    client.register_plugin(PlainWarnings(), name="fluororeg-plain-warnings")
    return cluster, client


def _resolve(value, futures: dict):
    if isinstance(value, Dep):
        return futures[value.key]
    if isinstance(value, list):
        return [_resolve(v, futures) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve(v, futures) for v in value)
    return value


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return " ".join(text.split())


def run_study(study: Study, out=None, *, scheduler: str | None = None, workers: int | None = None, client=None,
              progress_every_s: float | None = None, say: Callable[[str], None] = print, check: bool = True,
              write_summary: bool = True) -> StudyRun:
    """Run (or resume) ``study`` into ``out`` (default: the manifest's ``[study] out``, else
    ``out/study/<name>``) and write its summary. ``client``: an existing
    ``distributed.Client`` (left open); else ``scheduler`` (an address) or a new
    ``LocalCluster`` of ``workers`` processes (shut down at the end). ``check``: validate every
    file the manifest names first (:class:`ManifestError` listing every problem)."""
    require_dask()
    from fluororeg.study.inputs import check_study_files

    out = Path(out) if out is not None else default_out(study)
    if check:
        problems = check_study_files(study)
        if problems:
            raise ManifestError(study.path, problems)
    out.mkdir(parents=True, exist_ok=True)
    from fluororeg.io.run_lock import run_folder_lock

    with run_folder_lock(out, "study run"):  # one study run per output folder at a time
        return _run_in(study, out, scheduler, workers, client, progress_every_s, say, write_summary)


def _run_in(study, out, scheduler, workers, client, progress_every_s, say, write_summary) -> StudyRun:
    tasks = build_graph(study, out)
    gpu = any(t.gpu for t in tasks)
    cluster = None
    own_client = client is None
    if client is None:
        if scheduler is not None:
            from distributed import Client

            client = Client(scheduler)
        else:
            cluster, client = start_local_cluster(workers, threads_per_task=study.threads_per_task, gpu=gpu)
    every = study.progress_every_s if progress_every_s is None else float(progress_every_s)
    try:
        info = client.scheduler_info().get("workers", {})
        n_workers = len(info)
        if gpu and not any(w.get("resources", {}).get("GPU", 0) >= 1 for w in info.values()):
            raise RuntimeError("the study has device = \"cuda\" tasks but no worker of the cluster offers the resource "
                               "GPU (start GPU workers with: dask worker ADDRESS --resources GPU=1); they would wait "
                               "forever")
        where = f"Dask cluster {scheduler}" if scheduler else "a local Dask cluster"
        say(f"[study] {study.name}: {len(study.subjects)} subject(s), {len(study.recordings)} recording(s), "
            f"{len(tasks)} tasks on {where} of {n_workers} worker(s) -> {out}")
        return _execute(study, out, tasks, client, every, say, n_workers, write_summary)
    finally:
        if own_client:
            client.close()
            if cluster is not None:
                cluster.close()


def _execute(study, out, tasks: list[Task], client, every: float, say, n_workers: int, write_summary: bool):
    token = uuid.uuid4().hex[:8]
    futures: dict = {}
    outcomes = {t.key: TaskOutcome(t.key, t.kind, t.label) for t in tasks}
    by_key = {t.key: t for t in tasks}
    dask_key = {}
    t0 = time.perf_counter()
    for t in tasks:
        k = f"study-{token}-{t.key}"
        dask_key[k] = t.key
        futures[t.key] = client.submit(t.func, *_resolve(t.args, futures), key=k, retries=study.retries,
                                       resources={"GPU": 1} if t.gpu else None, pure=False)
    frames = 0
    last_print = time.perf_counter()
    pending = set(futures)
    try:
        while pending:
            time.sleep(0.2)
            for key in [t.key for t in tasks if t.key in pending]:  # dependency order
                fut = futures[key]
                if not fut.done():
                    continue
                pending.discard(key)
                o = outcomes[key]
                if fut.status == "finished":
                    o.status, o.result = "done", fut.result()
                    if o.kind == "register" and not o.result.get("skipped"):
                        frames += int(o.result.get("frames", 0))
                    if o.kind == "register":
                        r = o.result
                        say(f"[study] registered {o.label}: {r['registered']}/{r['frames']} frame pairs"
                            + (" (already done)" if r.get("skipped") else f" in {r['task_seconds']:.1f} s"))
                    elif o.kind == "models":
                        stages = "; ".join(f"{k} {v}" for k, v in o.result.get("stages", {}).items())
                        say(f"[study] models of {o.label}: {stages}")
                elif fut.status == "cancelled":
                    o.status, o.error = "cancelled", "cancelled (the cluster lost the task or was shut down)"
                else:
                    failed_deps = [d for d in by_key[key].deps if outcomes[d].status in ("failed", "not_run")]
                    if failed_deps:
                        o.status, o.error = "not_run", f"not run: {', '.join(failed_deps)} failed"
                    else:
                        exc = fut.exception()
                        o.status, o.error = "failed", _one_line(exc)
                        o.traceback = "".join(traceback.format_exception(type(exc), exc, fut.traceback()))
                        say(f"[study] FAILED {key} after {study.retries} retries: {o.error}")
            if time.perf_counter() - last_print >= every and pending:
                last_print = time.perf_counter()
                say(_progress_line(outcomes, pending, client, dask_key, frames, time.perf_counter() - t0))
    except KeyboardInterrupt:
        client.cancel([futures[k] for k in pending])
        say(f"[study] interrupted: cancelled {len(pending)} task(s); finished work is kept in {out}; "
            "run again to resume")
        raise
    seconds = time.perf_counter() - t0
    run = StudyRun(study, out, outcomes, seconds, frames, n_workers)
    say(_progress_line(outcomes, set(), client, dask_key, frames, seconds).replace("[study]", "[study] finished:"))
    if write_summary:
        from fluororeg.study.summary import write_study_summary

        run.summary = write_study_summary(run)
        say(f"[study] summary: {run.summary['csv']}, {run.summary['md']}"
            + (f", {run.summary['plot']}" if run.summary.get("plot") else ""))
    if run.failures:
        say(failure_table(run))
    return run


def _progress_line(outcomes, pending, client, dask_key, frames: int, elapsed: float) -> str:
    done = sum(o.status == "done" for o in outcomes.values())
    failed = sum(o.status in ("failed", "not_run", "cancelled") for o in outcomes.values())
    running = 0
    try:  # tasks on a worker, at most as many as it has threads (the others wait there)
        threads = {a: w.get("nthreads", 1) for a, w in client.scheduler_info().get("workers", {}).items()}
        for addr, keys in client.processing().items():
            ours = [dask_key[k] for k in keys if k in dask_key and dask_key[k] in pending]
            running += min(len(ours), threads.get(addr, 1))
    except Exception:  # progress must never stop a study
        pass
    rate = frames / elapsed if elapsed > 0 else 0.0
    return (f"[study] {done}/{len(outcomes)} tasks done, {running} running, {failed} failed; {frames} frame pairs "
            f"processed, {rate:.1f} frame pairs/s; {elapsed:.0f} s")


def failure_table(run: StudyRun) -> str:
    rows = [f"{len(run.failures)} task(s) failed or did not run:", f"  {'task':<32} {'status':<9} error"]
    for o in run.failures:
        rows.append(f"  {o.key:<32} {o.status:<9} {o.error}")
    if run.summary:  # written: the tracebacks are beside it
        rows.append(f"  tracebacks: {Path(run.out) / 'failures.log'}")
    return "\n".join(rows)
