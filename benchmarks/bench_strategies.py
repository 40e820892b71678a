"""Aggregation time of each fedsec strategy against Flower's equivalent, on the same Flower replies.

    python benchmarks/bench_strategies.py [--n 10,100] [--d 100000,1600000] [--repeats 3] [--only median,krum]

For every (n clients, d parameters) it builds n real Flower train replies (one float32 array of d values each,
random, one outlier), then times the whole ``aggregate_train`` call (reply checks, stacking, the rule, building
the new ArrayRecord) of each fedsec strategy and of Flower's class for the same rule where one exists (Krum,
MultiKrum, Bulyan, FedMedian, FedTrimmedAvg, FedAvg), best of ``--repeats``. Prints a table with the ratio to
Flower's time and to fedsec FedAvg's time. CPU, this process's threads. The load average is printed before and
after: on a shared machine, other processes' load inflates (and scatters) every time, ours (two OpenMP threads
per call) more than Flower's mostly single-threaded NumPy; compare runs made at a low load.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower
from flwr.supercore.task_identity import TaskIdentity

from fedsec.strategies import STRATEGIES


def replies_for(n: int, d: int, seed: int = 0) -> tuple[ArrayRecord, Callable[[], list[Message]]]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=d).astype(np.float32)
    clients = [base + 0.01 * rng.normal(size=d).astype(np.float32) for _ in range(n)]
    clients[-1] = clients[-1] + 10.0

    def make() -> list[Message]:
        out = []
        for i, values in enumerate(clients):
            instruction = Message(content=RecordDict({"config": ConfigRecord()}), dst_node_id=100 + i,
                                  message_type=MessageType.TRAIN)
            content = RecordDict({"arrays": ArrayRecord({"w": Array(values)}),
                                  "metrics": MetricRecord({"num-examples": 10 + i, "partition-id": i})})
            out.append(Message(content=content, reply_to=instruction))
        return out

    return ArrayRecord({"w": Array(base)}), make


def time_call(strategy, global_arrays: ArrayRecord, make, repeats: int, *, ours: bool) -> float:
    best = float("inf")
    for attempt in range(repeats + 1):  # the first call warms up allocations and is not counted
        replies = make()
        if ours:
            strategy.node_sampler = lambda r: []
            list(strategy.configure_train(1, global_arrays, ConfigRecord(), grid=None))
        t0 = time.perf_counter()
        strategy.aggregate_train(1, replies)
        if attempt > 0:
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="10,100")
    parser.add_argument("--d", default="100000,1600000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated fedsec strategy names (fedavg always runs)")
    args = parser.parse_args()
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    logging.getLogger("flwr").setLevel(logging.WARNING)
    import gc

    gc.collect = lambda *a, **k: 0  # Flower's Bulyan calls gc.collect() per client; timing the rule, not the GC
    only = {name for name in args.only.split(",") if name} | {"fedavg"} if args.only else set(STRATEGIES)
    print(f"torch threads: {torch.get_num_threads()}; load average {load_average()}")
    print(f"{'n':>4} {'d':>9} {'strategy':>18} {'fedsec s':>9} {'flower s':>9} {'vs flower':>9} {'vs fedavg':>9}")
    for n in (int(v) for v in args.n.split(",")):
        for d in (int(v) for v in args.d.split(",")):
            global_arrays, make = replies_for(n, d)
            f = max(1, min((n - 3) // 4, n // 10))  # f that every rule accepts (Bulyan: n >= 4f + 3)
            flower_twins = {
                "fedavg": flower.FedAvg(),
                "krum": flower.Krum(num_malicious_nodes=f),
                "multikrum": flower.MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f),
                "bulyan": flower.Bulyan(num_malicious_nodes=f),
                "median": flower.FedMedian(),
                "trimmed_mean": flower.FedTrimmedAvg(beta=0.2),
            }
            kwargs = {"krum": {"num_malicious": f}, "multikrum": {"num_malicious": f, "num_selected": n - f},
                      "bulyan": {"num_malicious": f}, "dnc": {"num_malicious": f}}
            fedavg_time = None
            for name, (cls, _) in STRATEGIES.items():
                if name == "fltrust" or name not in only:  # FLTrust needs a server root dataset: not timed here
                    continue
                ours = time_call(cls(device="cpu", **kwargs.get(name, {})), global_arrays, make, args.repeats,
                                 ours=True)
                fedavg_time = fedavg_time or ours
                twin = flower_twins.get(name)
                theirs = time_call(twin, global_arrays, make, args.repeats, ours=False) if twin else float("nan")
                print(f"{n:>4} {d:>9} {name:>18} {ours:>9.3f} {theirs:>9.3f} {ours / theirs:>9.2f} "
                      f"{ours / fedavg_time:>9.2f}", flush=True)
    print(f"load average {load_average()}")


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
