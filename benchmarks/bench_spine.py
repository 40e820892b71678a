"""Framework overhead of a fedsec run: Flower + Ray rounds vs the same local training in one plain PyTorch loop.

Runs the quickstart experiment (or CONFIG) through `fedsec run`'s code path, then redoes the same local training
(same sampled clients, same seeds, same batches) sequentially in this one process, and prints per-round times:

    python benchmarks/bench_spine.py [CONFIG] [--set key=value ...]

Columns: fedsec's wall time per round; its training phase (clients' local training plus Flower/Ray messaging
and aggregation); the plain loop's time for the same local training and averaging; their ratio, the framework
overhead; and the server-side evaluation time in both. The start-up (Ray, worker imports, data fetch) is
round 0's time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedsec.clients.honest import client_seed
from fedsec.config import load_experiment
from fedsec.data.federated import build_federated_data
from fedsec.models import build_model
from fedsec.runtime.runner import run_experiment
from fedsec.server.app import sample_partitions
from fedsec.training import evaluate, train_local


def plain_loop(experiment) -> list[tuple[float, float]]:
    """(train seconds, eval seconds) per round of FedAvg done in one process with plain PyTorch."""
    data = build_federated_data(experiment)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    shape, classes = data.input_shape, data.num_classes
    global_model = build_model(experiment.model.name, shape, classes, seed=experiment.seed)
    local = build_model(experiment.model.name, shape, classes)
    train = experiment.train
    times = []
    for server_round in range(1, experiment.rounds + 1):
        t0 = time.perf_counter()
        global_state = {k: v.clone() for k, v in global_model.state_dict().items()}
        total = {k: torch.zeros_like(v) for k, v in global_state.items()}
        n_total = 0
        for pid in sample_partitions(experiment.seed, server_round, experiment.data.num_clients,
                                     train.clients_per_round):
            idx = torch.from_numpy(data.partitions[pid])
            local.load_state_dict(global_state)
            seed = client_seed(experiment.seed, server_round, pid)
            torch.manual_seed(seed)
            result = train_local(local, x[idx], y[idx], epochs=train.local_epochs, batch_size=train.batch_size,
                                 lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                                 generator=torch.Generator().manual_seed(seed))
            for k, v in local.state_dict().items():
                total[k] += v * result.num_examples
            n_total += result.num_examples
        global_model.load_state_dict({k: v / n_total for k, v in total.items()})
        t1 = time.perf_counter()
        evaluate(global_model, x_test, y_test, num_classes=classes)
        times.append((t1 - t0, time.perf_counter() - t1))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(Path(__file__).parents[1] / "experiments/quickstart.toml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    experiment = load_experiment(args.config, args.overrides)
    print(f"config: {args.config} {' '.join(args.overrides)}; cores: {os.cpu_count()}; torch threads: "
          f"{torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_experiment(experiment, Path(tmp) / "run")
        wall = time.perf_counter() - t0
        import pandas as pd

        rounds = pd.read_csv(result.run_dir / "rounds.csv")
    fed = rounds.set_index("round")
    plain = plain_loop(experiment)

    print(f"\n{'round':>5} {'fedsec round s':>14} {'fedsec train+agg s':>18} {'plain train+avg s':>17} "
          f"{'overhead':>8} {'fedsec eval s':>13} {'plain eval s':>12}")
    ratios = []
    for r in range(1, experiment.rounds + 1):
        tr, ev = plain[r - 1]
        fed_train = fed.loc[r, "train_seconds"] + fed.loc[r, "aggregate_seconds"]
        ratio = fed_train / tr
        if r > 1:
            ratios.append(ratio)
        print(f"{r:>5} {fed.loc[r, 'seconds']:>14.2f} {fed_train:>18.2f} {tr:>17.2f} {ratio:>8.2f} "
              f"{fed.loc[r, 'eval_seconds']:>13.2f} {ev:>12.2f}")
    print(f"\nstart-up (round 0: Ray, workers, data fetch, initial evaluation): {fed.loc[0, 'seconds']:.1f} s")
    print(f"whole run: {wall:.1f} s; final accuracy {rounds['accuracy'].iloc[-1]:.4f}")
    if ratios:
        print(f"rounds 2..{experiment.rounds}: median overhead (fedsec train+aggregate / plain loop) = "
              f"{statistics.median(ratios):.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
