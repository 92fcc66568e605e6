"""Continuous batching with a KV cache kept per sequence: the local backend's decode engine.

    engine = ContinuousEngine(backend, slots=8)
    engine.submit("ep1", prompt_ids, SamplingParams(max_new_tokens=64, stop=["</search>"]))
    while engine.busy():
        for key, generation in engine.step():     # the generations that ended in this step
            ...                                    # e.g. search, then submit the longer sequence again
    engine.release("ep1")                           # the sequence's slot is free for another

One :class:`~shared.kv_cache.SlotCache` row (a *slot*) per live sequence. ``submit(key, tokens)``
gives a sequence's whole token list each time (prompt, then prompt + generation + observation, ...):
the engine keeps what its row already holds (the longest common prefix) and feeds only the rest,
so a turn prefills its observation only, never the conversation again. A new sequence starts
from the free row, or copies the head of the live row, that shares the longest prefix with it
(a GRPO group's prompt, the template's instructions) when that is at least ``min_shared_prefix``.

One ``step()``:

    each sequence that wants a generation and has > 1 unfed token: prefill them but the last, alone
    move generating sequences to rows 0..n-1 (swapping rows)
    one batched forward: each row's one unfed token at its own position -> logits (n, vocab)
    per row: log-prob (temperature 1), choose the next token (EOS and tag-opening tokens held back until
             the row has ``min_content_tokens`` non-blank ones), check EOS / stop strings / length
    finished rows stop generating (they keep their row until released); waiting sequences take free rows

A sequence that finished keeps its last token unfed: the next ``submit`` feeds it with the new tokens.
Rows of different lengths share a forward through an explicit 4-D attention mask (row i attends to
its own positions 0..len_i), which also keeps transformers' SDPA off its slow grouped-query path on CPU.
Log-probs equal those of one forward pass over the full sequence (the exactness tests).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.kv_cache import SlotCache

if TYPE_CHECKING:
    from shared.llm import Generation, LocalBackend, SamplingParams


@dataclass
class _Sequence:
    key: Hashable
    tokens: list[int]  # the whole sequence as last submitted (+ what has been generated since)
    sampling: SamplingParams | None = None  # set while a generation is wanted
    generator: Any = None  # the sampling RNG (seeded per submit when sampling.seed is set)
    slot: int = -1  # its cache row; -1: waiting for one
    fed: int = 0  # tokens[:fed] are in the row
    out_ids: list[int] = field(default_factory=list)
    out_lp: list[float] = field(default_factory=list)
    content: int = 0  # non-blank tokens generated since the submit (SamplingParams.min_content_tokens)


class ContinuousEngine:
    """Sequences come and go; every step decodes all that are generating as one batch."""

    def __init__(self, backend: LocalBackend, slots: int, min_shared_prefix: int | None = None):
        import torch

        self.backend = backend
        model = backend.model
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.device = model.device
        self.cache = SlotCache(config.num_hidden_layers, slots, config.num_key_value_heads, head_dim,
                               next(model.parameters()).dtype, self.device)
        self.min_shared = backend.settings.min_shared_prefix if min_shared_prefix is None else min_shared_prefix
        self.seqs: dict[Hashable, _Sequence] = {}
        self.owner: list[_Sequence | None] = [None] * slots  # slot -> the sequence in it
        self.held: list[list[int]] = [[] for _ in range(slots)]  # slot -> the tokens its row holds
        self.waiting: deque[_Sequence] = deque()
        self.steps = 0  # batched decode forwards run
        self.prefilled = 0  # tokens fed by prefill forwards
        self.reused = 0  # tokens a submit found already in a row (or copied from another)
        self.submits = 0
        self._torch = torch

    # -- sequences ----------------------------------------------------------------------------
    def submit(self, key: Hashable, tokens: Sequence[int], sampling: SamplingParams) -> None:
        """Generate a continuation of ``tokens`` (the sequence's whole token list) for ``key``."""
        if not tokens:
            raise ValueError("a sequence needs at least one token")
        seq = self.seqs.get(key)
        if seq is None:
            seq = self.seqs[key] = _Sequence(key, list(tokens))
            self.waiting.append(seq)
        else:
            if seq.sampling is not None:
                raise ValueError(f"sequence {key!r} is still generating")
            common = _common_prefix(seq.tokens[:seq.fed], tokens)
            seq.fed = min(common, len(tokens) - 1)  # at least one token left to feed: it gives the logits
            seq.tokens = list(tokens)
            self.reused += seq.fed
            if seq.slot >= 0:
                self.held[seq.slot] = seq.tokens[:seq.fed]
        seq.sampling = sampling
        seq.out_ids, seq.out_lp, seq.content = [], [], 0
        # Each sequence its own stream: seeded ones from (seed, order of submission), so a batch of
        # samples of one prompt with one seed still differ, reproducibly; unseeded ones at random.
        seq.generator = self._torch.Generator(device=self.device)
        if sampling.seed is not None:
            seq.generator.manual_seed(sampling.seed * 1_000_003 + self.submits)
        else:
            seq.generator.seed()
        self.submits += 1
        self._admit()

    def release(self, key: Hashable) -> None:
        """Forget ``key``; its row (and what the row holds, for a later prefix match) is free."""
        seq = self.seqs.pop(key, None)
        if seq is None:
            return
        if seq.slot >= 0:
            self.owner[seq.slot] = None
        else:
            self.waiting.remove(seq)
        self._admit()

    def busy(self) -> bool:
        """Whether a step would generate anything."""
        return any(s.sampling is not None for s in self.seqs.values())

    def _admit(self) -> None:
        """Give waiting sequences free rows: the one holding the longest prefix of theirs, or copy one in."""
        while self.waiting and None in self.owner:
            seq = self.waiting.popleft()
            free = [i for i, o in enumerate(self.owner) if o is None]
            slot = max(free, key=lambda i: _common_prefix(self.held[i], seq.tokens))
            held = min(_common_prefix(self.held[slot], seq.tokens), len(seq.tokens) - 1)
            source = max(range(len(self.owner)), key=lambda i: _common_prefix(self.held[i], seq.tokens))
            shared = min(_common_prefix(self.held[source], seq.tokens), len(seq.tokens) - 1)
            if shared > held and shared >= self.min_shared:
                self.cache.copy(source, slot, shared)
                held = shared
            elif held < self.min_shared:
                held = 0  # not worth keeping: the row is prefilled from the start
            seq.slot, seq.fed = slot, held
            self.owner[slot] = seq
            self.held[slot] = seq.tokens[:held]
            self.reused += held

    # -- one step -----------------------------------------------------------------------------
    def step(self) -> list[tuple[Hashable, Generation]]:
        """Prefill what joined, decode one token for every generating sequence; the generations that ended."""
        torch = self._torch
        with self.backend._lock, torch.inference_mode():
            active = [s for s in self.seqs.values() if s.sampling is not None and s.slot >= 0]
            if not active:
                return []
            for seq in active:
                if len(seq.tokens) - seq.fed > 1:
                    self._prefill(seq, seq.tokens[seq.fed:-1])
            self._compact(active)
            active.sort(key=lambda s: s.slot)
            n = len(active)
            fed = torch.tensor([s.fed for s in active], dtype=torch.long, device=self.device)
            width = int(fed.max()) + 1
            ids = torch.tensor([[s.tokens[s.fed]] for s in active], dtype=torch.long, device=self.device)
            mask = torch.arange(width, device=self.device).unsqueeze(0) <= fed.unsqueeze(1)  # (n, width)
            self.cache.for_decode(fed, width)
            out = self.backend.model(input_ids=ids, position_ids=fed.unsqueeze(1), attention_mask=mask.view(n, 1, 1, width),
                                     past_key_values=self.cache, use_cache=True)
            self.steps += 1
            logits = out.logits[:, -1, :].float()  # (n, vocab)
            logp = torch.log_softmax(logits, dim=-1)
            short = [row for row, s in enumerate(active) if s.content < s.sampling.min_content_tokens]  # type: ignore[union-attr]
            if short:  # these rows may not end or open a tag yet (log-probs stay the model's own)
                logits, blank = self.backend.hold_back(logits, short)
            finished = []
            for row, seq in enumerate(active):
                self.held[seq.slot] = seq.tokens[:seq.fed + 1]
                seq.fed += 1
                tok = self._choose(logits[row], seq)
                if short and tok not in blank:
                    seq.content += 1
                seq.out_ids.append(tok)
                seq.out_lp.append(float(logp[row, tok]))
                seq.tokens.append(tok)
                gen = self._finished(seq)
                if gen is not None:
                    seq.sampling = None
                    finished.append((seq.key, gen))
            return finished

    def _prefill(self, seq: _Sequence, tokens: list[int]) -> None:
        torch = self._torch
        count = len(tokens)
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        positions = torch.arange(seq.fed, seq.fed + count, device=self.device)
        width = seq.fed + count
        mask = torch.arange(width, device=self.device).unsqueeze(0) <= positions.unsqueeze(1)  # causal (count, width)
        self.cache.for_prefill(seq.slot, seq.fed, count)
        self.backend.model(input_ids=ids, position_ids=positions.unsqueeze(0), attention_mask=mask.view(1, 1, count, width),
                           past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        seq.fed += count
        self.held[seq.slot] = seq.tokens[:seq.fed]
        self.prefilled += count

    def _compact(self, active: list[_Sequence]) -> None:
        """Generating sequences into rows 0..n-1 (a decode step covers a leading block of rows, as views)."""
        n = len(active)
        outside = [s for s in active if s.slot >= n]
        spare = [i for i in range(n) if self.owner[i] is None or self.owner[i].sampling is None]  # type: ignore[union-attr]
        for seq, slot in zip(outside, spare, strict=False):
            other = self.owner[slot]
            length = max(seq.fed, len(self.held[slot]))
            self.cache.swap(seq.slot, slot, length)
            self.held[seq.slot], self.held[slot] = self.held[slot], self.held[seq.slot]
            self.owner[seq.slot], self.owner[slot] = other, seq
            if other is not None:
                other.slot = seq.slot
            seq.slot = slot

    def _choose(self, logits: Any, seq: _Sequence) -> int:
        from shared.llm import LocalBackend

        assert seq.sampling is not None
        return int(LocalBackend._choose(logits.unsqueeze(0), seq.sampling, seq.generator)[0])

    def _finished(self, seq: _Sequence) -> Generation | None:
        from shared.llm import Generation

        sampling = seq.sampling
        assert sampling is not None
        tok = seq.out_ids[-1]
        finish, stop = None, None
        if tok in self.backend.eos_ids:
            finish = "stop"
        elif sampling.stop:
            longest = max(len(s) for s in sampling.stop)
            tail = self.backend.tokenizer.decode(seq.out_ids[-(longest + 2):])
            stop = next((s for s in sampling.stop if s in tail), None)
            finish = "stop" if stop is not None else None
        if finish is None and len(seq.out_ids) >= sampling.max_new_tokens:
            finish = "length"
        if finish is None:
            return None
        return Generation(token_ids=list(seq.out_ids), logprobs=list(seq.out_lp), text=self.backend.decode(seq.out_ids),
                          finish_reason=finish, stop_string=stop)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
