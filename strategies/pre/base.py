"""What every pre-aggregator shares: its keys, its n-vs-f check, and how a list of them composes.

A pre-aggregator maps the round's stacked updates X, shape (n, d), to new rows Y = M X, shape (m, d), before the
robust rule aggregates them (ByzFL's "pre-aggregation"). Every pre-aggregator fedsec ships is of that form for a
mixing matrix M, shape (m, n), that it returns next to Y: NNM (M[i, j] = 1/(n-f) for the n-f nearest neighbours j
of i), Bucketing (M[b, j] = 1/|bucket b| for the members j of bucket b) and ARC (M = diag of the clip factors). A
list of them composes by multiplying their matrices, so the whole chain is one (m, n) matrix, and the weight the
rule gives each of its m input rows maps back to the n clients through it (:func:`apply_pre_aggregators`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from pydantic import BaseModel, Field

from fedsec.registry import Params

from .._checks import StrategyConfigError, check_int


class PreParams(Params):
    """The keys every pre-aggregator reads from its ``defense.pre`` entry."""

    num_malicious: int | None = Field(
        None, ge=0, le=100_000,
        description="f this step assumes (default: the rule's defense.num_malicious, else the attack's expected "
        "attackers per round, else 0).")


@dataclass(frozen=True)
class PreOutput:
    """What a pre-aggregator returns: its rows, their counts, and the rows as a combination of its inputs."""

    updates: torch.Tensor  # (m, d): Y = mixing @ X
    num_examples: torch.Tensor  # (m,): the count each row carries into a weighted rule
    mixing: torch.Tensor  # (m, n), float64, on the updates' device


class PreAggregator:
    """Base class: one step of ``defense.pre``; subclasses implement :meth:`transform`.

    Parameters
    ----------
    num_malicious : int (default: 0)
        f, the number of Byzantine updates the step assumes among its inputs.
    """

    #: the name a ``defense.pre`` entry uses; its keys; its line in ``fedsec list``
    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = PreParams
    description: ClassVar[str] = ""
    #: one output row per input row, in the same order (rules that follow clients across rounds still can)
    keeps_clients: ClassVar[bool] = True

    def __init__(self, *, num_malicious: int = 0) -> None:
        self.num_malicious = check_int(type(self).__name__, "num_malicious", num_malicious, low=0)

    @classmethod
    def from_params(cls, params: BaseModel, *, num_malicious: int, seed: int = 0, stream: int = 0) -> Self:
        """The step built from its validated entry; the entry's own ``num_malicious`` wins over the given f.
        ``seed`` (the run's) and ``stream`` (the step's position in the list) seed randomised steps."""
        kwargs: dict[str, Any] = params.model_dump(exclude_none=True)
        kwargs.setdefault("num_malicious", num_malicious)
        return cls(**kwargs)

    # ------------------------------------------------------------------ what a subclass provides
    def problem(self, n: int) -> str | None:
        """Why the step's assumption fails for n input rows (a sentence naming its key), None when it holds."""
        return None

    def num_outputs(self, n: int) -> int:
        """Rows out for n rows in."""
        return n

    def min_inputs(self, outputs_needed: int) -> int:
        """The fewest input rows for which the assumption holds and at least ``outputs_needed`` rows come out."""
        n = max(outputs_needed, 1)
        while self.problem(n) is not None or self.num_outputs(n) < outputs_needed:
            n += 1
        return n

    def transform(self, updates: torch.Tensor, num_examples: torch.Tensor, *, server_round: int) -> PreOutput:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{type(self).__name__}(f={self.num_malicious})"

    # ------------------------------------------------------------------ shared
    def __call__(self, updates: torch.Tensor, num_examples: torch.Tensor, *, server_round: int = 0) -> PreOutput:
        """Check the assumption for this n (a :class:`StrategyConfigError` naming the key), then transform."""
        why = self.problem(updates.shape[0])
        if why is not None:
            raise StrategyConfigError(why)
        return self.transform(updates, num_examples, server_round=server_round)


def half_of_n(rule: str, n: int, f: int, key: str = "num_malicious") -> str | None:
    """The n > 2f check that NNM and ARC share (their papers assume fewer than half Byzantine inputs)."""
    if 2 * f < n:
        return None
    return (f"{key}={f}: {rule} needs n > 2f, i.e. at least 2f+1 = {2 * f + 1} updates, got n={n}; "
            f"use num_malicious <= {(n - 1) // 2} or more clients per round")


def apply_pre_aggregators(
    steps: list[PreAggregator] | tuple[PreAggregator, ...],
    updates: torch.Tensor,
    num_examples: torch.Tensor,
    *,
    server_round: int = 0,
) -> PreOutput:
    """Run ``steps`` in order on updates (n, d) and counts (n,); the returned mixing (m, n) is the product of the
    steps' matrices, so its rows say how much of each client's update is in each row the rule will see."""
    n = updates.shape[0]
    mixing = torch.eye(n, dtype=torch.float64, device=updates.device)
    rows, counts = updates, num_examples
    for step in steps:
        out = step(rows, counts, server_round=server_round)
        rows, counts, mixing = out.updates, out.num_examples, out.mixing @ mixing
    return PreOutput(rows, counts, mixing)


def client_weights(mixing: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:
    """Each client's weight from the rule's weights of its input rows: M^T w, shape (n,), in ``row_weights``'
    dtype. For a rule whose aggregate is sum_j w_j y_j, this is the coefficient of client i's own update in it."""
    return (mixing.T @ row_weights.to(mixing.dtype)).to(row_weights.dtype)


def required_inputs(steps: list[PreAggregator] | tuple[PreAggregator, ...], rule_needs: int) -> int:
    """The fewest updates for which every step's assumption holds and the rule still gets ``rule_needs`` rows."""
    needed = rule_needs
    for step in reversed(steps):
        needed = step.min_inputs(needed)
    return needed


__all__ = ["PreAggregator", "PreOutput", "PreParams", "apply_pre_aggregators", "client_weights", "half_of_n",
           "required_inputs"]
