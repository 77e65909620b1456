"""On-policy distillation from a *served* teacher: the bundled SmolLM2-135M de-quantised to
F32 and served by llama-cpp-python (the `serve` extra) on 127.0.0.1; `kdistill distill` with
`teacher.kind: served` trains the demo's 11-layer student on its own samples, the server
scoring every sample (no teacher in the training process). Then one `kdistill eval` (with a
local teacher, for measuring only) of the student before and after: the teacher's reverse KL
on each model's own samples, greedy agreement, entropy, distinct-2, sample length, held-out
perplexity. Writes benchmarks/results/on_policy_served_cpu.json.

  .venv/bin/python benchmarks/bench_on_policy_served.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench_on_policy_arms import OWN

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
CONFIG = REPO / "src/kdistill/configs/on_policy.yaml"
KDISTILL = str(Path(sys.executable).with_name("kdistill"))
KEYS = (
    "perplexity",
    "own_reverse_kl",
    "own_greedy_agreement",
    "own_entropy",
    "own_distinct2",
    "own_length",
)


def serve(model: Path, log: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host"]
    argv += ["127.0.0.1", "--port", str(port), "--logits_all", "true", "--n_ctx", "1024"]
    argv += ["--n_threads", "2", "--model_alias", "smollm2"]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(360):
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"llama_cpp.server did not start: {log.read_text()[-500:]}")


def main() -> None:
    from tests.real.gguf_f32 import dequantised_copy

    from kdistill.models.bundled import bundled_gguf_path
    from kdistill.models.loading import load_causal_lm
    from kdistill.models.student import build_student_from_teacher

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_on_policy_served"))
    ap.add_argument("--json", type=Path, default=HERE / "results/on_policy_served_cpu.json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # the student's starting point, saved for the evaluation (the run cuts the same one)
    teacher, tok = load_causal_lm("smollm2-135m", frozen=True)
    before = args.out / "before"
    build_student_from_teacher(teacher, seed=0, every=3).save_pretrained(before)
    tok.save_pretrained(before)
    del teacher
    gguf = dequantised_copy(bundled_gguf_path("smollm2-135m"), args.out / "smollm2-f32.gguf")
    proc, url = serve(gguf, args.out / "server.log")
    run = args.out / "after"
    try:
        t0 = time.perf_counter()
        subprocess.run(
            [
                KDISTILL, "distill", str(CONFIG), f"output_dir={run}", "--fresh",
                "teacher.kind=served", f"teacher.base_url={url}",
                "teacher.served_model=smollm2", "teacher.top_k=20",
                "distill.on_policy={fraction: 1.0, max_new_tokens: 64, prompt_tokens: 64}",
                f"training.max_steps={args.steps}", "training.warmup_steps=2",
                "training.logging_steps=1", f"training.save_steps={args.steps}",
            ],
            check=True,
        )  # fmt: skip
        train_wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        gguf.unlink()
    results = args.out / "eval.json"
    cmd = [KDISTILL, "eval", "--out", str(results), *OWN, "--speed-budget", "5"]
    cmd += ["--model", f"before={before}", "--model", f"after={run / 'model'}"]
    subprocess.run(cmd, check=True)
    ev = json.loads(results.read_text())
    log = [json.loads(x) for x in (run / "kd_log.jsonl").read_text().splitlines()]
    out = {
        "steps": args.steps,
        "train_wall_s": train_wall,
        "target_tokens": json.loads((run / "train_summary.json").read_text())["target_tokens"],
        "soft_loss_by_step": [r["soft_loss"] for r in log],
        "models": {m: {k: ev[m].get(k) for k in KEYS} for m in ("teacher", "before", "after")},
        "own_sample_settings": ev["teacher"].get("own_sample_settings"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    for m, row in out["models"].items():
        print(m, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})


if __name__ == "__main__":
    main()
