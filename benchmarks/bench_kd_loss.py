"""KD loss peak memory and time: naive full-logit loss vs our chunked loss vs TRL's GKD loss.

One run compares three contestants, forward + backward w.r.t. the student's hidden states and
output head, at V = 49,152 and H = 576 (SmolLM2-135M's head):

* ``naive``   ``logits = hidden @ W.T`` then :func:`kdistill.kd_loss` on the full logits;
* ``chunked`` :func:`kdistill.losses.chunked_kd_loss` on ``(hidden, W)``, ``chunk_size`` 1024;
* ``trl``     ``logits = hidden @ W.T`` then TRL's ``GKDTrainer.generalized_jsd_loss``.

All three compute the same objective (soft term only, T = 1, 10% of positions masked, teacher
given as full logits), so their loss values must agree; the JSON records them. Main series:
forward KL (TRL's generalized JSD with beta = 0, which is KL(teacher || student)) at
N in {1024, 4096, 8192} positions. Side series: generalized JSD with beta = 0.5 (GKD's
default) at N = 1024 (TRL's beta = 0.5 path would need ~22 GB at N = 8192).

Memory: every (series, contestant, N) runs in a fresh subprocess. After the inputs (hidden
states, head, teacher logits, labels) are allocated and a small warm-up ran, the process'
resident-set high-water mark is reset (``echo 5 > /proc/self/clear_refs``); peak =
``VmHWM - VmRSS(before)`` over one forward + backward, i.e. the memory the loss needs on top
of its inputs (the ``.grad`` of hidden and head included). CPU tensors this big are mmap'ed
by glibc and returned on free, so RSS follows the live tensors. A child never allocates past
(available memory - 1.5 GiB): ``RLIMIT_AS`` turns that into an error row, not an OOM kill.
Time: each timed forward + backward (the memory run is the first; +1 more where repeats = 2);
``seconds`` is the fastest. Absolute seconds depend on the machine and its load; compare the
ratios.

  .venv/bin/python benchmarks/bench_kd_loss.py [--device cpu|cuda] [--sizes 1024,4096,8192]

Writes ``benchmarks/results/kd_loss_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
V, H = 49152, 576
CHUNK = 1024
CONTESTANTS = ("naive", "chunked", "trl")
MEMORY_METHOD_CPU = (
    "fresh subprocess per measurement; inputs allocated and a 64-row warm-up run first; then "
    "/proc/self/clear_refs=5 resets VmHWM and peak = VmHWM - VmRSS(before) over one "
    "forward+backward (includes the .grad of hidden and head)"
)
MEMORY_METHOD_CUDA = "torch.cuda.max_memory_allocated() - memory_allocated() over the inputs"


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable")


def _trl_loss():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
    except ImportError:
        from trl import GKDTrainer  # older TRL layouts
    return GKDTrainer.generalized_jsd_loss


def _make_step(contestant: str, beta: float):
    """``step(hidden (N, H), head (V, H), teacher (N, V), labels (N,)) -> scalar loss``."""
    if contestant == "naive":
        import kdistill

        div = "forward_kl" if beta == 0 else "jsd"

        def step(hidden, head, teacher, labels):
            return kdistill.kd_loss(
                hidden @ head.T, teacher, labels, soft_weight=1.0, hard_weight=0.0,
                divergence=div, beta=beta,
            )  # fmt: skip

    elif contestant == "chunked":
        from kdistill.losses import chunked_kd_loss

        div = "forward_kl" if beta == 0 else "jsd"

        def step(hidden, head, teacher, labels):
            return chunked_kd_loss(
                hidden, head, teacher, labels, soft_weight=1.0, hard_weight=0.0,
                divergence=div, beta=beta, chunk_size=CHUNK,
            )[0]  # fmt: skip

    else:
        gjsd = _trl_loss()

        def step(hidden, head, teacher, labels):
            return gjsd(hidden @ head.T, teacher, labels, beta=beta)

    return step


def _inputs(n: int, dev):
    import torch

    g = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(n, H, device=dev, generator=g).requires_grad_(True)
    head = (torch.randn(V, H, device=dev, generator=g) * 0.05).requires_grad_(True)
    teacher = torch.randn(n, V, device=dev, generator=g) * 2
    labels = torch.randint(0, V, (n,), device=dev, generator=g)
    labels[torch.rand(n, device=dev, generator=g) < 0.1] = -100
    return hidden, head, teacher, labels


def _child(contestant: str, n: int, beta: float, repeats: int, device: str) -> dict:
    import torch

    dev = torch.device(device)
    step = _make_step(contestant, beta)
    warm = _inputs(64, dev)
    step(*warm).backward()  # one-time kernel / thread-pool setup stays out of the numbers
    del warm
    hidden, head, teacher, labels = _inputs(n, dev)

    def run() -> tuple[float, float]:
        hidden.grad = head.grad = None
        t0 = time.perf_counter()
        loss = step(hidden, head, teacher, labels)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, float(loss)

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        seconds, value = run()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        budget = _status("VmSize") + _mem_available() - int(1.5 * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (budget, resource.RLIM_INFINITY))
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        seconds, value = run()
        peak = _status("VmHWM") - before
    times = [seconds] + [run()[0] for _ in range(repeats - 1)]
    return {
        "contestant": contestant,
        "n": n,
        "beta": beta,
        "peak_bytes": peak,
        "peak_mib": round(peak / 2**20, 1),
        "seconds": min(times),
        "all_seconds": [round(t, 3) for t in times],
        "loss": value,
    }


def _run_child(contestant, n, beta, repeats, device) -> dict:
    cmd = [sys.executable, __file__, "--device", device, "--child", contestant, str(n)]
    cmd += ["--beta", str(beta), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        return json.loads(proc.stdout.strip().splitlines()[-1])
    err = (proc.stderr.strip() or f"exit code {proc.returncode}").splitlines()
    return {"contestant": contestant, "n": n, "beta": beta, "error": " | ".join(err[-3:])}


def _ratios(rows: list[dict]) -> dict:
    by = {(r["beta"], r["contestant"], r["n"]): r for r in rows}
    out = {}
    for beta, n in sorted({(b, n) for b, _, n in by}):
        ch = by.get((beta, "chunked", n), {})
        for other in ("naive", "trl"):
            o = by.get((beta, other, n), {})
            if "peak_bytes" not in o or "peak_bytes" not in ch:
                continue
            key = f"beta={beta:g} N={n} {other}/chunked"
            out[key] = {
                "memory": round(o["peak_bytes"] / ch["peak_bytes"], 2),
                "time": round(o["seconds"] / ch["seconds"], 2),
                "loss_rel_diff": abs(o["loss"] - ch["loss"]) / abs(ch["loss"]),
            }
    return out


def _table(rows: list[dict]) -> str:
    lines = [
        "| objective | N | contestant | peak MiB | seconds | loss |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        obj = "forward KL" if r["beta"] == 0 else f"JSD beta={r['beta']:g}"
        if "error" in r:
            lines.append(f"| {obj} | {r['n']} | {r['contestant']} | error | - | - |")
            continue
        lines.append(
            f"| {obj} | {r['n']} | {r['contestant']} | {r['peak_mib']:.0f} | "
            f"{r['seconds']:.2f} | {r['loss']:.6f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="1024,4096,8192")
    ap.add_argument("--jsd-sizes", default="1024", help="sizes of the beta=0.5 side series")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--beta", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, n = args.child[0], int(args.child[1])
        print(json.dumps(_child(name, n, args.beta, args.repeats, args.device)))
        return

    import torch

    started, load_before = time.perf_counter(), os.getloadavg()
    plan = [(0.0, int(n)) for n in args.sizes.split(",") if n]
    plan += [(0.5, int(n)) for n in args.jsd_sizes.split(",") if n]
    rows = []
    for beta, n in plan:
        repeats = 2 if n <= 4096 and beta == 0 else 1
        for contestant in CONTESTANTS:
            rows.append(_run_child(contestant, n, beta, repeats, args.device))
            print(json.dumps(rows[-1]), flush=True)
    try:
        import trl

        trl_version = trl.__version__
    except ImportError as exc:
        trl_version = f"not importable: {exc}"
    ratios = _ratios(rows)
    big = max((n for b, n in plan if b == 0), default=None)
    key = f"beta=0 N={big} naive/chunked"
    goals = {
        "memory naive/chunked at largest N >= 5x": ratios.get(key, {}).get("memory", 0) >= 5,
        "chunked not slower than naive (every N)": all(
            v["time"] >= 1.0 for k, v in ratios.items() if "naive" in k
        ),
    }
    out = {
        "device": args.device,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "trl": trl_version,
        "V": V,
        "H": H,
        "chunk_size": CHUNK,
        "objective": "soft term only, T=1, 10% of positions masked, teacher as full logits; "
        "beta=0: forward KL (TRL generalized JSD beta=0), beta=0.5: generalized JSD",
        "memory_method": MEMORY_METHOD_CUDA if args.device == "cuda" else MEMORY_METHOD_CPU,
        "time_method": "fastest of the timed forward+backward runs (2 for N<=4096 forward KL, "
        "else 1); the first timed run is the memory run",
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "total_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "ratios": ratios,
        "goals": goals,
        "table_markdown": _table(rows),
    }
    (HERE / "results").mkdir(exist_ok=True)
    path = HERE / "results" / f"kd_loss_{args.device}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(out["table_markdown"])
    print(json.dumps({"ratios": ratios, "goals": goals}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
