"""`kdistill export`: a trained student as a Hugging Face folder and GGUF files, with a card.

SOURCE is a run folder (``config.yaml`` + ``model/``: the card names its teacher, data and
method), a model folder, or a bundled name. Everything that needs no model is checked before
one loads; every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kdistill import __version__
from kdistill.errors import InputError, MissingFileError
from kdistill.files import atomic_write_json
from kdistill.log import say

GEMMA_NOTE = (
    "The teacher is a Gemma model: a model distilled from Gemma outputs is a Gemma model "
    "derivative, and the Gemma Terms of Use (https://ai.google.dev/gemma/terms), including "
    "their use restrictions, apply to this student."
)


def _source(spec: str) -> tuple[str, dict | None]:
    """(model spec to load, the run's config as a dict or None)."""
    p = Path(spec).expanduser()
    if p.is_dir() and (p / "config.yaml").is_file() and (p / "model" / "config.json").is_file():
        return str(p / "model"), yaml.safe_load((p / "config.yaml").read_text())
    if p.is_dir() and (p / "config.yaml").is_file():
        raise MissingFileError(
            f"{p} is a run folder without a finished model/ (the run has not completed): "
            "finish it with `kdistill distill`, then export"
        )
    return spec, None


def teacher_gguf(run_cfg: dict | None) -> Path | None:
    """The GGUF the run's teacher came from (bundled or a .gguf file), if any."""
    if not run_cfg:
        return None
    spec = (run_cfg.get("teacher") or {}).get("model")
    if not spec:
        return None
    from kdistill.models.bundled import BUNDLED, bundled_gguf_path

    if spec in BUNDLED:
        return bundled_gguf_path(spec)
    p = Path(spec).expanduser()
    return p if p.suffix == ".gguf" and p.is_file() else None


def teacher_license(run_cfg: dict | None) -> tuple[str, str]:
    """(license id or 'unknown', the teacher's name) from its GGUF or HF model card."""
    spec = ((run_cfg or {}).get("teacher") or {}).get("model") or "unknown"
    gguf = teacher_gguf(run_cfg)
    if gguf is not None:
        from gguf import GGUFReader

        field = GGUFReader(gguf).fields.get("general.license")
        return (field.contents() if field else "unknown"), spec
    readme = Path(spec).expanduser() / "README.md"
    if readme.is_file():
        for line in readme.read_text(errors="replace").splitlines()[:40]:
            if line.startswith("license:"):
                return line.split(":", 1)[1].strip(), spec
    return "unknown", spec


def model_card(
    model, run_cfg: dict | None, figures: dict | None, name: str, license_of=None
) -> str:
    """The README.md of an export: teacher, data, method, figures, license terms."""
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    c = model.config
    lic, teacher = license_of or teacher_license(run_cfg)
    lines = [
        "---",
        f"license: {lic}",
        "library_name: transformers",
        "tags: [kdistill, distillation]",
        "---",
        f"# {name}",
        "",
        f"Exported by kdistill {__version__}.",
        "",
        "## Model",
        f"- {n_params:,} parameters; {c.num_hidden_layers} layers, hidden size {c.hidden_size}, "
        f"MLP {c.intermediate_size}, {c.num_attention_heads} heads "
        f"({getattr(c, 'num_key_value_heads', c.num_attention_heads)} KV)",
    ]
    kept = getattr(c, "kdistill_teacher_layers", None)
    if kept is not None:
        lines.append(f"- cut from the teacher's layers {kept}")
    pruning = getattr(c, "kdistill_pruning", None)
    if pruning:
        lines.append(f"- pruned by importance: {json.dumps(pruning)}")
    if run_cfg:
        t, d, k, tr = (run_cfg.get(x) or {} for x in ("teacher", "data", "distill", "training"))
        lines += [
            "",
            "## How it was made",
            f"- teacher: {t.get('model')} (source: {t.get('kind', 'model')})",
            f"- data: {d.get('source')} (blocks of {d.get('block_size')} tokens, "
            f"{d.get('held_out_fraction')} held out)",
            f"- objective: {k.get('divergence', 'forward_kl')} at T = "
            f"{k.get('kd_temperature')}, soft weight {k.get('soft_weight')}, hard weight "
            f"{k.get('hard_weight')}" + (f", terms {k.get('terms')}" if k.get("terms") else ""),
            f"- training: {tr.get('max_steps')} steps, batch {tr.get('per_device_batch_size')}, "
            f"learning rate {tr.get('learning_rate')}",
        ]
    if figures:
        lines += ["", "## Figures (kdistill eval, held-out text)"]
        for key, value in figures.items():
            lines.append(
                f"- {key}: {value:.4g}" if isinstance(value, float) else f"- {key}: {value}"
            )
    lines += [
        "",
        "## License",
        f"This student is derived from {teacher}, whose license is `{lic}`; the teacher's "
        "license terms apply to it.",
    ]
    if "gemma" in (teacher + lic).lower():
        lines.append(GEMMA_NOTE)
    return "\n".join(lines) + "\n"


def _figures(results: Path | None, name: str | None) -> dict | None:
    if results is None:
        return None
    if not results.is_file():
        raise MissingFileError(f"--results {results} not found")
    data = json.loads(results.read_text())
    models = data.get("models", data)
    if name not in models:
        raise InputError(
            f"--results {results} has no model {name!r} (it has {', '.join(sorted(models))}): "
            "pass --name"
        )
    keep = (
        "perplexity",
        "bits_per_byte",
        "kl_to_teacher",
        "top1_agreement",
        "forward_tokens_per_s",
        "generate_tokens_per_s",
    )
    return {k: models[name][k] for k in keep if k in models[name]}


def run_export(
    source: str,
    out: str,
    *,
    hf: bool = True,
    int8: bool = False,
    gguf: list[str] | None = None,
    tokenizer_gguf: str | None = None,
    gguf_pre: str | None = None,
    results: str | None = None,
    name: str | None = None,
    fresh: bool = False,
) -> Path:
    from kdistill.folders import claim_folder
    from kdistill.models.export import GGUF_TYPES, K_QUANTS, check_gguf_exportable

    kinds = [k.lower() for k in (gguf or [])]
    bad = [k for k in kinds if k not in GGUF_TYPES and k not in K_QUANTS]
    if bad:
        raise InputError(
            f"--gguf {bad[0]!r}: use {', '.join((*GGUF_TYPES, *K_QUANTS))} (comma-separated)"
        )
    if not hf and not kinds and not int8:
        raise InputError("nothing to export: drop --no-hf, or give --int8 or --gguf TYPES")
    if int8:
        from kdistill.models.quantize import _torchao

        _torchao()  # the extra is there, before any model loads
    spec, run_cfg = _source(source)
    tok_gguf = Path(tokenizer_gguf).expanduser() if tokenizer_gguf else teacher_gguf(run_cfg)
    if tok_gguf is not None and not tok_gguf.is_file():
        raise MissingFileError(f"--tokenizer-gguf {tok_gguf} not found")
    if kinds and tok_gguf is None and not gguf_pre:
        raise InputError(
            "GGUF export needs llama.cpp's view of the tokenizer: --tokenizer-gguf FILE (a GGUF "
            "with the student's vocabulary, e.g. the teacher's) or --gguf-pre NAME (llama.cpp's "
            "pre-tokenizer name for this byte-level BPE, e.g. smollm or gpt2)"
        )
    label = name or (Path(source).name if Path(source).exists() else source)
    figures = _figures(Path(results), name or "student") if results else None
    from kdistill.models.loading import load_causal_lm

    with claim_folder(out, "export", field="--out", fresh=fresh) as folder:
        model, tok = load_causal_lm(spec, frozen=True)
        if kinds:
            check_gguf_exportable(model.config)
        lic, teacher_name = teacher_license(run_cfg)  # reads the teacher's GGUF once
        card = model_card(model, run_cfg, figures, label, (lic, teacher_name))
        written = _write(folder.path, model, tok, card, hf, kinds, tok_gguf, gguf_pre, label, lic)
        if int8:
            written.append(_write_int8(folder.path, model, tok, card))
        atomic_write_json(
            folder.path / "export.json",
            {"source": source, "files": written, "license": lic, "kdistill": __version__},
        )
        (folder.path / "README.md").write_text(card)
        for f in written:
            say(f"wrote {folder.path / f}")
        return folder.path


def _write_int8(out: Path, model, tok, card: str) -> str:
    """``out/int8``: the student with weight-only int8 weights (torchao), loadable by kdistill."""
    from kdistill.models.quantize import quantize_int8, save_quantized
    from kdistill.models.storage import write_folder_atomically

    quantize_int8(model)  # last: the other formats were written from the fp32 weights

    def fill(tmp: Path) -> None:
        save_quantized(model, tok, tmp)
        (tmp / "README.md").write_text(
            card + "\nWeights: int8, one fp32 scale per output row (torchao, weight-only); "
            "load with kdistill (`kdistill eval --model name=<this folder>`).\n"
        )

    write_folder_atomically(out / "int8", fill, "kdistill-export")
    return "int8"


def _write(out: Path, model, tok, card, hf, kinds, tok_gguf, pre, label, lic) -> list[str]:
    from kdistill.models.export import GGUF_TYPES, k_quantize, write_gguf
    from kdistill.models.storage import write_folder_atomically

    written = []
    if hf:

        def fill(tmp: Path) -> None:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / "README.md").write_text(card)

        write_folder_atomically(out / "hf", fill, "kdistill-export")
        written.append("hf")
    base = None
    opts = {"tokenizer_gguf": tok_gguf, "pre": pre, "card": card, "name": label}
    if lic != "unknown":
        opts["license_id"] = lic
    for kind in sorted(kinds, key=lambda k: k not in GGUF_TYPES):  # plain types first
        path = out / f"student-{kind}.gguf"
        if kind in GGUF_TYPES:
            write_gguf(model, tok, path, kind, **opts)
            if kind == "f32":
                base = path
        else:  # a K-quant, from an F32 file (the one written here, or a temporary one)
            src = base or write_gguf(model, tok, out / ".k-quant-source.f32.tmp", "f32", **opts)
            try:
                k_quantize(src, path, kind)
            finally:
                if base is None:
                    src.unlink(missing_ok=True)
        written.append(path.name)
    return written
