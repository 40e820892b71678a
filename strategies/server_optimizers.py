"""Server optimizers: what the server does with the rule's aggregate (``server.optimizer``).

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar and McMahan, "Adaptive Federated Optimization", ICLR 2021
(https://arxiv.org/abs/2003.00295), Algorithm 2 (FedAdagrad, FedAdam, FedYogi); Hsu, Qi and Brown, "Measuring the
Effects of Non-Identical Data Distribution for Federated Visual Classification", 2019
(https://arxiv.org/abs/1909.06335) (FedAvgM: server momentum). The round's aggregate A comes from whatever rule
``defense.strategy`` names (FedAvg, Median, Krum, DP-FedAvg, CKKS FedAvg, ...); the optimizer treats
delta = A - w (w: the global model sent that round) as the pseudo-gradient (its negative, in Flower's FedAvgM) and
takes one step of its own from w. "none" keeps A: the global model becomes the rule's aggregate (FedAvg's server
step, and every run before this key existed).

Why not Flower's strategies: ``flwr.serverapp.strategy.FedAdam``, ``FedYogi``, ``FedAdagrad`` and ``FedAvgM``
subclass Flower's ``FedAvg`` and compute their aggregate with its weighted mean inside ``aggregate_train``; the
optimizer step cannot be applied to another rule's aggregate (a robust rule, DP-FedAvg, the CKKS sum) without
re-implementing that method, and their moments live in dicts of numpy arrays that fedsec's checkpoints would have
to learn. So each step is a small pure kernel over flat tensors here, tested against Flower's classes on the same
inputs (``tests/test_fl_algorithms.py``).

Defaults (the ``Params`` below): FedAdam, FedYogi and FedAdagrad take Flower's, the same in 1.41 and 1.42 (FedAdam:
server_lr 0.1, beta_1 0.9, beta_2 0.99, tau 1e-3; FedYogi: server_lr 0.01, beta_1 0.9, beta_2 0.99, tau 1e-3;
FedAdagrad: server_lr 0.1, beta_1 0.0, tau 1e-3; Reddi et al. tune server_lr and tau per task and fix beta_1 = 0.9,
beta_2 = 0.99). FedAvgM takes momentum 0.9 and server_lr 0.1: an effective server rate server_lr / (1 - momentum) of
1, FedAvg's (Hsu et al. discuss that effective rate); Flower's defaults (1.0 and 0.0) are FedAvg itself.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from flwr.app import ArrayRecord
from pydantic import BaseModel, Field

from fedsec.arrays import record_to_vector, vector_to_record
from fedsec.registry import NoParams, Params, Registry

from ._checks import check_float

SecondMoment = Literal["adam", "yogi", "adagrad"]


def fedavgm_step(
    weights: torch.Tensor, delta: torch.Tensor, buffer: torch.Tensor | None, *, server_lr: float, momentum: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FedAvgM step (SGD with momentum on the pseudo-gradient, as ``torch.optim.SGD`` and Flower's FedAvgM).

    weights, delta: (d,); buffer: (d,), or None before the first step. The buffer is kept in the update's sign:
    b = delta on the first step, momentum * b + delta after; returns (weights + server_lr * b, b), both (d,).
    Flower's FedAvgM keeps -b (pseudo-gradient = old - new) and subtracts; negation is exact, so the numbers agree.
    """
    new_buffer = delta.clone() if buffer is None else buffer.mul(momentum).add_(delta)
    return weights + server_lr * new_buffer, new_buffer


def fedopt_step(
    weights: torch.Tensor,
    delta: torch.Tensor,
    m: torch.Tensor | None,
    v: torch.Tensor | None,
    *,
    second_moment: SecondMoment,
    server_lr: float,
    beta_1: float,
    beta_2: float,
    tau: float,
    server_round: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One adaptive server step (Reddi et al. 2021, Algorithm 2): FedAdam, FedYogi or FedAdagrad by ``second_moment``.

    weights, delta: (d,); m, v: (d,), or None before the first step (zeros, as Flower). With d2 = delta^2:
    m = beta_1 m + (1 - beta_1) delta; v = beta_2 v + (1 - beta_2) d2 (adam), v - (1 - beta_2) d2 sign(v - d2)
    (yogi), v + d2 (adagrad); returns (weights + lr m / (sqrt(v) + tau), m, v), each (d,). lr = server_lr, except
    for adam: server_lr sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1)) with t = ``server_round`` (Flower's FedAdam
    bias correction; the paper's Algorithm 2 has none).
    """
    m = delta.mul(1 - beta_1) if m is None else m.mul(beta_1).add_(delta, alpha=1 - beta_1)
    squared = delta * delta
    if v is None:
        v = torch.zeros_like(delta)
    if second_moment == "adam":
        v = v.mul(beta_2).add_(squared, alpha=1 - beta_2)
    elif second_moment == "yogi":
        v = v - (1 - beta_2) * squared * torch.sign(v - squared)
    elif second_moment == "adagrad":
        v = v + squared
    else:
        raise ValueError(f"second_moment={second_moment!r}: use 'adam', 'yogi' or 'adagrad'")
    lr = server_lr
    if second_moment == "adam":
        lr = server_lr * math.sqrt(1 - beta_2 ** (server_round + 1.0)) / (1 - beta_1 ** (server_round + 1.0))
    return weights + lr * m / (torch.sqrt(v) + tau), m, v


class ServerOptimizer:
    """No server optimizer ("none"): the rule's aggregate becomes the global model; subclasses take a step of their
    own on it (:meth:`step`) and keep state across rounds (:meth:`state`, checkpointed for ``--resume``).

    Assumptions
    -----------
    Works on the flat global model (float32, every array of the ArrayRecord) and on delta = aggregate - global.
    A skipped round (no aggregate) takes no step and leaves the state as it was.
    """

    Params: ClassVar[type[BaseModel]] = NoParams
    description: ClassVar[str] = "no server optimizer: the global model becomes the rule's aggregate (FedAvg's step)"
    #: names of the tensor attributes that are the optimizer's state (None until the first step)
    state_names: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_params(cls, params: BaseModel) -> ServerOptimizer:
        return cls(**params.model_dump())

    def describe(self) -> str:
        return "none"

    def step(self, server_round: int, weights: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The new flat global model from ``weights`` (d,) and ``delta`` = aggregate - weights (d,)."""
        return weights + delta

    def apply(self, server_round: int, global_arrays: ArrayRecord, new_arrays: ArrayRecord | None
              ) -> ArrayRecord | None:
        """The round's new global arrays: the rule's ``new_arrays`` as they are without an optimizer (or in a
        skipped round, None), else the optimizer's step from ``global_arrays`` on their difference."""
        if new_arrays is None or not self.state_names:
            return new_arrays
        weights = record_to_vector(global_arrays)
        return vector_to_record(self.step(server_round, weights, record_to_vector(new_arrays) - weights),
                                like=global_arrays)

    def state(self) -> dict[str, torch.Tensor]:
        """The state to checkpoint: CPU copies of the tensors set so far."""
        return {name: value.detach().cpu().clone() for name in self.state_names
                if (value := getattr(self, name)) is not None}

    def restore(self, state: dict[str, Any]) -> None:
        """Put :meth:`state`'s tensors back (a resumed run)."""
        for name in self.state_names:
            setattr(self, name, state[name].clone() if name in state else None)


class FedAvgMParams(Params):
    server_lr: float = Field(0.1, gt=0, le=100, description="Server learning rate (0 < server_lr <= 100).")
    momentum: float = Field(0.9, ge=0, lt=1, description="Server momentum (0 <= momentum < 1); the defaults keep "
                            "server_lr / (1 - momentum) = 1, FedAvg's effective rate.")


class FedAvgM(ServerOptimizer):
    """FedAvgM: server SGD with momentum on the pseudo-gradient (Hsu et al. 2019).

    Parameters
    ----------
    server_lr : float (default: 0.1)
        Server learning rate, in (0, 100].
    momentum : float (default: 0.9)
        Server momentum, in [0, 1).

    Differences
    -----------
    None from Flower's ``FedAvgM`` on the same aggregate; the default momentum is 0.9 (Flower: 0.0, which is FedAvg
    at server_lr 1).
    """

    Params = FedAvgMParams
    description = "FedAvgM: server momentum on (aggregate - global) (Hsu et al. 2019)"
    state_names = ("buffer",)

    def __init__(self, *, server_lr: float = 0.1, momentum: float = 0.9) -> None:
        self.server_lr = check_float("FedAvgM", "server.server_lr", server_lr, low=0.0, high=100.0, low_open=True,
                                     high_open=False)
        self.momentum = check_float("FedAvgM", "server.momentum", momentum, low=0.0, high=1.0)
        self.buffer: torch.Tensor | None = None

    def describe(self) -> str:
        return f"FedAvgM(server_lr={self.server_lr:g}, momentum={self.momentum:g})"

    def step(self, server_round: int, weights: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        new, self.buffer = fedavgm_step(weights, delta, self.buffer, server_lr=self.server_lr,
                                        momentum=self.momentum)
        return new


class FedAdamParams(Params):
    server_lr: float = Field(0.1, gt=0, le=100, description="Server learning rate eta (0 < server_lr <= 100).")
    beta_1: float = Field(0.9, ge=0, lt=1, description="First-moment decay (0 <= beta_1 < 1).")
    beta_2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay (0 <= beta_2 < 1).")
    tau: float = Field(1e-3, gt=0, le=10, description="Adaptivity tau added to sqrt(v) (0 < tau <= 10).")


class FedYogiParams(FedAdamParams):
    server_lr: float = Field(0.01, gt=0, le=100, description="Server learning rate eta (0 < server_lr <= 100).")


class FedAdagradParams(Params):
    server_lr: float = Field(0.1, gt=0, le=100, description="Server learning rate eta (0 < server_lr <= 100).")
    beta_1: float = Field(0.0, ge=0, lt=1, description="First-moment decay (0 <= beta_1 < 1; Flower's 0: none).")
    tau: float = Field(1e-3, gt=0, le=10, description="Adaptivity tau added to sqrt(v) (0 < tau <= 10).")


class FedOpt(ServerOptimizer):
    """An adaptive server optimizer of Reddi et al. 2021 (the subclasses pin ``second_moment``).

    Parameters
    ----------
    server_lr : float
        eta, in (0, 100].
    beta_1 : float
        First-moment decay, in [0, 1).
    beta_2 : float (default: 0.99)
        Second-moment decay, in [0, 1) (FedAdam, FedYogi; FedAdagrad sums instead).
    tau : float (default: 1e-3)
        Adaptivity, in (0, 10]: added to sqrt(v), so a coordinate that never moved takes no step.

    Differences
    -----------
    As Flower 1.41 and 1.42 (the numbers agree on the same inputs): v starts at 0 (the paper: v >= tau^2), and FedAdam's
    rate carries Adam's bias correction with t = server round + 1 (the paper has none).
    """

    second_moment: ClassVar[SecondMoment] = "adam"
    state_names = ("m", "v")

    def __init__(self, *, server_lr: float, beta_1: float, beta_2: float = 0.99, tau: float = 1e-3) -> None:
        name = type(self).__name__
        self.server_lr = check_float(name, "server.server_lr", server_lr, low=0.0, high=100.0, low_open=True,
                                     high_open=False)
        self.beta_1 = check_float(name, "server.beta_1", beta_1, low=0.0, high=1.0)
        self.beta_2 = check_float(name, "server.beta_2", beta_2, low=0.0, high=1.0)
        self.tau = check_float(name, "server.tau", tau, low=0.0, high=10.0, low_open=True, high_open=False)
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def describe(self) -> str:
        beta_2 = "" if self.second_moment == "adagrad" else f", beta_2={self.beta_2:g}"
        return f"{type(self).__name__}(server_lr={self.server_lr:g}, beta_1={self.beta_1:g}{beta_2}, tau={self.tau:g})"

    def step(self, server_round: int, weights: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        new, self.m, self.v = fedopt_step(weights, delta, self.m, self.v, second_moment=self.second_moment,
                                          server_lr=self.server_lr, beta_1=self.beta_1, beta_2=self.beta_2,
                                          tau=self.tau, server_round=server_round)
        return new


class FedAdam(FedOpt):
    """FedAdam (Reddi et al. 2021): Adam's moments on the pseudo-gradient. Defaults: Flower's (server_lr 0.1,
    beta_1 0.9, beta_2 0.99, tau 1e-3)."""

    Params = FedAdamParams
    description = "FedAdam: Adam on (aggregate - global) (Reddi et al. 2021)"
    second_moment = "adam"

    def __init__(self, *, server_lr: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta_1=beta_1, beta_2=beta_2, tau=tau)


class FedYogi(FedOpt):
    """FedYogi (Reddi et al. 2021): Yogi's sign-controlled second moment. Defaults: Flower's (server_lr 0.01,
    beta_1 0.9, beta_2 0.99, tau 1e-3)."""

    Params = FedYogiParams
    description = "FedYogi: Yogi on (aggregate - global) (Reddi et al. 2021)"
    second_moment = "yogi"

    def __init__(self, *, server_lr: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.99,
                 tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta_1=beta_1, beta_2=beta_2, tau=tau)


class FedAdagrad(FedOpt):
    """FedAdagrad (Reddi et al. 2021): the summed squares as second moment. Defaults: Flower's (server_lr 0.1,
    beta_1 0.0, tau 1e-3)."""

    Params = FedAdagradParams
    description = "FedAdagrad: Adagrad on (aggregate - global) (Reddi et al. 2021)"
    second_moment = "adagrad"

    def __init__(self, *, server_lr: float = 0.1, beta_1: float = 0.0, tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta_1=beta_1, tau=tau)


#: server.optimizer name -> optimizer class (each declares its ``Params`` and ``description``); one line each
SERVER_OPTIMIZERS: Registry[type[ServerOptimizer]] = Registry("server.optimizer", "server optimizer")
SERVER_OPTIMIZERS.register("none", ServerOptimizer)
SERVER_OPTIMIZERS.register("fedavgm", FedAvgM)
SERVER_OPTIMIZERS.register("fedadam", FedAdam)
SERVER_OPTIMIZERS.register("fedyogi", FedYogi)
SERVER_OPTIMIZERS.register("fedadagrad", FedAdagrad)

__all__ = ["SERVER_OPTIMIZERS", "FedAdagrad", "FedAdam", "FedAvgM", "FedOpt", "FedYogi", "ServerOptimizer",
           "fedavgm_step", "fedopt_step"]
