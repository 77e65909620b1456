"""The Hugging Face Trainer adapter: overrides ``compute_loss`` only.

Everything else (gradient accumulation, LR schedulers, bf16, Accelerate DDP/FSDP/DeepSpeed,
TensorBoard, checkpoints) is the stock Trainer. The loss is :func:`kd_step_sums` combined over
the *global* valid-target count Trainer passes as ``num_items_in_batch``, so gradient
accumulation and data parallelism give the gradient of one big batch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback

from kdistill.errors import InputError
from kdistill.losses.chunked import chunked_kd_loss
from kdistill.losses.objective import KDSums, combine, divide
from kdistill.signals import SparseSignal
from kdistill.teachers.base import EXAMPLE_INDEX, NoTeacher, Teacher, Want
from kdistill.teachers.model import ModelTeacher
from kdistill.training.checkpoint import retract_latest
from kdistill.training.meter import KDLogCallback, KDMeter
from kdistill.training.on_policy import SAMPLED, OnPolicy, is_on_policy, on_policy_batch
from kdistill.training.sharding import (
    full_params,
    full_shape,
    gathered_for_step,
    is_sharded,
)
from kdistill.training.step import (
    KDSchedules,
    NonFiniteError,
    check_loss_finite,
    check_teacher_finite,
    kd_step_sums,
    sampled_token_sums,
)
from kdistill.training.terms import TERM_STATE_FILE, TermSlot, load_term_state, term_state


class _ZeroTermGrads(TrainerCallback):
    """Trainer zeroes only the model's gradients after each optimizer step; the extra terms'
    parameters are zeroed here, so their gradients do not pile up across steps."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        for p in self.trainer._term_parameters():
            p.grad = None
        self.trainer._term_grads_synced = False
        return control


class KDTrainer(Trainer):
    """``Trainer`` whose loss is the KD objective against its teacher (any kind, or none).

    Args (beyond Trainer's):
        teacher: a :class:`~kdistill.teachers.base.Teacher` (asked once per micro-batch), a
            frozen module returning logits (wrapped as a model teacher), or None (the
            no-teacher baseline).
        schedules: :class:`KDSchedules` for T, weights and beta, evaluated per step.
        divergence, skew_alpha, scale_by_t2: the objective's fixed settings.
        vocab_size: real shared vocabulary; logits beyond it (padding) are sliced off.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args,
        teacher: Teacher | torch.nn.Module | None = None,
        schedules: KDSchedules | None = None,
        divergence: str = "forward_kl",
        skew_alpha: float = 0.1,
        scale_by_t2: bool = True,
        vocab_size: int | None = None,
        log_path: Path | None = None,
        loss_chunk_size: int | None = None,
        terms: list[TermSlot] | None = None,
        on_policy: OnPolicy | None = None,
        pad_token_id: int | None = None,
        eos_token_ids: tuple[int, ...] = (),
        **kwargs,
    ):
        self.kd_meter = KDMeter()
        self._step_held: frozenset[int] = frozenset()  # ZeRO-3 heads the step holds gathered
        callbacks = list(kwargs.pop("callbacks", None) or [])
        callbacks.append(KDLogCallback(self.kd_meter, log_path))
        callbacks.append(_ZeroTermGrads(self))
        super().__init__(*args, callbacks=callbacks, **kwargs)
        # count valid targets (from `shift_labels`) across micro-batches and ranks
        self.model_accepts_loss_kwargs = True
        if teacher is None:
            teacher = NoTeacher()
        elif isinstance(teacher, torch.nn.Module):
            teacher = ModelTeacher(teacher)
        if hasattr(teacher, "to"):
            teacher.to(self.args.device)
        self.teacher = teacher
        self.terms = list(terms or [])
        self._term_grads_synced = False
        for slot in self.terms:
            slot.module.to(self.args.device)
        self._teacher_layers = tuple(
            sorted({i for slot in self.terms for i in slot.module.teacher_states})
        )
        self.schedules = schedules or KDSchedules.build()
        self.divergence = divergence
        self.skew_alpha = skew_alpha
        self.scale_by_t2 = scale_by_t2
        self.kd_vocab_size = vocab_size
        self.loss_chunk_size = loss_chunk_size
        self.on_policy = on_policy
        self._sampled_now = False
        self._scheduled = None  # this micro-batch's scheduled knobs, for the log
        self.targets_seen = 0  # valid targets this process trained on (all micro-batches)
        config = getattr(self.model, "config", None)
        eos = eos_token_ids or getattr(config, "eos_token_id", None) or ()
        self.eos_token_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        pad = pad_token_id if pad_token_id is not None else getattr(config, "pad_token_id", None)
        self.pad_token_id = pad if pad is not None else (self.eos_token_ids or (0,))[0]

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's micro-batches; on-policy ones are replaced by prompt + the student's own
        sample *before* the global count of valid targets is taken."""
        samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.on_policy is None or not samples:
            return samples, num_items
        step, rank = self.state.global_step, self.args.process_index
        model = self.accelerator.unwrap_model(self.model)
        out = []
        for micro, batch in enumerate(samples):
            sampled = None
            if is_on_policy(self.on_policy, step, rank, micro):
                batch = sampled = on_policy_batch(
                    model,
                    batch,
                    self.on_policy,
                    step=step,
                    rank=rank,
                    micro=micro,
                    pad_id=self.pad_token_id,
                    eos_ids=self.eos_token_ids,
                )
            self.kd_meter.sampling(sampled)
            out.append(batch)
        return out, self._get_num_items_in_batch(out, device)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # a student sharded with FSDP2 by kdistill: every rank gathers, one writes
        if is_sharded(self.model):
            from kdistill.training.sharding import full_state_dict

            whole = full_state_dict(self.model)
            if self.args.should_save:
                self._save(output_dir or self.args.output_dir, state_dict=whole)
            return
        super().save_model(output_dir, _internal_call)

    def training_step(self, model, inputs, num_items_in_batch=None):
        # a ZeRO-3 head stays gathered for the whole step: the chunked loss reads it outside
        # the module's forward, and its gradient must arrive while it is whole
        core = self.accelerator.unwrap_model(model)
        head = getattr(core, "get_output_embeddings", lambda: None)()
        heads = [] if head is None else [head.weight, getattr(head, "bias", None)]
        with gathered_for_step(*heads) as held:
            self._step_held = held
            try:
                return super().training_step(model, inputs, num_items_in_batch)
            finally:
                self._step_held = frozenset()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("shift_labels", None)
        raw_labels = inputs.pop("labels")
        if labels is None:
            labels = raw_labels
        index = inputs.pop(EXAMPLE_INDEX, None)
        step = self.state.global_step
        knobs = self.schedules.at(step, max(self.state.max_steps, 1))
        divergence = self.divergence
        self._scheduled = knobs
        self._sampled_now = bool(inputs.pop(SAMPLED, False))
        estimate = False
        if self._sampled_now:
            # the student's own tokens: the on-policy divergence only, no CE on own samples
            knobs = replace(knobs, hard_weight=0.0)
            divergence = self.on_policy.divergence if self.on_policy else divergence
            estimate = self.on_policy is not None and self.on_policy.estimator == "sampled"
        share = self.on_policy.forward_kl_share if self._sampled_now and self.on_policy else 0.0
        # chunk only when there is more than one chunk: a single chunk saves no memory and
        # only adds the custom backward (benchmarks/README.md: 0.78x at N = chunk = 1,024)
        # a sharded student chunks on every rank alike (the head gathers are collectives,
        # and each rank's padded length differs)
        chunked = (
            not (estimate or share)  # these read full logits (of short samples)
            and self.loss_chunk_size
            and (is_sharded(self.model) or labels.numel() > self.loss_chunk_size)
            and _supports_chunking(self.accelerator.unwrap_model(model))
        )
        ask = None
        if knobs.soft_weight > 0 or self._teacher_layers:
            ask = {**inputs} if index is None else {**inputs, EXAMPLE_INDEX: index}
        if chunked:
            return self._chunked_loss(
                model,
                inputs,
                labels,
                ask,
                knobs,
                step,
                num_items_in_batch,
                return_outputs,
                divergence,
            )
        outputs = model(**inputs, output_hidden_states=True) if self.terms else model(**inputs)
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        teacher_logits = None
        want = Want("logits", layers=self._teacher_layers, kd_temperature=knobs.kd_temperature)
        sig = self.teacher.signal(ask, want=want) if ask is not None else None
        labels, soft_mask = _scored_only(labels, sig)
        if sig is not None and sig.sorted is not None:  # another vocabulary: ULD
            teacher_logits = sig.sorted
            check_teacher_finite(teacher_logits, step)
        elif sig is not None and sig.sparse is not None:
            # sparse targets (a store, recorded log-probs), made at their own temperature
            s = sig.sparse
            vocab = self.kd_vocab_size or logits.shape[-1]
            teacher_logits = SparseSignal(
                s.ids, s.logprobs.float(), s.log_tail.float(), vocab, s.made_at_temperature
            )
            check_teacher_finite(teacher_logits, step)
        elif sig is not None:
            teacher_logits = sig.logits
            check_teacher_finite(teacher_logits, step)
        if estimate and teacher_logits is not None:
            sums = sampled_token_sums(logits, teacher_logits, labels, vocab_size=self.kd_vocab_size)
        else:
            sums = kd_step_sums(
                logits,
                teacher_logits,
                labels,
                knobs,
                divergence=divergence,
                skew_alpha=self.skew_alpha,
                vocab_size=self.kd_vocab_size,
                soft_mask=soft_mask,
            )
        if share and teacher_logits is not None:  # keeps long samples from collapsing
            fwd = kd_step_sums(logits, teacher_logits, labels, knobs, vocab_size=self.kd_vocab_size)
            sums = KDSums(
                (1 - share) * sums.soft_sum + share * fwd.soft_sum, sums.hard_sum, sums.count
            )
        terms = self._term_sums(outputs, sig, labels, step)
        loss = combine(
            sums,
            soft_weight=knobs.soft_weight,
            hard_weight=knobs.hard_weight,
            kd_temperature=knobs.kd_temperature,
            scale_by_t2=self.scale_by_t2,
            num_items=num_items_in_batch,
            extra=[(w, t) for _, w, t in terms],
        )
        loss = self._finish(
            model, loss, sums, knobs, inputs, labels, num_items_in_batch, step, terms
        )
        return (loss, outputs) if return_outputs else loss

    def _chunked_loss(
        self, model, inputs, labels, ask, knobs, step, num_items, return_outputs, divergence
    ):
        """Same objective, but student (and teacher) logits are made chunk by chunk from
        final hidden states and the output head: no (tokens x V) tensor is ever held."""
        outputs = model(**inputs, output_hidden_states=True, logits_to_keep=1)
        hidden = outputs.hidden_states[-1]
        flat_h = hidden.reshape(-1, hidden.shape[-1])
        core = self.accelerator.unwrap_model(model)
        head = core.get_output_embeddings()
        vocab = self.kd_vocab_size or full_shape(head.weight)[0]
        cap = getattr(core.config, "final_logit_softcapping", None)
        scale = getattr(core.config, "logit_scale", None)
        teacher, t_weight, t_bias = None, None, None
        want = Want("hidden", layers=self._teacher_layers, kd_temperature=knobs.kd_temperature)
        sig = self.teacher.signal(ask, want=want) if ask is not None else None
        labels, soft_mask = _scored_only(labels, sig)
        soft_sig = sig if knobs.soft_weight > 0 else None
        if soft_sig is not None and sig.cross is not None:  # another vocabulary, per chunk
            teacher = sig.cross
        elif soft_sig is not None and sig.sparse is not None:
            s = sig.sparse
            k = s.ids.shape[-1]
            teacher = SparseSignal(
                s.ids.reshape(-1, k),
                s.logprobs.float().reshape(-1, k),
                s.log_tail.float().reshape(-1),
                vocab,
                s.made_at_temperature,
            )
        elif soft_sig is not None and sig.hidden is None:
            # a teacher that only gives dense logits: the chunked loss takes (N, V) logits
            t_logits = sig.logits
            teacher = t_logits.reshape(-1, t_logits.shape[-1])[:, :vocab]
            check_teacher_finite(teacher, step)
        elif soft_sig is not None:
            t_hidden = sig.hidden
            if not bool(torch.isfinite(t_hidden).all()):
                check_teacher_finite(torch.tensor([float("nan")]), step)
            teacher = t_hidden.reshape(-1, t_hidden.shape[-1])
            t_weight, t_bias = sig.head_weight, sig.head_bias
        flat_labels = labels.reshape(-1)
        # the heads are read outside their modules' forward: gathered first when sharded
        # (FSDP2, ZeRO-3); the loss makes its gradients inside the block
        heads = (head.weight, getattr(head, "bias", None), t_weight, t_bias)
        with full_params(*heads, held=self._step_held) as full:
            weight, bias, t_weight, t_bias = (None if p is None else p[:vocab] for p in full)
            loss, sums = chunked_kd_loss(
                flat_h,
                weight,
                teacher,
                flat_labels,
                kd_temperature=knobs.kd_temperature,
                soft_weight=knobs.soft_weight if teacher is not None else 0.0,
                hard_weight=knobs.hard_weight,
                divergence=divergence,
                beta=knobs.beta,
                skew_alpha=self.skew_alpha,
                scale_by_t2=self.scale_by_t2,
                num_items=num_items,
                chunk_size=self.loss_chunk_size,
                head_bias=bias,
                logit_scale=scale,
                softcap=cap,
                teacher_head_weight=t_weight,
                teacher_head_bias=t_bias,
                soft_mask=None if soft_mask is None else soft_mask.reshape(-1),
            )
        terms = self._term_sums(outputs, sig, labels, step)
        if terms:  # the chunked loss divides its own terms; these go through the same divide
            extra = sum(w * t for _, w, t in terms)
            loss = loss + divide(extra, sums.count if num_items is None else num_items)
        loss = self._finish(model, loss, sums, knobs, inputs, labels, num_items, step, terms)
        return (loss, outputs) if return_outputs else loss

    def _term_sums(self, outputs, sig, labels, step) -> list[tuple[str, float, torch.Tensor]]:
        """``(name, weight now, sum over valid positions)`` of each extra term."""
        if not self.terms:
            return []
        if self._teacher_layers and (sig is None or not sig.layers):
            raise InputError(
                "distill.terms: these terms need the teacher's hidden states, which only a "
                "teacher model gives (teacher.kind=model)"
            )
        valid = labels != -100
        total = max(self.state.max_steps, 1)
        layers = sig.layers if sig is not None else {}
        return [
            (slot.name, slot.weight(step, total), slot.module(outputs.hidden_states, layers, valid))
            for slot in self.terms
        ]

    def _finish(self, model, loss, sums, knobs, inputs, labels, num_items, step, terms=()):
        if num_items is not None and self.args.average_tokens_across_devices:
            # DDP averages gradients over ranks; num_items is global, so undo that average
            loss = loss * self.accelerator.num_processes
        try:
            check_loss_finite(loss, step)
        except NonFiniteError:
            # the newest checkpoint's weights led here: never resume from them
            if self.is_world_process_zero():
                retract_latest(Path(self.args.output_dir))
            raise
        self._record(model, sums, knobs, inputs, labels, {n: t for n, _, t in terms})
        return loss

    def _record(self, model, sums, knobs, inputs, labels, terms=None) -> None:
        if model.training:
            self.targets_seen += int(sums.count)
            n_tok = (
                int(inputs["attention_mask"].sum())
                if "attention_mask" in inputs
                else labels.numel()
            )
            # the scheduled knobs, not the on-policy micro-batch's (which drop the CE weight)
            knobs = self._scheduled
            self.kd_meter.update(sums, knobs, n_tok, terms, sampled=self._sampled_now)

    def create_optimizer(self, model=None):
        """The stock optimizer plus one group for the extra terms' own parameters."""
        optimizer = super().create_optimizer(model)
        params = self._term_parameters()
        known = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if params and id(params[0]) not in known:
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    def _term_parameters(self) -> list[torch.nn.Parameter]:
        return [p for slot in self.terms for p in slot.module.parameters()]

    def _sync_term_grads(self) -> None:
        """Average the terms' gradients over ranks, once per optimizer step: DDP averages the
        student's, but the terms' parameters live outside its wrapper (without this each
        rank's projections would learn from its own shard only and drift apart)."""
        if self._term_grads_synced:
            return
        self._term_grads_synced = True
        dist = torch.distributed
        params = self._term_parameters()
        if not params or not (dist.is_available() and dist.is_initialized()):
            return
        world = dist.get_world_size()
        if world == 1:
            return
        for p in params:  # the same order on every rank
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(world)

    def _clip_grad_norm(self, model):
        """Clip the student's and the terms' gradients together (one global norm)."""
        self._sync_term_grads()
        params = self._term_parameters()
        if not params:
            return super()._clip_grad_norm(model)
        both = [*model.parameters(), *params]
        return self.accelerator.clip_grad_norm_(both, self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        self._sync_term_grads()  # (when clipping is off, this is the first hook of the step)
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        state = term_state(self.terms)
        if state and self.is_world_process_zero():
            folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            save_file(state, str(folder / TERM_STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint):
        """Resume the optimizer and scheduler (and the extra terms' parameters), then put the
        run's own learning rate in effect: the restored state carries the old run's rate,
        which a re-run may have changed."""
        if checkpoint is not None and (Path(checkpoint) / TERM_STATE_FILE).is_file():
            load_term_state(self.terms, load_file(str(Path(checkpoint) / TERM_STATE_FILE)))
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.optimizer is not None:
            apply_learning_rate(self.optimizer, self.lr_scheduler, self.args.learning_rate)


def apply_learning_rate(optimizer, scheduler, peak_lr: float) -> None:
    """Rescale a restored optimizer + multiplicative scheduler to the peak rate ``peak_lr``,
    keeping the schedule's position (the current rate = ``peak_lr`` x the schedule factor)."""
    base = getattr(scheduler, "base_lrs", None)
    lambdas = getattr(scheduler, "lr_lambdas", None)
    for i, group in enumerate(optimizer.param_groups):
        if lambdas is not None:  # LambdaLR (every transformers schedule): this run's shape
            factor = lambdas[i](scheduler.last_epoch)
        else:
            old_peak = group.get("initial_lr") or (base[i] if base else None) or group["lr"]
            factor = group["lr"] / old_peak if old_peak else 1.0
        group["initial_lr"] = peak_lr
        group["lr"] = peak_lr * factor
    if base is not None:
        scheduler.base_lrs = [peak_lr for _ in base]
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def _scored_only(labels: torch.Tensor, sig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(labels, soft_mask)``. Where the teacher gave no target (``sig.valid``): with
    ``valid_for="all"`` the labels become -100 (such positions were counted in the step's
    global count, so they weigh as zeros, not as missing); with ``"soft"`` the labels stay
    and ``soft_mask`` keeps the soft term off those positions."""
    if sig is None or sig.valid is None:
        return labels, None
    valid = sig.valid.to(labels.device)
    if sig.valid_for == "soft":
        return labels, valid
    return labels.masked_fill(~valid, -100), None


def _supports_chunking(model) -> bool:
    """Causal LMs whose forward takes ``logits_to_keep`` and that expose an output head."""
    import inspect

    base = getattr(model, "get_base_model", None)  # a peft (LoRA) student: its base model
    model = base() if callable(base) else model
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    head = getattr(model, "get_output_embeddings", lambda: None)()
    return "logits_to_keep" in params and head is not None and hasattr(head, "weight")
