"""The series calendar (future bar times) and seasonal scaling: a planted intraday volatility pattern comes back
in the decoded paths, nothing uses a later bar, and the files round-trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pricegpt.data.calendar import TOD_SLOTS, bar_interval, calendar_ids, future_times, infer_calendar
from pricegpt.errors import PriceGPTError, TokenizerError
from pricegpt.tokenizer import create_tokenizer, load_tokenizer
from test_baselines import intraday_pattern


def ns(values) -> np.ndarray:
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).tz_localize(None).to_numpy("datetime64[ns]")


def test_daily_equity_bars_skip_weekends_and_keep_a_missing_holiday_as_a_weekday():
    days = pd.bdate_range("2024-06-03", "2024-07-05")  # Monday .. Friday
    days = days[days != pd.Timestamp("2024-07-04")]     # a holiday the history skipped
    future = future_times(ns(days), 5)
    assert [str(d)[:10] for d in future] == ["2024-07-08", "2024-07-09", "2024-07-10", "2024-07-11", "2024-07-12"]
    assert bar_interval(ns(days)) == 86_400 * 10**9


def test_hourly_fx_skips_the_weekend_it_never_trades():
    hours = pd.date_range("2024-01-01 00:00", "2024-01-26 21:00", freq="h")  # Monday 00:00 .. Friday 21:00
    hours = hours[hours.day_of_week < 5]
    future = pd.to_datetime(future_times(ns(hours), 4))
    assert list(future.strftime("%a %H:%M")) == ["Fri 22:00", "Fri 23:00", "Mon 00:00", "Mon 01:00"]


def test_crypto_trades_around_the_clock():
    bars = pd.date_range("2024-03-01", "2024-03-10 23:45", freq="15min")
    future = pd.to_datetime(future_times(ns(bars), 3))
    assert list(future.strftime("%Y-%m-%d %H:%M")) == ["2024-03-11 00:00", "2024-03-11 00:15", "2024-03-11 00:30"]


def test_calendar_ids_are_thirty_minute_slots_and_weekdays():
    tod, dow = calendar_ids(ns(["2024-01-01 00:00", "2024-01-01 13:45", "2024-01-07 23:59"]))
    assert tod.tolist() == [0, 27, TOD_SLOTS - 1] and dow.tolist() == [0, 0, 6]


def test_an_empty_history_has_no_calendar():
    with pytest.raises(PriceGPTError):
        infer_calendar(np.array([], dtype="datetime64[ns]"))


def planted_frame(n_days: int = 80, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    times, returns, _, bar_std = intraday_pattern(n_days, seed)
    stamps = np.concatenate([[times[0] - np.timedelta64(30, "m")], times])
    close = 100 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))
    frame = pd.DataFrame({"timestamp": pd.to_datetime(stamps, utc=True), "symbol": "FX", "close": close})
    return frame, bar_std


@pytest.fixture(scope="module")
def seasonal_tokenizer():
    frame, bar_std = planted_frame()
    train_end = frame["timestamp"].iloc[int(0.7 * len(frame))]
    tok = create_tokenizer("quantile", patch_len=1, codebook_size=32, scaling="ewma", seasonal=True)
    return tok.fit(frame, train_end), frame, bar_std, train_end


def test_decoded_paths_follow_the_planted_time_of_day_profile(seasonal_tokenizer):
    tok, frame, bar_std, _ = seasonal_tokenizer
    times = ns(frame["timestamp"])[1:]
    target = future_times(times, 48)  # the next day, 30-minute bars
    hour = (target - target.astype("datetime64[D]")).astype("timedelta64[m]").astype(np.int64) / 60
    rng = np.random.default_rng(0)
    codes = rng.integers(0, tok.vocab_size, size=(4000, len(target)))  # the same shock law at every hour
    s0 = tok.origin_state(np.diff(np.log(frame["close"].to_numpy())), "FX", times=times)
    paths = tok.decode_paths(codes, "FX", s0, times=target)
    loud = paths[:, hour <= 6].std()
    quiet = paths[:, hour > 6].std()
    # the planted ratio is 3; the profile is shrunk a little toward the overall mean
    assert 2.4 < loud / quiet < 3.3, loud / quiet
    # without seasonal scaling the hours are alike
    plain = create_tokenizer("quantile", patch_len=1, codebook_size=32, scaling="ewma").fit(frame, tok.train_end)
    flat = plain.decode_paths(codes, "FX", s0)
    assert 0.8 < flat[:, hour <= 6].std() / flat[:, hour > 6].std() < 1.25


def test_seasonal_scaling_never_reads_a_later_bar(seasonal_tokenizer):
    tok, frame, _, train_end = seasonal_tokenizer
    changed = frame.copy()
    later = changed["timestamp"] > train_end
    changed.loc[later, "close"] = changed.loc[later, "close"] * np.exp(np.linspace(0, 0.5, later.sum()))
    refit = create_tokenizer("quantile", patch_len=1, codebook_size=32, scaling="ewma", seasonal=True)
    refit.fit(changed, train_end)
    assert refit.hash == tok.hash  # the profile and codebook see train bars only
    returns = np.diff(np.log(frame["close"].to_numpy()))
    times = ns(frame["timestamp"])[1:]
    cut = len(returns) - 200
    before = tok.encode_history(returns[:cut], "FX", times=times[:cut])
    after = tok.encode_history(np.concatenate([returns[:cut], returns[cut:] * 5]), "FX", times=times)
    assert np.array_equal(before, after[:len(before)])


def test_seasonal_tokenizer_round_trips_and_asks_for_times(seasonal_tokenizer, tmp_path):
    tok, frame, _, _ = seasonal_tokenizer
    tok.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.hash == tok.hash and loaded.needs_times("FX") and not loaded.needs_times("OTHER")
    assert all(np.array_equal(a, b) for a, b in zip(loaded.encode(frame).values(), tok.encode(frame).values()))
    returns = np.diff(np.log(frame["close"].to_numpy()))
    with pytest.raises(TokenizerError, match="times"):
        loaded.encode_history(returns, "FX")
    with pytest.raises(TokenizerError, match="times"):
        loaded.decode_paths(np.zeros((2, 3), dtype=np.int64), "FX", 1e-3)


def test_daily_data_are_unchanged_by_seasonal_scaling():
    from pricegpt.data import load_prices, time_splits
    frame = load_prices("sample:stocks-daily")
    splits = time_splits(frame)
    a = create_tokenizer("quantile", patch_len=1, codebook_size=32, scaling="ewma", seasonal=True)
    b = create_tokenizer("quantile", patch_len=1, codebook_size=32, scaling="ewma")
    a.fit(frame, splits.train_end), b.fit(frame, splits.train_end)
    assert a.seasonal == {}
    assert all(np.array_equal(x, y) for x, y in zip(a.encode(frame).values(), b.encode(frame).values()))


def test_a_bad_seasonal_value_is_a_config_error():
    from pricegpt.errors import ConfigError
    with pytest.raises(ConfigError, match="seasonal"):
        create_tokenizer("vqvae", seasonal="yes")
