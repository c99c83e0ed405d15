"""--device and --dtype: every sampling command puts the model where the flag says and samples in that dtype; a
device this machine lacks is one `error:` line (exit 2) before any work. CUDA tests run where a GPU is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_user_error, run_cli
from pricegpt.cli.main import main
from pricegpt.errors import ConfigError
from pricegpt.forecast import Forecaster
from pricegpt.forecast.forecaster import resolve_model, sampling_on
from pricegpt.train.device import resolve_device, resolve_dtype

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
FORECAST = ["forecast", "--model", "pricegpt-small", "--data", "sample:eurusd-hourly", "--symbol", "EURUSD",
            "--horizon", "4", "--num-samples", "32"]


@pytest.fixture
def engine_calls(monkeypatch):
    """(device of the model, autocast dtype) of every engine call the forecaster and `generate` make."""
    import pricegpt.forecast.forecaster as forecaster_module
    import pricegpt.model as model_module

    calls = []
    real = forecaster_module.generate

    def spy(model, idx, max_new_tokens, **sampling):
        calls.append((model.wte.weight.device, sampling.get("autocast")))
        return real(model, idx, max_new_tokens, **sampling)

    monkeypatch.setattr(forecaster_module, "generate", spy)
    monkeypatch.setattr(model_module, "generate", spy)
    return calls


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if HAS_CUDA else "mps" if torch.backends.mps.is_available() else "cpu")
    for bad in ("gpu", "cpu:0", "cuda:x", "mps:1", ""):
        with pytest.raises(ConfigError, match="not a device"):
            resolve_device(bad)
    assert resolve_dtype("fp32", torch.device("cpu")) is None
    assert resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ConfigError, match="--dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_sampling_on_reaches_forecasters_built_inside_and_ends_with_the_block():
    with sampling_on("cpu", torch.bfloat16):
        inside = Forecaster.from_pretrained("pricegpt-small")
        own = Forecaster.from_pretrained("pricegpt-small", autocast=torch.float16)
    outside = Forecaster.from_pretrained("pricegpt-small")
    assert inside.autocast is torch.bfloat16 and inside.device == torch.device("cpu")
    assert own.autocast is torch.float16
    assert outside.autocast is None


def test_forecast_cli_on_cpu_in_bf16(engine_calls, capsys):
    assert main([*FORECAST, "--device", "cpu", "--dtype", "bf16"]) == 0
    assert "32 sampled paths for the next 4 bars" in capsys.readouterr().out
    assert engine_calls and all(d == torch.device("cpu") and a is torch.bfloat16 for d, a in engine_calls)
    engine_calls.clear()
    assert main(FORECAST) == 0  # the defaults: auto, fp32
    assert engine_calls and all(d == resolve_device("auto") and a is None for d, a in engine_calls)


def test_evaluate_model_cli_on_cpu_in_bf16(engine_calls, tmp_path, capsys):
    """Calibration on the validation split and the test forecasts both sample in bf16 on the CPU."""
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", "pricegpt-small", "--data", "sample:eurusd-hourly", "--out", str(out),
                 "--max-origins", "2", "--num-samples", "8", "--horizon", "4", "--device", "cpu", "--dtype", "bf16"])
    assert code == 0
    assert (out / "metrics.json").is_file()
    assert "zero-shot: pricegpt-small" in capsys.readouterr().out
    assert len(engine_calls) >= 2 and all(d == torch.device("cpu") and a is torch.bfloat16 for d, a in engine_calls)


def test_generate_cli_on_cpu_in_bf16(engine_calls, capsys):
    args = ["generate", "--run", str(resolve_model("pricegpt-small")), "--seed-tokens", "1 2 3", "--num-generate",
            "4", "--num-samples", "2", "--seed", "0", "--device", "cpu"]
    assert main([*args, "--dtype", "bf16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["sample 0", "sample 1"]
    assert engine_calls == [(torch.device("cpu"), torch.bfloat16)]


@no_cuda
def test_cuda_without_cuda_is_one_error_line_through_the_real_cli():
    assert_user_error(run_cli(*FORECAST, "--device", "cuda"), "--device=cuda", "no CUDA device")


@no_cuda
@pytest.mark.parametrize("command", [
    ["forecast", "--run", "{missing}", "--data", "sample:eurusd-hourly", "--symbol", "EURUSD", "--horizon", "4"],
    ["evaluate", "--run", "{missing}"],
    ["evaluate", "--model", "pricegpt-small", "--data", "sample:eurusd-hourly", "--out", "{out}"],
    ["calibrate", "--run", "{missing}"],
    ["backtest", "--run", "{missing}"],
    ["backtest", "--model", "pricegpt-small", "--data", "sample:eurusd-hourly", "--out", "{out}"],
    ["generate", "--run", "{missing}", "--seed-tokens", "1 2"],
    ["pipeline", "--data", "sample:eurusd-hourly", "--out", "{out}"],
    ["skill", "--data", "sample:eurusd-hourly", "--out", "{out}"],
], ids=lambda c: " ".join(c[:3]))
def test_unavailable_device_fails_before_any_work(command, tmp_path, capsys):
    """A missing run directory would be a different error: the device is checked first; nothing is written."""
    args = [part.format(missing=tmp_path / "no-such-run", out=tmp_path / "out") for part in command]
    assert main([*args, "--device", "cuda:0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device=cuda:0 but no CUDA device"), err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ CUDA only
@needs_cuda
def test_forecast_cli_on_cuda_and_auto_picks_it(engine_calls, capsys):
    assert main([*FORECAST, "--device", "cuda"]) == 0
    assert main(FORECAST) == 0  # auto: the GPU
    out = capsys.readouterr().out
    assert out.count("32 sampled paths for the next 4 bars") == 2
    assert engine_calls and all(d.type == "cuda" and a is None for d, a in engine_calls)


@needs_cuda
@pytest.mark.parametrize("autocast", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_paths_sampled_on_cuda_are_plausible(autocast):
    forecaster = Forecaster.from_pretrained("pricegpt-small", device="cuda", autocast=autocast)
    assert forecaster.device.type == "cuda"
    fc = forecaster.sample_paths("sample:eurusd-hourly", 4, 64, seed=0, symbols=["EURUSD"])
    assert isinstance(fc.paths, np.ndarray) and fc.paths.shape == (1, 64, 4) and fc.paths.dtype == np.float64
    assert np.isfinite(fc.paths).all()
    # hourly EURUSD: moves of a few basis points, a median near zero, paths that differ
    assert np.abs(np.median(fc.cumulative[0, :, -1])) < 0.005 and fc.paths.std() > 0
    again = forecaster.sample_paths("sample:eurusd-hourly", 4, 64, seed=0, symbols=["EURUSD"])
    np.testing.assert_array_equal(fc.paths, again.paths)  # same seed, same paths on the GPU too


@needs_cuda
def test_cuda_index_beyond_the_machine_is_one_error_line(capsys):
    index = torch.cuda.device_count()
    assert main([*FORECAST, "--device", f"cuda:{index}"]) == 2
    assert capsys.readouterr().err.startswith(f"error: --device=cuda:{index} but this machine has")
