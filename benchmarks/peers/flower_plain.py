"""The peers benchmark's workload in plain Flower: a minimal Message-API ServerApp (FedAvg) and ClientApp, run by
Flower's simulation engine on Ray; prints one JSON line of results.

Flower: Beutel et al., "Flower: A Friendly Federated Learning Research Framework", 2020
(https://arxiv.org/abs/2007.14390, https://flower.ai), version 1.42.0 (the project's), run in ``.venv-peers``
(``bash scripts/peers_venv.sh``):

    .venv-peers/bin/python benchmarks/peers/flower_plain.py --recipe /tmp/.../recipe.json

The driver (``benchmarks/bench_peers.py``) writes the recipe and its ``.npz``: fedsec's data split, schedule and
initial weights (:mod:`models`). What a plain Flower user writes, no more:

- ServerApp: ``flwr.serverapp.strategy.FedAvg(fraction_train = clients per round / registered clients,
  min_train_nodes = clients per round, fraction_evaluate = 0)`` started from fedsec's initial weights for ``rounds``
  rounds with an ``evaluate_fn`` that evaluates the global model on the test set (batches of the recipe's
  ``eval_batch_size``, fedsec's) before the
  first round and after each round. FedAvg draws its own clients (``random.sample`` over the node ids), not
  fedsec's schedule: same number per round, other clients. Replies are averaged weighted by ``num-examples``.
  Flower's in-memory grid polls for replies every 0.1 s (its default; fedsec lowers it to 0.01 s).
- ClientApp (``@app.train()``): the client's examples from the ``.npz`` (read once per Ray worker process), a new
  model per message (as Flower's examples do), the received arrays loaded, local training with plain PyTorch SGD
  (:func:`models.local_sgd`: a seeded fresh permutation per epoch, mini-batches of ``batch_size``, the recipe's lr,
  momentum and weight decay, a new optimizer per message), the trained arrays and ``num-examples`` sent back.
- ``flwr.simulation.run_simulation`` with ``num_supernodes`` = registered clients (one Flower node, and one
  message per round, per client: what a plain Flower user does; fedsec packs many clients into one message per
  node, see ``docs/performance.md``), backend ``ray`` with ``client_resources = {num_cpus: 1, num_gpus: 0}`` (one
  ClientApp actor per core, one torch thread each as Ray sets ``OMP_NUM_THREADS=1``).

What is measured (wall clock, ``time.perf_counter``, marks taken in ``evaluate_fn``, which Flower's strategy calls
in the ServerApp's thread in this process):

- ``startup_s``: from just before ``run_simulation`` (Ray's start, the engine, node registration, the ServerApp's
  start) to the end of the initial central evaluation, when round 1 begins. The Ray workers start and read the
  ``.npz`` during round 1 (fedsec's do that in its start-up handshake).
- ``round_s``: per round, from the end of the previous evaluation to the end of this round's evaluation: sending,
  the clients' training, replies, aggregation, evaluation.
- ``accuracy``: test accuracy after each round; ``final_accuracy`` after the last.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # Flower hands sys.path on to the Ray workers

import models  # noqa: E402
import torch  # noqa: E402


def make_client_app(recipe_path: str) -> Any:
    """The ClientApp: one client's local training per message."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        work = models.load_workload(recipe_path)  # once per worker process
        recipe = work.recipe
        partition_id = int(context.node_config["partition-id"])
        idx = torch.from_numpy(work.client_indices(partition_id))
        x = torch.from_numpy(work.x_train).index_select(0, idx)
        y = torch.from_numpy(work.y_train).index_select(0, idx)
        model = models.build_model(work)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        server_round = int(msg.content["config"]["server-round"])
        generator = torch.Generator().manual_seed(int(recipe["seed"]) * 1_000_003 + server_round * 100_003
                                                  + partition_id)
        loss = models.local_sgd(model, x, y, recipe, generator)
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"train_loss": loss, "num-examples": int(x.shape[0])})})
        return Message(content=content, reply_to=msg)

    return app


def make_server_app(recipe_path: str, marks: list[float], accuracy: dict[int, float]) -> Any:
    """The ServerApp: FedAvg from fedsec's initial weights with central evaluation (which also marks the time)."""
    from flwr.app import ArrayRecord, Context, MetricRecord
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    work = models.load_workload(recipe_path)
    recipe = work.recipe
    eval_model = models.build_model(work)
    app = ServerApp()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        eval_model.load_state_dict(arrays.to_torch_state_dict())
        accuracy[server_round] = acc = models.accuracy(eval_model, work.x_test, work.y_test,
                                                        batch_size=work.eval_batch_size)
        marks.append(time.perf_counter())
        return MetricRecord({"accuracy": acc})

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        per_round, num_clients = int(recipe["clients_per_round"]), work.num_clients
        strategy = FedAvg(fraction_train=per_round / num_clients, fraction_evaluate=0.0, min_train_nodes=per_round,
                          min_available_nodes=per_round)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(models.build_model(work).state_dict()),
                       num_rounds=int(recipe["rounds"]), evaluate_fn=evaluate)

    return app


def run(recipe_path: str) -> dict[str, Any]:
    """Run the recipe's rounds in Flower's simulation and return the measurements (see the module docstring)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.simulation import run_simulation

    work = models.load_workload(recipe_path)
    marks: list[float] = []
    accuracy: dict[int, float] = {}
    server_app = make_server_app(recipe_path, marks, accuracy)
    client_app = make_client_app(recipe_path)
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0},
        # "local": a fresh Ray of its own, never one another process on this machine started
        "init_args": {"address": "local", "log_to_driver": False, "logging_level": logging.ERROR},
    }
    t0 = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=work.num_clients,
                   backend_name="ray", backend_config=backend_config)
    t_end = time.perf_counter()
    rounds = int(work.recipe["rounds"])
    if rounds not in accuracy:
        raise RuntimeError(f"Flower's run ended after {len(marks) - 1} of {rounds} rounds")
    return models.run_result(
        "flower", f"{work.num_clients} supernodes, 1 CPU per actor", t0=t0, marks=marks, t_end=t_end,
        accuracy=accuracy, rounds=rounds,
        notes=f"plain Flower: {work.num_clients} nodes, one message per client; FedAvg's own sampling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True, help="the driver's recipe JSON")
    args = parser.parse_args()
    print(json.dumps(run(args.recipe)), flush=True)


if __name__ == "__main__":
    main()
