"""Importance pruning (Minitron-style): rank a teacher's blocks, KV groups, MLP neurons and
embedding channels on calibration text, then slice the student out of the teacher's weights.

Scores, all measured in one forward pass over the calibration blocks:

- **block influence** of layer l: ``1 - mean cos(h_in, h_out)`` over tokens, with ``h_out`` the
  block's own output (for the last block that is before the final norm: the hook sees it, not
  ``hidden_states[-1]``, which transformers 5.x replaces with the normed output);
- optionally **skip KL** of layer l: the mean KL(full || the model with block l skipped) over
  the calibration tokens (one extra forward per layer);
- **KV group** g: the mean norm of what its query heads add to the residual stream through
  ``o_proj`` (a head whose outgoing weights are zero scores 0);
- **MLP neuron** i: ``mean |a_i| * ||W_down[:, i]||`` (its activation times its outgoing
  weights: an outgoing-zero neuron scores 0);
- **embedding channel** c: the mean ``|x_c|`` of every norm's output over all layers (the
  inputs of attention, MLP and head), so a channel the residual stream never carries scores 0.

The student keeps the top blocks (in teacher order) and, per kept layer, the top KV groups and
neurons; the same counts in every layer, so the result is a plain config that transformers and
llama.cpp load. Kept indices stay in ascending order, so keeping everything reproduces the
teacher exactly. RMSNorm weights of a narrower residual stream are scaled by
``sqrt(d / d')``: the RMS over fewer channels is computed over ``d'`` instead of ``d``, and the
scale keeps the output identical when the dropped channels carry nothing.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import asdict, dataclass, field

import torch

from kdistill.errors import InputError

# model types whose norms are plain RMSNorm (x / rms * w) and embeddings are not rescaled by
# sqrt(hidden_size): channel pruning with the sqrt(d / d') correction is exact for them
_CHANNEL_PRUNABLE = {"llama", "mistral", "qwen2", "qwen3", "smollm3"}


@dataclass
class Importance:
    """Scores per teacher unit; higher = more important."""

    layers: list[float]
    kv_groups: list[list[float]]
    neurons: list[list[float]]
    channels: list[float]
    skip_kl: list[float] | None = None
    calibration_tokens: int = 0


@dataclass
class PrunePlan:
    """What the student keeps, in teacher indices (each list ascending)."""

    layers: list[int]
    kv_groups: list[list[int]] = field(default_factory=list)
    neurons: list[list[int]] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)
    depth_metric: str = "block_influence"

    def as_dict(self) -> dict:
        return asdict(self)


def decoder_blocks(model, doing: str = "prune"):
    """(``model.model``, its decoder blocks) of a Llama-style LM, or one line saying why not
    (``doing`` names the operation in it)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise InputError(
            f"cannot {doing} {type(model).__name__}: expected decoder blocks at "
            "model.model.layers (Llama-style); give the student as its own model instead"
        )
    return inner, layers


def _first_tensor(x):
    return x[0] if isinstance(x, tuple | list) else x


def _hidden_in(args, kwargs):
    if args:
        return args[0]
    return kwargs["hidden_states"]


def _shape(model) -> tuple[int, int, int, int]:
    """(hidden, heads, kv heads, head_dim) from the config."""
    c = model.config
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return c.hidden_size, heads, kv, head_dim


# the last measurement, keyed by a digest of the model's config and weights, the calibration
# ids and the settings: runs in one process that cut the same student from the same teacher
# on the same text (the demo's student, baseline and from-scratch runs) measure once
_LAST: dict[str, Importance] = {}


def _bytes(t: torch.Tensor):
    return t.detach().contiguous().view(-1).view(torch.uint8).numpy()


def _digest(model, batches: list[torch.Tensor], skip_kl: bool) -> str | None:
    """The key of a measurement; None for a model off the CPU (there the ranking takes
    seconds and hashing would copy every weight to the host) or with a tensor that has no
    plain bytes (quantized, meta): then nothing is kept."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        return None
    h = hashlib.blake2b(digest_size=20)
    try:
        h.update(model.config.to_json_string(use_diff=False).encode())
        h.update(repr(skip_kl).encode())
        for name, t in (*model.named_parameters(), *model.named_buffers()):
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(_bytes(t))
        for ids in batches:
            h.update(repr(tuple(ids.shape)).encode())
            h.update(_bytes(ids))
    except (AttributeError, NotImplementedError, RuntimeError, TypeError):
        return None
    return h.hexdigest()


def measure_importance(model, batches: list[torch.Tensor], *, skip_kl: bool = False) -> Importance:
    """Scores of ``model``'s units on ``batches`` (token-id tensors of shape (B, T)); the same
    model, text and settings as the last call in this process reuse its scores."""
    if not batches:
        raise InputError("pruning needs calibration text: no calibration blocks were given")
    key = _digest(model, batches, skip_kl)
    if key is None:
        return _measure(model, batches, skip_kl)
    if key not in _LAST:
        _LAST.clear()
        _LAST[key] = _measure(model, batches, skip_kl)
    return copy.deepcopy(_LAST[key])


@torch.no_grad()
def _measure(model, batches: list[torch.Tensor], skip_kl: bool) -> Importance:
    inner, blocks = decoder_blocks(model)
    hidden, heads, kv, head_dim = _shape(model)
    rep = heads // kv
    n_layers = len(blocks)
    was_training = model.training
    model.eval()
    cos_sum = torch.zeros(n_layers, dtype=torch.float64)
    head_sum = torch.zeros(n_layers, heads, dtype=torch.float64)
    act_sum = [None] * n_layers
    chan_sum = torch.zeros(hidden, dtype=torch.float64)
    n_tok = 0
    handles = []
    pending_in: dict[int, torch.Tensor] = {}

    def block_pre(i):
        def hook(_m, args, kwargs):
            pending_in[i] = _hidden_in(args, kwargs).detach()

        return hook

    def block_post(i):
        def hook(_m, _args, _kwargs, out):
            h_in, h_out = pending_in.pop(i).float(), _first_tensor(out).float()
            cos = torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1, eps=1e-8)
            cos_sum[i] += cos.double().sum()

        return hook

    def o_pre(i, o_proj):
        def hook(_m, args):
            x = args[0].float()  # (B, T, heads * head_dim)
            w = o_proj.weight.float().view(o_proj.weight.shape[0], heads, head_dim)
            contrib = torch.einsum("bthk,dhk->bthd", x.view(*x.shape[:-1], heads, head_dim), w)
            head_sum[i] += contrib.norm(dim=-1).double().sum(dim=(0, 1))

        return hook

    def down_pre(i):
        def hook(_m, args):
            a = args[0].float().abs().double().sum(dim=(0, 1))
            act_sum[i] = a if act_sum[i] is None else act_sum[i] + a

        return hook

    def norm_post(_m, _args, out):
        o = _first_tensor(out)
        if o.shape[-1] == hidden:
            chan_sum.add_(o.float().abs().double().sum(dim=tuple(range(o.dim() - 1))))

    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(block_pre(i), with_kwargs=True))
        handles.append(block.register_forward_hook(block_post(i), with_kwargs=True))
        attn, mlp = _attn(block, i), _mlp(block, i)
        handles.append(attn.o_proj.register_forward_pre_hook(o_pre(i, attn.o_proj)))
        handles.append(mlp.down_proj.register_forward_pre_hook(down_pre(i)))
        for name, mod in block.named_children():
            if "norm" in name.lower():
                handles.append(mod.register_forward_hook(norm_post))
    if getattr(inner, "norm", None) is not None:
        handles.append(inner.norm.register_forward_hook(norm_post))
    try:
        for ids in batches:  # the head's logits are not needed: the last position's only
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            n_tok += ids.numel()
    finally:
        for h in handles:
            h.remove()
    groups = (head_sum / n_tok).view(n_layers, kv, rep).sum(-1)
    neurons = []
    for i, block in enumerate(blocks):
        w_out = _mlp(block, i).down_proj.weight.float().norm(dim=0).double()
        neurons.append(((act_sum[i] / n_tok) * w_out).tolist())
    skl = _skip_kl(model, blocks, batches) if skip_kl else None
    model.train(was_training)
    return Importance(
        layers=(1.0 - cos_sum / n_tok).tolist(),
        kv_groups=groups.tolist(),
        neurons=neurons,
        channels=(chan_sum / n_tok).tolist(),
        skip_kl=skl,
        calibration_tokens=n_tok,
    )


def _skip_kl(model, blocks, batches) -> list[float]:
    """Mean KL(full || block l skipped) per layer, over the calibration tokens."""

    def logp(ids):
        return torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1)

    full = [logp(ids) for ids in batches]
    out = []
    for block in blocks:

        def identity(_m, args, kwargs, result):
            h = _hidden_in(args, kwargs)
            return (h, *result[1:]) if isinstance(result, tuple) else h

        handle = block.register_forward_hook(identity, with_kwargs=True)
        try:
            total = n = 0.0
            for ids, lp in zip(batches, full, strict=True):
                lq = logp(ids)
                total += (lp.exp() * (lp - lq)).sum(-1).double().sum().item()
                n += ids.numel()
        finally:
            handle.remove()
        out.append(total / n)
    return out


def _attn(block, i):
    attn = getattr(block, "self_attn", None)
    if attn is None or not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
        raise InputError(f"cannot prune layer {i}: expected self_attn.q/k/v/o_proj (Llama-style)")
    return attn


def _mlp(block, i):
    mlp = getattr(block, "mlp", None)
    if mlp is None or not all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")):
        raise InputError(f"cannot prune layer {i}: expected mlp.gate/up/down_proj (Llama-style)")
    return mlp


def _top(scores: list[float], k: int) -> list[int]:
    """Indices of the k highest scores, ascending (ties: the lower index wins)."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    return sorted(order[:k])


def plan_pruning(
    model,
    imp: Importance,
    *,
    layers: int | list[int] | None = None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_key_value_heads: int | None = None,
    depth_metric: str = "block_influence",
) -> PrunePlan:
    """The kept units. ``layers``: a count (ranked by ``depth_metric``) or explicit indices."""
    _, blocks = decoder_blocks(model)
    hidden, _, kv, _ = _shape(model)
    n = len(blocks)
    inter = model.config.intermediate_size
    if isinstance(layers, list):
        chosen = sorted(layers)
    else:
        k = n if layers is None else layers
        if not 1 <= k <= n:
            raise InputError(f"student.from_teacher.layers must be 1..{n}, got {k}")
        if depth_metric == "skip_kl":
            if imp.skip_kl is None:
                raise InputError("depth_metric skip_kl needs the skip-KL scores (measured off)")
            depth = imp.skip_kl
        elif depth_metric == "block_influence":
            depth = imp.layers
        else:
            raise InputError(
                f"student.from_teacher.depth_metric {depth_metric!r}: "
                "use block_influence or skip_kl"
            )
        chosen = _top(depth, k)
    for name, want, have in (
        ("hidden_size", hidden_size, hidden),
        ("intermediate_size", intermediate_size, inter),
        ("num_key_value_heads", num_key_value_heads, kv),
    ):
        if want is not None and not 1 <= want <= have:
            raise InputError(
                f"student.from_teacher.{name} must be 1..{have} (the teacher's), got {want}"
            )
    if hidden_size is not None and hidden_size != hidden:
        mt = getattr(model.config, "model_type", "?")
        if mt not in _CHANNEL_PRUNABLE:
            raise InputError(
                f"pruning embedding channels (hidden_size) of a {mt!r} model is not supported "
                f"(only {sorted(_CHANNEL_PRUNABLE)}); prune depth, heads or MLP neurons instead"
            )
    kv_keep = num_key_value_heads or kv
    i_keep = intermediate_size or inter
    return PrunePlan(
        layers=chosen,
        kv_groups=[_top(imp.kv_groups[i], kv_keep) for i in chosen],
        neurons=[_top(imp.neurons[i], i_keep) for i in chosen],
        channels=_top(imp.channels, hidden_size or hidden),
        depth_metric=depth_metric,
    )


def _head_rows(groups: list[int], per_group: int, head_dim: int) -> torch.Tensor:
    """Row indices of the heads ``per_group`` at a time behind each kept group."""
    rows = [
        r
        for g in groups
        for h in range(g * per_group, (g + 1) * per_group)
        for r in range(h * head_dim, (h + 1) * head_dim)
    ]
    return torch.tensor(rows, dtype=torch.long)


def apply_plan(teacher, plan: PrunePlan, *, seed: int = 0):
    """A new fp32 model holding the teacher's weights sliced as ``plan`` says."""
    from transformers import AutoModelForCausalLM

    decoder_blocks(teacher)
    hidden, heads, kv, head_dim = _shape(teacher)
    rep = heads // kv
    ch = torch.tensor(plan.channels, dtype=torch.long)
    d_new = len(plan.channels)
    norm_scale = math.sqrt(hidden / d_new)
    config = copy.deepcopy(teacher.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.num_hidden_layers = len(plan.layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in plan.layers]
    config.hidden_size = d_new
    config.head_dim = head_dim  # explicit: hidden / heads no longer gives it
    kv_new = len(plan.kv_groups[0]) if plan.kv_groups else kv
    config.num_key_value_heads = kv_new
    config.num_attention_heads = kv_new * rep
    if plan.neurons:
        config.intermediate_size = len(plan.neurons[0])
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    t_sd = teacher.state_dict()
    new_sd = {}
    prefix = _layers_prefix(teacher)

    def sliced(key: str, w: torch.Tensor, layer_pos: int | None) -> torch.Tensor:
        w = w.detach().float()
        leaf = key.rsplit(".", 2)
        mod, kind = leaf[-2], leaf[-1]
        if layer_pos is None:
            if key.endswith("embed_tokens.weight") or key.endswith("lm_head.weight"):
                return w[:, ch]
            if w.dim() == 1 and w.shape[0] == hidden:  # final norm
                return w[ch] * norm_scale
            return w
        qrows = _head_rows(plan.kv_groups[layer_pos], rep, head_dim)
        kvrows = _head_rows(plan.kv_groups[layer_pos], 1, head_dim)
        nidx = torch.tensor(plan.neurons[layer_pos], dtype=torch.long)
        if mod == "q_proj":
            return w[qrows][:, ch] if kind == "weight" else w[qrows]
        if mod in ("k_proj", "v_proj"):
            return w[kvrows][:, ch] if kind == "weight" else w[kvrows]
        if mod == "o_proj":
            return w[ch][:, qrows] if kind == "weight" else w[ch]
        if mod in ("gate_proj", "up_proj"):
            return w[nidx][:, ch] if kind == "weight" else w[nidx]
        if mod == "down_proj":
            return w[ch][:, nidx] if kind == "weight" else w[ch]
        if w.dim() == 1 and w.shape[0] == hidden and "norm" in mod:
            return w[ch] * norm_scale
        return w

    for key, w in t_sd.items():
        if key.startswith(prefix):
            idx, rest = key[len(prefix) :].split(".", 1)
            t_layer = int(idx)
            if t_layer not in plan.layers:
                continue
            pos = plan.layers.index(t_layer)
            new_sd[f"{prefix}{pos}.{rest}"] = sliced(key, w, pos)
        else:
            new_sd[key] = sliced(key, w, None)
    s_sd = student.state_dict()
    for key, w in new_sd.items():
        if key not in s_sd:
            continue
        if s_sd[key].shape != w.shape:
            raise InputError(
                f"cannot prune {key}: sliced to {tuple(w.shape)}, the student expects "
                f"{tuple(s_sd[key].shape)} (an unsupported architecture for width pruning)"
            )
    missing = [k for k in s_sd if k not in new_sd and not k.endswith("lm_head.weight")]
    if missing:
        raise InputError(f"cannot prune: no teacher weight for {missing[0]}")
    student.load_state_dict({k: v for k, v in new_sd.items() if k in s_sd}, strict=False)
    if config.tie_word_embeddings:
        student.tie_weights()
    return student


def _layers_prefix(model) -> str:
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and name.endswith("layers"):
            return f"{name}."
    raise InputError(f"cannot prune {type(model).__name__}: no decoder layer list found")


def prune_summary(plan: PrunePlan, imp: Importance | None) -> dict:
    """What ``pruning.json`` holds: kept indices and every score."""
    out = {"plan": plan.as_dict()}
    if imp is not None:
        out["importance"] = asdict(imp)
    return out
