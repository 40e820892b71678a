"""Al-Karaki et al.'s noise filter: drop points whose feature statistic is at least k times the mean (k = 3.5).

Source: Al-Karaki, Khan, Mohamad, Chowdhury, "Deep Learning Under Siege: Identifying Security Vulnerabilities and
Risk Mitigation Strategies", 2024, sec. 3.2 item 2 and Table 1 ("a noise filter F that removes all those datapoints
where x_i >= 7/2 x-bar, i.e. 3.5 times greater than the mean"). The survey's x_i is a scalar per datapoint; for
images and vectors this module defines the statistic as the **L2 distance of a point to the centroid of its
labelled class** (``statistic = "class_centroid"``, default), or to the centroid of all the client's points
(``statistic = "centroid"``), on flattened inputs. With ``class_centroid`` the mean (and the median below) is taken
over the points of the same labelled class, so each class is filtered against its own spread; a point with a wrong
label sits far from its labelled class's centroid, which is how this filter can catch label noise at all.

Variants (``variant``):

- ``"mean_ratio"`` (default, the survey's rule): drop ``d_i >= k * mean(d)``; score = ``d_i / mean(d)``.
- ``"robust_z"``: the modified z-score of Iglewicz and Hoaglin ("How to Detect and Handle Outliers", ASQC 1993):
  ``M_i = 0.6745 (d_i - median(d)) / MAD``; drop ``M_i > k`` (their cut-off is also 3.5). One-sided: only points
  far from the centroid are dropped. Where MAD = 0 the score uses ``1.253314 * mean absolute deviation`` instead
  (the usual fallback, so that ``M`` stays on the same scale), and where that is 0 too nothing is dropped.

Defaults: ``k = 3.5``, ``variant = "mean_ratio"``, ``statistic = "class_centroid"``. Departures from the survey: it
does not say which statistic of a multi-dimensional point is compared; the centroid distance is our choice.
Written in torch rather than taken from a library: no library ships the survey's rule; the kernels are vectorised
(one ``index_add_`` for the centroids; medians loop over the classes only).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedsec.registry import Params

from .base import FilterResult, Sanitizer, check_choice, check_number

VARIANTS = ("mean_ratio", "robust_z")
STATISTICS = ("class_centroid", "centroid")
MODIFIED_Z = 0.6745  # Phi^-1(0.75): MAD / 0.6745 estimates sigma for normal data
MEAN_AD_SCALE = 1.253314  # sqrt(pi / 2): mean absolute deviation * 1.2533 estimates sigma for normal data


# --------------------------------------------------------------------------------------------------------- kernels


def centroid_distances(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """L2 distance of each row of ``x`` (N, D) to the mean of the rows in its group; ``groups`` (N,) int64 in
    [0, G). Returns (N,)."""
    num_groups = int(groups.max()) + 1
    sums = torch.zeros(num_groups, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, groups, x)
    counts = torch.bincount(groups, minlength=num_groups).clamp(min=1).to(x.dtype)
    return (x - (sums / counts[:, None])[groups]).norm(dim=1)


def mean_ratio_scores(d: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``d_i / mean(d over i's group)`` (N,); 0 where the group's mean is 0 (all its points coincide)."""
    num_groups = int(groups.max()) + 1
    sums = torch.zeros(num_groups, dtype=d.dtype, device=d.device).index_add_(0, groups, d)
    means = (sums / torch.bincount(groups, minlength=num_groups).clamp(min=1).to(d.dtype))[groups]
    return torch.where(means > 0, d / torch.where(means > 0, means, 1), torch.zeros_like(d))


def robust_z_scores(d: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Iglewicz-Hoaglin modified z-score of each ``d_i`` within its group (N,): ``0.6745 (d - median) / MAD``, or
    ``(d - median) / (1.253314 * meanAD)`` where MAD = 0; 0 where both spreads are 0."""
    z = torch.zeros_like(d)
    for g in torch.unique(groups):
        idx = groups == g
        dg = d[idx]
        med = torch.quantile(dg, 0.5)  # the midpoint median; torch.median returns the lower middle value
        dev = dg - med
        mad = torch.quantile(dev.abs(), 0.5)
        if mad > 0:
            z[idx] = MODIFIED_Z * dev / mad
        elif (mean_ad := dev.abs().mean()) > 0:
            z[idx] = dev / (MEAN_AD_SCALE * mean_ad)
    return z


def threshold_keep(scores: torch.Tensor, *, k: float, variant: str) -> torch.Tensor:
    """Bool (N,) keep mask: drop ``score >= k`` for ``mean_ratio`` (the survey's ``x_i >= k x-bar``), ``> k`` for
    ``robust_z`` (Iglewicz-Hoaglin); a score of 0 is always kept."""
    drop = scores >= k if variant == "mean_ratio" else scores > k
    return ~(drop & (scores > 0))


# ------------------------------------------------------------------------------------------------------------ glue


class ThresholdParams(Params):
    """``[defense.sanitize]`` keys of ``method = "threshold"``."""

    k: float = Field(3.5, gt=0, le=1e6, description="drop points whose statistic exceeds k x the mean.")
    variant: Literal["mean_ratio", "robust_z"] = Field("mean_ratio", description="the statistic's test.")


class ThresholdFilter(Sanitizer):
    """Drop points whose distance to their class centroid is at least ``k`` times the class mean (the survey's rule)
    or whose robust z-score exceeds ``k``.

    Parameters:
        k (float, default 3.5): the cut-off, > 0.
        variant (str, default "mean_ratio"): "mean_ratio" (seed) or "robust_z" (Iglewicz-Hoaglin).
        statistic (str, default "class_centroid"): distance to the labelled class's centroid, or "centroid" (all).

    Assumptions: works on the raw (flattened) inputs; ignores ``model`` and ``seed`` (deterministic).
    """

    method = "threshold"
    description = "drop points whose distance statistic exceeds k x the mean (or a robust z-score)"
    Params = ThresholdParams

    def __init__(self, *, k: float = 3.5, variant: str = "mean_ratio", statistic: str = "class_centroid") -> None:
        self.k, self.variant, self.statistic = k, variant, statistic
        super().__init__()

    def _check_params(self) -> None:
        check_number("k", self.k, low=0.0, low_open=True, example="3.5")
        check_choice("variant", self.variant, VARIANTS)
        check_choice("statistic", self.statistic, STATISTICS)

    def _filter(self, x: np.ndarray, y: np.ndarray, *, x_raw, model: nn.Module | None, seed: int) -> FilterResult:
        flat = torch.as_tensor(x.reshape(x.shape[0], -1), dtype=torch.float64)
        if self.statistic == "class_centroid":
            _, groups = torch.unique(torch.as_tensor(y), return_inverse=True)
        else:
            groups = torch.zeros(flat.shape[0], dtype=torch.int64)
        d = centroid_distances(flat, groups)
        scores = mean_ratio_scores(d, groups) if self.variant == "mean_ratio" else robust_z_scores(d, groups)
        keep = threshold_keep(scores, k=float(self.k), variant=self.variant)
        return FilterResult(keep=keep.numpy(), scores=scores.numpy(), method=self.method, threshold=float(self.k))
