"""Local generation with a Hugging Face / GGUF teacher (sampled with a per-sample seed)."""

from __future__ import annotations

import torch

from kdistill.teachers.served import sample_seed


class LocalGenerator:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tok = tokenizer

    def _prompt_ids(self, prompt, system_prompt: str | None, mode: str = "chat") -> torch.Tensor:
        """Chat mode: the chat template (when the tokenizer has one); completions mode or no
        template: the prompt text as is, like a server's ``/v1/completions``."""
        use_template = mode == "chat" and getattr(self.tok, "chat_template", None)
        if prompt.messages is not None and not use_template:
            text = "\n".join(m["content"] for m in prompt.messages)
            return self.tok(text, return_tensors="pt")["input_ids"]
        if use_template:
            msgs = list(prompt.messages or [{"role": "user", "content": prompt.text}])
            if system_prompt and msgs[0].get("role") != "system":
                msgs = [{"role": "system", "content": system_prompt}, *msgs]
            ids = self.tok.apply_chat_template(
                msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            return ids["input_ids"]
        return self.tok(prompt.text, return_tensors="pt")["input_ids"]

    @torch.no_grad()
    def generate(self, prompt, sample: int, params: dict) -> dict:
        ids = self._prompt_ids(prompt, params.get("system_prompt"), params.get("mode", "chat"))
        temp = params.get("sampling_temperature", 1.0)
        torch.manual_seed(sample_seed(prompt.id, sample))
        kwargs = {
            "do_sample": temp > 0,
            "max_new_tokens": params.get("max_tokens", 64),
            "output_logits": True,
            "return_dict_in_generate": True,
            "pad_token_id": self.tok.pad_token_id,
        }
        if temp > 0:
            kwargs.update(temperature=temp, top_p=params.get("top_p", 1.0), top_k=0)
        if params.get("stop"):
            kwargs.update(stop_strings=params["stop"], tokenizer=self.tok)
        out = self.model.generate(ids, **kwargs)
        new = out.sequences[0, ids.shape[1] :]
        logp = torch.stack([torch.log_softmax(x[0].float(), -1) for x in out.logits])
        chosen = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        k = params.get("top_logprobs", 0)
        top = None
        if k:
            v, i = torch.topk(logp, k, dim=-1)
            top = [
                [[self.tok.decode([int(t)]), float(x)] for x, t in zip(vr, ir, strict=True)]
                for vr, ir in zip(v, i, strict=True)
            ]
        text = self.tok.decode(new, skip_special_tokens=True)
        eos = self.tok.eos_token_id
        finish = "stop" if len(new) and int(new[-1]) == eos else "length"
        return {
            "completion": text,
            "logprob": float(chosen.sum()),
            "top_logprobs": top,
            "tokens": [self.tok.decode([int(t)]) for t in new],
            "finish_reason": finish,
            "usage": {"prompt_tokens": int(ids.shape[1]), "completion_tokens": len(new)},
        }
