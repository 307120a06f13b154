"""transformers `generate` as an engine: batched with left padding, runs anywhere.

Sampling follows our settings only: the model's `generation_config.json` is set aside
(Qwen2.5-7B-Instruct's, for one, adds a repetition penalty, top_k 20 and top_p 0.8 to
every `generate` call that does not override them), so the tokens come from the
distribution whose log-probs are recorded and recomputed by the trainer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rlver.engines import base
from rlver.engines.base import Engine, Sampled, SamplingSettings, checked_weights, stop_tokens
from rlver.engines.sentences import SentenceEnds


class HFEngine(Engine):
    """transformers `generate` on one device, batched with left padding.

    One torch seed per batch (derived from the prompts' seeds): a row's tokens depend on
    the batch it is in, which the rollout keeps fixed so reruns are byte-identical.
    `max_model_len`: the longest context it takes (within the model's own).
    """

    def __init__(self, model: Any, tokenizer: Any, stop_token_ids: list[int],
                 max_model_len: int = base.DEFAULT_MAX_MODEL_LEN) -> None:
        from transformers import GenerationConfig

        self.model = model
        self.tokenizer = tokenizer
        self.stop_token_ids = set(stop_token_ids)
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = stop_token_ids[0]
        own = int(getattr(model.config, "max_position_embeddings", max_model_len))
        self.max_context = min(own, max_model_len)
        # generate() fills every setting a call leaves unset from the model's generation
        # config: only the token ids stay, the rest are transformers' neutral defaults. On
        # the base model: a PEFT wrapper's generate() reads its base's.
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        gen = inner.generation_config
        inner.generation_config = GenerationConfig(
            bos_token_id=gen.bos_token_id, eos_token_id=gen.eos_token_id,
            pad_token_id=gen.pad_token_id)
        #: Where replies' sentences end (`SamplingSettings.max_sentences`).
        self.sentences = SentenceEnds(tokenizer)
        #: The LoRA adapters `load_adapter` loaded, in order.
        self._adapters: list[str] = []

    def generate(
        self, prompts: list[list[int]], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[Sampled]:
        import torch

        from rlver.algorithms import target_logprobs
        from rlver.config import derive_seed

        for p in prompts:
            self.check_fits(p, settings)
        self.prompt_tokens += sum(len(p) for p in prompts)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention[i, width - len(p) :] = 1
        device = self.model.device
        input_ids, attention = input_ids.to(device), attention.to(device)
        torch.manual_seed(derive_seed("hf-batch", *seeds))
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if settings.greedy
            else {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p,
                  "top_k": 0}
        )
        stopping = None
        if settings.max_sentences is not None:
            from transformers import StoppingCriteriaList

            stopping = StoppingCriteriaList(
                [_SentenceStop(self.sentences, width, settings.max_sentences)])
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=settings.max_new_tokens,
                eos_token_id=sorted(self.stop_token_ids),
                pad_token_id=self.pad_id,
                output_logits=True,
                return_dict_in_generate=True,
                stopping_criteria=stopping,
                **sampling,
            )
        new = out.sequences[:, width:]
        # Greedy rows too: the log-probs at the settings' temperature (1.0 for the
        # benchmark; the run's for a greedy group member, which the trainer recomputes).
        logp = target_logprobs(torch.stack(out.logits, dim=1), new, settings.temperature)
        results = []
        for row_ids, row_logp in zip(new.tolist(), logp.tolist(), strict=True):
            end = next((k for k, t in enumerate(row_ids) if t in self.stop_token_ids), None)
            n = len(row_ids) if end is None else end + 1
            # A row that stopped at its last sentence is padded afterwards (the padding
            # may be an end-of-turn id): it ends where its sentences do.
            at = (None if settings.max_sentences is None
                  else self.sentences.cut(row_ids[:n], settings.max_sentences))
            if at is not None and (end is None or at <= end):
                results.append(Sampled(tuple(row_ids[:at]), tuple(row_logp[:at]),
                                       finished=False, stopped=True))
            else:
                results.append(Sampled(tuple(row_ids[:n]), tuple(row_logp[:n]),
                                       finished=end is not None))
        return results

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Copy `weights` into the engine's module in place (converted to its device and
        dtype), so the engine keeps its own module whatever holds the new policy. A caller
        that trains this very module (`HFEngine(model, ...)` on it) needs no call at all."""
        import torch

        params = dict(self.model.named_parameters())
        aliases = set(self.model.state_dict()) - set(params)  # tied names: lm_head.weight
        new = checked_weights(weights, params, aliases, type(self).__name__)
        with torch.no_grad():
            for name, tensor in new.items():
                if name in params:
                    params[name].copy_(tensor)


    def load_adapter(self, adapter_dir: str) -> None:
        """The LoRA adapter at `adapter_dir` on the engine's base, through PEFT and
        unmerged, as the trainer computes it: the first one wraps the model (as
        `load_policy` of an adapter does), a later one is loaded beside the running one,
        which is then deleted."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            old, name = self.model.active_adapter, f"policy-{len(self._adapters)}"
            self.model.load_adapter(adapter_dir, adapter_name=name,
                                    autocast_adapter_dtype=False)
            self.model.set_adapter(name)
            self.model.delete_adapter(old)
        else:
            self.model = PeftModel.from_pretrained(self.model, adapter_dir,
                                                   autocast_adapter_dtype=False)
        self._adapters.append(adapter_dir)
        self.model.eval()


class _SentenceStop:
    """transformers stopping criterion: a row is done once its reply (after `width`
    prompt columns) has `k` sentence ends; each call reads only the new tokens."""

    def __init__(self, sentences: SentenceEnds, width: int, k: int) -> None:
        self.sentences, self.width, self.k = sentences, width, k
        self.states: list[tuple[str, bool]] = []
        self.counts: list[int] = []
        self.seen = 0

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        new = input_ids[:, self.width:].tolist()
        if not self.states:
            self.states, self.counts = [("", False)] * len(new), [0] * len(new)
        for i, row in enumerate(new):
            for t in row[self.seen:]:
                self.states[i], ends = self.sentences.step(self.states[i], t)
                self.counts[i] += ends
        self.seen = len(new[0]) if new else 0
        return torch.tensor([c >= self.k for c in self.counts], dtype=torch.bool,
                            device=input_ids.device)


def load_hf_engine(policy_dir: str, dtype: str,
                   max_model_len: int = base.DEFAULT_MAX_MODEL_LEN) -> HFEngine:
    """The policy at `policy_dir` on the job's GPU if there is one, else the CPU."""
    from rlver.models import load_policy

    model, tokenizer = load_policy(policy_dir, dtype)
    import torch

    if torch.cuda.is_available():  # the job's GPU (Slurm sets CUDA_VISIBLE_DEVICES)
        model.to(torch.device("cuda", torch.cuda.current_device()))
    return HFEngine(model, tokenizer, stop_tokens(tokenizer, model.generation_config),
                    max_model_len)

