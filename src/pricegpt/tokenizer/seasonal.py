"""Seasonal scaling (`seasonal=True`): intraday returns divided by their time-of-day x day-of-week volatility
profile before the running scale, and multiplied back when decoding.

On intraday data the volatility of a bar depends on its clock: the open, the lunch lull, the overlap of the
London and New York sessions. A running scale follows it only with a lag, so the shocks r_t / s_t of a quiet hour
after a busy one are small and those of the open large: the same token means different risk at different hours.
With seasonal scaling each intraday symbol's bars are first deseasonalised,

    d_t = r_t / sqrt(p(slot_t)),   p = data.calendar.seasonal_profile of the symbol's TRAIN bars,

(the price features of "ohlcv" likewise; the volume change is left alone) and everything after (the running
scale, the codebook, the model) works on d. A decoded path is multiplied back bar by bar by sqrt(p) of its
future bars' own slots (`factors`), so a path sampled at 07:00 UTC widens into the London open. The profile is
the one the `seasonal` baseline uses, fit on the same bars.

Daily (and slower) symbols, symbols with fewer than MIN_BARS intraday train bars, and symbols unseen in fit have
no profile: their factor is 1 (the tokenizer behaves exactly as without seasonal scaling for them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.calendar import bar_interval, bar_slots, is_intraday, n_time_of_day, seasonal_profile

MIN_BARS = 50  # intraday train bars a profile needs (as the seasonal baseline)


@dataclass(frozen=True)
class SeasonalProfile:
    """A symbol's bar interval (ns) and relative variance per slot (7 n_tod,), all > 0."""

    interval: int
    profile: np.ndarray

    def factors(self, times) -> np.ndarray:
        """sqrt(p) of the slots of bars ending at `times`: (n,) float64, what a return is divided by."""
        slot = bar_slots(times, self.interval)[0]
        return np.sqrt(self.profile[slot])

    def to_dict(self) -> dict:
        return {"interval_ns": int(self.interval), "profile": [float(v) for v in self.profile]}

    @classmethod
    def from_dict(cls, raw: dict, what: str) -> SeasonalProfile:
        """A saved profile, checked: ValueError (a damaged config.json) unless its length matches its interval
        and every value is finite and > 0."""
        interval = raw["interval_ns"]
        if isinstance(interval, bool) or not isinstance(interval, int) or not is_intraday(interval):
            raise ValueError(f"the seasonal interval of {what} must be an intraday bar length in ns, got {interval!r}")
        profile = np.asarray(raw["profile"], dtype=np.float64)
        if profile.shape != (7 * n_time_of_day(interval),) or not np.all(np.isfinite(profile)) \
                or not np.all(profile > 0):
            raise ValueError(f"the seasonal profile of {what} must hold 7 x {n_time_of_day(interval)} finite "
                             "values > 0")
        return cls(int(interval), profile)


def fit_profile(times: np.ndarray, returns: np.ndarray) -> SeasonalProfile | None:
    """The profile of one symbol's train bars (end times and close log returns), or None (not intraday, too few
    bars, or no price change)."""
    if len(returns) < MIN_BARS:
        return None
    interval = bar_interval(times)
    if not is_intraday(interval):
        return None
    sq = np.asarray(returns, dtype=np.float64) ** 2
    if not np.mean(sq) > 0:
        return None
    slot, tod, n_tod = bar_slots(times, interval)
    profile = seasonal_profile(sq, slot, tod, n_tod)
    # an empty slot of a symbol whose bars are all zero there would be 0: a floor keeps d finite
    return SeasonalProfile(interval, np.maximum(profile, 1e-4))
