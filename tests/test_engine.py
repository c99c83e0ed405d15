"""Generation: KV cache vs recompute, cropping, seeds, top-k / top-p, argument checks."""

import pytest
import torch

from pricegpt.errors import ConfigError, DataError
from pricegpt.model import Engine, KVCache, generate, sample_next_token
from pricegpt.model.engine import PrefixKVCache, distinct_paths
from test_model import tiny_model


@pytest.mark.parametrize("context_len, new_tokens", [(5, 8), (10, 40), (16, 3), (30, 25)])
def test_cached_and_uncached_greedy_generation_are_identical(context_len, new_tokens):
    # (10, 40), (16, 3) and (30, 25) overflow sequence_len=16: the window refills and both paths must agree.
    model = tiny_model()
    contexts = torch.randint(0, 32, (2, context_len))
    cached = generate(model, contexts, new_tokens, num_samples=2, temperature=0.0)
    uncached = generate(model, contexts, new_tokens, num_samples=2, temperature=0.0, use_cache=False)
    assert cached.shape == (2, 2, new_tokens) and cached.dtype == torch.long
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, 0], cached[:, 1])  # greedy: every sample of a context is the same path


def test_cached_and_uncached_seeded_sampling_are_identical():
    model = tiny_model()
    contexts = torch.randint(0, 32, (2, 12))
    kwargs = dict(num_samples=4, temperature=1.0, seed=123)
    cached = generate(model, contexts, 30, **kwargs)
    uncached = generate(model, contexts, 30, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached[:, 0], cached[:, 1])  # samples of one context differ from each other


def test_refill_window_matches_a_fresh_forward_over_the_kept_tokens():
    # After the window refills, the next token is what a plain forward over the last refill_len tokens predicts.
    model = tiny_model()
    context = torch.randint(0, 32, (1, 16))
    path = generate(model, context, 2, temperature=0.0)[0, 0]
    with torch.no_grad():
        first = model(context)[0, -1].argmax()
        window = torch.cat([context[0], path[:1]])[-12:]  # refill_len = 16 - 16 // 4
        second = model(window[None])[0, -1].argmax()
    assert path.tolist() == [first.item(), second.item()]


def test_same_seed_same_samples_different_seed_different_samples():
    model = tiny_model()
    context = [1, 2, 3, 4, 5]
    a = generate(model, context, 20, num_samples=8, seed=7)
    b = generate(model, context, 20, num_samples=8, seed=7)
    c = generate(model, context, 20, num_samples=8, seed=8)
    d, e = generate(model, context, 20, num_samples=8), generate(model, context, 20, num_samples=8)
    assert a.shape == (1, 8, 20)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(d, e)  # seed=None draws fresh randomness


def test_contexts_longer_than_sequence_len_keep_their_last_tokens():
    model = tiny_model()
    long_context = torch.randint(0, 32, (2, 40))
    for use_cache in (True, False):
        a = generate(model, long_context, 10, num_samples=3, seed=0, use_cache=use_cache)
        b = generate(model, long_context[:, -16:], 10, num_samples=3, seed=0, use_cache=use_cache)
        assert torch.equal(a, b)


def test_context_forms_and_bad_ids():
    model = tiny_model()
    as_list = generate(model, [3, 1, 4, 1, 5], 4, temperature=0.0)
    as_1d = generate(model, torch.tensor([3, 1, 4, 1, 5]), 4, temperature=0.0)
    assert as_list.shape == (1, 1, 4) and torch.equal(as_list, as_1d)
    with pytest.raises(DataError, match="vocab_size=32"):
        generate(model, [3, 32], 4)
    with pytest.raises(DataError):
        generate(model, [-1, 3], 4)
    with pytest.raises(DataError):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 4)


@pytest.mark.parametrize(
    "kwargs", [dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5), dict(num_samples=0)]
)
def test_bad_sampling_arguments_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        generate(tiny_model(), [1, 2], 3, **kwargs)


def test_generation_restores_training_mode_and_max_new_tokens_zero():
    model = tiny_model().train()
    out = generate(model, [1, 2, 3], 0, num_samples=5)
    assert out.shape == (1, 5, 0)
    paths = generate(model, [1, 2, 3], 2)
    assert model.training
    paths[0, 0, 0] = 7  # an ordinary tensor, not an inference-mode one


def test_top_k_never_samples_outside_the_top_k():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5, -1.0, 2.0, 0.5, 1.5]]).repeat(4000, 1)
    generator = torch.Generator().manual_seed(0)
    tokens = sample_next_token(logits, temperature=1.5, top_k=3, generator=generator)
    assert set(tokens.tolist()) == {1, 3, 5}  # exactly the three largest logits, each drawn at least once


def test_top_p_never_samples_outside_the_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.1, 0.3, 0.05]])
    logits = probs.log().repeat(4000, 1)
    generator = torch.Generator().manual_seed(0)
    # Sorted: 0.5, 0.3 (mass 0.8 >= 0.75), so the nucleus is {1, 3}; 0.1 would only be needed for p > 0.8.
    tokens = sample_next_token(logits, top_p=0.75, generator=generator)
    assert set(tokens.tolist()) == {1, 3}
    tokens = sample_next_token(logits, top_p=0.85, generator=generator)
    assert set(tokens.tolist()) == {1, 2, 3}
    tokens = sample_next_token(logits, top_p=0.4, generator=generator)
    assert set(tokens.tolist()) == {1}  # the most likely token always stays


def test_unrestricted_sampling_follows_the_softmax():
    probs = torch.tensor([0.1, 0.6, 0.3])
    generator = torch.Generator().manual_seed(0)
    tokens = sample_next_token(probs.log().repeat(20000, 1), generator=generator)
    freq = torch.bincount(tokens, minlength=3).float() / 20000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    assert torch.equal(sample_next_token(probs.log()[None], temperature=0.0), torch.tensor([1]))


def test_kv_cache_repeat_rows_copies_each_context_to_its_samples():
    model = tiny_model()
    cache = KVCache.for_model(model, rows=2)
    with torch.inference_mode():
        model(torch.randint(0, 32, (2, 5)), kv_cache=cache)
    repeated = cache.repeat_rows(3)
    assert repeated.k.shape == (2, 6, 2, 16, 8) and repeated.pos == 5
    assert torch.equal(repeated.k[:, 3:6, :, :5], cache.k[:, 1:2, :, :5].expand(-1, 3, -1, -1, -1))
    assert torch.equal(repeated.v[:, 0:3, :, :5], cache.v[:, 0:1, :, :5].expand(-1, 3, -1, -1, -1))


def test_engine_refill_len_is_validated_and_used():
    model = tiny_model()
    with pytest.raises(ConfigError, match="refill_len"):
        Engine(model).generate([1, 2], 3, refill_len=17)
    context = torch.randint(0, 32, (1, 16))
    a = Engine(model).generate(context, 20, temperature=0.0, refill_len=4)
    b = Engine(model).generate(context, 20, temperature=0.0, refill_len=4, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("use_cache", [True, False])
def test_one_seed_per_context_samples_each_context_as_if_alone(use_cache):
    # Many forecast origins share one call; each must get exactly the paths it gets alone with its seed.
    model = tiny_model()
    contexts = torch.randint(0, 32, (3, 10))
    seeds = [11, 2**63 + 5, 0]  # derived per-origin seeds use torch's whole range
    together = generate(model, contexts, 9, num_samples=5, seed=seeds, use_cache=use_cache)
    for i, seed in enumerate(seeds):
        alone = generate(model, contexts[i], 9, num_samples=5, seed=seed, use_cache=use_cache)
        assert torch.equal(together[i], alone[0])
    # a single seed for one context draws the same stream as a list holding it
    assert torch.equal(generate(model, contexts[:1], 9, num_samples=5, seed=11), together[:1])
    assert not torch.equal(together[0], together[2])
    with pytest.raises(DataError, match="2 seeds for 3 contexts"):
        generate(model, contexts, 2, seed=[1, 2])
    with pytest.raises(ConfigError, match="seed"):
        generate(model, contexts, 2, seed=[1, -2, 3])


def test_grouped_generators_draw_for_each_group_what_it_draws_alone_by_inversion():
    logits = torch.randn(12, 16) * 3
    generators = [torch.Generator().manual_seed(seed) for seed in (1, 2, 3)]
    together = sample_next_token(logits, temperature=0.8, generator=generators)
    for group, seed in enumerate((1, 2, 3)):
        alone = sample_next_token(logits[4 * group:4 * group + 4], temperature=0.8,
                                  generator=torch.Generator().manual_seed(seed))
        assert torch.equal(together[4 * group:4 * group + 4], alone)
    # one uniform per row: the token is where u falls in the row's cumulative distribution
    u = torch.rand(4, generator=torch.Generator().manual_seed(1))
    cumulative = torch.softmax(logits[:4] / 0.8, dim=-1).cumsum(-1)
    assert together[:4].tolist() == [int((c <= x).sum()) for c, x in zip(cumulative, u * cumulative[:, -1])]


def test_inversion_never_draws_a_token_of_probability_zero(monkeypatch):
    # u * total can round up to the total; the draw must still be a token top-k kept, not the last of the vocabulary.
    monkeypatch.setattr("pricegpt.model.engine.draw_uniforms", lambda rows, *_: torch.full((rows,), 1 - 2**-24))
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0, 0.0]]).repeat(3, 1)
    assert sample_next_token(logits, top_k=2).tolist() == [2, 2, 2]
    monkeypatch.setattr("pricegpt.model.engine.draw_uniforms", lambda rows, *_: torch.zeros(rows))
    assert sample_next_token(logits, top_k=2).tolist() == [1, 1, 1]  # u = 0: the first token kept


@pytest.mark.parametrize("n_head, n_kv_head", [(4, 2), (2, 2)])
def test_prefix_cache_attends_like_every_row_with_its_own_copy_of_the_prefix(n_head, n_kv_head):
    # The shared-prefix decode attention against the plain per-row cache (SDPA over each row's whole cache).
    torch.manual_seed(0)
    contexts, samples, filled, steps, D = 2, 3, 5, 4, 8
    prefix = KVCache(1, contexts, n_kv_head, filled, D)
    prefix.update(0, torch.randn(contexts, n_kv_head, filled, D), torch.randn(contexts, n_kv_head, filled, D))
    prefix.advance(filled)
    per_row = prefix.repeat_rows(samples, max_len=filled + steps)
    shared = PrefixKVCache(prefix, samples, max_new=steps)
    rows = contexts * samples
    for _ in range(steps):
        q = torch.randn(rows, n_head, 1, D)
        k, v = torch.randn(rows, n_kv_head, 1, D), torch.randn(rows, n_kv_head, 1, D)
        expected = per_row.attend(0, q, k, v)
        torch.testing.assert_close(shared.attend(0, q, k, v), expected, rtol=1e-5, atol=1e-6)
        per_row.advance(1)
        shared.advance(1)
    assert shared.pos == per_row.pos == filled + steps


@pytest.mark.parametrize("n_head, n_kv_head", [(4, 2), (2, 2)])
def test_prefix_cache_keeps_the_rows_it_is_told_to(n_head, n_kv_head):
    # The engine keeps one row per distinct path: rows may be dropped, kept twice, and contexts padded unevenly.
    torch.manual_seed(0)
    contexts, samples, filled, D = 2, 3, 5, 8
    prefix = KVCache(1, contexts, n_kv_head, filled, D)
    prefix.update(0, torch.randn(contexts, n_kv_head, filled, D), torch.randn(contexts, n_kv_head, filled, D))
    prefix.advance(filled)
    per_row = prefix.repeat_rows(samples, max_len=filled + 3)
    shared = PrefixKVCache(prefix, samples, max_new=3)
    for kept in (None, torch.tensor([0, 0, 1, 2, 4, 4, 5, 5]), torch.tensor([1, 3, 5, 6])):
        if kept is not None:
            per_row = per_row.take_rows(kept)
            shared.keep_rows(kept)
        rows = per_row.rows
        q = torch.randn(rows, n_head, 1, D)
        k, v = torch.randn(rows, n_kv_head, 1, D), torch.randn(rows, n_kv_head, 1, D)
        torch.testing.assert_close(shared.attend(0, q, k, v), per_row.attend(0, q, k, v), rtol=1e-5, atol=1e-6)
        per_row.advance(1)
        shared.advance(1)
    assert shared.rows_per_context == 2


def test_distinct_paths_share_a_row_per_path_and_pad_each_context_alike():
    # 2 contexts of 3 rows (cache rows 0-2 and 3-5); rows 0 and 2 drew the same token after the same path.
    path = torch.tensor([0, 1, 0, 3, 3, 3])
    newest = torch.tensor([7, 7, 7, 1, 2, 2])
    rows_of, parents, tokens, width = distinct_paths(path, newest, vocab_size=10, rows_per_context=3)
    assert width == 2  # context 0: (0, 7) and (1, 7); context 1: (3, 1) and (3, 2)
    assert parents.tolist() == [0, 1, 3, 3] and tokens.tolist() == [7, 7, 1, 2]
    assert rows_of.tolist() == [0, 1, 0, 2, 3, 3]
    # a context with fewer distinct paths repeats its last one, and the total reaches min_rows
    rows_of, parents, tokens, width = distinct_paths(torch.tensor([0, 0, 0, 3, 3, 3]), newest, 10, 3, min_rows=6)
    assert width == 3 and parents.tolist() == [0, 0, 0, 3, 3, 3] and tokens.tolist() == [7, 7, 7, 1, 2, 2]
    assert rows_of.tolist() == [0, 0, 0, 3, 4, 4]


def test_peaked_sampling_shares_rows_and_matches_recomputation_alone_and_batched():
    # At a low temperature most samples of a context draw the same tokens: the engine runs the model once per
    # distinct path, which must change nothing, against recomputation and for each context alone.
    model = tiny_model()
    contexts = torch.randint(0, 32, (3, 12))
    kwargs = dict(num_samples=40, temperature=0.3, seed=[4, 5, 6])
    together = generate(model, contexts, 8, **kwargs)
    assert torch.equal(together, generate(model, contexts, 8, use_cache=False, **kwargs))
    assert len(torch.unique(together[0, :, :2], dim=0)) < 40  # paths were shared
    for i in range(3):
        alone = generate(model, contexts[i], 8, num_samples=40, temperature=0.3, seed=4 + i)
        assert torch.equal(alone[0], together[i])
