"""The demo's three training runs in two worker processes on a CPU: the student's run (with
the teacher) in one, the baseline's and then the from-scratch run in the other, each with half
the CPU threads. Two 1-thread runs side by side got more from 2 cores than one 2-thread run
after another in the 50-step demo, not in 6-step runs where each worker's start-up dominates
(benchmarks/README.md, bench_demo_jobs.py), and the figures are the same bits (every kernel the runs
use gives the same result at 1 thread as at 2: tests/real/test_threads_same_bits.py).

When one worker has finished, the other takes every thread from its next step on. Each run
is an ordinary run folder, resumable on its own; a worker's output goes to
``<demo>/logs/<name>.log`` while the parent shows one progress bar per run (read from the
runs' ``kd_log.jsonl``). SIGTERM or SIGUSR1 to the parent is passed on (each run saves a
complete checkpoint and stops); a failed run stops the other worker the same way.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

from kdistill.errors import InputError, KdistillError, Preempted

FORWARDED = (signal.SIGTERM, signal.SIGUSR1)


def _all_threads_when_alone(alone, total: int):
    """A callback: from the step after the other worker has finished, all ``total`` threads
    (the same bits at any thread count, so only the speed changes)."""
    import torch
    from transformers import TrainerCallback

    class AllThreadsWhenAlone(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if alone.is_set() and torch.get_num_threads() != total:
                torch.set_num_threads(total)

    return AllThreadsWhenAlone()


def _worker(runs, fresh, threads, total, logs, allocator, results, alone) -> None:
    """One worker: its runs one after another, output to ``logs/<name>.log``."""
    import torch

    from kdistill.allocator import keep_freed_memory
    from kdistill.pipeline.distill_lm import run_distill_lm

    if allocator:
        keep_freed_memory()
    torch.set_num_threads(threads)
    more = (_all_threads_when_alone(alone, total),)
    for name, cfg in runs:
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(Path(logs) / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        t = time.perf_counter()
        try:
            run_distill_lm(cfg, fresh=fresh, callbacks=more)
        except Preempted as exc:
            print(f"kdistill: {exc}", file=sys.stderr, flush=True)
            sys.exit(128 + exc.signum)
        except KdistillError as exc:
            print(f"kdistill: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        results.put((name, time.perf_counter() - t))


def _steps_done(run_dir: Path) -> int:
    """The last logged step of a run (0 before its first log line)."""
    log = run_dir / "kd_log.jsonl"
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError):
            continue  # a line being written
    return 0


def _last_line(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    said = [x for x in lines if x.startswith("kdistill: ")]
    return (said or lines or [""])[-1].removeprefix("kdistill: ")


def train_side_by_side(steps: list[tuple[str, object]], out: Path, fresh: bool) -> dict:
    """Train ``steps`` (``[(name, config)]``: the student's run first) in two workers; return
    ``{name: seconds}``. Raises like a run would: :class:`Preempted` after a forwarded signal,
    :class:`InputError` with the failed run's last line."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from kdistill.allocator import applied
    from kdistill.log import say

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, torch.get_num_threads())
    ctx = multiprocessing.get_context("spawn")
    results, alone = ctx.Queue(), ctx.Event()
    plan = [(steps[:1], threads // 2), (steps[1:], threads - threads // 2)]
    workers = [
        ctx.Process(
            target=_worker,
            args=(runs, fresh, n, threads, str(logs), applied(), results, alone),
            name=f"kdistill-demo-{runs[0][0]}",
        )
        for runs, n in plan
    ]
    got_signal: list[int] = []

    def forward(signum, _frame):
        got_signal.append(signum)
        for w in workers:
            if w.is_alive():
                os.kill(w.pid, signum)

    old = {s: signal.signal(s, forward) for s in FORWARDED}
    seconds: dict[str, float] = {}
    failed = None
    try:
        for w in workers:
            w.start()
        said = ", ".join(f"{logs / n}.log" for n, _ in steps)
        say(f"two processes, {plan[0][1]} + {plan[1][1]} CPU threads; their output: {said}")
        with Progress(
            "{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        ) as bars:
            tasks = {n: bars.add_task(f"{n:>8}", total=c.training.max_steps) for n, c in steps}
            while any(w.is_alive() for w in workers):
                for n, c in steps:
                    bars.update(tasks[n], completed=_steps_done(Path(c.output_dir)))
                for i, w in enumerate(workers):
                    if w.exitcode == 0:
                        alone.set()  # the other may use every thread now
                    if w.exitcode not in (None, 0) and failed is None and not got_signal:
                        failed = i  # the other saves a checkpoint and stops
                        for other in workers:
                            if other.is_alive():
                                os.kill(other.pid, signal.SIGTERM)
                time.sleep(1.0)
            while not results.empty():
                name, took = results.get()
                seconds[name] = took
                bars.update(tasks[name], completed=dict(steps)[name].training.max_steps)
    except BaseException:
        forward(signal.SIGTERM, None)
        for w in workers:
            w.join(timeout=120)
            if w.is_alive():
                w.terminate()
        raise
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for w in workers:
            w.join()
    if got_signal and all(w.exitcode in (0, 128 + got_signal[0]) for w in workers):
        raise Preempted(got_signal[0], None, str(out))
    if failed is None and any(w.exitcode for w in workers):
        failed = next(i for i, w in enumerate(workers) if w.exitcode)
    if failed is not None:
        w = workers[failed]
        name = next((n for n, _ in plan[failed][0] if n not in seconds), plan[failed][0][0][0])
        log = logs / f"{name}.log"
        raise InputError(
            f"the demo's {name} run stopped (exit {w.exitcode}): "
            f"{_last_line(log) or 'no output'}; its output: {log}; re-run the demo to resume"
        )
    return seconds
