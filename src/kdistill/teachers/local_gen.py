"""Local generation with a Hugging Face / GGUF teacher: batched ``generate`` with left
padding; per-token log-probs at T = 1 from the model's raw logits."""

from __future__ import annotations

import torch

from kdistill.models.placement import on_model
from kdistill.models.sampling import left_pad
from kdistill.teachers import DEFAULT_MAX_NEW_TOKENS
from kdistill.teachers.served import sample_seed


class LocalGenerator:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tok = tokenizer

    def _prompt_ids(self, prompt, system_prompt: str | None, mode: str = "chat") -> list[int]:
        """Chat mode: the chat template (when the tokenizer has one); completions mode or no
        template: the prompt text as is, like a server's ``/v1/completions``."""
        use_template = mode == "chat" and getattr(self.tok, "chat_template", None)
        if prompt.messages is not None and not use_template:
            text = "\n".join(m["content"] for m in prompt.messages)
            return list(self.tok(text)["input_ids"])
        if use_template:
            msgs = list(prompt.messages or [{"role": "user", "content": prompt.text}])
            if system_prompt and msgs[0].get("role") != "system":
                msgs = [{"role": "system", "content": system_prompt}, *msgs]
            ids = self.tok.apply_chat_template(
                msgs, add_generation_prompt=True, tokenize=True, return_dict=True
            )
            return list(ids["input_ids"])
        return list(self.tok(prompt.text)["input_ids"])

    def generate(self, prompt, sample: int, params: dict) -> dict:
        """One completion for ``(prompt, sample)``, seeded by the pair."""
        return self.generate_batch([(prompt, sample)], params)[0]

    @torch.no_grad()
    def generate_batch(self, pairs: list, params: dict) -> list[dict]:
        """Completions for several ``(prompt, sample)`` pairs in one left-padded ``generate``.

        Sampling is seeded by the batch's first pair, so a pair's text depends on which batch
        it fell in; with ``sampling_temperature`` 0 (greedy) it does not. Stop strings are
        handled one pair at a time (a batch cannot tell where a stopped row ends).
        """
        if params.get("stop") and len(pairs) > 1:
            return [r for pair in pairs for r in self.generate_batch([pair], params)]
        system, mode = params.get("system_prompt"), params.get("mode", "chat")
        prompts = [self._prompt_ids(p, system, mode) for p, _ in pairs]
        pad = self.tok.pad_token_id
        if pad is None:
            pad = self.tok.eos_token_id
        ids, mask = on_model(
            left_pad([torch.tensor(p, dtype=torch.long) for p in prompts], pad), self.model
        )
        width = ids.shape[1]
        temp = params.get("sampling_temperature", 1.0)
        torch.manual_seed(sample_seed(pairs[0][0].id, pairs[0][1]))
        kwargs = {
            "attention_mask": mask,
            "do_sample": temp > 0,
            "max_new_tokens": params.get("max_tokens", DEFAULT_MAX_NEW_TOKENS),
            "output_logits": True,
            "return_dict_in_generate": True,
            "pad_token_id": pad,
        }
        if temp > 0:
            kwargs.update(temperature=temp, top_p=params.get("top_p", 1.0), top_k=0)
        if params.get("stop"):
            kwargs.update(stop_strings=params["stop"], tokenizer=self.tok)
        out = self.model.generate(ids, **kwargs)
        steps = torch.stack(out.logits, dim=1).float().cpu()  # (B, new, V)
        logp_all = torch.log_softmax(steps, dim=-1)
        eos = self.tok.eos_token_id
        k = params.get("top_logprobs", 0)
        results = []
        for r, p in enumerate(prompts):
            new = out.sequences[r, width:].cpu()
            n = len(new)
            if eos is not None:
                # a row that finished early is padded afterwards: it ends at its first EOS
                hits = (new == eos).nonzero()
                n = int(hits[0]) + 1 if len(hits) else n
            new, logp = new[:n], logp_all[r, :n]
            chosen = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
            top = None
            if k:
                v, i = torch.topk(logp, k, dim=-1)
                top = [
                    [[self.tok.decode([int(t)]), float(x)] for x, t in zip(vr, ir, strict=True)]
                    for vr, ir in zip(v, i, strict=True)
                ]
            finish = "stop" if n and eos is not None and int(new[-1]) == eos else "length"
            results.append(
                {
                    "completion": self.tok.decode(new, skip_special_tokens=True),
                    "logprob": float(chosen.sum()),
                    "top_logprobs": top,
                    "tokens": [self.tok.decode([int(t)]) for t in new],
                    "finish_reason": finish,
                    "usage": {"prompt_tokens": len(p), "completion_tokens": n},
                }
            )
        return results
