"""The count lie against every shipped rule, with each weighting policy: how far one liar moves the aggregate.

    python benchmarks/bench_count_lie.py [--clients 10] [--dim 2000] [--claimed 1e6] [--seeds 5]

Each round: k - 1 honest clients send updates mu + N(0, sigma^2) (mu: a common direction, as honest clients share a
descent direction; sigma = ||mu|| / sqrt(d) x 2, so honest updates are noisy) and claim 50 examples; one liar
claims ``claimed``. Two liars: "count only" sends an honest-looking update (its own mu + noise) and lies only about
the count; "count + flip" also sends -3 mu (sign-flipped and boosted). Replies are real Flower messages through
each rule's ``aggregate_train`` (validation, count policy, kernel). Reported: t = <agg - h, l - h> / ||l - h||^2
(h: honest mean, l: the liar's update; 0 = unmoved, 1 = the liar's own update), mean over seeds, under
``weighting`` = reported / capped (4 x median, the default) / uniform; "-" where the rule skipped the round.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsec.arrays import record_to_vector
from fedsec.strategies import STRATEGIES


@dataclass
class Args:
    clients: int = 10  # k, the liar included
    dim: int = 2000  # d, parameters
    claimed: float = 1e6  # the liar's num-examples
    seeds: int = 5  # rounds (seeds) averaged


def build(name: str, weighting: str, k: int, d: int):
    cls = STRATEGIES.get(name)
    kwargs: dict = {"device": "cpu", "weighting": weighting}
    if name in ("krum", "multikrum", "bulyan", "dnc"):
        kwargs["num_malicious"] = 1
    if name == "multikrum":
        kwargs["num_selected"] = k - 2
    if name == "fltrust":
        return cls(lambda arrays: torch.full((d,), 1.0 / math.sqrt(d)), **kwargs)
    if name in ("norm_clipping", "centered_clipping"):
        kwargs["clip_norm"] = 2.0
    return cls(**kwargs)


def message(node: int, pid: int, update: np.ndarray, count: float) -> Message:
    instruction = Message(content=RecordDict({"config": ConfigRecord()}), dst_node_id=node,
                          message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": ArrayRecord({"w": Array(update.astype(np.float32))}),
                          "metrics": MetricRecord({"num-examples": count, "partition-id": pid})})
    return Message(content=content, reply_to=instruction)


def shift(name: str, weighting: str, liar_kind: str, args: Args, seed: int) -> float:
    rng = np.random.default_rng(seed)
    k, d = args.clients, args.dim
    mu = np.full(d, 1.0 / math.sqrt(d))
    sigma = 2.0 / math.sqrt(d)
    honest = [mu + sigma * rng.normal(size=d) for _ in range(k - 1)]
    liar = mu + sigma * rng.normal(size=d) if liar_kind == "count only" else -3.0 * mu
    h = np.mean(honest, axis=0)
    strategy = build(name, weighting, k, d)
    strategy.node_sampler = lambda r: []
    list(strategy.configure_train(1, ArrayRecord({"w": Array(np.zeros(d, dtype=np.float32))}), ConfigRecord(), None))
    replies = [message(100 + i, i, u, 50) for i, u in enumerate(honest)]
    replies.append(message(100 + k, k - 1, liar, args.claimed))
    arrays, _ = strategy.aggregate_train(1, replies)
    if arrays is None:
        return math.nan
    agg = record_to_vector(arrays).double().numpy()
    direction = liar - h
    return float((agg - h) @ direction / (direction @ direction))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field, value in vars(Args()).items():
        parser.add_argument(f"--{field}", type=type(value), default=value)
    args = Args(**vars(parser.parse_args()))
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # messages outside a running app
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    names = STRATEGIES.names()
    print(f"count lie: k={args.clients} clients (9 claim 50, 1 claims {args.claimed:g}), d={args.dim}, "
          f"{args.seeds} seeds; t = 0 unmoved, 1 = the liar's update")
    header = f"{'rule':<18} {'uses counts':>11} | " + " | ".join(
        f"{kind:^26}" for kind in ("count only", "count + flip (-3 mu)"))
    print(header)
    print(f"{'':<18} {'':>11} | " + " | ".join(f"{'reported':>8} {'capped':>8} {'uniform':>8}" for _ in range(2)))
    for name in names:
        cls = STRATEGIES.get(name)
        cells = []
        for kind in ("count only", "count + flip"):
            for weighting in ("reported", "capped", "uniform"):
                values = [shift(name, weighting, kind, args, seed) for seed in range(args.seeds)]
                mean = float(np.nanmean(values)) if not all(math.isnan(v) for v in values) else math.nan
                cells.append("-" if math.isnan(mean) else f"{mean:.3f}")
        row = " | ".join(" ".join(f"{c:>8}" for c in cells[i:i + 3]) for i in (0, 3))
        print(f"{name:<18} {str(cls.uses_counts):>11} | {row}")


if __name__ == "__main__":
    main()
