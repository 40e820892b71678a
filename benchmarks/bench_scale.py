"""Scale and framework overhead of a fedsec run: start-up, seconds per round, cost per client message and memory.

For each (registered clients, clients per round) pair and each ``backend.messages`` mode, runs ``fedsec
run``'s code path (``load_plan`` + ``run_experiment``) on logistic regression over IID Fashion-MNIST (the
quickstart config with ``--set`` overrides; above 60,000 clients, more than the training set has images, the
``sampled`` partition with 6 images per client) in a fresh subprocess, samples the resident memory of the whole
process tree (driver, raylet, GCS, Ray workers) in a thread, then redoes the same local work (same sampled
clients, same seeds, same batches, FedAvg) in one plain PyTorch loop, and prints one row per run:

    nice -n 10 python benchmarks/bench_scale.py --sizes 1000:100 10000:1000 100000:1000 [--rounds 3]
        [--messages per_client cohort] [--set key=value ...] [--plain-threads 2]

The quickstart's CNN with 60 examples per client (the issue's overhead target):

    python benchmarks/bench_scale.py --sizes 1000:100 --set model.name=\'cnn\' --plain-threads 2

Columns:
- ``messages``: how clients got their messages (``per_client``, or ``cohort (K nodes)``, :mod:`fedsec.server.cohorts`).
- ``startup s``: from ``run_experiment``'s call to the end of round 0 (Ray, actors, data into the object store,
  the server's handshake with every node, the initial evaluation); ``handshake+eval s`` is the part inside the
  ServerApp (round 0's ``seconds`` in rounds.csv).
- ``s/round``: median wall seconds of rounds 1..R; ``train s``: its training phase (messages out, clients'
  training, replies back); ``plain s``: the plain loop's time for the same training and averaging, with
  ``--plain-threads`` torch threads; ``ratio``: ``train s`` / ``plain s`` (the framework overhead factor).
- ``ms/msg``: ``train s`` / clients per round; ``overhead ms/msg``: (``train s`` - ``plain s``) / clients per round.
- ``peak GB``: the largest sum of RSS over the driver and all its descendants (shared pages, e.g. Ray's
  object store, count once per process that maps them, so this is an upper bound).
- ``same rounds``: for the second and later modes of a size, whether its rounds.csv equals the first mode's
  (every column but timings).

Numbers depend on the machine and on what else runs on it; this script asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    sizes: list[str] = field(default_factory=lambda: ["1000:100", "10000:1000"])
    """(registered clients):(clients per round) pairs; 100000:1000 is the issue's third size"""
    rounds: int = 3
    """federated rounds per run"""
    config: str = str(ROOT / "experiments/quickstart.toml")
    """base experiment; the script sets logreg, IID, the sizes and the rounds on top of it"""
    overrides: list[str] = field(default_factory=list)
    """extra --set key=value overrides, applied last"""
    sample_seconds: float = 0.25
    """memory sampling interval"""
    plain_threads: int = 1
    """torch threads of the plain loop (each Ray client actor gets backend.num_cpus = 1, hence 1 thread)"""
    messages: list[str] = field(default_factory=lambda: ["auto"])
    """backend.messages modes to run at each size (auto | cohort | per_client)"""
    sampled_above: int = 60_000
    """above this many clients, partition 'sampled' with 6 examples per client (Fashion-MNIST has 60,000)"""
    one: str = ""
    """internal: run one size in this process and print its result as JSON"""
    keep: str = ""
    """internal: where the one run copies its rounds.csv"""


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=Args().sizes)
    parser.add_argument("--rounds", type=int, default=Args.rounds)
    parser.add_argument("--config", default=Args.config)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--sample-seconds", type=float, default=Args.sample_seconds)
    parser.add_argument("--plain-threads", type=int, default=Args.plain_threads)
    parser.add_argument("--messages", nargs="+", default=Args().messages, choices=["auto", "cohort", "per_client"])
    parser.add_argument("--sampled-above", type=int, default=Args.sampled_above)
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    parser.add_argument("--keep", default="", help=argparse.SUPPRESS)
    return Args(**vars(parser.parse_args()))


class TreeMemory:
    """Peak of the summed RSS of this process and all its descendants, sampled in a daemon thread."""

    def __init__(self, interval: float) -> None:
        import ray  # noqa: F401 - Ray vendors psutil (ray/thirdparty_files) and puts it on sys.path

        psutil = __import__("psutil")

        self._root = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak_bytes = 0
        self.peak_processes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        psutil = sys.modules["psutil"]
        total, count = 0, 0
        for proc in [self._root, *self._root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
                count += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, count

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def overrides_for(args: Args, num_clients: int, per_round: int, messages: str) -> list[str]:
    partition = (["data.partition='sampled'", "data.samples_per_client=6"] if num_clients > args.sampled_above
                 else ["data.partition='iid'"])
    return [f"data.num_clients={num_clients}", f"train.clients_per_round={per_round}", f"rounds={args.rounds}",
            *partition, "model.name='logreg'", f"name='scale-{num_clients}'", f"backend.messages='{messages}'",
            *args.overrides]


def plain_loop(plan, *, threads: int) -> list[float]:
    """Seconds per round of the same local training and FedAvg averaging, done in this process with PyTorch."""
    import torch

    torch.set_num_threads(threads)

    from fedsec.data.federated import build_federated_data
    from fedsec.models import build_model
    from fedsec.training import train_local

    e, schedule = plan.experiment, plan.schedule
    data = build_federated_data(e.data, e.seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    global_model = build_model(e.model.name, data.input_shape, data.num_classes, seed=e.seed)
    local = build_model(e.model.name, data.input_shape, data.num_classes)
    train = e.train
    times = []
    for server_round in range(1, e.rounds + 1):
        t0 = time.perf_counter()
        global_state = {k: v.clone() for k, v in global_model.state_dict().items()}
        total = {k: torch.zeros_like(v) for k, v in global_state.items()}
        n_total = 0
        for pid in schedule.sampled(server_round):
            idx = torch.from_numpy(data.partitions[pid])
            local.load_state_dict(global_state)
            seed = schedule.client_seed(server_round, pid)
            torch.manual_seed(seed)
            result = train_local(local, x.index_select(0, idx), y.index_select(0, idx), epochs=train.local_epochs,
                                 batch_size=train.batch_size, lr=train.lr, momentum=train.momentum,
                                 weight_decay=train.weight_decay, generator=torch.Generator().manual_seed(seed))
            for k, v in local.state_dict().items():
                total[k] += v * result.num_examples
            n_total += result.num_examples
        global_model.load_state_dict({k: v / n_total for k, v in total.items()})
        times.append(time.perf_counter() - t0)
    return times


def run_one(args: Args, num_clients: int, per_round: int, messages: str) -> dict:
    """One size in this process: the fedsec run (memory sampled), then the plain loop."""
    import shutil

    import pandas as pd

    from fedsec.plan import load_plan
    from fedsec.runtime.runner import run_experiment

    plan = load_plan(args.config, overrides_for(args, num_clients, per_round, messages))
    marks: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp, TreeMemory(args.sample_seconds) as memory:
        t0 = time.perf_counter()
        result = run_experiment(plan, Path(tmp) / "run", on_round=lambda row: marks.setdefault(row["round"],
                                                                                              time.perf_counter()))
        wall = time.perf_counter() - t0
        rounds = pd.read_csv(result.run_dir / "rounds.csv").set_index("round")
        if args.keep:
            shutil.copy(result.run_dir / "rounds.csv", args.keep)
    plain = plain_loop(plan, threads=args.plain_threads)
    later = range(1, args.rounds + 1)
    train_s = statistics.median(float(rounds.loc[r, "train_seconds"]) for r in later)
    plain_s = statistics.median(plain)
    return {
        "num_clients": num_clients,
        "per_round": per_round,
        "messages": result.summary.get("client_messages", messages),
        "startup_s": marks[0] - t0,
        "handshake_eval_s": float(rounds.loc[0, "seconds"]),
        "round_s": statistics.median(float(rounds.loc[r, "seconds"]) for r in later),
        "train_s": train_s,
        "plain_s": plain_s,
        "ms_per_msg": 1000 * train_s / per_round,
        "overhead_ms_per_msg": 1000 * (train_s - plain_s) / per_round,
        "ratio": train_s / plain_s,
        "peak_gb": memory.peak_bytes / 2**30,
        "peak_processes": memory.peak_processes,
        "wall_s": wall,
        "accuracy": float(rounds["accuracy"].iloc[-1]),
    }


def same_rounds(a: Path, b: Path) -> bool:
    """Whether two rounds.csv files agree in every column but timings."""
    import pandas as pd

    ra, rb = (pd.read_csv(p).filter(regex=r"^(?!.*seconds$)") for p in (a, b))
    if ra.shape != rb.shape or list(ra.columns) != list(rb.columns):
        return False
    return bool((ra.fillna(-1) == rb.fillna(-1)).all().all())


def main() -> None:
    args = parse_args()
    if args.one:
        n, k, messages = args.one.split(":")
        print(json.dumps(run_one(args, int(n), int(k), messages)), flush=True)
        return
    print(f"config: {args.config} (logreg, IID, {args.rounds} rounds) {' '.join(args.overrides)}; "
          f"cores: {os.cpu_count()}; plain loop threads: {args.plain_threads}")
    header = (f"{'clients':>8} {'/round':>6} {'messages':>18} {'startup s':>9} {'handshake+eval s':>16} "
              f"{'s/round':>7} {'train s':>7} {'plain s':>7} {'ratio':>5} {'ms/msg':>6} {'overhead ms/msg':>15} "
              f"{'peak GB':>7} {'procs':>5} {'accuracy':>8} {'same rounds':>11}")
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as keep:
        for size in args.sizes:
            first: Path | None = None
            for messages in args.messages:
                extra = [f"--set={o}" for o in args.overrides]
                kept = Path(keep) / f"{size.replace(':', '-')}-{messages}.csv"
                cmd = [sys.executable, __file__, "--one", f"{size}:{messages}", "--rounds", str(args.rounds),
                       "--config", args.config, "--sample-seconds", str(args.sample_seconds), "--plain-threads",
                       str(args.plain_threads), "--sampled-above", str(args.sampled_above), "--keep", str(kept),
                       *extra]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                if done.returncode != 0 or not lines:
                    print(f"{size} {messages}: failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
                    continue
                r = json.loads(lines[-1])
                same = "-" if first is None else ("yes" if same_rounds(first, kept) else "NO")
                first = first or kept
                print(f"{r['num_clients']:>8} {r['per_round']:>6} {r['messages']:>18} {r['startup_s']:>9.1f} "
                      f"{r['handshake_eval_s']:>16.1f} {r['round_s']:>7.2f} {r['train_s']:>7.2f} {r['plain_s']:>7.3f} "
                      f"{r['ratio']:>5.2f} {r['ms_per_msg']:>6.2f} {r['overhead_ms_per_msg']:>15.2f} "
                      f"{r['peak_gb']:>7.2f} {r['peak_processes']:>5} {r['accuracy']:>8.4f} {same:>11}", flush=True)


if __name__ == "__main__":
    main()
