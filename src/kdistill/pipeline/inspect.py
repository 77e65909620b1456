"""`kdistill inspect`: what temperature does to the teacher's soft labels, for one prompt."""

from __future__ import annotations

from pathlib import Path

import torch

from kdistill.eval import metrics
from kdistill.files import atomic_write_bytes, atomic_write_json
from kdistill.log import say
from kdistill.models.placement import on_model

DEFAULT_TEMPERATURES = (0.2, 1.0, 2.0, 5.0, 20.0)


@torch.no_grad()
def soft_labels(model, tok, prompt: str, temperatures=DEFAULT_TEMPERATURES, top: int = 8):
    """Next-token distribution of ``prompt`` at each temperature: top tokens + entropy."""
    ids = on_model(tok(prompt, return_tensors="pt"), model)
    logits = model(**ids).logits[0, -1, : len(tok)].float().cpu()
    out = []
    for t in temperatures:
        probs = metrics.tempered_probs(logits, t)
        p, i = torch.topk(probs, top)
        out.append(
            {
                "temperature": t,
                "entropy_nats": float(metrics.entropy(probs)),
                "total_probability": float(probs.sum()),
                "top": [
                    {"token": tok.decode([int(j)]), "id": int(j), "prob": float(q)}
                    for q, j in zip(p, i, strict=True)
                ],
            }
        )
    return out


@torch.no_grad()
def sampled_sequences(
    model,
    tok,
    prompt: str,
    n: int,
    max_new_tokens: int = 12,
    sampling_temperature: float = 1.0,
    seed: int = 0,
):
    """N sampled continuations, each with its log-prob; shares normalised over distinct ones."""
    torch.manual_seed(seed)
    ids = on_model(tok(prompt, return_tensors="pt"), model)
    out = model.generate(
        **ids,
        do_sample=True,
        temperature=sampling_temperature,
        top_k=0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id,
    )
    start = ids["input_ids"].shape[1]
    seqs = out.sequences[:, start:]
    step_lp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], dim=1)
    tok_lp = step_lp.gather(-1, seqs.unsqueeze(-1)).squeeze(-1)
    # stop counting after the first EOS/pad
    alive = torch.ones_like(seqs, dtype=torch.bool)
    eos = seqs == tok.eos_token_id
    alive[:, 1:] = ~(torch.cumsum(eos.int(), dim=1)[:, :-1] > 0)
    seq_lp = (tok_lp * alive).sum(-1)
    distinct: dict[str, float] = {}
    for row, keep, lp in zip(seqs, alive, seq_lp.tolist(), strict=True):
        distinct[tok.decode(row[keep], skip_special_tokens=True)] = lp
    texts = list(distinct)
    shares = metrics.normalised_sequence_probs([distinct[t] for t in texts])
    return sorted(
        (
            {"text": t, "logprob": distinct[t], "share": s}
            for t, s in zip(texts, shares, strict=True)
        ),
        key=lambda r: -r["share"],
    )


def plot_soft_labels(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4), sharey=True)
    for ax, r in zip(axes, rows, strict=True):
        labels = [repr(x["token"])[1:-1] or "␣" for x in r["top"]]
        ax.barh(range(len(labels))[::-1], [x["prob"] for x in r["top"]], color="#4c72b0")
        ax.set_yticks(range(len(labels))[::-1], labels, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(f"T={r['temperature']:g}  H={r['entropy_nats']:.2f} nats", fontsize=9)
    fig.suptitle("teacher next-token soft labels by temperature")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    plt.close(fig)
    return path


def run_inspect(
    model_spec: str,
    prompt: str,
    temperatures,
    sequences: int,
    out_dir: Path,
    device: str = "auto",
):
    from rich.table import Table

    from kdistill.errors import InputError
    from kdistill.files import check_output_folder
    from kdistill.models.loading import check_model_files, load_causal_lm

    if not prompt.strip():
        raise InputError("--prompt is empty; give the text whose next token to show")
    check_output_folder(out_dir, "--out")
    check_model_files(model_spec, "--model")
    from kdistill.models.placement import resolve_device

    resolve_device(device)
    model, tok = load_causal_lm(model_spec, frozen=True, device=device)
    rows = soft_labels(model, tok, prompt, temperatures)
    table = Table(title=f"next-token soft labels for {prompt!r}")
    table.add_column("T", justify="right")
    table.add_column("entropy", justify="right")
    table.add_column("top tokens (prob)")
    for r in rows:
        tops = ", ".join(f"{x['token']!r} {x['prob']:.2f}" for x in r["top"][:5])
        table.add_row(f"{r['temperature']:g}", f"{r['entropy_nats']:.2f}", tops)
    say(table)
    result = {"prompt": prompt, "model": model_spec, "soft_labels": rows}
    if sequences:
        seqs = sampled_sequences(model, tok, prompt, sequences)
        result["sequences"] = seqs
        for s in seqs:
            say(f"{s['share']:6.1%}  {prompt}[bold]{s['text']}[/bold]")
    atomic_write_json(out_dir / "inspect.json", result)
    png = plot_soft_labels(rows, out_dir / "soft_labels.png")
    say(f"wrote {out_dir / 'inspect.json'} and {png}")
    return result
