"""`kdistill datacheck`: does the distillation data look like production data?

Three scores between a distillation sample A and a production sample B, all from the
teacher's point of view:

* ``perplexity_ratio`` = teacher perplexity on B / on A. Far above 1: production text
  surprises the teacher more than the distillation text does.
* ``unigram_jsd_bits``: Jensen-Shannon divergence (bits, 0..1) between the token
  frequency distributions (add-one smoothed over the tokens seen in either sample).
* ``embedding_cosine_distance``: 1 - cosine similarity of the mean teacher last-layer
  hidden state over each sample's blocks.

Thresholds, from measurements with the bundled SmolLM2-135M teacher on 2,048-token samples
(KJV train vs KJV held-out = match: ratio 1.07, JSD 0.10 bits, cosine distance 0.010;
KJV train vs Python docs = mismatch: ratio 0.85, JSD 0.24 bits, cosine distance 0.61):
mismatch when perplexity_ratio > 1.5, or unigram_jsd_bits > 0.18, or
embedding_cosine_distance > 0.1. Note the perplexity ratio only catches production text that
*surprises* the teacher: a teacher may well find off-domain text easy (it found the Python
docs easier than the Bible), which is why the token and embedding scores are there.
"""

from __future__ import annotations

import torch

from kdistill.errors import InputError
from kdistill.eval import metrics
from kdistill.log import say

THRESHOLDS = {"perplexity_ratio": 1.5, "unigram_jsd_bits": 0.18, "embedding_cosine_distance": 0.1}


def pydoc_texts() -> list[str]:
    """Python's own documentation topics (``pydoc_data.topics``): an out-of-domain sample."""
    from pydoc_data.topics import topics

    return [t for _, t in sorted(topics.items()) if t.strip()]


def load_texts(source: str) -> list[str]:
    """Texts of a source; ``SOURCE:train`` / ``SOURCE:heldout`` take the same split as
    training (held-out fraction 0.05, seed 0), e.g. ``kjv:heldout``."""
    from kdistill.data.holdout import split_held_out
    from kdistill.data.records import load_records

    base, _, part = source.partition(":")
    if part not in ("", "train", "heldout"):
        raise InputError(f"data source {source!r}: the suffix must be :train or :heldout")
    recs = pydoc_texts() if base == "pydoc" else load_records(base)
    texts = [r if isinstance(r, str) else " ".join(m["content"] for m in r) for r in recs]
    if part:
        train, held = split_held_out(texts, 0.05, 0)
        texts = train if part == "train" else held
    return texts


@torch.no_grad()
def profile(model, tok, texts: list[str], max_tokens: int = 2048, block: int = 256) -> dict:
    """Teacher NLL, token counts and mean hidden state over up to ``max_tokens`` tokens."""
    import random

    from kdistill.data.packing import pack_texts

    # a spread-out sample, not the first pages: shuffle records deterministically
    texts = list(texts)
    random.Random(0).shuffle(texts)
    blocks = pack_texts(tok, texts, block, max_tokens)
    nll, count = 0.0, 0
    hidden_sum = None
    for i in range(0, blocks.shape[0], 4):
        ids = blocks[i : i + 4]
        out = model(input_ids=ids, output_hidden_states=True)
        logits = out.logits[:, :-1, : len(tok)].reshape(-1, len(tok))
        s, c = metrics.nll_sum(logits, ids[:, 1:].reshape(-1))
        nll, count = nll + s, count + c
        h = out.hidden_states[-1].float().sum(dim=(0, 1))
        hidden_sum = h if hidden_sum is None else hidden_sum + h
    freq = torch.bincount(blocks.reshape(-1), minlength=len(tok)).float()
    return {
        "nll": nll / count,
        "perplexity": metrics.perplexity(nll, count),
        "tokens": int(blocks.numel()),
        "freq": freq,
        "mean_hidden": hidden_sum / blocks.numel(),
    }


def compare(a: dict, b: dict) -> dict:
    seen = (a["freq"] + b["freq"]) > 0
    pa = (a["freq"][seen] + 1) / (a["freq"][seen] + 1).sum()
    pb = (b["freq"][seen] + 1) / (b["freq"][seen] + 1).sum()
    cos = torch.nn.functional.cosine_similarity(a["mean_hidden"], b["mean_hidden"], dim=0)
    scores = {
        "perplexity_distill": a["perplexity"],
        "perplexity_production": b["perplexity"],
        "perplexity_ratio": b["perplexity"] / a["perplexity"],
        "unigram_jsd_bits": metrics.js_divergence(pa, pb),
        "embedding_cosine_distance": float(1 - cos),
    }
    flags = [k for k, limit in THRESHOLDS.items() if scores[k] > limit]
    scores["mismatch"] = bool(flags)
    scores["flags"] = flags
    return scores


def run_datacheck(
    model_spec: str, distill_source: str, production_source: str, max_tokens: int = 2048
) -> dict:
    from kdistill.models.loading import check_model_files, load_causal_lm

    distill_texts = load_texts(distill_source)
    production_texts = load_texts(production_source)
    check_model_files(model_spec, "--model")
    model, tok = load_causal_lm(model_spec, frozen=True)
    a = profile(model, tok, distill_texts, max_tokens)
    b = profile(model, tok, production_texts, max_tokens)
    scores = compare(a, b)
    for k in (
        "perplexity_distill",
        "perplexity_production",
        "perplexity_ratio",
        "unigram_jsd_bits",
        "embedding_cosine_distance",
    ):
        limit = THRESHOLDS.get(k)
        say(f"{k:28s} {scores[k]:10.4f}" + (f"   (mismatch above {limit})" if limit else ""))
    if scores["mismatch"]:
        say(
            "[bold red]WARNING: the distillation data does not match the production sample "
            f"({', '.join(scores['flags'])}). A student distilled on it will copy the teacher "
            "where production traffic is not: distil on data like production.[/bold red]"
        )
    else:
        say("[green]distillation data matches the production sample[/green]")
    return scores
