"""What the trainer logs beside Trainer's own: running soft/hard/term losses per valid target,
tokens/s, the scheduled knobs and the on-policy share, summed over ranks, appended to
``kd_log.jsonl`` on rank 0."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import TrainerCallback


class KDMeter:
    """Running sums between two log events (soft/hard loss per valid target, tokens/s)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.soft = self.hard = 0.0
        self.hard_count = 0  # targets of off-policy micro-batches (no CE on own samples)
        self.terms: dict[str, float] = {}
        self.count = 0
        self.tokens = 0
        self.batches = self.sampled = self.sampled_rows = self.sampled_tokens = 0
        self.since = time.perf_counter()
        self.knobs = None

    def update(
        self, sums, knobs, n_tokens: int, terms: dict | None = None, sampled: bool = False
    ) -> None:
        self.soft += float(sums.soft_sum.detach())
        if not sampled:
            self.hard += float(sums.hard_sum.detach())
            self.hard_count += int(sums.count)
        for name, value in (terms or {}).items():
            self.terms[name] = self.terms.get(name, 0.0) + float(value.detach())
        self.count += int(sums.count)
        self.tokens += n_tokens
        self.knobs = knobs

    def sampling(self, batch: dict | None) -> None:
        """Count one micro-batch; ``batch`` is its on-policy replacement (None: off-policy)."""
        self.batches += 1
        if batch is not None:
            self.sampled += 1
            rows = batch["shift_labels"] != -100
            self.sampled_rows += rows.shape[0]
            self.sampled_tokens += int(rows.sum())

    def snapshot(self, device: torch.device | str = "cpu") -> dict:
        """Averages since the last reset; summed over all ranks when distributed."""
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        names = sorted(self.terms)
        totals = [self.soft, self.hard, float(self.count), float(self.tokens), self.hard_count]
        totals += [self.batches, self.sampled, self.sampled_rows, self.sampled_tokens]
        totals += [self.terms[k] for k in names]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            t = torch.tensor(totals, dtype=torch.float64, device=device)
            dist.all_reduce(t)
            totals = t.tolist()
        soft, hard, count, tokens, hard_n, batches, sampled, rows, new_tokens = totals[:9]
        n = max(count, 1.0)
        out = {
            "soft_loss": soft / n,
            "hard_loss": hard / max(hard_n, 1.0),
            "tokens_per_s": tokens / elapsed,
        }
        out.update({f"{k}_loss": v / n for k, v in zip(names, totals[9:])})
        if batches:  # an on-policy run: the share of sampled micro-batches and their length
            out["on_policy_share"] = sampled / batches
            out["sample_length"] = new_tokens / max(rows, 1.0)
        if self.knobs is not None:
            out.update(
                kd_temperature=self.knobs.kd_temperature,
                soft_weight=self.knobs.soft_weight,
                hard_weight=self.knobs.hard_weight,
                beta=self.knobs.beta,
            )
        return out


class KDLogCallback(TrainerCallback):
    """Adds the KD meter to Trainer's logs and appends them to ``kd_log.jsonl``."""

    def __init__(self, meter: KDMeter, log_path: Path | None):
        self.meter = meter
        self.log_path = log_path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return control
        snap = self.meter.snapshot(args.device)
        logs.update({k: round(v, 6) for k, v in snap.items()})
        self.meter.reset()
        if self.log_path is not None and state.is_world_process_zero:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")
        return control
