"""What a fedsec client needs, and nothing more: the pieces of the run plan that travel with every message.

Flower cloudpickles the ClientApp, and with it this spec, on every message: it holds only small, typed pieces (the
training and privacy settings, the seeded schedule, the built attack) and handles to large things (the data in
Ray's object store, the collusion board's name, the CKKS client context).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from flwr.app import Context

from fedsec.clients.attacks import Attack
from fedsec.config import DataConfig, PrivacyConfig, SanitizeConfig, TrainConfig
from fedsec.privacy.one_run_audit import ExampleCanarySpec
from fedsec.schedule import Schedule


@dataclass(frozen=True)
class ClientSpec:
    """Everything a client needs to answer the server, from the run plan."""

    model_name: str
    data: DataConfig
    train: TrainConfig
    privacy: PrivacyConfig
    schedule: Schedule
    attack: Attack
    data_ref: Any = None  # ray.ObjectRef to FederatedData, or None to build it in the worker from data + seed
    board_name: str | None = None  # the colluding attackers' named Ray actor, if any
    crypto_ref: Any = None  # CKKS client context (Ray ObjectRef or bytes) under encryption.scheme = "ckks"
    central_clip_norm: float | None = None  # under CKKS with central DP: clients clip their update to this
    ckks_weighted: bool = False  # under CKKS with defense.weighting="reported": encrypt num-examples x update
    ckks_member_bound: float | None = None  # under CKKS: each coordinate encrypted is clamped to +-this share
    secagg_weighted: bool | None = None  # under SecAgg+: whether clients weigh their model by num-examples
    normalisation: tuple[float, float] | None = None  # (mean, std) of pixel inputs; None: inputs are [0, 1] pixels
    poisoned: tuple[int, ...] = ()  # honest clients whose data is poisoned ([data.poison])
    sanitize: SanitizeConfig | None = None  # [defense.sanitize], None when off
    dp_histories: dict[int, list[tuple[float, float, int]]] | None = None  # resumed run: each DP client's history
    example_canaries: ExampleCanarySpec | None = None  # [audit.canary] level = "example": who and which canaries

    @property
    def seed(self) -> int:
        return self.schedule.seed

    @classmethod
    def from_plan(cls, plan: Any, **handles: Any) -> ClientSpec:
        """The spec of a :class:`fedsec.plan.RunPlan` (``handles``: data_ref, board_name, crypto_ref, ...)."""
        return cls(**plan.client_spec_args(), **handles)


def current_node() -> str:
    """The Ray node id this process runs on (the hostname outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside a Ray worker the hostname is the best we have
        pass
    return socket.gethostname()


def partition_of(context: Context) -> int:
    return int(context.node_config["partition-id"])
