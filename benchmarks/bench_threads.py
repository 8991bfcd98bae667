"""Threads that do not fight: style-training steps/s of one job alone and beside a second,
identical torch job on the same cores, for thread counts and OpenMP wait policies.

    python benchmarks/bench_threads.py --json out/bench_threads.json
    python benchmarks/bench_threads.py --quick

Each job trains the fast translator preset's generator and discriminator (CycleGAN pair of
one direction, 128 px, batch 1, random images: the cost of a step, not learning) for a fixed
time and reports steps/s. Configurations: ``--threads`` N per job (default: the CPUs this
process may run on) with OpenMP's active (spinning) and passive wait policies, and 1 thread.
The question (issue 20): which per-process setting keeps two jobs on one machine efficient.
JSON keys per configuration: ``alone_steps_per_s``, ``shared_steps_per_s`` (mean of the two
jobs), ``shared_total_steps_per_s``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _common import parser, report

WORKER = r"""
import sys, time
import torch
from fluororeg.training.translator_config import TranslatorConfig
from fluororeg.training.translator_networks import build_networks
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = TranslatorConfig.preset("fast", image_size=128)
nets = build_networks(cfg)
g, d = nets["G_xd"], nets["D_d"]
opt = torch.optim.Adam(list(g.parameters()) + list(d.parameters()), lr=1e-4)
x = torch.rand(1, 1, 128, 128) * 2 - 1
steps, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    opt.zero_grad()
    y = g(x)
    loss = d(y).mean() + (y - x).abs().mean()
    loss.backward()
    opt.step()
    steps += 1
print(steps / (time.perf_counter() - t0))
"""


def _run_jobs(n_jobs: int, threads: int, policy: str, seconds: float) -> list[float]:
    import fluororeg  # the workers import the same fluororeg (source tree or installed)

    env = dict(os.environ, OMP_WAIT_POLICY=policy, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(Path(fluororeg.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(threads), str(seconds)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(n_jobs)]
    rates = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"worker failed (exit {p.returncode})")
        rates.append(float(out.strip().splitlines()[-1]))
    return rates


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="threads per job of the multi-thread rows (0: the CPUs)")
    args = p.parse_args()
    from fluororeg.core.threads import available_cpus

    n = args.threads or available_cpus()
    seconds = 8.0 if args.quick else 25.0
    configs = [(f"{n}_threads_active", n, "ACTIVE"), (f"{n}_threads_passive", n, "PASSIVE"),
               ("1_thread_active", 1, "ACTIVE"), ("1_thread_passive", 1, "PASSIVE")]
    results = {"cpus": available_cpus(), "seconds_per_run": seconds, "load_average_start": os.getloadavg(),
               "configs": {}}
    print(f"{'configuration':<22} {'alone':>10} {'beside another':>16} {'both jobs':>10}   (steps/s)")
    for name, threads, policy in configs:
        alone = _run_jobs(1, threads, policy, seconds)[0]
        shared = _run_jobs(2, threads, policy, seconds)
        row = {"threads": threads, "omp_wait_policy": policy, "alone_steps_per_s": round(alone, 3),
               "shared_steps_per_s": round(sum(shared) / 2, 3), "shared_total_steps_per_s": round(sum(shared), 3)}
        results["configs"][name] = row
        print(f"{name:<22} {alone:10.2f} {row['shared_steps_per_s']:16.2f} {row['shared_total_steps_per_s']:10.2f}",
              flush=True)
    results["load_average_end"] = os.getloadavg()
    rows = [(f"{name} {k}", row[k], "steps/s") for name, row in results["configs"].items()
            for k in ("alone_steps_per_s", "shared_steps_per_s")]
    report("style-training steps/s, one job alone and each of two jobs sharing the cores", rows, results, args.json)


if __name__ == "__main__":
    main()
