"""fedsec against its peers on one workload: pfl-research and a minimal plain Flower app, from one invocation.

For each row (dataset, model, registered clients, clients per round) the driver builds the data split once with
fedsec's own code (``load_plan`` on the quickstart config with ``--set`` overrides, then
``build_federated_data``: the dataset loaded and partitioned IID with the experiment's seed) and writes it to a
temporary ``.npz`` with the test set, fedsec's schedule (the clients of each round), fedsec's seeded initial weights,
and a JSON recipe (lr, momentum, weight decay, batch size, local epochs, rounds, clients per round, seed, model and
its parameter count). Then it runs, each in a subprocess of its own:

- fedsec, through ``fedsec run``'s code path (``load_plan`` + ``run_experiment``, cohort messages by default, see
  ``docs/performance.md``, "Scale"), with ``train.vectorize`` as ``--vectorize`` says (``auto``: on for logreg,
  where stacking the clients pays on a CPU, off for the CNN, where it does not; "Vectorized cohorts");
- plain Flower (``benchmarks/peers/flower_plain.py``): FedAvg from ``flwr.serverapp.strategy`` and a ClientApp
  with plain PyTorch SGD, ``run_simulation`` on Ray with one node per registered client (Beutel et al., "Flower: A
  Friendly Federated Learning Research Framework", 2020);
- pfl-research (``benchmarks/peers/pfl_run.py``): ``FederatedAveraging`` on a ``SimulatedBackend`` with the PyTorch
  backend, single process (Granqvist et al., "pfl-research: simulation framework for accelerating research in
  Private Federated Learning", 2024).

The peers run with ``.venv-peers/bin/python`` (``bash scripts/peers_venv.sh``; the project's ``.venv`` pins its own
torch and gets no peer installed into it). A missing ``.venv-peers`` or peer import is reported ("pfl: not installed
(bash scripts/peers_venv.sh)") on a line of its own and on the peer's rows, and the run goes on. All three train the
same clients' examples (fedsec's partition) with the same model architecture and initial weights, local epochs,
batch size, SGD (lr, momentum, weight decay; a fresh optimizer per client and round), clients per round and rounds,
FedAvg weighted by examples, central evaluation on the test set after every round. pfl trains fedsec's scheduled
clients of each round; Flower's FedAvg samples its own (as many).

    nice -n 10 .venv/bin/python benchmarks/bench_peers.py [--rows small small-cnn | cnn-1000 logreg-10000 cnn-100]
        [--rounds 3] [--peers fedsec flower pfl] [--vectorize auto|on|off ...] [--pfl-threads 0 1]
        [--timeout 1800] [--workdir DIR] [--set key=value ...]

``--vectorize`` and ``--pfl-threads`` take several values: one run each (pfl with PyTorch's default thread count,
0, and with one thread: pfl trains in one process, where fedsec and Flower run one single-threaded client actor per
core, and on a busy 2-core machine two threads were measured several times slower than one). ``--workdir`` keeps
each row's ``.npz``, recipe and the runs' stderr logs, e.g. to rerun a peer by hand:
``.venv-peers/bin/python benchmarks/peers/pfl_run.py --recipe DIR/cnn-100.json``.

Columns (one table per invocation, a line per framework and row, printed as each finishes):

- ``load``: the 1-minute load average just before that framework's run (the machine may be shared).
- ``start-up s``: from the call into the framework until round 1 begins (after the initial model's central
  evaluation). fedsec: from ``run_experiment``'s call to its round-0 row (Ray, loading and partitioning the data,
  which the peers read from the ``.npz`` before their clock starts (``data_seconds`` below the table), data into
  Ray's object store, the handshake, the initial evaluation). Flower: from ``run_simulation``'s call to the initial
  evaluation's end. pfl: from building its datasets, model and backend to the end of ``on_train_begin``.
  Flower's figure is small because its ServerApp thread starts (and evaluates the initial model) before the
  engine registers the nodes and starts Ray: those land in its round 1.
- ``round 1 s``: from the start of round 1 to its end (it also starts the workers: Ray's actors in Flower, the
  first messages' unpacking in fedsec, pfl's per-user evaluation in its iteration 0).
- ``to round 1 s``: start-up + round 1, from the call to the first aggregated and evaluated model: the start-up
  figure that compares across the three.
- ``s/round``: the median over rounds 2..R of the wall time from the end of one round to the end of the next
  (training, messages, aggregation, central evaluation, and fedsec's recording of the round).
- ``final acc``: test accuracy after the last round.
- ``start-up x``, ``to round 1 x``, ``s/round x``: the figure divided by fedsec's (the row's first fedsec run).

Below the table, per fedsec run: rounds.csv's median ``seconds`` of rounds 2..R (its own round timer, which stops
before the round is written to disk), ``startup_seconds`` of summary.json (the ServerApp's part of start-up:
handshake and initial evaluation), ``data_seconds`` and how clients got their messages.

Numbers depend on the machine and what else runs on it; this script asserts nothing and prints what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEER_SCRIPTS = {"flower": ROOT / "benchmarks/peers/flower_plain.py", "pfl": ROOT / "benchmarks/peers/pfl_run.py"}
PEER_IMPORTS = {"flower": "import flwr.simulation, ray, torch", "pfl": "import pfl.model.pytorch, torch"}
INSTALL_HINT = "bash scripts/peers_venv.sh"


@dataclass(frozen=True)
class Row:
    """One workload: dataset, model, registered clients and clients per round (IID partition)."""

    dataset: str
    model: str
    num_clients: int
    per_round: int


ROWS: dict[str, Row] = {
    # quick checks on scikit-learn's 8x8 digits, ~67 examples per client (the CNN stays at chance for 10+ rounds)
    "small": Row("digits", "logreg", 20, 10),
    "small-cnn": Row("digits", "cnn", 20, 10),
    "cnn-1000": Row("fashion-mnist", "cnn", 1000, 100),  # 60 examples per client
    "logreg-10000": Row("fashion-mnist", "logreg", 10_000, 1000),  # 6 examples per client
    "cnn-100": Row("fashion-mnist", "cnn", 100, 10),  # 600 examples per client
}


@dataclass
class Args:
    rows: list[str] = field(default_factory=lambda: ["cnn-1000", "logreg-10000", "cnn-100"])
    """rows to run (names in ROWS)"""
    rounds: int = 3
    """federated rounds per run"""
    peers: list[str] = field(default_factory=lambda: ["fedsec", "flower", "pfl"])
    """frameworks to run"""
    vectorize: list[str] = field(default_factory=lambda: ["auto"])
    """fedsec's train.vectorize: auto (on for logreg, off otherwise), on, off; several: one fedsec run each"""
    pfl_threads: list[int] = field(default_factory=lambda: [0, 1])
    """pfl's torch threads (0: PyTorch's default, the cores); several: one pfl run each"""
    timeout: float = 1800.0
    """seconds each framework's run may take before it is stopped"""
    config: str = str(ROOT / "experiments/quickstart.toml")
    """base experiment (its train recipe: batch 32, lr 0.01, momentum 0.9, 1 local epoch, seed 0)"""
    overrides: list[str] = field(default_factory=list)
    """extra --set key=value overrides for every row, applied last"""
    workdir: str = ""
    """where to write each row's .npz, recipe JSON and the runs' logs (kept); default: a temporary directory"""
    fedsec_one: str = ""
    """internal: run fedsec on this recipe JSON in this process and print its result as JSON"""


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=Args().rows, choices=list(ROWS))
    parser.add_argument("--rounds", type=int, default=Args.rounds)
    parser.add_argument("--peers", nargs="+", default=Args().peers, choices=["fedsec", "flower", "pfl"])
    parser.add_argument("--vectorize", nargs="+", default=Args().vectorize, choices=["auto", "on", "off"])
    parser.add_argument("--pfl-threads", type=int, nargs="+", default=Args().pfl_threads)
    parser.add_argument("--timeout", type=float, default=Args.timeout)
    parser.add_argument("--config", default=Args.config)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--workdir", default="")
    parser.add_argument("--fedsec-one", default="", help=argparse.SUPPRESS)
    return Args(**vars(parser.parse_args()))


def overrides_for(args: Args, name: str, row: Row) -> list[str]:
    """The --set overrides that turn the base config into ``row``'s experiment."""
    return [f"name='peers-{name}'", f"data.dataset='{row.dataset}'", "data.partition='iid'",
            f"data.num_clients={row.num_clients}", f"train.clients_per_round={row.per_round}",
            f"rounds={args.rounds}", f"model.name='{row.model}'", *args.overrides]


def write_workload(args: Args, name: str, row: Row, directory: Path) -> Path:
    """Build the row's split with fedsec's code and write the ``.npz`` and recipe JSON the peers read."""
    import numpy as np

    from fedsec.data.federated import build_federated_data
    from fedsec.models import build_model, count_parameters
    from fedsec.plan import load_plan
    from fedsec.training import EVAL_BATCH_SIZE

    overrides = overrides_for(args, name, row)
    plan = load_plan(args.config, overrides)
    e = plan.experiment
    data = build_federated_data(plan.data_config, plan.seed)
    initial = build_model(e.model.name, data.input_shape, data.num_classes, seed=e.seed)  # fedsec's round-0 model
    state = {k: v.detach().numpy() for k, v in initial.state_dict().items()}
    sampled = np.array([plan.schedule.sampled(r) for r in range(1, e.rounds + 1)], dtype=np.int64)
    sizes = [len(p) for p in data.partitions]
    npz = directory / f"{name}.npz"
    np.savez(npz, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test,
             part_index=np.concatenate(data.partitions).astype(np.int64),
             part_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), sampled=sampled,
             **{f"init_{i}": v for i, v in enumerate(state.values())})
    train = e.train
    recipe = {
        "row": name, "config": args.config, "overrides": overrides, "npz": str(npz), "dataset": row.dataset,
        "model": e.model.name, "num_parameters": count_parameters(initial), "state_keys": list(state),
        "input_shape": list(data.input_shape), "num_classes": data.num_classes, "num_clients": e.data.num_clients,
        "clients_per_round": train.clients_per_round, "rounds": e.rounds, "local_epochs": train.local_epochs,
        "batch_size": train.batch_size, "lr": train.lr, "momentum": train.momentum,
        "weight_decay": train.weight_decay, "seed": e.seed, "examples_per_client": [min(sizes), max(sizes)],
        "num_train": int(len(data.y_train)), "num_test": int(len(data.y_test)),
        "eval_batch_size": EVAL_BATCH_SIZE,  # the peers evaluate in batches of fedsec's size
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(recipe, indent=1))
    return path


def vectorize_setting(choice: str, model: str) -> bool:
    """``train.vectorize`` for ``choice``: auto = on for logreg (4x faster stacked on a CPU), off for the CNN."""
    return model == "logreg" if choice == "auto" else choice == "on"


def run_fedsec_here(recipe_path: str, vectorize: bool) -> dict[str, Any]:
    """fedsec on the recipe, in this process: ``load_plan`` + ``run_experiment`` (what ``fedsec run`` does)."""
    import pandas as pd

    from fedsec.plan import load_plan
    from fedsec.runtime.runner import run_experiment

    recipe = json.loads(Path(recipe_path).read_text())
    plan = load_plan(recipe["config"], [*recipe["overrides"], f"train.vectorize={str(vectorize).lower()}"])
    marks: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_experiment(plan, Path(tmp) / "run",
                                on_round=lambda row: marks.setdefault(int(row["round"]), time.perf_counter()))
        wall = time.perf_counter() - t0
        rounds = pd.read_csv(result.run_dir / "rounds.csv").set_index("round")
    last = int(max(marks))
    ends = [marks[r] for r in range(last + 1)]
    return {
        "framework": "fedsec",
        "setting": f"vectorize={'on' if vectorize else 'off'}",
        "startup_s": marks[0] - t0,
        "round_s": [b - a for a, b in zip(ends, ends[1:], strict=False)],
        "csv_round_s": [float(rounds.loc[r, "seconds"]) for r in range(1, last + 1)],
        "accuracy": {str(r): float(rounds.loc[r, "accuracy"]) for r in range(last + 1)},
        "final_accuracy": float(rounds.loc[last, "accuracy"]),
        "summary_startup_s": result.summary.get("startup_seconds"),
        "data_s": result.summary.get("data_seconds"),
        "messages": result.summary.get("client_messages"),
        "stopped": result.summary.get("stopped_reason"),
        "wall_s": wall,
    }


def load1() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def peer_missing(peer: str) -> str:
    """Why ``peer`` cannot run ("" if it can)."""
    if not PEERS_PYTHON.exists():
        return f"not installed ({INSTALL_HINT})"
    check = subprocess.run([str(PEERS_PYTHON), "-c", PEER_IMPORTS[peer]], capture_output=True, text=True,
                           check=False)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["?"])[-1]
        return f"not installed ({INSTALL_HINT}): {last}"
    return ""


def run_child(cmd: list[str], timeout: float, log: Path) -> tuple[dict[str, Any] | None, str]:
    """Run ``cmd`` in a session of its own (its Ray processes with it); its last JSON line, or why there is none.
    On timeout the session's processes get SIGTERM, then SIGKILL."""
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
                                cwd=ROOT)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.communicate(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            return None, f"timed out after {timeout:.0f} s"
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text().strip().splitlines()[-3:]
        return None, f"failed (exit {proc.returncode}): {' | '.join(tail)[-400:]}"
    return json.loads(lines[-1]), ""


def per_round(result: dict[str, Any]) -> tuple[float, float]:
    """(median seconds of rounds 2..R, seconds of round 1); with one round, that round twice."""
    times = result["round_s"]
    return (statistics.median(times[1:]) if len(times) > 1 else times[0]), times[0]


HEADER = (f"{'row':<13} {'framework':<9} {'setting':<34} {'load':>5} {'start-up s':>10} {'round 1 s':>9} "
          f"{'to round 1 s':>12} {'s/round':>8} {'final acc':>9} {'start-up x':>10} {'to round 1 x':>12} "
          f"{'s/round x':>9}")


def table_line(name: str, framework: str, setting: str, load: float, result: dict[str, Any] | None, why: str,
               base: dict[str, Any] | None) -> str:
    """One line of the table; ratios against ``base`` (the row's first fedsec run) when there is one."""
    head = f"{name:<13} {framework:<9} {setting[:34]:<34} {load:>5.2f}"
    if result is None:
        return f"{head} {why}"
    median, first = per_round(result)
    ratios = ""
    if base is not None:
        base_median, base_first = per_round(base)
        ratios = (f" {result['startup_s'] / base['startup_s']:>10.2f} "
                  f"{(result['startup_s'] + first) / (base['startup_s'] + base_first):>12.2f} "
                  f"{median / base_median:>9.2f}")
    return (f"{head} {result['startup_s']:>10.1f} {first:>9.2f} {result['startup_s'] + first:>12.1f} {median:>8.2f} "
            f"{result['final_accuracy']:>9.4f}{ratios}")


def main() -> None:
    args = parse_args()
    if args.fedsec_one:
        recipe_path, vectorize = args.fedsec_one.rsplit(":", 1)
        print(json.dumps(run_fedsec_here(recipe_path, vectorize == "on")), flush=True)
        return
    print(f"bench_peers: {args.rounds} rounds per run; config {Path(args.config).name} "
          f"{' '.join(args.overrides)}; cores: {os.cpu_count()}; peers' python: {PEERS_PYTHON}; "
          f"timeout per run: {args.timeout:.0f} s", flush=True)
    missing = {p: peer_missing(p) for p in args.peers if p != "fedsec"}
    for peer, why in missing.items():
        if why:
            print(f"{peer}: {why}", flush=True)
    notes: list[str] = []
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as scratch:
        tmp = args.workdir or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        for name in args.rows:
            row = ROWS[name]
            recipe_path = write_workload(args, name, row, Path(tmp))
            recipe = json.loads(recipe_path.read_text())
            lo, hi = recipe["examples_per_client"]
            notes.append(f"{name}: {row.dataset}, {recipe['model']} ({recipe['num_parameters']:,} parameters), "
                         f"{row.num_clients:,} clients / {row.per_round:,} per round, {lo}-{hi} examples each, "
                         f"batch {recipe['batch_size']}, lr {recipe['lr']}, momentum {recipe['momentum']}, "
                         f"{recipe['local_epochs']} local epoch(s), {recipe['rounds']} rounds, seed {recipe['seed']}")
            base: dict[str, Any] | None = None
            for framework in args.peers:
                variants: list[tuple[str, list[str]]]
                if framework == "fedsec":
                    on_off = ["on" if v else "off" for v in dict.fromkeys(vectorize_setting(v, row.model)
                                                                           for v in args.vectorize)]
                    variants = [(f"vectorize={v}", [sys.executable, __file__, "--fedsec-one", f"{recipe_path}:{v}"])
                                for v in on_off]
                else:
                    peer = [str(PEERS_PYTHON), str(PEER_SCRIPTS[framework]), "--recipe", str(recipe_path)]
                    variants = ([(f"{row.num_clients} supernodes, 1 CPU/actor", peer)] if framework == "flower" else
                                [(f"1 process, {t or 'default'} torch threads", [*peer, "--threads", str(t)])
                                 for t in dict.fromkeys(args.pfl_threads)])
                for i, (setting, cmd) in enumerate(variants):
                    load = load1()
                    if framework != "fedsec" and missing[framework]:
                        print(table_line(name, framework, setting, load, None, missing[framework], None), flush=True)
                        continue
                    log = Path(tmp) / f"{name}-{framework}-{i}.log"
                    result, why = run_child(cmd, args.timeout, log)
                    if result is not None and framework == "fedsec":
                        setting = f"{setting}, {result.get('messages')}"
                        csv_median = (statistics.median(result["csv_round_s"][1:]) if len(result["csv_round_s"]) > 1
                                      else result["csv_round_s"][0])
                        notes.append(f"{name} fedsec {setting}: rounds.csv seconds (median of rounds 2..R) "
                                     f"{csv_median:.2f}; summary startup_seconds {result['summary_startup_s']:.1f}; "
                                     f"data_seconds {result['data_s']:.1f}; wall {result['wall_s']:.1f} s")
                        base = base or result
                    elif result is not None:
                        notes.append(f"{name} {framework}: wall {result['wall_s']:.1f} s; {result.get('notes', '')}")
                    if result is not None:
                        accs = ", ".join(f"{r}: {a:.4f}" for r, a in result["accuracy"].items())
                        notes.append(f"{name} {framework} test accuracy by round: {accs}")
                    print(table_line(name, framework, setting, load, result, why, base), flush=True)
    print("\n".join(["", *notes]), flush=True)


if __name__ == "__main__":
    main()
