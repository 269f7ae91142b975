"""Statistics that say what they show: a paired change with its 95% interval and p, and the detectable effect.

    from pic_bench.report.stats import paired, mde
    c = paired([80.0, 82.0, 85.0], [78.0, 81.0, 82.0])   # seeds paired, a - b
    c.delta, c.lo, c.hi, c.p, c.detected, c.largest     # +2.00, [-0.48, +4.48], p 0.074, False, 4.48
    mde(c.sd, c.n)                                       # smallest effect detected 80% of the time

Everything comes from ``scipy.stats``: the interval from Student's t quantile (``t.ppf``), p from the paired
t-test (``ttest_rel``), the power from the noncentral t distribution (``nct``;
where scipy's ``nct`` gives nan, as it does for two pairs at large noncentrality, by integrating its definition,
``power_by_integral``).

Our interpretation of what a table may say (issue 19):

- A change whose 95% interval spans 0 is **not detected**, which is not "no effect": it is printed with the
  largest effect the interval allows, ``largest = max(|lo|, |hi|)``.
- The 95% half-width is not the smallest detectable effect: a true effect equal to it is detected only about half
  the time. ``mde`` is the effect a two-sided 5% paired t-test on ``n`` pairs detects with 80% power, given the sd
  of the paired differences: the ``delta`` at which ``P(|T| > t_{0.975, n-1}) = 0.8`` for
  ``T ~ nct(n - 1, delta * sqrt(n) / sd)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

ALPHA = 0.05  # two-sided
POWER = 0.8


@dataclass(frozen=True)
class Paired:
    """A paired change a - b over ``n`` pairs (nan where undefined: no interval below two pairs)."""

    n: int
    delta: float  # mean of the per-pair differences
    sd: float  # sample sd of the differences (ddof 1)
    half: float  # 95% t half-width
    p: float  # two-sided paired t-test

    @property
    def lo(self) -> float:
        return self.delta - self.half

    @property
    def hi(self) -> float:
        return self.delta + self.half

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.half)

    @property
    def detected(self) -> bool:
        """The interval excludes 0 (a zero-width interval away from 0 included)."""
        return self.has_interval and (self.lo > 0 or self.hi < 0)

    @property
    def largest(self) -> float:
        """The largest effect the interval allows: max(|lo|, |hi|)."""
        return max(abs(self.lo), abs(self.hi))


def t_quantile(df: int, q: float = 1 - ALPHA / 2) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """The change a - b of two equally long sequences whose i-th entries are paired (the same seed)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan)
    delta = float(d.mean())
    if n < 2:
        return Paired(1, delta, math.nan, math.nan, math.nan)
    sd = float(d.std(ddof=1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    if sd == 0:  # every pair moved by the same amount: ttest_rel has no variance to test against
        p = 1.0 if delta == 0 else 0.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    return Paired(n, delta, sd, half, p)


def power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test on ``n`` pairs against a true mean difference ``effect``."""
    from scipy import stats

    df = n - 1
    crit = t_quantile(df, 1 - alpha / 2)
    nc = effect * math.sqrt(n) / sd
    p = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if not math.isfinite(p):  # scipy's nct returns nan for some (df, nc), e.g. two pairs at nc ~ 18
        p = power_by_integral(effect, sd, n, alpha)
    return p


def power_by_integral(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """The same power by its definition, the plain reference to ``power``: with ``T = (Z + nc) / sqrt(V / df)``,
    ``Z`` standard normal and ``V ~ chi2(df)``, ``P(|T| > c) = E_V[P(Z > c s - nc) + P(Z < -c s - nc)]`` for
    ``s = sqrt(V / df)``, integrated over ``V`` by quadrature. Used where ``nct`` gives nan."""
    from scipy import integrate, stats

    df = n - 1
    crit = t_quantile(df, 1 - alpha / 2)
    nc = effect * math.sqrt(n) / sd

    def given_s(s: float) -> float:
        return float(stats.norm.sf(crit * s - nc) + stats.norm.cdf(-crit * s - nc))

    # s = sqrt(V / df) has density 2 df s chi2.pdf(df s^2, df); integrate in s, which has no pole at 0
    dens = stats.chi2(df)
    lo, hi = 0.0, math.sqrt(dens.ppf(1 - 1e-15) / df)
    val, _ = integrate.quad(lambda s: given_s(s) * 2 * df * s * dens.pdf(df * s * s), lo, hi,
                            points=[nc / crit] if 0 < nc / crit < hi else None, limit=200, epsabs=1e-12)
    return float(val)


def mde(sd: float, n: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest effect detected with power ``target`` (two-sided ``alpha``, paired t, ``n`` pairs, ``sd`` of
    the differences); nan below two pairs or without a positive sd."""
    from scipy.optimize import brentq

    if n < 2 or not sd > 0 or math.isnan(sd):
        return math.nan
    hi = sd
    while power(hi, sd, n, alpha) < target:
        hi *= 2
    return float(brentq(lambda e: power(e, sd, n, alpha) - target, 0.0, hi, xtol=1e-12 * sd))


def pooled_sd(sds: Sequence[float], ns: Sequence[int]) -> float:
    """The sd of paired differences pooled over comparisons: sqrt(sum (n_i - 1) sd_i^2 / sum (n_i - 1))."""
    w = [(n - 1, s) for s, n in zip(sds, ns) if n >= 2 and not math.isnan(s)]
    dof = sum(k for k, _ in w)
    return math.sqrt(sum(k * s * s for k, s in w) / dof) if dof else math.nan
