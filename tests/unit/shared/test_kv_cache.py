"""The preallocated KV layer of the local backend behaves exactly like transformers' DynamicLayer."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from shared.kv_cache import preallocate


def _states(batch: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, n, 8, generator=g), torch.randn(batch, 3, n, 8, generator=g)


def _pair(batch: int, n: int, extra: int) -> tuple[DynamicCache, DynamicCache]:
    plain, grown = DynamicCache(), DynamicCache()
    for cache in (plain, grown):
        cache.layers = [DynamicLayer()]
        cache.layers[0].update(*_states(batch, n, seed=0))
    preallocate(grown, extra)
    assert type(grown.layers[0]) is not DynamicLayer and type(plain.layers[0]) is DynamicLayer
    return plain, grown


def _same(plain: DynamicCache, grown: DynamicCache) -> None:
    a, b = plain.layers[0], grown.layers[0]
    assert a.get_seq_length() == b.get_seq_length()
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_updates_past_the_reserved_room_match_the_growing_cache() -> None:
    plain, grown = _pair(batch=2, n=5, extra=2)
    for step in range(6):  # 2 fit in the reserved room, then the buffer has to grow
        states = _states(2, 1, seed=step + 1)
        out_a = plain.layers[0].update(*states)
        out_b = grown.layers[0].update(*states)
        assert torch.equal(out_a[0], out_b[0]) and torch.equal(out_a[1], out_b[1])
    _same(plain, grown)
    assert grown.layers[0].get_seq_length() == 11


def test_dropping_and_repeating_rows_then_decoding_matches() -> None:
    plain, grown = _pair(batch=4, n=6, extra=8)
    keep = torch.tensor([0, 2, 3])
    plain.batch_select_indices(keep)
    grown.batch_select_indices(keep)
    _same(plain, grown)
    states = _states(3, 1, seed=7)
    plain.layers[0].update(*states)
    grown.layers[0].update(*states)
    _same(plain, grown)
    plain.batch_repeat_interleave(2)
    grown.batch_repeat_interleave(2)
    states = _states(6, 2, seed=8)
    plain.layers[0].update(*states)
    grown.layers[0].update(*states)
    _same(plain, grown)
    assert grown.layers[0].keys.shape == (6, 3, 9, 8)


def test_new_tokens_are_written_in_place_not_copied() -> None:
    _, grown = _pair(batch=2, n=4, extra=4)
    layer = grown.layers[0]
    before = layer.keys.untyped_storage().data_ptr()
    layer.update(*_states(2, 1, seed=3))
    assert layer.keys.untyped_storage().data_ptr() == before  # same buffer: no whole-cache copy per token


def test_slot_rows_hold_sequences_of_their_own_lengths() -> None:
    """Row by row, a SlotCache holds what a separate cache per sequence would, through prefill, decode,
    growth past its capacity, a swap and a copied head."""
    from shared.kv_cache import SlotCache

    cache = SlotCache(layers=1, slots=3, kv_heads=3, head_dim=8, dtype=torch.float32, device="cpu", capacity=4)
    plain = {row: DynamicLayer() for row in range(2)}
    for row, n in ((0, 5), (1, 2)):  # prefill: row 0 with 5 tokens, row 1 with 2 (past the capacity of 4)
        k, v = _states(1, n, seed=row)
        cache.for_prefill(row, 0, n)
        got_k, _ = cache.update(k, v, 0)
        want_k, _ = plain[row].update(k, v)
        assert torch.equal(got_k, want_k)
    lengths = torch.tensor([5, 2])
    for step in range(3):  # decode both rows together, each at its own position
        k, v = _states(2, 1, seed=10 + step)
        cache.for_decode(lengths, int(lengths.max()) + 1)
        got_k, got_v = cache.update(k, v, 0)
        for row in range(2):
            want_k, want_v = plain[row].update(k[row:row + 1], v[row:row + 1])
            n = int(lengths[row]) + 1
            assert torch.equal(got_k[row, :, :n], want_k[0]) and torch.equal(got_v[row, :, :n], want_v[0])
        lengths += 1
    cache.swap(0, 2, 8)
    assert torch.equal(cache.keys[0][2, :, :8], plain[0].keys[0])
    cache.copy(1, 0, 3)
    assert torch.equal(cache.keys[0][0, :, :3], plain[1].keys[0, :, :3])


def test_rows_written_in_inference_mode_can_be_copied_and_swapped_outside_it() -> None:
    """The engine writes rows inside ``torch.inference_mode`` and admits a waiting sequence (copying a shared
    prompt head into its row) when another is released, outside it."""
    from shared.kv_cache import SlotCache

    cache = SlotCache(layers=1, slots=2, kv_heads=3, head_dim=8, dtype=torch.float32, device="cpu", capacity=4)
    k, v = _states(1, 4, seed=3)
    with torch.inference_mode():
        cache.for_prefill(0, 0, 4)
        cache.update(k, v, 0)
    cache.copy(0, 1, 4)
    assert torch.equal(cache.keys[0][1, :, :4], k[0]) and torch.equal(cache.values[0][1, :, :4], v[0])
    cache.swap(0, 1, 4)
    assert torch.equal(cache.keys[0][0, :, :4], k[0])
