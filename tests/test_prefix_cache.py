"""Which slot a prompt takes under prefix reuse (serve/engines/prefix_cache.py); the real llama.cpp engine's answers
with reuse are checked in tests/test_serve_llamacpp.py."""

from serve.engines.prefix_cache import SlotCache, common_prefix


def test_the_longest_shared_prefix_wins_and_one_prompt_token_is_left_to_decode():
    cache = SlotCache()
    cache.start(0, [1, 2, 3, 4, 5], 0)
    cache.add(0, [1, 2, 3, 4, 5])
    cache.start(1, [1, 2, 9], 0)
    cache.add(1, [1, 2, 9])
    assert cache.choose([0, 1], [1, 2, 3, 7]) == (0, 3)
    assert cache.choose([0, 1], [1, 2, 9, 9]) == (1, 3)
    assert cache.choose([0, 1], [1, 2, 3, 4, 5]) == (0, 4)  # all cached: the last token is decoded again
    assert cache.choose([1], [1, 2, 3, 7]) == (1, 2)  # only free slots count
    cache.start(0, [1, 2, 3, 7], 3)
    assert cache.held[0] == [1, 2, 3]


def test_a_miss_spares_the_slots_that_hold_a_cache_and_off_means_no_reuse():
    cache = SlotCache()
    cache.start(2, [5, 6], 0)
    cache.add(2, [5, 6])
    assert cache.choose([0, 2], [7, 8]) == (0, 0)  # slot 0 holds nothing: slot 2 keeps its cache
    assert cache.choose([2], [7, 8]) == (2, 0)
    assert cache.keeps(2) and not cache.keeps(0)
    cache.enabled = False
    assert cache.choose([0, 2], [5, 6, 7]) == (0, 0) and not cache.keeps(2)
    cache.forget(2)
    assert 2 not in cache.held
    assert common_prefix([1, 2, 3], [1, 2]) == 2 and common_prefix([], [1]) == 0
