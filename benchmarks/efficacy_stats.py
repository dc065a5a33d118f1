"""The statistics of the search-efficacy benchmark: do searched genotypes score above a random panel?

Pure functions over lists of floats (no TensorFlow), used by `benchmarks/search_efficacy.py` and tested in
`tests/test_efficacy_stats.py`. The test of a claim is the one-sided exact Mann–Whitney U test of the
searched genotypes' scores against the panel's (H1: a searched genotype tends to score higher than a panel
genotype), with AUC = U / (n·m) as its effect size and each searched genotype's percentile in the panel.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def mann_whitney_greater(searched, panel) -> tuple[float, float]:
    """(U, one-sided p) of H1: P(searched > panel) > 1/2, exact under H0 (ties count one half).

    scipy's exact null distribution assumes no ties; with ties (scores are shares of 300 images, so they
    happen) the p-value is the exact permutation p of U over every split of the pooled scores.
    """
    x, y = np.asarray(searched, float), np.asarray(panel, float)
    if len(x) == 0 or len(y) == 0:
        return math.nan, math.nan
    u = float(stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic").statistic)
    if len(np.unique(np.concatenate([x, y]))) == len(x) + len(y):
        return u, float(stats.mannwhitneyu(x, y, alternative="greater", method="exact").pvalue)
    return u, exact_tied_p(x, y, u)


def exact_tied_p(x: np.ndarray, y: np.ndarray, u: float) -> float:
    """P(U ≥ u) over all C(n+m, n) equally likely assignments of the pooled mid-ranks to the n searched
    scores: a dynamic programme over (items seen, items chosen, rank sum), in doubled ranks (integers)."""
    pooled = np.concatenate([x, y])
    ranks2 = np.rint(2 * stats.rankdata(pooled)).astype(int)  # mid-ranks ×2 are integers
    n = len(x)
    total = int(ranks2.sum())
    # ways[c][s]: subsets of size c with doubled rank sum s
    ways = np.zeros((n + 1, total + 1), dtype=object)
    ways[0][0] = 1
    for r in ranks2:
        for c in range(n, 0, -1):
            ways[c][r:] = ways[c][r:] + ways[c - 1][:total + 1 - r]
    # U = R_x − n(n+1)/2, in doubled units: 2U = R2_x − n(n+1)
    threshold = int(round(2 * u)) + n * (n + 1)
    count = sum(ways[n][s] for s in range(threshold, total + 1))
    return float(count / math.comb(len(pooled), n))


def auc(searched, panel) -> float:
    """P(a searched genotype's score > a panel genotype's) + ½ P(tie): U / (n·m)."""
    x, y = np.asarray(searched, float), np.asarray(panel, float)
    if len(x) == 0 or len(y) == 0:
        return math.nan
    greater = (x[:, None] > y[None, :]).sum() + 0.5 * (x[:, None] == y[None, :]).sum()
    return float(greater / (len(x) * len(y)))


def percentile_in_panel(score: float, panel) -> float:
    """The share (in %) of the panel below `score`, ties counted one half."""
    y = np.asarray(panel, float)
    return float(100.0 * ((y < score).sum() + 0.5 * (y == score).sum()) / len(y))


def bootstrap_interval(searched, panel, statistic, *, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(searched, panel), both samples resampled."""
    x, y = np.asarray(searched, float), np.asarray(panel, float)
    if len(x) < 2 or len(y) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = [statistic(rng.choice(x, len(x)), rng.choice(y, len(y))) for _ in range(resamples)]
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def median_percentile(searched, panel) -> float:
    return float(np.median([percentile_in_panel(s, panel) for s in searched])) if len(searched) else math.nan


def power(n_searched: int, n_panel: int, *, top_fraction: float = 0.2, alpha: float = 0.05,
          simulations: int = 2000, seed: int = 0) -> float:
    """The probability that the test rejects at `alpha` when every searched genotype is a draw from the top
    `top_fraction` of the panel's distribution (scores as percentiles: panel ~ U(0, 1), searched ~
    U(1 − top_fraction, 1)); no retrain noise, so an upper bound for noisy scores."""
    rng = np.random.default_rng(seed)
    rejections = 0
    for _ in range(simulations):
        panel = rng.uniform(0, 1, n_panel)
        searched = rng.uniform(1 - top_fraction, 1, n_searched)
        rejections += mann_whitney_greater(searched, panel)[1] < alpha
    return rejections / simulations


def power_with_noise(panel, seed_sd: float, n_searched: int, *, retrain_seeds: int, top_fraction: float = 0.2,
                     alpha: float = 0.05, simulations: int = 1000, seed: int = 0) -> float:
    """The rejection probability with the measured panel and retrain noise: the panel's scores are resampled
    (bootstrap), and each searched genotype's score is a panel score from the top `top_fraction` plus the
    noise of a mean over `retrain_seeds` seeds (normal, sd = seed_sd / √retrain_seeds)."""
    y = np.sort(np.asarray(panel, float))
    top = y[int(np.floor(len(y) * (1 - top_fraction))):]
    rng = np.random.default_rng(seed)
    rejections = 0
    for _ in range(simulations):
        searched = rng.choice(top, n_searched) + rng.normal(0, seed_sd / math.sqrt(retrain_seeds), n_searched)
        rejections += mann_whitney_greater(searched, rng.choice(y, len(y)))[1] < alpha
    return rejections / simulations


def spearman(a, b) -> float:
    return float(stats.spearmanr(a, b).statistic)


def kendall(a, b) -> float:
    return float(stats.kendalltau(a, b).statistic)
