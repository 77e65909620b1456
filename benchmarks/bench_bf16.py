"""bf16 vs fp32 KD training on this CPU, the demo's pair and budget (issue 19).

* **Speed**, interleaved: ``--speed-repeats`` rounds, each one fp32 run and one bf16 run of
  ``--speed-steps`` steps (the demo config: SmolLM2-135M-Instruct teacher, the 67 M pruned
  student, 4 x 256 tokens a step, chunked loss). bf16 = ``training.bf16: true`` (autocast
  for the student) and ``teacher.dtype: bfloat16``; soft-label math stays fp32 in both.
  Tokens/s per run = the median of the per-step figures in ``kd_log.jsonl`` after the first
  step; the bf16 / fp32 ratio is taken within each round (median and range reported).
* **Quality**: the demo config at its 50 steps in fp32 and in bf16, then both students
  evaluated against the fp32 teacher on the held-out KJV blocks: KL(teacher || student),
  perplexity, top-1 agreement (``evaluate_lms``, quality only).

  .venv/bin/python benchmarks/bench_bf16.py [--speed-repeats 3] [--speed-steps 6]

Writes ``benchmarks/results/bf16_cpu.json``. Goal (issue 19): bf16 KD step >= 1.5x fp32.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
from pathlib import Path

import torch

from kdistill.config import builders
from kdistill.config.loader import load_config
from kdistill.data.lm import CausalCollator, build_lm_datasets
from kdistill.eval.lm_runner import evaluate_lms
from kdistill.models.loading import load_causal_lm
from kdistill.pipeline.demo import demo_config_path
from kdistill.pipeline.distill_lm import run_distill_lm

HERE = Path(__file__).resolve().parent
PRECISION = {
    "fp32": [],
    "bf16": ["training.bf16=true", "teacher.dtype=bfloat16"],
}


def _run(out: Path, over: list[str]) -> Path:
    cfg = load_config(demo_config_path(), [f"output_dir={out}", *over])
    return run_distill_lm(cfg, fresh=True)


def _step_tokens_per_s(run_dir: Path) -> float:
    rows = [json.loads(x) for x in (run_dir / "kd_log.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r.get("step", 0) > 1]
    return statistics.median(speeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--speed-repeats", type=int, default=3)
    ap.add_argument("--speed-steps", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_bf16"))
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    result: dict = {
        "benchmark": "bf16_vs_fp32",
        "machine": platform.platform(),
        "cpu_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    steps = args.speed_steps
    speed: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for rep in range(args.speed_repeats):
        for name, over in PRECISION.items():
            run_dir = _run(
                args.out / f"speed_{name}_{rep}",
                [
                    *over,
                    f"training.max_steps={steps}",
                    "training.logging_steps=1",
                    f"training.save_steps={steps}",
                    f"data.max_train_tokens={steps * 4 * 256}",
                ],
            )
            speed[name].append(_step_tokens_per_s(run_dir))
            print(json.dumps({"round": rep, name: speed[name][-1]}), flush=True)
    ratios = [b / f for b, f in zip(speed["bf16"], speed["fp32"], strict=True)]
    result["speed"] = {
        "tokens_per_s": speed,
        "bf16_vs_fp32_per_round": ratios,
        "bf16_vs_fp32_median": statistics.median(ratios),
        "steps_per_run": steps,
    }
    runs = {name: _run(args.out / f"quality_{name}", over) for name, over in PRECISION.items()}
    cfg = load_config(demo_config_path(), [f"output_dir={args.out / 'eval'}"])
    teacher, tok = load_causal_lm(cfg.teacher.model, frozen=True)
    _, held = build_lm_datasets(tok, cfg.data.source, **builders.data_kwargs(cfg))
    students = {
        n: load_causal_lm(str(d / "model"), frozen=True)[0].float() for n, d in runs.items()
    }
    ev = evaluate_lms(
        {"teacher": teacher, **students},
        "teacher",
        held,
        CausalCollator(tok.pad_token_id),
        vocab_size=len(tok),
        quality_only=True,
    )
    result["quality"] = {
        n: {
            "kl_to_fp32_teacher": ev[n]["kl_to_teacher"],
            "perplexity": ev[n]["perplexity"],
            "top1_agreement": ev[n]["top1_agreement"],
            "train_seconds": json.loads((runs[n] / "train_summary.json").read_text())[
                "train_seconds"
            ],
        }
        for n in runs
    }
    result["teacher_perplexity"] = ev["teacher"]["perplexity"]
    result["goal"] = {"bf16_step>=1.5x": result["speed"]["bf16_vs_fp32_median"] >= 1.5}
    dest = HERE / "results" / "bf16_cpu.json"
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k in ("speed", "quality", "goal")}))


if __name__ == "__main__":
    main()
