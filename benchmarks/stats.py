"""Small statistics shared by the benchmarks' reports: means with 95 % t-intervals."""

from __future__ import annotations

import math
import statistics

# Student t quantiles (0.975) by degrees of freedom; 1.96 beyond the table.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 14: 2.145}


def t_interval(xs: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % t-interval); half-width nan for one value."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, T975.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def fmt(xs: list[float], digits: int = 4, signed: bool = False) -> str:
    """``mean ± half-width`` (the mean alone for one value); ``signed``: a difference, with its sign."""
    m, h = t_interval(xs)
    mean = f"{m:+.{digits}f}" if signed else f"{m:.{digits}f}"
    return mean if math.isnan(h) else f"{mean} ± {h:.{digits}f}"
