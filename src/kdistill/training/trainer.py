"""The Hugging Face Trainer adapter: overrides ``compute_loss`` only.

Everything else (gradient accumulation, LR schedulers, bf16, Accelerate DDP/FSDP/DeepSpeed,
TensorBoard, checkpoints) is the stock Trainer. The loss is :func:`kd_step_sums` combined over
the *global* valid-target count Trainer passes as ``num_items_in_batch``, so gradient
accumulation and data parallelism give the gradient of one big batch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from kdistill.losses.objective import combine
from kdistill.signals import SparseSignal
from kdistill.training.step import (
    KDSchedules,
    check_loss_finite,
    check_teacher_finite,
    kd_step_sums,
)


class KDMeter:
    """Running sums between two log events (soft/hard loss per valid target, tokens/s)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.soft = self.hard = 0.0
        self.count = 0
        self.tokens = 0
        self.since = time.perf_counter()
        self.knobs = None

    def update(self, sums, knobs, n_tokens: int) -> None:
        self.soft += float(sums.soft_sum.detach())
        self.hard += float(sums.hard_sum.detach())
        self.count += int(sums.count)
        self.tokens += n_tokens
        self.knobs = knobs

    def snapshot(self, device: torch.device | str = "cpu") -> dict:
        """Averages since the last reset; summed over all ranks when distributed."""
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        totals = [self.soft, self.hard, float(self.count), float(self.tokens)]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            t = torch.tensor(totals, dtype=torch.float64, device=device)
            dist.all_reduce(t)
            totals = t.tolist()
        soft, hard, count, tokens = totals
        n = max(count, 1.0)
        out = {"soft_loss": soft / n, "hard_loss": hard / n, "tokens_per_s": tokens / elapsed}
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


class KDTrainer(Trainer):
    """``Trainer`` whose loss is the KD objective against an online teacher (or none).

    Args (beyond Trainer's):
        teacher: a frozen module returning logits (``.logits`` or a tensor), or None for the
            no-teacher baseline.
        schedules: :class:`KDSchedules` for T, weights and beta, evaluated per step.
        divergence, skew_alpha, scale_by_t2: the objective's fixed settings.
        vocab_size: real shared vocabulary; logits beyond it (padding) are sliced off.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args,
        teacher: torch.nn.Module | None = None,
        schedules: KDSchedules | None = None,
        divergence: str = "forward_kl",
        skew_alpha: float = 0.1,
        scale_by_t2: bool = True,
        vocab_size: int | None = None,
        log_path: Path | None = None,
        signal_temperature: float = 1.0,
        **kwargs,
    ):
        self.kd_meter = KDMeter()
        callbacks = list(kwargs.pop("callbacks", None) or [])
        callbacks.append(KDLogCallback(self.kd_meter, log_path))
        super().__init__(*args, callbacks=callbacks, **kwargs)
        # count valid targets (from `shift_labels`) across micro-batches and ranks
        self.model_accepts_loss_kwargs = True
        self.teacher = teacher
        if teacher is not None:
            teacher.to(self.args.device)
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.schedules = schedules or KDSchedules.build()
        self.divergence = divergence
        self.skew_alpha = skew_alpha
        self.scale_by_t2 = scale_by_t2
        self.kd_vocab_size = vocab_size
        self.signal_temperature = signal_temperature

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("shift_labels", None)
        raw_labels = inputs.pop("labels")
        if labels is None:
            labels = raw_labels
        stored = [
            inputs.pop(k, None) for k in ("teacher_ids", "teacher_logprobs", "teacher_log_tail")
        ]
        step = self.state.global_step
        knobs = self.schedules.at(step, max(self.state.max_steps, 1))
        outputs = model(**inputs)
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        teacher_logits = None
        if stored[0] is not None and knobs.soft_weight > 0:
            # a cached teacher: sparse targets from the store, made at the cache temperature
            teacher_logits = SparseSignal(
                stored[0],
                stored[1].float(),
                stored[2].float(),
                self.kd_vocab_size or logits.shape[-1],
                self.signal_temperature,
            )
            check_teacher_finite(teacher_logits, step)
        elif self.teacher is not None and knobs.soft_weight > 0:
            with torch.no_grad():
                t_out = self.teacher(**inputs)
                teacher_logits = t_out.logits if hasattr(t_out, "logits") else t_out
            check_teacher_finite(teacher_logits, step)
        sums = kd_step_sums(
            logits,
            teacher_logits,
            labels,
            knobs,
            divergence=self.divergence,
            skew_alpha=self.skew_alpha,
            vocab_size=self.kd_vocab_size,
        )
        loss = combine(
            sums,
            soft_weight=knobs.soft_weight,
            hard_weight=knobs.hard_weight,
            kd_temperature=knobs.kd_temperature,
            scale_by_t2=self.scale_by_t2,
            num_items=num_items_in_batch,
        )
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # DDP averages gradients over ranks; num_items is global, so undo that average
            loss = loss * self.accelerator.num_processes
        check_loss_finite(loss, step)
        if model.training:
            n_tok = (
                int(inputs["attention_mask"].sum())
                if "attention_mask" in inputs
                else labels.numel()
            )
            self.kd_meter.update(sums, knobs, n_tok)
        return (loss, outputs) if return_outputs else loss
