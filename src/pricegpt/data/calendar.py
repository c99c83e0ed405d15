"""The calendar of a series: its bar interval, the time-of-day and weekday slots it trades in, the timestamps of
its future bars, and the seasonal variance profile over those slots.

Times are the END of each bar (the timestamp of the row the bar's return belongs to), as datetime64[ns] UTC.

- `bar_interval(times)`: the median step between bars (ns); a daily series' is one day.
- `bar_slots(times, interval)`: slot = day_of_week (Monday 0) x n_tod + time_of_day, time of day in steps of the
  bar interval (n_tod = ceil(day / interval); 1 for daily bars).
- `Calendar` (`infer_calendar(times)`): the interval and the set of slots seen in the history. `future(n)` steps
  forward from the last bar by the interval and keeps the times whose slot occurred in the history, so weekends
  and closed hours are skipped as the series skipped them (a daily equity series: weekdays; FX: 24x5; crypto:
  24x7). Holidays are not known: a weekday that is a holiday is still a future bar.
- `calendar_ids(times)`: the model's calendar inputs at one fixed resolution for every series (pooled models read
  series of different intervals): time of day in TOD_SLOTS steps of 30 minutes, and the weekday.
- `seasonal_profile(sq, slot, tod, n_tod)`: mean squared return per slot relative to the overall mean, shrunk
  toward its time of day's mean and that toward 1 (what the seasonal baseline and seasonal scaling use).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError

DAY_NS = 86_400 * 10**9
TOD_SLOTS = 48  # the model's time-of-day resolution: 30-minute slots
# Prior weights, in bars, of the shrinkage of the seasonal profile (squared returns are noisy: a normal one has a
# relative std of 1.4, fat tails more): a day-of-week slot differs little from its time of day's mean, so that mean
# weighs as much as 50 bars; times of day differ a lot (several-fold), so the overall mean weighs only 5.
SLOT_SHRINK = 50.0
TIME_OF_DAY_SHRINK = 5.0
_MAX_SCAN = 4 * 7  # a future bar is searched for over at most four weeks of candidate steps per bar's slots


def as_ns(times) -> np.ndarray:
    """(n,) int64 nanoseconds since 1970 UTC of datetime64 values (naive = UTC) or tz-aware pandas values."""
    values = np.asarray(times)
    if values.dtype == object or str(values.dtype).startswith("datetime64[ns,"):
        import pandas as pd
        values = pd.to_datetime(values, utc=True).tz_convert("UTC").tz_localize(None).to_numpy("datetime64[ns]")
    return np.asarray(values, dtype="datetime64[ns]").astype(np.int64)


def bar_interval(times) -> int:
    """The median step between consecutive bars in ns (one day for fewer than two bars)."""
    steps = np.diff(as_ns(times))
    steps = steps[steps > 0]
    return int(np.median(steps)) if len(steps) else DAY_NS


def is_intraday(interval_ns: int) -> bool:
    return 0 < interval_ns < DAY_NS


def n_time_of_day(interval_ns: int) -> int:
    return int(-(-DAY_NS // interval_ns)) if is_intraday(interval_ns) else 1


def bar_slots(times, interval_ns: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(slot, time_of_day, n_tod) of bars ending at `times`: time of day in steps of the bar interval, and slot =
    day_of_week (Monday 0) * n_tod + time_of_day."""
    ns = as_ns(times)
    day = np.floor_divide(ns, DAY_NS)
    n_tod = n_time_of_day(interval_ns)
    tod = (ns - day * DAY_NS) // interval_ns if n_tod > 1 else np.zeros(len(ns), dtype=np.int64)
    return (day + 3) % 7 * n_tod + tod, tod, n_tod  # 1970-01-01 was a Thursday


def calendar_ids(times) -> tuple[np.ndarray, np.ndarray]:
    """(time_of_day, day_of_week) int64 model inputs of bars ending at `times`: 30-minute slots (0..TOD_SLOTS-1)
    and Monday 0 .. Sunday 6, the same resolution for every series."""
    ns = as_ns(times)
    day = np.floor_divide(ns, DAY_NS)
    return (ns - day * DAY_NS) * TOD_SLOTS // DAY_NS, (day + 3) % 7


def seasonal_profile(sq: np.ndarray, slot: np.ndarray, tod: np.ndarray, n_tod: int) -> np.ndarray:
    """(7 n_tod,) mean squared return per slot relative to the overall mean, from the train bars' squared returns
    sq with their slots: a slot's mean is shrunk toward its time of day's (SLOT_SHRINK), that one toward the
    overall mean (TIME_OF_DAY_SHRINK), so an unseen slot gets its time of day's mean, an unseen time of day 1."""
    overall = float(np.mean(sq))
    tod_mean = ((np.bincount(tod, weights=sq, minlength=n_tod) + TIME_OF_DAY_SHRINK * overall)
                / (np.bincount(tod, minlength=n_tod) + TIME_OF_DAY_SHRINK))
    prior = tod_mean[np.arange(7 * n_tod) % n_tod]
    slot_mean = ((np.bincount(slot, weights=sq, minlength=7 * n_tod) + SLOT_SHRINK * prior)
                 / (np.bincount(slot, minlength=7 * n_tod) + SLOT_SHRINK))
    return slot_mean / overall


@dataclass(frozen=True)
class Calendar:
    """A series' bar interval (ns), the slots (bar_slots) it trades in, and its last bar's time (ns)."""

    interval: int
    active: np.ndarray  # (7 n_tod,) bool
    last: int

    @property
    def n_tod(self) -> int:
        return n_time_of_day(self.interval)

    def future(self, n: int) -> np.ndarray:
        """The end times (datetime64[ns]) of the next `n` bars after the last one: steps of the interval whose
        slot occurred in the history."""
        out = np.empty(int(n), dtype=np.int64)
        t, found = self.last, 0
        limit = _MAX_SCAN * max(1, len(self.active))
        while found < n:
            for _ in range(limit):
                t += self.interval
                if self.active[bar_slots(np.array([t], dtype="datetime64[ns]"), self.interval)[0][0]]:
                    break
            else:
                raise DataError("no future bar time found: the series' calendar has no trading slot")
            out[found] = t
            found += 1
        return out.astype("datetime64[ns]")


def infer_calendar(times) -> Calendar:
    """The calendar of a history of bar end times (at least one bar)."""
    ns = as_ns(times)
    if len(ns) == 0:
        raise DataError("a calendar needs at least one bar time")
    interval = bar_interval(ns)
    slot, _, n_tod = bar_slots(ns, interval)
    active = np.zeros(7 * n_tod, dtype=bool)
    active[slot] = True
    return Calendar(interval, active, int(ns[-1]))


def future_times(times, n: int) -> np.ndarray:
    """The end times of the `n` bars after a history of bar end times, by the history's own calendar."""
    return infer_calendar(times).future(n)
