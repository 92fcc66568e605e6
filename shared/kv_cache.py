"""A KV cache that grows in place: the local backend's decode loop writes each new token into spare room
instead of concatenating (and so copying) the whole cache every step.

``preallocate(cache, extra)`` swaps every plain ``DynamicLayer`` of a transformers ``DynamicCache``
for a :class:`GrowingLayer` (same interface; keys/values are views into larger buffers).
"""

from __future__ import annotations

from typing import Any


def preallocate(cache: Any, extra: int) -> None:
    """Give every plain layer of a transformers ``DynamicCache`` room for ``extra`` more tokens.

    A ``DynamicLayer`` grows by concatenation: each decode step copies the whole KV cache (a third
    of a step's time at batch 16 and 600 tokens of context, by the torch profiler). A
    ``GrowingLayer`` writes new tokens in place into a buffer with spare room.
    """
    from transformers.cache_utils import DynamicLayer

    layers: list[Any] = getattr(cache, "layers", [])
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.get_seq_length() > 0:
            cache.layers[i] = _growing_layer().from_layer(layer, extra)


def _growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):  # type: ignore[misc]
        """A ``DynamicLayer`` whose keys/values are views into buffers with spare room along the sequence."""

        keys: Any
        values: Any
        _kbuf: Any
        _vbuf: Any

        @classmethod
        def from_layer(cls, layer: Any, extra: int) -> Any:
            new = cls()
            new.dtype, new.device, new.is_initialized = layer.dtype, layer.device, True
            new._set(layer.keys, layer.values, layer.keys.shape[-2] + max(extra, 1))
            return new

        def _set(self, keys: Any, values: Any, capacity: int) -> None:
            import torch

            b, h, n, d = keys.shape
            self._kbuf = torch.empty((b, h, capacity, d), dtype=keys.dtype, device=keys.device)
            self._vbuf = torch.empty((b, h, capacity, values.shape[-1]), dtype=values.dtype, device=values.device)
            self._kbuf[:, :, :n] = keys
            self._vbuf[:, :, :n] = values
            self.keys, self.values = self._kbuf[:, :, :n], self._vbuf[:, :, :n]

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            n, add = self.keys.shape[-2], key_states.shape[-2]
            if n + add > self._kbuf.shape[-2]:  # out of room: grow (doubling keeps copies rare)
                self._set(self.keys, self.values, max(2 * self._kbuf.shape[-2], n + add))
            self._kbuf[:, :, n:n + add] = key_states
            self._vbuf[:, :, n:n + add] = value_states
            self.keys, self.values = self._kbuf[:, :, :n + add], self._vbuf[:, :, :n + add]
            return self.keys, self.values

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._set(self.keys.repeat_interleave(repeats, dim=0), self.values.repeat_interleave(repeats, dim=0),
                      self._kbuf.shape[-2])

        def batch_select_indices(self, indices: Any) -> None:
            n = self.keys.shape[-2]
            self._kbuf, self._vbuf = self._kbuf[indices], self._vbuf[indices]
            self.keys, self.values = self._kbuf[:, :, :n], self._vbuf[:, :, :n]

        def reset(self) -> None:
            self._kbuf = self._vbuf = None
            super().reset()

    return GrowingLayer


_GROWING_LAYER: Any = None  # the class, built on first use (importing transformers is slow)


def _growing_layer() -> Any:
    global _GROWING_LAYER
    if _GROWING_LAYER is None:
        _GROWING_LAYER = _growing_layer_class()
    return _GROWING_LAYER


# --------------------------------------------------------------------------- slots: one sequence per row


class SlotCache:
    """A KV cache of ``slots`` rows, each holding one sequence of its own length (the continuous engine's).

    Per layer, keys and values live in ``(slots, kv_heads, capacity, head_dim)`` buffers, zero-filled
    so that unused positions are finite (they are masked out, and a masked NaN would still poison the
    softmax). The model sees it as its ``past_key_values``: the engine first says which rows the next
    forward covers (:meth:`for_prefill`: one row, several new tokens; :meth:`for_decode`: rows
    ``0..n-1``, one new token each), and ``update`` writes each row's new keys at that row's own
    positions and returns views (no copy) of the rows up to the longest.
    """

    def __init__(self, layers: int, slots: int, kv_heads: int, head_dim: int, dtype: Any, device: Any,
                 capacity: int = 256):
        import torch

        shape = (slots, kv_heads, max(capacity, 1), head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.slots = slots
        self._write: Any = None  # (row index, position index) tensors, or (slot, start) for a prefill
        self._width = 0  # positions the next forward attends to

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2])

    def reserve(self, length: int) -> None:
        """Room for ``length`` positions in every row (doubling, so growth copies stay rare)."""
        import torch

        if length <= self.capacity:
            return
        new = max(2 * self.capacity, length)
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                grown = torch.zeros((*old.shape[:2], new, old.shape[3]), dtype=old.dtype, device=old.device)
                grown[:, :, :old.shape[2]] = old
                buffers[i] = grown

    def for_prefill(self, slot: int, start: int, count: int) -> None:
        """The next forward is row ``slot`` alone, its tokens at positions ``start..start+count-1``."""
        self.reserve(start + count)
        self._write, self._width = (slot, start, count), start + count

    def for_decode(self, positions: Any, width: int) -> None:
        """The next forward is rows ``0..n-1``, row ``i``'s one new token at ``positions[i]``."""
        import torch

        self.reserve(width)
        self._write = (torch.arange(len(positions), device=positions.device), positions)
        self._width = width

    def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if isinstance(self._write[0], int):  # prefill of one row: (1, heads, count, dim)
            slot, start, count = self._write
            keys[slot, :, start:start + count] = key_states[0]
            values[slot, :, start:start + count] = value_states[0]
            return keys[slot:slot + 1, :, :self._width], values[slot:slot + 1, :, :self._width]
        rows, positions = self._write  # decode: (n, heads, 1, dim), each row at its own position
        keys[rows, :, positions] = key_states[:, :, 0]
        values[rows, :, positions] = value_states[:, :, 0]
        n = len(rows)
        return keys[:n, :, :self._width], values[:n, :, :self._width]

    def copy(self, src: int, dst: int, length: int) -> None:
        """Row ``dst``'s first ``length`` positions := row ``src``'s (a shared prompt head).

        In inference mode, as the buffers were written: called outside it (a sequence admitted when
        another is released), an in-place write to an inference tensor is an error."""
        import torch

        with torch.inference_mode():
            for buffers in (self.keys, self.values):
                for b in buffers:
                    b[dst, :, :length] = b[src, :, :length]

    def swap(self, a: int, b: int, length: int) -> None:
        """Exchange rows ``a`` and ``b`` (their first ``length`` positions)."""
        import torch

        with torch.inference_mode():
            idx, rev = torch.tensor([a, b]), torch.tensor([b, a])
            for buffers in (self.keys, self.values):
                for buf in buffers:
                    buf[idx, :, :length] = buf[rev, :, :length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._width
