"""GPTConfig and GPT: sizes, causality, loss, bookkeeping, save/load, bf16 autocast."""

import json

import pytest
import torch
import torch.nn.functional as F

from pricegpt.errors import CheckpointError, ConfigError, DataError, PriceGPTError
from pricegpt.model import GPT, PRESETS, GPTConfig, KVCache, check_token_ids, preset_model_config


def tiny_config(**overrides) -> GPTConfig:
    # Random (not zero) output projections and head, so outputs depend on every weight and every input token.
    base = dict(
        sequence_len=16,
        vocab_size=32,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        zero_init_proj=False,
        zero_init_head=False,
    )
    return GPTConfig(**{**base, **overrides})


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()


def test_default_config_has_exactly_the_seed_parameter_count():
    model = GPT(GPTConfig())
    assert model.num_params() == 19_005_440
    breakdown = model.param_breakdown()
    assert breakdown["embedding"] == 128 * 512
    assert breakdown["head"] == 512 * 128
    assert breakdown["attention_per_layer"] == 4 * 512 * 512
    assert breakdown["mlp_per_layer"] == 2 * 512 * 2048
    parts = breakdown["embedding"] + breakdown["attention"] + breakdown["mlp"] + breakdown["head"]
    assert parts == breakdown["total"] == 19_005_440
    assert breakdown["attention"] == 6 * breakdown["attention_per_layer"]
    assert model.num_params(non_embedding=True) == 19_005_440 - 128 * 512
    assert model.flops_per_token() == 6 * (19_005_440 - 128 * 512) + 12 * 6 * 512 * 256


def test_no_bias_no_norm_weights_untied_head():
    model = GPT(tiny_config())
    assert all(p.dim() == 2 for p in model.parameters())
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()
    assert not any("cos" in k or "sin" in k for k in model.state_dict())  # rotary tables are not weights


def test_presets():
    with torch.device("meta"):  # shapes only: no 340 MB of random init for the large preset
        assert GPT(PRESETS["seed"]).num_params() == 19_005_440
        assert GPT(PRESETS["large"]).num_params() == 85_131_264
    tiny = preset_model_config("tiny", vocab_size=64)
    assert tiny.n_kv_head < tiny.n_head and tiny.vocab_size == 64
    assert PRESETS["tiny"].vocab_size == 128  # overrides did not leak into the shared preset
    with pytest.raises(ConfigError, match="tiny"):
        preset_model_config("huge")


def test_gqa_shrinks_key_value_projections_and_cache():
    c = dict(n_head=4, n_embd=32)
    full, grouped = GPT(tiny_config(n_kv_head=4, **c)), GPT(tiny_config(n_kv_head=1, **c))
    head_dim, n_layer = 8, 2
    # K and V each lose (4 - 1) heads of head_dim outputs per layer.
    assert full.num_params() - grouped.num_params() == n_layer * 2 * (4 - 1) * head_dim * 32
    assert grouped.blocks[0].attn.c_qkv.weight.shape == ((4 + 2 * 1) * head_dim, 32)
    cache = KVCache.for_model(grouped, rows=3)
    assert cache.k.shape == (n_layer, 3, 1, 16, head_dim)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(n_head=3), "divisible"),
        (dict(n_kv_head=3), "n_kv_head"),
        (dict(n_embd=24, n_head=8), "even"),
        (dict(n_layer=0), "n_layer"),
        (dict(dropout=1.0), "dropout"),
        (dict(logit_softcap=-1.0), "softcap"),
    ],
)
def test_invalid_config_is_a_config_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**overrides)


def test_config_dict_round_trip_and_unknown_keys():
    config = tiny_config(logit_softcap=None, rope_base=500.0)
    assert GPTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="block_size"):
        GPTConfig.from_dict({**config.to_dict(), "block_size": 16})


def test_forward_shapes_and_zero_init_gives_uniform_loss():
    model = tiny_model()
    idx = torch.randint(0, 32, (3, 16))
    assert model(idx).shape == (3, 16, 32)
    assert model(idx).dtype == torch.float32
    # The default init zeroes the head: the first loss is exactly ln(vocab_size).
    fresh = GPT(tiny_config(zero_init_head=True))
    assert fresh(idx, idx).item() == pytest.approx(torch.log(torch.tensor(32.0)).item(), abs=1e-5)


def test_causality_later_tokens_never_change_earlier_logits():
    model = tiny_model()
    idx = torch.randint(0, 32, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 32
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-5)
    assert (a[:, 9:] - b[:, 9:]).abs().max() > 1e-3  # and the later positions do see the change


def test_loss_is_cross_entropy_of_the_logits_with_ignore_index():
    model = tiny_model()
    idx = torch.randint(0, 32, (2, 16))
    targets = torch.randint(0, 32, (2, 16))
    targets[0, :5] = -1
    with torch.no_grad():
        logits = model(idx)
        loss = model(idx, targets)
    expected = F.cross_entropy(logits.view(-1, 32), targets.view(-1), ignore_index=-1)
    assert loss.shape == ()
    torch.testing.assert_close(loss, expected)
    per_token = model(idx, targets, reduction="none")
    assert per_token.shape == (32,) and (per_token[:5] == 0).all()


def test_logit_softcap_bounds_logits():
    model = tiny_model(logit_softcap=2.0, init_std=1.0)
    logits = model(torch.randint(0, 32, (2, 16)))
    assert logits.abs().max() <= 2.0
    assert logits.abs().max() > 1.5  # the cap is active, not just unreached


def test_backward_reaches_every_parameter():
    model = tiny_model().train()
    idx = torch.randint(0, 32, (2, 16))
    model(idx, idx).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_custom_norm_and_mlp_gradients_match_autograd_reference():
    from pricegpt.model.gpt import norm, relu_square

    x = torch.randn(4, 7, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))
    assert torch.autograd.gradcheck(relu_square, (x,))
    with torch.no_grad():
        torch.testing.assert_close(norm(x), F.rms_norm(x, (32,)))


def test_kv_cache_decode_matches_full_forward():
    model = tiny_model()
    idx = torch.randint(0, 32, (3, 16))
    with torch.inference_mode():
        full = model(idx)
        cache = KVCache.for_model(model, rows=3)
        steps = [model(idx[:, :6], kv_cache=cache)] + [model(idx[:, t : t + 1], kv_cache=cache) for t in range(6, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
    assert cache.pos == 16


def test_rotary_tables_extend_past_sequence_len():
    model = tiny_model()
    idx = torch.randint(0, 32, (1, 40))
    with torch.no_grad():
        logits = model(idx)
    assert logits.shape == (1, 40, 32) and model.cos.size(1) >= 40
    torch.testing.assert_close(logits[:, :16], model(idx[:, :16]).detach(), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_runs_and_is_close_to_fp32():
    model = tiny_model()
    idx = torch.randint(0, 32, (2, 16))
    with torch.no_grad():
        fp32 = model(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(idx)
    assert bf16.dtype == torch.float32  # softcap and loss run in fp32
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.train()(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and model.wte.weight.grad is not None


def test_param_groups_cover_every_parameter_once():
    model = tiny_model()
    groups = model.param_groups(weight_decay=0.1)
    assert [g["name"] for g in groups] == ["matrix", "embedding", "head"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in model.matrix_params()} == {id(p) for p in model.blocks.parameters()}
    torch.optim.AdamW(groups, lr=1e-3)  # accepted as-is


def test_check_token_ids():
    check_token_ids(torch.tensor([0, 31]), 32)
    check_token_ids(torch.tensor([-1, 31]), 32, allow_ignore=True)
    with pytest.raises(DataError, match=r"\[0, 32\)"):
        check_token_ids(torch.tensor([0, 32]), 32)
    with pytest.raises(DataError):
        check_token_ids(torch.tensor([-1, 3]), 32)


def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny_model(rope_base=777.0)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = GPT.from_pretrained(tmp_path / "m", map_location="cpu")
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    idx = torch.randint(0, 32, (2, 16))
    assert torch.equal(model(idx), loaded.eval()(idx))


def test_truncated_weights_are_a_checkpoint_error(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize("problem", ["missing weights", "missing config", "bad json", "wrong shape", "extra key"])
def test_broken_checkpoints_are_checkpoint_errors(tmp_path, problem):
    from safetensors.torch import load_file, save_file

    tiny_model().save_pretrained(tmp_path)
    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    if problem == "missing weights":
        weights.unlink()
    elif problem == "missing config":
        config.unlink()
    elif problem == "bad json":
        config.write_text("{not json")
    elif problem == "wrong shape":
        config.write_text(json.dumps({**json.loads(config.read_text()), "n_embd": 64}))
    elif problem == "extra key":
        save_file({**load_file(weights), "bonus.weight": torch.zeros(2)}, weights)
    with pytest.raises(CheckpointError) as err:
        GPT.from_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert isinstance(err.value, PriceGPTError)


@pytest.mark.parametrize("name", ["tiny", "seed", "large"])
def test_config_parameter_count_matches_the_built_model(name):
    # the memory bound refuses a model from this count before allocating it, so it must be exact
    config = preset_model_config(name, vocab_size=100)
    with torch.device("meta"):
        assert GPT(config).num_params() == config.num_params()
