"""KD loss memory and time: naive full-logit loss vs our chunked loss vs TRL's GKD loss.

One run compares all contestants at V=49,152, H=576 and N in {1024, 4096, 8192} tokens, on
the same objective (generalized JSD, beta=0.5, T=1, 10% of positions masked) so the numbers
are comparable; each contestant also reports its loss value, which must agree.

Memory: every (contestant, N) runs in a fresh subprocess. After the inputs (hidden states,
head, teacher logits, labels) are allocated, the kernel's RSS high-water mark is reset
(`echo 5 > /proc/self/clear_refs`), one forward+backward runs, and the peak extra memory is
VmHWM - VmRSS(before), i.e. what the loss itself needed on top of its inputs.
Time: median of 3 forward+backward runs after one warm-up, same subprocess.

  .venv/bin/python benchmarks/bench_kd_loss.py [--device cpu|cuda] [--sizes 1024,4096,8192]
Writes benchmarks/results/kd_loss_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
V, H = 49152, 576


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _child(contestant: str, n: int, device: str) -> dict:
    import torch

    torch.manual_seed(0)
    dev = torch.device(device)
    hidden = torch.randn(n, H, device=dev, requires_grad=True)
    head = (torch.randn(V, H, device=dev) * 0.05).requires_grad_(True)
    teacher = torch.randn(n, V, device=dev) * 2
    labels = torch.randint(0, V, (n,), device=dev)
    labels[torch.rand(n, device=dev) < 0.1] = -100

    if contestant == "naive":
        import kdistill

        def step():
            logits = hidden @ head.T
            return kdistill.kd_loss(
                logits,
                teacher,
                labels,
                soft_weight=1.0,
                hard_weight=0.0,
                divergence="jsd",
                beta=0.5,
            )
    elif contestant == "chunked":
        from kdistill.losses.chunked import chunked_kd_loss

        def step():
            return chunked_kd_loss(
                hidden,
                head,
                teacher,
                labels,
                soft_weight=1.0,
                hard_weight=0.0,
                divergence="jsd",
                beta=0.5,
                chunk_size=1024,
            )[0]
    else:
        os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

        def step():
            logits = hidden @ head.T
            return GKDTrainer.generalized_jsd_loss(logits, teacher, labels, beta=0.5)

    def run():
        hidden.grad = head.grad = None
        loss = step()
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return float(loss)

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        value = run()
        peak = torch.cuda.max_memory_allocated() - before
        method = "torch.cuda.max_memory_allocated delta over inputs"
    else:
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        value = run()
        peak = _status("VmHWM") - before
        method = "VmHWM - VmRSS after resetting the high-water mark (clear_refs=5)"
    run()  # warm-up for timing
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {
        "contestant": contestant,
        "n": n,
        "peak_bytes": peak,
        "seconds": statistics.median(times),
        "loss": value,
        "memory_method": method,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="1024,4096,8192")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.device)))
        return
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        for c in ("naive", "chunked", "trl"):
            proc = subprocess.run(
                [sys.executable, __file__, "--device", args.device, "--child", c, str(n)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                rows.append({"contestant": c, "n": n, "error": proc.stderr.strip()[-300:]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    by = {(r["contestant"], r["n"]): r for r in rows}
    ratios = {}
    for n in {r["n"] for r in rows}:
        ch = by.get(("chunked", n), {})
        for other in ("naive", "trl"):
            o = by.get((other, n), {})
            if "peak_bytes" in o and "peak_bytes" in ch:
                ratios[f"{other}_vs_chunked_memory@{n}"] = o["peak_bytes"] / ch["peak_bytes"]
                ratios[f"{other}_vs_chunked_time@{n}"] = o["seconds"] / ch["seconds"]
                ratios[f"{other}_vs_chunked_loss_rel_diff@{n}"] = abs(o["loss"] - ch["loss"]) / abs(
                    ch["loss"]
                )
    import torch

    out = {
        "device": args.device,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "V": V,
        "H": H,
        "objective": "generalized JSD beta=0.5, T=1, 10% masked",
        "chunk_size": 1024,
        "rows": rows,
        "ratios": ratios,
    }
    (HERE / "results").mkdir(exist_ok=True)
    path = HERE / "results" / f"kd_loss_{args.device}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
