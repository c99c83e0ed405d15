"""`pricegpt bench` at tiny shapes, one or two rounds: the code runs and its bookkeeping holds. No timings are
asserted here; speed lives in benchmarks/README.md."""

import functools
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from pricegpt import bench
from pricegpt.errors import ConfigError
from pricegpt.model import GPT, GPTConfig
from pricegpt.tokenizer import TokenStore
from train_helpers import torch_threads_kept

TINY = GPTConfig(sequence_len=16, vocab_size=32, n_layer=1, n_head=4, n_kv_head=4, n_embd=32)


@pytest.fixture(autouse=True)
def _threads():
    with torch_threads_kept():
        torch.set_num_threads(1)
        yield


@pytest.fixture
def no_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError


def assert_measured(result: bench.Result) -> None:
    assert result.value is not None and result.value > 0, result.line()
    assert result.verdict in ("PASS", "MISS", ""), result.line()


def test_llama_peer_has_pricegpt_shape_and_parameter_count():
    pytest.importorskip("transformers")
    from transformers import LlamaForCausalLM

    for config in (GPTConfig(), replace(GPTConfig(), n_kv_head=2)):  # the seed shape, MHA and GQA
        with torch.device("meta"):  # shapes only, no memory or init time
            ours = GPT(config).num_params()
            llama = LlamaForCausalLM(bench.llama_config(config))
        assert llama.config.intermediate_size == 1368 and llama.config._attn_implementation == "sdpa"
        assert abs(sum(p.numel() for p in llama.parameters()) / ours - 1) < 0.01


@pytest.mark.parametrize("config, dtype", [(TINY, "fp32"), (replace(TINY, n_kv_head=2), "bf16")])
def test_train_lines_compare_with_llama(config, dtype):
    pytest.importorskip("transformers")
    results = {r.name: r for r in bench.bench_train(config, batch_size=2, dtype=dtype, rounds=1, peak_size=32)}
    label = f"train {dtype}{' GQA' if config.n_kv_head != config.n_head else ''}"
    ratio, mfu = results[f"{label} vs HF Llama"], results[f"{label} MFU"]
    assert ratio.name.startswith(f"train {dtype}") and ratio.goal == 1.0
    assert_measured(ratio)
    assert_measured(mfu)
    assert (mfu.goal is None) == (config.n_kv_head != config.n_head)  # MFU goals are for the MHA seed shape


def test_train_without_transformers_skips_only_the_peer(no_transformers):
    ratio, lean, mfu, ceiling, lean_mfu = bench.bench_train(TINY, batch_size=2, dtype="fp32", rounds=1,
                                                            peak_size=32)
    assert ratio.value is None and ratio.line().endswith("skipped: pip install 'pricegpt[bench]'")
    for result in (lean, mfu, ceiling, lean_mfu):
        assert_measured(result)
    assert ceiling.name == "train fp32 MFU ceiling" and ceiling.goal is None and "matrix products alone" in \
        ceiling.detail


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_train_lines_compare_with_the_lean_gpt(dtype):
    results = bench.bench_train(TINY, batch_size=2, dtype=dtype, rounds=1, peak_size=32)
    assert [r.name for r in results] == [f"train {dtype} vs HF Llama", f"train {dtype} vs lean GPT",
                                         f"train {dtype} MFU", f"train {dtype} MFU ceiling",
                                         f"train {dtype} lean GPT MFU"]
    lean, lean_mfu = results[1], results[4]
    assert_measured(lean)
    assert_measured(lean_mfu)
    assert "tok/s" in lean.detail and lean_mfu.goal is None
    assert lean.goal == bench.LEAN_GOAL[dtype] == {"fp32": 1.0, "bf16": 1.1}[dtype]
    # GQA has no same-shape lean peer: no lean lines
    gqa = bench.bench_train(replace(TINY, n_kv_head=2), batch_size=2, dtype=dtype, rounds=1, peak_size=32)
    assert not any("lean" in r.name for r in gqa)


@pytest.fixture
def cheap_compile(monkeypatch):
    """torch.compile with the eager backend: the bench's compiled path (dynamo traces the step) without inductor's
    C++ kernel builds, which take tens of seconds."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_compiled_lines_compare_with_eager_and_compiled_lean_gpt(dtype, cheap_compile, no_transformers):
    results = bench.bench_train(TINY, batch_size=2, dtype=dtype, rounds=1, peak_size=32, compiled=True)
    label = f"train {dtype}"
    assert [r.name for r in results][-4:] == [f"{label} compiled vs lean", f"{label} both compiled",
                                              f"{label} compiled MFU", f"{label} compile"]
    vs_lean, both, mfu, compile_time = results[-4:]
    for result in (vs_lean, both, mfu):
        assert_measured(result)
    assert vs_lean.goal == both.goal == bench.LEAN_GOAL[dtype] and mfu.goal == bench.MFU_GOAL[dtype]
    assert "eager LeanGPT" in vs_lean.detail and "LeanGPT compiled too" in both.detail
    assert compile_time.lower_is_better and compile_time.value is not None and compile_time.value >= 0
    assert "fresh inductor cache" in compile_time.detail and "pays off" in compile_time.detail
    # GQA has no same-shape lean peer, so no compiled lines either
    gqa = bench.bench_train(replace(TINY, n_kv_head=2), batch_size=2, dtype=dtype, rounds=1, peak_size=32,
                            compiled=True)
    assert not any("compile" in r.name for r in gqa)


def test_compiled_lines_are_skipped_without_a_cxx_compiler(monkeypatch, no_transformers):
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "no-such-c++-compiler"))
    reason = bench.compile_unavailable()
    assert reason is not None and "C++ compiler" in reason
    *_, skipped = bench.bench_train(TINY, batch_size=2, dtype="fp32", rounds=1, peak_size=32, compiled=True)
    assert skipped.name == "train fp32 compiled" and skipped.value is None
    assert skipped.line().endswith(f"skipped: {reason}")


def test_compile_pays_off_after_compile_seconds_over_seconds_saved():
    assert bench.break_even_steps(20.0, eager_step=1.1, compiled_step=1.0) == pytest.approx(200)
    assert bench.break_even_steps(20.0, eager_step=1.0, compiled_step=1.0) is None  # saves nothing: never
    assert bench.break_even_steps(20.0, eager_step=1.0, compiled_step=1.2) is None


def test_lean_gpt_matches_pricegpt_shape_and_trains():
    with torch.device("meta"):  # the seed shape: shapes only
        seed = GPTConfig()
        ours, lean = GPT(seed), bench.LeanGPT(seed)
    assert abs(sum(p.numel() for p in lean.parameters()) / ours.num_params() - 1) < 0.05
    assert lean.flops_per_token() == ours.flops_per_token()  # the same weight matmuls and attention
    assert len(lean.blocks) == seed.n_layer and lean.wpe.weight.shape == (seed.sequence_len, seed.n_embd)
    torch.manual_seed(0)
    model = bench.LeanGPT(TINY)
    optimizer = bench.lean_optimizer(model)
    idx = torch.randint(0, TINY.vocab_size, (4, TINY.sequence_len + 1), generator=torch.Generator().manual_seed(0))
    assert model(idx[:, :-1]).shape == (4, TINY.sequence_len, TINY.vocab_size)
    losses = []
    for _ in range(8):
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_generate_lines():
    kv_vs_recompute, kv_vs_hf = bench.bench_generate(TINY, context_len=6, paths=3, new_tokens=5,
                                                     recompute_tokens=2, rounds=1)
    assert_measured(kv_vs_recompute)
    assert "extrapolated" in kv_vs_recompute.detail
    if bench._transformers() is None:
        assert kv_vs_hf.shown == "skipped"
    else:
        assert_measured(kv_vs_hf)


def test_decode_lines_compare_batched_origins_with_the_per_origin_loop_and_the_decode_before():
    # bench_decode itself checks that the batched call gives the per-origin loop's paths before timing them.
    lines = bench.bench_decode(TINY, "tiny", origins=3, paths=4, context_len=10, new_tokens=3, rounds=1,
                               peak_size=32, before_goal=3.0)
    assert [r.name for r in lines] == ["decode tiny tok/s", "decode tiny vs before", "decode tiny peak share",
                                       "decode tiny bf16 tok/s"]
    for result in lines:
        assert_measured(result)
    tok_s, before, share, _ = lines
    assert tok_s.goal is None and "one call per origin" in tok_s.detail and share.goal is None
    assert before.goal == 3.0 and "1446cd9" not in before.detail and "decode_before_issue15" in before.detail


def test_the_decode_before_issue15_samples_its_model():
    # The frozen peer is a real sampler: a model that puts all its mass on one token draws only that token.
    model = GPT(TINY).eval()
    with torch.no_grad():
        model.lm_head.weight.fill_(-1.0)
        model.lm_head.weight[7].fill_(1.0)  # logits +15 and -15 after the softcap: token 7 has all but 1e-12
        for block in model.blocks:
            block.mlp.c_proj.weight.zero_()
            block.attn.c_proj.weight.zero_()
        model.wte.weight.fill_(1.0)
    paths = bench.decode_before_issue15(model, torch.arange(5), 3, 4, seed=0)
    assert paths.shape == (4, 3) and bool((paths == 7).all())
    assert torch.equal(bench.decode_before_issue15(model, torch.arange(5), 3, 4, seed=1), paths)


    model = GPT(TINY)
    # a third of the training FLOPs: 2 per weight plus attention over 10, 11, 12 cached positions (mean 11)
    assert bench.decode_flops_per_token(model, 10, 3) == 2 * model.num_params(non_embedding=True) + 4 * 32 * 11


def test_recompute_extrapolation_is_proportional_to_the_window():
    assert bench.recompute_scale(192, 64, 64) == 1.0
    assert bench.recompute_scale(10, 1, 2) == (10 + 11) / 10


def test_naive_encoder_agrees_with_the_tokenizer_and_encode_line_runs():
    (line,) = bench.bench_encode(n_bars=40_000, naive_patches=300, rounds=1, fit_steps=20)
    assert_measured(line)
    assert "same ids on 100.0%" in line.detail or "same ids on 99" in line.detail


def test_synthetic_store_opens_as_a_token_store(tmp_path):
    store = TokenStore.open(bench.write_synthetic_store(tmp_path / "store", 1000))
    assert store.n_tokens == 1000 and store.symbols == ["SYN"]
    assert store.split_bounds("SYN") == {"train": (0, 800), "val": (800, 900), "test": (900, 1000)}
    assert isinstance(store.tokens("SYN"), np.memmap)


def test_scaling_lines():
    results = bench.bench_scaling(base_tokens=1500, threads=1, steps=1, factors=(1, 2))
    assert [r.name for r in results[:2]] == ["scaling 1x tokens/s", "scaling 2x tokens/s"], [r.line() for r in results]
    for result in results[:-1]:
        assert_measured(result)
    # the RSS growth per extra token is a difference of two noisy peaks: near zero, of either sign, when flat
    memory = results[-1]
    assert memory.lower_is_better and memory.value is not None and np.isfinite(memory.value), memory.line()


def test_e2e_reports_a_failed_pipeline(tmp_path):
    # The real CLI accepts the command line the bench builds: the failure is about the data, not the flags.
    (line,) = bench.bench_e2e(threads=1, data=str(tmp_path / "missing.csv"), extra_args=("--max-steps", "1"))
    assert line.shown == "failed" and "missing.csv" in line.detail, line.line()


def test_only_and_threads_are_checked(monkeypatch):
    assert bench.parse_only("scaling, train") == ("train", "scaling")
    assert bench.parse_only(None) == bench.SECTIONS
    with pytest.raises(ConfigError, match="--only"):
        bench.parse_only("train,gpu")
    monkeypatch.setenv("PRICEGPT_BENCH_THREADS", "zero")
    with pytest.raises(ConfigError, match="PRICEGPT_BENCH_THREADS"):
        bench.bench_threads()


def test_run_bench_reports_header_lines_and_summary(monkeypatch):
    monkeypatch.setenv("PRICEGPT_BENCH_THREADS", "1")
    monkeypatch.setattr(bench.suite, "QUICK", replace(bench.QUICK, encode_bars=20_000, encode_naive_patches=100,
                                                      encode_rounds=1, encode_fit_steps=10))
    out = "\n".join(bench.run_bench(quick=True, only="encode"))
    assert "machine:" in out and "1 threads" in out and "== summary" in out
    assert "encode bars/s" in out.split("== summary")[1]
