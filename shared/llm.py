"""LLM backends: one interface for the judge, the simulator, the data pipelines and the workers.

    backend = get_backend(LLMSettings(backend="local", model="smollm2"))
    backend.chat([[{"role": "user", "content": "Capital of France?"}]], SamplingParams(max_new_tokens=16))
    backend.generate([prompt_token_ids], SamplingParams(stop=["</search>"]))  # ids + log-probs

Backends (a registry; unknown names raise ``ValueError`` listing the valid ones):

- ``local``: transformers in-process, batched with left padding and a KV cache; our own
  decode loop so that stop strings, per-token log-probs and finish reasons are exact.
- ``openai``: any OpenAI-compatible server (SGLang, vLLM, ``transformers serve``) for
  ``chat``; SGLang's native ``/generate`` (token ids in, token ids + log-probs out) for
  ``generate``, and ``/update_weights_from_disk`` to move the server to new weights
  (:mod:`shared.sglang`). Timeouts and capped, backed-off retries come from :mod:`shared.client`.

Log-probs are those of the model's own distribution at temperature 1 (what the policy loss
needs), whatever temperature was used to sample.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from shared.client import ServiceCallError, ServiceClient
from shared.config import LLMSettings, hf_offline, resolve_device, resolve_dtype
from shared.kv_cache import preallocate
from shared.sglang import (
    UPDATE_WEIGHTS,
    WeightSyncError,
    check_update_weights,
    parse_sglang_generate,
    sglang_generate_body,
    update_weights_body,
)

if TYPE_CHECKING:
    from shared.engine import ContinuousEngine

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


@dataclass
class SamplingParams:
    max_new_tokens: int = 256  # hard cap on generated tokens
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling mass
    stop: list[str] = field(default_factory=list)  # generation ends after the first of these strings
    seed: int | None = None  # for reproducible sampling
    # Until N non-blank tokens are out, the local backend masks EOS and every token with "<" (no tag opens or
    # closes, so no "</answer>" stop): the text cannot end empty, and a text that had content first is
    # unchanged. Log-probs stay the model's own. SGLang gets it as min_new_tokens (EOS held back). 0 = off.
    min_content_tokens: int = 0


@dataclass
class Generation:
    token_ids: list[int]  # generated tokens only (a stop string's tokens and EOS included)
    logprobs: list[float]  # log p(token) under the model at temperature 1, one per token
    text: str  # decoded generated text, special tokens skipped
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    stop_string: str | None = None  # which stop string ended it, if any


class LLMBackend(Protocol):
    model_name: str

    def chat(self, conversations: Sequence[Messages], sampling: SamplingParams) -> list[str]: ...

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingParams) -> list[Generation]: ...

    def apply_chat_template(self, messages: Messages, add_generation_prompt: bool = True) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def encode(self, text: str) -> list[int]: ...


class _Tokenization:
    """Token-id helpers over ``self.tokenizer`` (a transformers tokenizer), shared by the backends."""

    tokenizer: Any

    def apply_chat_template(self, messages: Messages, add_generation_prompt: bool = True) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)
        return self.encode(str(text))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))


# --------------------------------------------------------------------------- local


class LocalBackend(_Tokenization):
    """transformers in-process, on ``settings.device`` (a CUDA GPU or the CPU); thread-safe (one
    generation at a time per model)."""

    def __init__(self, settings: LLMSettings):
        hf_offline()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from shared.models import resolve

        self.settings = settings
        path = resolve(settings.model)
        self.model_name = settings.model
        self.path = path
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        dtype = torch.bfloat16 if self.dtype == "bfloat16" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), padding_side="left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        self.model = model.to(self.device).eval()
        self.eos_ids = self._eos_ids()
        self._content_rule: tuple[Any, set[int]] | None = None  # (held-back ids, blank ids), built on first use
        self._lock = threading.Lock()

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(source)
        return ids

    def _min_content_rule(self) -> tuple[Any, set[int]]:
        """For :attr:`SamplingParams.min_content_tokens`: the ids held back (EOS, tokens whose text has "<",
        special tokens included, ids past the tokenizer) and the blank ids (whitespace only), which do not
        count as content."""
        if self._content_rule is None:
            import torch

            vocab = int(self.model.get_output_embeddings().weight.shape[0])
            held, blank = set(self.eos_ids), set()
            for i in range(vocab):
                text = self.tokenizer.decode([i]) if i < len(self.tokenizer) else "<"
                if "<" in text:
                    held.add(i)
                elif not text.strip():
                    blank.add(i)
            self._content_rule = torch.tensor(sorted(held), dtype=torch.long, device=self.model.device), blank
        return self._content_rule

    def hold_back(self, logits: Any, rows: list[int]) -> tuple[Any, set[int]]:
        """A copy of ``logits`` (rows, vocab) with the ids :meth:`_min_content_rule` holds back at -inf in
        ``rows`` (log-probs are taken before, so they stay the model's own), and the blank ids."""
        import torch

        held, blank = self._min_content_rule()
        logits = logits.clone()
        logits[torch.tensor(rows, dtype=torch.long, device=logits.device).unsqueeze(-1), held.unsqueeze(0)] = \
            float("-inf")
        return logits, blank

    # -- generation ---------------------------------------------------------------------
    def chat(self, conversations: Sequence[Messages], sampling: SamplingParams) -> list[str]:
        prompts = [self.apply_chat_template(m) for m in conversations]
        return [g.text for g in self.generate(prompts, sampling)]

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        if self.settings.engine == "continuous":
            return self._generate_continuous(prompts, sampling)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per batch
        results: dict[int, Generation] = {}
        size = max(1, self.settings.max_batch_size)
        with self._lock:
            for start in range(0, len(order), size):
                chunk = order[start:start + size]
                for i, gen in zip(chunk, self._generate_batch([prompts[i] for i in chunk], sampling), strict=True):
                    results[i] = gen
        return [results[i] for i in range(len(prompts))]

    def engine(self, slots: int | None = None) -> ContinuousEngine:
        """A continuous-batching engine on this model (:mod:`shared.engine`), ``slots`` sequences at once."""
        from shared.engine import ContinuousEngine

        return ContinuousEngine(self, max(1, slots or self.settings.max_batch_size))

    def _generate_continuous(self, prompts: Sequence[list[int]], sampling: SamplingParams) -> list[Generation]:
        """Every prompt through one engine: up to ``max_batch_size`` decode together; as one ends, the next joins."""
        if sampling.max_new_tokens <= 0:
            return [Generation([], [], "", "length") for _ in prompts]
        engine = self.engine(min(self.settings.max_batch_size, len(prompts)))
        results: dict[int, Generation] = {}
        for i, prompt in enumerate(prompts):
            engine.submit(i, prompt, sampling)
        while engine.busy():
            for key, gen in engine.step():
                assert isinstance(key, int)
                results[key] = gen
                engine.release(key)
        return [results[i] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Generation]:
        import torch

        device = self.model.device
        n = len(prompts)
        pad = int(self.tokenizer.pad_token_id)
        # Prompts of one batch usually share a long head (chat template + instructions, or the same
        # question n times in a GRPO group): it is prefilled once and its KV cache shared by every row.
        shared = self._shared_prefix(prompts)
        past: Any = None
        if shared:
            with torch.inference_mode():
                head = torch.tensor([prompts[0][:shared]], dtype=torch.long, device=device)
                past = self.model(input_ids=head, use_cache=True, logits_to_keep=1).past_key_values
            past.batch_repeat_interleave(n)
        tails = [p[shared:] for p in prompts]
        width = max(len(t) for t in tails)
        input_ids = torch.full((n, width), pad, dtype=torch.long, device=device)
        tail_mask = torch.zeros((n, width), dtype=torch.long, device=device)
        for row, t in enumerate(tails):  # left padding: every prompt ends at column width-1
            input_ids[row, width - len(t):] = torch.tensor(t, dtype=torch.long)
            tail_mask[row, width - len(t):] = 1
        # Padding sits between the shared head and each row's own tail; positions skip it.
        mask = torch.cat([torch.ones((n, shared), dtype=torch.long, device=device), tail_mask], dim=-1)
        positions = shared + (tail_mask.cumsum(-1) - 1).clamp(min=0)
        generator = torch.Generator(device=device)  # multinomial wants its generator on the logits' device
        if sampling.seed is not None:
            generator.manual_seed(sampling.seed)

        out_ids: list[list[int]] = [[] for _ in range(n)]
        out_lp: list[list[float]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        stop_hit: list[str | None] = [None] * n
        longest_stop = max((len(s) for s in sampling.stop), default=0)
        content = [0] * n  # non-blank tokens so far, for min_content_tokens

        cur = input_ids
        alive = list(range(n))  # batch row -> prompt index; finished rows leave the batch
        with torch.inference_mode():
            for step in range(sampling.max_new_tokens):
                # logits_to_keep=1: the prefill needs the last position's logits only (not width x vocab).
                out = self.model(input_ids=cur, attention_mask=mask, position_ids=positions,
                                 past_key_values=past, use_cache=True, logits_to_keep=1)
                if step == 0:  # after the prefill: room for every token still to come, written in place
                    preallocate(out.past_key_values, sampling.max_new_tokens)
                past = out.past_key_values
                logits = out.logits[:, -1, :].float()  # (rows, vocab)
                logp = torch.log_softmax(logits, dim=-1)
                short = [row for row, i in enumerate(alive) if content[i] < sampling.min_content_tokens]
                if short:  # these rows may not end or open a tag yet
                    logits, blank = self.hold_back(logits, short)
                next_tok = self._choose(logits, sampling, generator)  # (rows,)
                keep: list[int] = []
                for row, i in enumerate(alive):
                    tok = int(next_tok[row])
                    out_ids[i].append(tok)
                    out_lp[i].append(float(logp[row, tok]))
                    if short and tok not in blank:
                        content[i] += 1
                    if tok in self.eos_ids:
                        finish[i] = "stop"
                    elif sampling.stop:
                        tail = self.tokenizer.decode(out_ids[i][-(longest_stop + 2):])
                        hit = next((s for s in sampling.stop if s in tail), None)
                        if hit is not None:
                            finish[i], stop_hit[i] = "stop", hit
                    if finish[i] is None:
                        keep.append(row)
                if not keep:
                    break
                if len(keep) < len(alive):  # drop finished rows: the rest decode as a smaller batch
                    rows = torch.tensor(keep, dtype=torch.long, device=device)
                    past.batch_select_indices(rows)
                    next_tok, mask, positions = next_tok[rows], mask[rows], positions[rows]
                    alive = [alive[r] for r in keep]
                cur = next_tok.unsqueeze(-1)
                mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=device)], dim=-1)
                positions = positions[:, -1:] + 1
        return [
            Generation(token_ids=out_ids[r], logprobs=out_lp[r], text=self.decode(out_ids[r]),
                       finish_reason=finish[r] or "length", stop_string=stop_hit[r])
            for r in range(n)
        ]

    def _shared_prefix(self, prompts: list[list[int]]) -> int:
        """Length of the head all ``prompts`` share (each keeps >= 1 own token), or 0 when not worth it."""
        if len(prompts) < 2:
            return 0
        first, limit = prompts[0], min(len(p) for p in prompts) - 1
        length = 0
        while length < limit and all(p[length] == first[length] for p in prompts):
            length += 1
        return length if length >= self.settings.min_shared_prefix else 0

    @staticmethod
    def _choose(logits: Any, sampling: SamplingParams, generator: Any) -> Any:
        import torch

        if sampling.temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_p, idx = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < sampling.top_p  # always keeps the top token
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def sequence_logprobs(self, prompt: list[int], completion: list[int]) -> list[float]:
        """log p(completion[i] | prompt + completion[:i]) from one forward pass (for checks and training)."""
        import torch

        ids = torch.tensor([prompt + completion], dtype=torch.long, device=self.model.device)
        with self._lock, torch.inference_mode():
            logits = self.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        return [float(logp[i, t]) for i, t in enumerate(completion)]


# --------------------------------------------------------------------------- openai


class _LLMHTTP(ServiceClient):
    service = "llm"


class OpenAIBackend(_Tokenization):
    """An OpenAI-compatible server (SGLang, vLLM, ``transformers serve``)."""

    def __init__(self, settings: LLMSettings, tokenizer_path: str | None = None):
        if not settings.base_url:
            raise ValueError("the openai backend needs base_url (e.g. http://127.0.0.1:30000)")
        self.settings = settings
        self.model_name = settings.model
        key = settings.api_key.get_secret_value() if settings.api_key else None
        self.http = _LLMHTTP(settings.base_url, key, timeout_s=settings.timeout_s, max_retries=settings.max_retries)
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.max_concurrency), thread_name_prefix="llm")
        self._tokenizer_path = tokenizer_path
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """A local tokenizer for token-id work (``generate``); from ``tokenizer_path`` or ``model``."""
        if self._tokenizer is None:
            hf_offline()
            from transformers import AutoTokenizer

            from shared.models import resolve

            self._tokenizer = AutoTokenizer.from_pretrained(str(resolve(self._tokenizer_path or self.model_name)))
        return self._tokenizer

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list(self._pool.map(fn, items))

    def chat(self, conversations: Sequence[Messages], sampling: SamplingParams) -> list[str]:
        def one(messages: Messages) -> str:
            body: dict[str, Any] = {
                "model": self.model_name, "messages": messages, "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p,
            }
            if sampling.stop:
                body["stop"] = sampling.stop
            if sampling.seed is not None:
                body["seed"] = sampling.seed
            data = self.http.request("POST", "/v1/chat/completions", json=body).json()
            try:
                return str(data["choices"][0]["message"]["content"] or "")
            except (KeyError, IndexError, TypeError) as exc:
                raise ServiceCallError("llm", 200, "bad_response", f"unexpected chat response: {data!r:.300}") from exc

        return self._map(one, conversations)

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingParams) -> list[Generation]:
        """SGLang's native ``/generate``: token ids in, token ids and log-probs out."""

        def one(prompt: list[int]) -> Generation:
            data = self.http.request("POST", "/generate", json=sglang_generate_body(prompt, sampling)).json()
            return parse_sglang_generate(data)

        return self._map(one, prompts)

    def load_weights(self, model_path: str, weight_version: str | None = None) -> str:
        """Have the server load new weights from ``model_path`` (SGLang's ``/update_weights_from_disk``;
        the folder must be readable *by the server*). Raises :class:`WeightSyncError` if it did not."""
        try:
            response = self.http.request("POST", UPDATE_WEIGHTS, json=update_weights_body(model_path, weight_version))
        except ServiceCallError as exc:
            raise WeightSyncError(f"{UPDATE_WEIGHTS} of {model_path!r} failed: {exc}") from exc
        return check_update_weights(response.json())


class HFTokenizer(_Tokenization):
    """Tokenization only (no model): for code that generates elsewhere, e.g. on remote SGLang servers."""

    def __init__(self, name_or_path: str):
        hf_offline()
        from transformers import AutoTokenizer

        from shared.models import ModelNotFound, resolve

        try:
            source = str(resolve(name_or_path))
        except ModelNotFound:  # a hub name (the GPU cluster's HF cache has it)
            source = name_or_path
        self.model_name = name_or_path
        self.tokenizer = AutoTokenizer.from_pretrained(source)

    @classmethod
    def wrap(cls, tokenizer: Any, name: str = "") -> HFTokenizer:
        """An already loaded transformers tokenizer (e.g. the one verl hands its agent loops)."""
        self = cls.__new__(cls)
        self.model_name, self.tokenizer = name, tokenizer
        return self


# --------------------------------------------------------------------------- registry

BACKENDS: dict[str, Callable[[LLMSettings], LLMBackend]] = {
    "local": LocalBackend,
    "openai": OpenAIBackend,
}


def get_backend(settings: LLMSettings) -> LLMBackend:
    try:
        factory = BACKENDS[settings.backend]
    except KeyError:
        raise ValueError(f"unknown LLM backend '{settings.backend}'; valid: {', '.join(sorted(BACKENDS))}") from None
    return factory(settings)
