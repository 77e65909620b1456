"""Peak memory of the cross-tokenizer loss with a 262k-token teacher vocabulary.

Gemma 3's head (V_t = 262,144, H_t = 640) as the teacher, SmolLM2-135M's head (V_s = 49,152,
H_s = 576) as the student, N aligned positions. Two contestants, forward + backward w.r.t.
the student's hidden states and head, soft term (T = 1) + hard CE, 10% of positions masked:

* ``chunked``: :func:`kdistill.losses.chunked_kd_loss` with a
  :class:`~kdistill.losses.cross_vocab.CrossVocabTeacher` (teacher hidden states + head):
  teacher logits ``(C, V_t)`` and the target are made a chunk (128 rows) at a time, the
  teacher's side included in the peak;
* ``full``: the teacher's ``(N, V_t)`` logits made at once, their target built in one go,
  then :func:`kdistill.kd_loss` on the student's full ``(N, V_s)`` logits.

for both objectives (``mapped``: a real-sized vocabulary map, 60% of teacher ids mapped onto
30,000 student ids; ``uld``). Memory is measured as in ``bench_kd_loss.py``: a fresh
subprocess per row, inputs (hidden states, both heads, labels) allocated first, then the
resident-set high-water mark is reset and peak = VmHWM - VmRSS(before) over one forward +
backward; a child that would pass (available memory - 1.5 GiB) gets an error row.
Goal (issue 15): the chunked loss at N = 4096 within 1.1x of its peak at N = 1024.

  .venv/bin/python benchmarks/bench_cross_vocab_memory.py [--sizes 1024,4096]

Writes ``benchmarks/results/cross_vocab_memory_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_kd_loss import _mem_available, _status

HERE = Path(__file__).resolve().parent
V_T, H_T, V_S, H_S = 262144, 640, 49152, 576
CHUNK = 128


def _inputs(n: int):
    import torch

    from kdistill.losses.cross_vocab import VocabMap

    g = torch.Generator().manual_seed(0)
    hs = (torch.randn(n, H_S, generator=g) * 0.5).requires_grad_(True)
    ws = (torch.randn(V_S, H_S, generator=g) * 0.05).requires_grad_(True)
    ht = torch.randn(n, H_T, generator=g) * 0.5
    wt = torch.randn(V_T, H_T, generator=g) * 0.05
    labels = torch.randint(0, V_S, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.1] = -100
    t2s = torch.randint(0, 30000, (V_T,), generator=g)
    t2s[torch.rand(V_T, generator=g) < 0.4] = -1
    return hs, ws, ht, wt, labels, VocabMap.from_pairs(t2s, V_S)


def _step(contestant: str, objective: str):
    from kdistill.losses.chunked import chunked_kd_loss
    from kdistill.losses.cross_vocab import CrossVocabTeacher, cross_targets
    from kdistill.losses.objective import kd_loss

    def chunked(hs, ws, ht, wt, labels, vmap):
        teacher = CrossVocabTeacher(ht, wt, objective, V_S, vmap=vmap)
        loss, _ = chunked_kd_loss(
            hs, ws, teacher, labels, soft_weight=0.7, hard_weight=0.3, chunk_size=CHUNK
        )
        return loss

    def full(hs, ws, ht, wt, labels, vmap):
        target = cross_targets(
            ht @ wt.T, objective=objective, kd_temperature=1.0, vmap=vmap, student_vocab=V_S
        )
        return kd_loss(hs @ ws.T, target, labels, soft_weight=0.7, hard_weight=0.3)

    return chunked if contestant == "chunked" else full


def _child(contestant: str, objective: str, n: int) -> dict:
    step = _step(contestant, objective)
    warm = _inputs(64)
    step(*warm).backward()
    del warm
    inputs = _inputs(n)
    budget = _status("VmSize") + _mem_available() - int(1.5 * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (budget, resource.RLIM_INFINITY))
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    loss = step(*inputs)
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM") - before
    return {
        "contestant": contestant,
        "objective": objective,
        "n": n,
        "peak_bytes": peak,
        "peak_mib": round(peak / 2**20, 1),
        "seconds": round(seconds, 2),
        "loss": float(loss),
    }


def _run_child(contestant: str, objective: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", contestant, objective, str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        return json.loads(proc.stdout.strip().splitlines()[-1])
    err = (proc.stderr.strip() or f"exit code {proc.returncode}").splitlines()
    return {"contestant": contestant, "objective": objective, "n": n, "error": err[-1][:200]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1024,4096")
    ap.add_argument("--contestants", default="chunked,full")
    ap.add_argument("--child", nargs=3, metavar=("CONTESTANT", "OBJECTIVE", "N"))
    args = ap.parse_args()
    if args.child:
        c, o, n = args.child
        print(json.dumps(_child(c, o, int(n))))
        return
    import torch

    sizes = [int(x) for x in args.sizes.split(",")]
    rows = []
    for objective in ("mapped", "uld"):
        for contestant in args.contestants.split(","):
            for n in sizes:
                row = _run_child(contestant, objective, n)
                rows.append(row)
                print(json.dumps(row), flush=True)
    by = {(r["objective"], r["contestant"], r["n"]): r for r in rows}
    growth = {}
    for objective in ("mapped", "uld"):
        for contestant in args.contestants.split(","):
            a = by.get((objective, contestant, sizes[0]))
            b = by.get((objective, contestant, sizes[-1]))
            if a and b and "peak_bytes" in a and "peak_bytes" in b:
                growth[f"{objective}/{contestant}"] = round(b["peak_bytes"] / a["peak_bytes"], 3)
    out = {
        "benchmark": "cross_vocab_memory",
        "teacher_vocab": V_T,
        "teacher_hidden": H_T,
        "student_vocab": V_S,
        "student_hidden": H_S,
        "chunk_size": CHUNK,
        "memory_method": "fresh subprocess per row; VmHWM - VmRSS(before) over one "
        "forward+backward after the inputs (hidden states, heads, labels) are allocated",
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "rows": rows,
        f"peak_growth_{sizes[0]}_to_{sizes[-1]}": growth,
        "goal": "chunked: N=4096 peak within 1.1x of N=1024",
    }
    dest = HERE / "results" / "cross_vocab_memory_cpu.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(growth))


if __name__ == "__main__":
    main()
