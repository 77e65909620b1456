"""Metrics on the student's own samples, the ones on-policy distillation optimises.

For held-out prompts (the first ``prompt_tokens`` tokens of held-out blocks), each model
samples continuations; the teacher scores them. Per model (same tokenizer as the teacher):

* ``own_reverse_kl``: mean over sampled tokens of KL(student || teacher) at T = 1 at that
  prefix (what on-policy reverse-KL training lowers);
* ``own_greedy_agreement``: share of the model's *greedy* tokens equal to the teacher's
  argmax at the same prefix;
* ``own_entropy`` (mean per-token entropy of the model on its samples), ``own_distinct2``
  and ``own_length`` (mean sampled tokens per prompt): a collapsed student (low entropy,
  repeated n-grams, early stops) cannot look good on the first two alone.

The teacher gets the same figures on its own samples (its reverse KL is 0). Settings and
the seed are returned with the results so a reader can reproduce them.
"""

from __future__ import annotations

import torch

from kdistill.eval.metrics import distinct_n, entropy
from kdistill.models.placement import on_model
from kdistill.models.sampling import sample_continuations, sampled_batch

INPUTS = ("input_ids", "attention_mask", "position_ids")


def _log_probs(model, batch: dict, vocab_size: int) -> torch.Tensor:
    out = model(**{k: batch[k] for k in INPUTS})
    logits = out.logits if hasattr(out, "logits") else out
    return torch.log_softmax(logits[..., :vocab_size].float(), dim=-1)


@torch.no_grad()
def own_sample_figures(
    models: dict[str, torch.nn.Module],
    teacher_name: str,
    prompts: list[torch.Tensor],
    *,
    vocab_size: int,
    pad_id: int,
    eos_ids: tuple[int, ...],
    max_new_tokens: int = 32,
    sampling_temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> dict[str, dict]:
    """``{name: {own_reverse_kl, own_greedy_agreement, own_entropy, own_distinct2,
    own_length}}`` for every model in ``models`` (all share the teacher's tokenizer)."""
    teacher = models[teacher_name]
    settings = {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "sampling_temperature": sampling_temperature,
        "top_p": top_p,
        "seed": seed,
    }
    out = {}
    for name, model in models.items():
        fig = {}
        for greedy in (False, True):
            p_ids, p_mask, new = sample_continuations(
                model,
                prompts,
                max_new_tokens=max_new_tokens,
                sampling_temperature=0.0 if greedy else sampling_temperature,
                top_p=top_p,
                pad_id=pad_id,
                eos_ids=eos_ids,
                seed=seed,
            )
            batch = sampled_batch(p_ids.cpu(), p_mask.cpu(), new.cpu(), eos_ids)
            batch = on_model(batch, model)
            targets = batch["shift_labels"]
            valid = targets != -100
            n = max(int(valid.sum()), 1)
            t_lp = _log_probs(teacher, batch, vocab_size)
            if greedy:
                same = (t_lp.argmax(-1) == targets) & valid
                fig["own_greedy_agreement"] = int(same.sum()) / n
                continue
            s_lp = t_lp if model is teacher else _log_probs(model, batch, vocab_size)
            rkl = (s_lp.exp() * (s_lp - t_lp)).sum(-1)
            fig["own_reverse_kl"] = float((rkl * valid).sum()) / n
            fig["own_entropy"] = float((entropy(s_lp.exp()) * valid).sum()) / n
            rows = [targets[r][valid[r]].tolist() for r in range(targets.shape[0])]
            fig["own_distinct2"] = distinct_n(rows, 2)
            fig["own_length"] = sum(len(r) for r in rows) / len(rows)
        out[name] = {**fig, "own_sample_settings": settings}
    return out
