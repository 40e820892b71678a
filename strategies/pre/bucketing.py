"""Bucketing: shuffle the updates, average them in buckets of s, and aggregate the bucket means.

Karimireddy, He and Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing", ICLR 2022,
https://openreview.net/forum?id=jXKKDEi5vJt (arXiv: https://arxiv.org/abs/2006.09365). ByzFL ships it as
``byzfl.Bucketing``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from .base import PreAggregator, PreOutput, PreParams

#: salt of the permutation stream, so it is independent of the client-sampling stream seeded by (seed, round)
_STREAM_SALT = 0xB0C4E7


def bucket_permutation(n: int, *, seed: int, server_round: int, stream: int = 0) -> torch.Tensor:
    """The random permutation of round ``server_round``: numpy's PCG64 seeded by (seed, round, stream, salt), so
    every process that knows the run seed draws the same one. Returns a long tensor (n,) on the CPU."""
    rng = np.random.default_rng([seed, server_round, stream, _STREAM_SALT])
    return torch.from_numpy(rng.permutation(n))


def bucket_means(
    updates: torch.Tensor, *, bucket_size: int, permutation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of the permuted rows in consecutive buckets of ``bucket_size``; the last bucket keeps the remainder.

    updates: (n, d); permutation: (n,), a permutation of 0..n-1 (bucket b holds rows permutation[b*s:(b+1)*s]).
    Returns the bucket means (ceil(n/s), d) in the updates' dtype and device, and the mixing matrix
    (ceil(n/s), n), float64: M[b, j] = 1/|bucket b| for its members j (means = M @ updates).
    """
    n = updates.shape[0]
    if bucket_size < 1:
        raise ValueError(f"bucket_size={bucket_size}: Bucketing needs bucket_size >= 1")
    if sorted(permutation.tolist()) != list(range(n)):
        raise ValueError(f"permutation: expected a permutation of 0..{n - 1}, got {permutation.tolist()}")
    buckets = -(-n // bucket_size)
    bucket_of = torch.arange(n) // bucket_size  # bucket of the row at each position of the permutation
    sizes = torch.bincount(bucket_of, minlength=buckets).to(torch.float64)
    mixing = torch.zeros((buckets, n), dtype=torch.float64)
    mixing[bucket_of, permutation.cpu()] = 1.0 / sizes[bucket_of]
    mixing = mixing.to(updates.device)
    return mixing.to(updates.dtype) @ updates, mixing


class BucketingParams(PreParams):
    """Keys of a ``{name = "bucketing", ...}`` entry of ``defense.pre``."""

    bucket_size: int = Field(2, ge=1, le=100_000, description="s, the number of updates averaged in one bucket.")


class Bucketing(PreAggregator):
    """Bucketing: a seeded random permutation each round, then the means of buckets of s updates.

    Parameters
    ----------
    bucket_size : int (default: 2)
        s, updates per bucket (``defense.pre`` entry key ``bucket_size``); the last bucket takes the remainder,
        so ceil(n/s) rows come out.
    num_malicious : int (default: the rule's f)
        f, used only to check the assumption below.
    seed : int (default: 0)
        The run's seed; round r's permutation is drawn from (seed, r, stream) (:func:`bucket_permutation`).
    stream : int (default: 0)
        This step's position in ``defense.pre``, so two bucketing steps draw different permutations.

    Assumptions
    -----------
    s * f < n / 2 when f > 0: at most f of the ceil(n/s) buckets hold a Byzantine update, and the paper needs
    that share (delta * s, delta = f/n) below the 1/2 breakdown of the rule after it (its delta * s <= delta_max);
    a round with n <= 2sf is skipped. The rule after Bucketing sees ceil(n/s) rows and keeps its own f: its own
    n-vs-f check applies to the bucket count (checked when the strategy is built). Works on updates.
    Counts: a bucket carries the sum of its members' ``num-examples`` into a weighted rule. Client weight
    (``accepted``): the rule's weight of the client's bucket divided by the bucket's size; the honest clients
    that share a bucket with an attacker share its fate (a rejected bucket rejects them all).

    Differences
    -----------
    The permutation is seeded by the run seed and round (ByzFL draws from the global numpy/torch generator);
    given the same permutation the bucket means equal ByzFL's (tested within 1e-6). ByzFL checks nothing about f.
    Bucketing changes the rows' identities, so it refuses rules that follow clients across rounds (FoolsGold).
    """

    name = "bucketing"
    Params = BucketingParams
    description = "Bucketing: mean of random buckets of s updates (Karimireddy et al. 2022)"
    keeps_clients = False

    def __init__(self, *, bucket_size: int = 2, num_malicious: int = 0, seed: int = 0, stream: int = 0) -> None:
        super().__init__(num_malicious=num_malicious)
        if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 1:
            raise ValueError(f"bucket_size={bucket_size!r}: Bucketing needs an integer bucket_size >= 1")
        self.bucket_size = bucket_size
        self.seed, self.stream = seed, stream

    @classmethod
    def from_params(cls, params: Any, *, num_malicious: int, seed: int = 0, stream: int = 0) -> Bucketing:
        kwargs = params.model_dump(exclude_none=True)
        kwargs.setdefault("num_malicious", num_malicious)
        return cls(**kwargs, seed=seed, stream=stream)

    def problem(self, n: int) -> str | None:
        s, f = self.bucket_size, self.num_malicious
        if f == 0 or 2 * s * f < n:
            return None
        fix = (f"use bucket_size <= {(n - 1) // (2 * f)}" if (n - 1) // (2 * f) >= 1
               else f"use num_malicious <= {(n - 1) // 2 // s} or more clients per round")
        return (f"bucket_size={s}: Bucketing needs s*f < n/2 (fewer than half the buckets may hold an attacker), "
                f"got s={s}, f={f}, n={n}: 2*s*f = {2 * s * f} >= {n}; {fix}")

    def num_outputs(self, n: int) -> int:
        return -(-n // self.bucket_size)

    def transform(self, updates: torch.Tensor, num_examples: torch.Tensor, *, server_round: int) -> PreOutput:
        permutation = bucket_permutation(updates.shape[0], seed=self.seed, server_round=server_round,
                                         stream=self.stream)
        means, mixing = bucket_means(updates, bucket_size=self.bucket_size, permutation=permutation)
        counts = (mixing > 0).to(num_examples.dtype) @ num_examples
        return PreOutput(means, counts, mixing)

    def describe(self) -> str:
        return f"Bucketing(s={self.bucket_size}, f={self.num_malicious}; n > 2sf)"
