"""Where a client message's time goes: Flower's engine, Ray's (de)serialisation, fedsec's client and server work.

A breakdown of the per-message cost that ``bench_scale.py`` measures end to end. For N registered clients
and K per round (logistic regression on IID Fashion-MNIST, as in ``bench_scale.py``), it measures, per client
message:

- ``flower engine``: Flower's simulation engine on Ray alone, with a trivial ClientApp that adds 1 to a 7,850-float
  array (logreg's size) and a ServerApp that sends K of the N registered nodes a message per round
  (``grid.send_and_receive``; median of the rounds after the first); both at N nodes (one per client) and at
  ``4 x cores`` nodes carrying K / nodes clients each in one message (what cohort mode does);
- ``ray pickling``: what Flower's Ray backend serialises for every message: the ClientApp closure (fedsec's
  ClientSpec), the message and the context to the actor, the reply and context back (cloudpickle round trips);
- ``fedsec client``: fedsec's ClientApp handler per client (``app(message, context)`` in this process: data view,
  model, local training, reply arrays), one message per client and inside one cohort message;
- ``fedsec server``: the strategy's ``configure_train`` and ``aggregate_train`` (checks, stacking, FedAvg) on K
  real replies, and cohort mode's packing and unpacking (:class:`fedsec.server.cohorts.CohortTransport` work
  without the transport).

    python benchmarks/bench_message_cost.py [--sizes 10000:1000] [--rounds 4]

Numbers depend on the machine; this script asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import time
from pathlib import Path

import cloudpickle
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_message_cost")


def engine_ms_per_message(num_nodes: int, per_round: int, rounds: int, clients_per_message: int = 1) -> float:
    """Flower's simulation engine with a trivial ClientApp: median ms per *client* of rounds 2..R."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    client_app = ClientApp()

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        arrays = message.content["arrays"]["w"].numpy()
        count = int(message.content["config"]["clients"])
        out = RecordDict({f"{i}|w": ArrayRecord({"w": Array(arrays + 1.0)}) for i in range(count)})
        return Message(content=out, reply_to=message)

    times: list[float] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        while len(nodes := sorted(grid.get_node_ids())) < num_nodes:
            time.sleep(0.1)
        rng = np.random.default_rng(0)
        content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(7850, dtype=np.float32))}),
                              "config": ConfigRecord({"clients": clients_per_message})})
        messages_per_round = per_round // clients_per_message
        for _ in range(rounds):
            picked = rng.choice(len(nodes), size=messages_per_round, replace=False)
            messages = [Message(content=content, dst_node_id=nodes[i], message_type=MessageType.TRAIN) for i in picked]
            t0 = time.perf_counter()
            replies = list(grid.send_and_receive(messages, timeout=600))
            times.append(time.perf_counter() - t0)
            assert len(replies) == messages_per_round and not any(r.has_error() for r in replies)

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_nodes, backend_name="ray",
                   backend_config={"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
                                   "init_args": {"address": "local", "log_to_driver": False,
                                                 "logging_level": logging.ERROR}})
    return 1000 * statistics.median(times[1:]) / per_round


def fedsec_costs(num_clients: int, per_round: int, repeats: int = 3) -> dict[str, float]:
    """Per-client ms of fedsec's own work, measured in this process (no Ray)."""
    import torch
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedsec.arrays import model_to_record
    from fedsec.clients.app import make_client_app
    from fedsec.clients.spec import ClientSpec
    from fedsec.models import build_model
    from fedsec.plan import load_plan
    from fedsec.protocol import COHORT_IDS_KEY, COHORT_RECORD, cohort_reply, split_cohort_reply
    from fedsec.server.app import build_strategy
    from fedsec.server.cohorts import virtual_node

    torch.set_num_threads(1)  # as in a client actor with backend.num_cpus = 1
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    plan = load_plan(ROOT / "experiments/quickstart.toml",
                     [f"data.num_clients={num_clients}", f"train.clients_per_round={per_round}",
                      "data.partition='iid'", "model.name='logreg'"])
    spec = ClientSpec.from_plan(plan)
    app = make_client_app(spec)
    arrays = model_to_record(build_model("logreg", (1, 28, 28), 10, seed=0))
    sampled = plan.schedule.sampled(1)

    def context(pid: int) -> Context:
        return Context(run_id=1, node_id=7, node_config={"partition-id": pid}, state=RecordDict(), run_config={})

    def message(extra: dict | None = None, *, fresh: bool = False) -> Message:
        """A train message; ``fresh``: with its own copy of the arrays, as each deserialised message has."""
        content = {"arrays": copy.deepcopy(arrays) if fresh else arrays, "config": ConfigRecord({"server-round": 1}),
                   **(extra or {})}
        return Message(content=RecordDict(content), dst_node_id=7, message_type=MessageType.TRAIN)

    app(message(), context(sampled[0]))  # warm: data built once per process, as in a worker
    out: dict[str, float] = {}
    best = float("inf")
    replies: list[Message] = []
    for _ in range(repeats):
        requests = [(message(fresh=True), context(pid)) for pid in sampled]
        t0 = time.perf_counter()
        replies = [app(m, c) for m, c in requests]
        best = min(best, time.perf_counter() - t0)
    out["fedsec client, one message per client"] = 1000 * best / per_round
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        app(message({COHORT_RECORD: ConfigRecord({COHORT_IDS_KEY: sampled})}), context(0))
        best = min(best, time.perf_counter() - t0)
    out["fedsec client, in one cohort message"] = 1000 * best / per_round

    request, reply = message(), replies[0]
    ctx = context(sampled[0])
    t0 = time.perf_counter()
    for _ in range(50):
        cloudpickle.loads(cloudpickle.dumps((app, request, ctx)))
        cloudpickle.loads(cloudpickle.dumps((reply, ctx)))
    out["ray pickling (app + message + context, reply + context)"] = 1000 * (time.perf_counter() - t0) / 50
    out["  of it the ClientApp with its ClientSpec (bytes)"] = len(cloudpickle.dumps(app))

    strategy = build_strategy(plan)
    strategy.node_sampler = lambda _r: [virtual_node(p) for p in sampled]
    t0 = time.perf_counter()
    sent = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    # the replies the server gets: each client's content, from the node it was sent to
    answers = [Message(content=r.content, reply_to=m) for r, m in zip(replies, sent, strict=True)]
    t1 = time.perf_counter()
    strategy.aggregate_train(1, answers)
    t2 = time.perf_counter()
    out["fedsec server: configure_train"] = 1000 * (t1 - t0) / per_round
    out["fedsec server: aggregate_train (checks, stacking, FedAvg)"] = 1000 * (t2 - t1) / per_round
    t0 = time.perf_counter()
    packed = cohort_reply(request, replies)
    unpacked = [Message(content=part, reply_to=m)
                for part, m in zip(split_cohort_reply(packed, len(replies)), sent, strict=True)]
    out["fedsec server: cohort packing + unpacking"] = 1000 * (time.perf_counter() - t0) / per_round
    assert len(unpacked) == per_round
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["10000:1000"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--skip-engine", action="store_true", help="only fedsec's own work (no Ray)")
    args = parser.parse_args()
    os.environ.setdefault("FLWR_LOG_LEVEL", "ERROR")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cohort_nodes = 4 * (os.cpu_count() or 1)
    for size in args.sizes:
        n, k = (int(v) for v in size.split(":"))
        logger.info("%d registered, %d per round (logreg, IID Fashion-MNIST; %d cores)", n, k, os.cpu_count())
        rows: dict[str, float] = {}
        if not args.skip_engine:
            rows[f"flower engine, trivial app, {n} nodes, one message per client"] = engine_ms_per_message(
                n, k, args.rounds)
            rows[f"flower engine, trivial app, {cohort_nodes} nodes, {k // cohort_nodes} clients per message"] = (
                engine_ms_per_message(cohort_nodes, k, args.rounds, clients_per_message=k // cohort_nodes))
        rows.update(fedsec_costs(n, k))
        width = max(len(name) for name in rows)
        for name, value in rows.items():
            shown = f"{value:,.0f}" if "bytes" in name else f"{value:8.3f} ms"
            logger.info("  %s  %s", name.ljust(width), shown)


if __name__ == "__main__":
    main()
