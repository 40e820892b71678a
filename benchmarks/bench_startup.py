"""Where a small run's start-up goes: imports, the plan, the data, Ray, Flower's engine with its actors, round 0.

    nice -n 10 python benchmarks/bench_startup.py [--config experiments/digits_smoke.toml] [--repeats 2]
        [--parts imports ray run warm joined] [--as-before [raylet engine start]]

Each part is timed on its own, in a fresh process where it matters (imports and ``ray.init`` are cached after the
first time in a process):

- ``import X``: a fresh interpreter importing only X (``fedsec.cli`` is what ``fedsec --help`` loads first);
- ``fedsec --help``: the whole command, as a user runs it;
- ``plan`` and ``data``: ``load_plan`` and ``build_federated_data`` in this process;
- ``ray.init``: a fresh local Ray (``fedsec.runtime.runner.init_ray``), then its shutdown, in a fresh process;
- ``run to round 0``: ``run_experiment`` from its call to round 0's row (Ray, data into the object store, Flower's
  engine, the actors importing torch and fedsec, the handshake, the initial evaluation); ``handshake + eval``: the
  part inside the ServerApp (round 0's ``seconds``); ``run to round 1``: to the first trained and evaluated model
  (what ``benchmarks/bench_peers.py`` calls "to round 1"); ``whole run``: to the summary.
- ``warm run``: the same two parts for a second run of the config in one process that keeps its Ray and client
  actors between runs (``fedsec.runtime.runner.one_ray_for_many_runs``: what a sweep's cell worker and a privacy
  study do for every cell after the first).
- ``joined run``: a run in a fresh process that joins a local Ray started beforehand (``ray start --head``, then
  ``backend.address`` set to it: what ``fedsec run --set backend.address=auto`` does on a machine that keeps one
  running); the head's own start is not counted.

``--as-before`` measures with Ray's and Flower's own waits instead of fedsec's settings, all three or those named:
``raylet`` (the raylet retrying its object-store connection after 1 s instead of 50 ms,
``fedsec.runtime.ray_start.LOCAL_RAY_CONFIG``), ``engine`` (Flower's engine polling its queues every 1 s instead of
50 ms and scanning for new messages every 0.1 s instead of every 5 ms, ``fedsec.runtime.engine_queues``),
``start`` (Ray's own start of a local Ray: the dashboard's head process and the one-second registration poll,
``fedsec.runtime.ray_start``): run it and the plain command one after the other for a before/after on the same
machine.

Prints one line per part, the best and the median of ``--repeats`` (the median shows what a stall costs: Ray's
start is not the same every time); asserts nothing. Numbers depend on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Ray's and Flower's own waits, for ``--as-before`` (set in every child process through the environment)
AS_BEFORE_ENV = "FEDSEC_BENCH_AS_BEFORE"
RAY_DEFAULTS = {"raylet_client_connect_timeout_milliseconds": 1000, "raylet_client_num_connect_attempts": 10}
PARTS = ("imports", "ray", "run", "warm", "joined")
WAITS = ("raylet", "engine", "start")

RAY_INIT = """
import time
import bench_startup
bench_startup.apply_as_before()
from fedsec.config import BackendConfig
from fedsec.runtime.runner import init_ray, shutdown_ray
t = time.perf_counter()
init_ray(BackendConfig())
print(time.perf_counter() - t)
shutdown_ray()
"""


def apply_as_before() -> None:
    """In this process, Ray's and Flower's own waits in place of fedsec's settings, when ``--as-before`` asked."""
    waits = [w for w in os.environ.get(AS_BEFORE_ENV, "").split(",") if w]
    if not waits:
        return
    from fedsec.runtime import engine_queues, ray_start

    if "raylet" in waits:
        ray_start.LOCAL_RAY_CONFIG = dict(RAY_DEFAULTS)
    if "engine" in waits:
        engine_queues.POLL_S = 1.0  # Flower's engine: get(timeout=1.0)
        engine_queues.EXTRACT_MIN_S = 0.1  # and a scan for new messages every 0.1 s
    if "start" in waits:
        ray_start.ENABLED = False


def fresh(code: str) -> float:
    """Wall seconds of a fresh interpreter running ``code``."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - started


def command(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - started


def ray_init_seconds() -> float:
    out = subprocess.run([sys.executable, "-c", RAY_INIT], check=True, cwd=ROOT / "benchmarks", capture_output=True,
                         text=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_parts(config: Path) -> dict[str, float]:
    """plan, data, and run_experiment's parts, in this process (run once per fresh process: call it in one)."""
    from fedsec.config.loading import load_experiment
    from fedsec.data.federated import build_federated_data
    from fedsec.plan import build_plan

    apply_as_before()
    t = time.perf_counter()
    plan = build_plan(load_experiment(config))
    parts = {"plan": time.perf_counter() - t}
    t = time.perf_counter()
    build_federated_data(plan.data_config, plan.seed)
    parts["data"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as out:
        to_round0, inside, whole, to_round1 = timed_run(plan, Path(out) / "run")
    parts["whole run"] = whole
    parts["run to round 0"] = to_round0
    parts["run to round 1 (the first trained model)"] = to_round1
    parts["handshake + eval (inside the ServerApp)"] = inside
    return parts


def warm_parts(config: Path) -> dict[str, float]:
    """The second of two runs of ``config`` in one keep-Ray block: to round 0, and whole."""
    from fedsec.config.loading import load_experiment
    from fedsec.plan import build_plan
    from fedsec.runtime.runner import one_ray_for_many_runs

    apply_as_before()
    plan = build_plan(load_experiment(config))
    with tempfile.TemporaryDirectory() as out, one_ray_for_many_runs():
        timed_run(plan, Path(out) / "first")
        to_round0, _, whole, _ = timed_run(plan, Path(out) / "second")
    return {"warm run to round 0": to_round0, "warm whole run": whole}


def joined_parts(config: Path, address: str) -> dict[str, float]:
    """A run of ``config`` joining the running Ray at ``address``: to round 0, and whole."""
    from fedsec.config.loading import load_experiment
    from fedsec.plan import build_plan

    apply_as_before()
    plan = build_plan(load_experiment(config, [f"backend.address='{address}'"]))
    with tempfile.TemporaryDirectory() as out:
        to_round0, _, whole, _ = timed_run(plan, Path(out) / "run")
    return {"joined run to round 0": to_round0, "joined whole run": whole}


def with_ray_head(child: list[str]) -> str:
    """``child`` (a command) run with ``{address}`` filled in, while a local Ray head runs; its stdout."""
    ray = str(Path(sys.executable).with_name("ray"))
    port = 6390
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"],
                   check=True, capture_output=True)
    try:
        return subprocess.run([part.format(address=f"127.0.0.1:{port}") for part in child], check=True, cwd=ROOT,
                              capture_output=True, text=True).stdout
    finally:
        subprocess.run([ray, "stop", "--force"], check=False, capture_output=True)


def timed_run(plan, out: Path) -> tuple[float, float, float, float]:
    """``run_experiment(plan, out)``: seconds from its call to round 0's row, round 0's own ``seconds`` (inside the
    ServerApp), seconds from its call to its return, and from its call to round 1's row."""
    from fedsec.runtime.runner import run_experiment

    rows: dict[str, float] = {}
    started = time.perf_counter()

    def on_round(row: dict) -> None:
        if int(row["round"]) == 0:
            rows["at"] = time.perf_counter() - started
            rows["inside"] = float(row["seconds"])
        elif int(row["round"]) == 1:
            rows["round 1"] = time.perf_counter() - started

    run_experiment(plan, out, on_round=on_round)
    return rows["at"], rows["inside"], time.perf_counter() - started, rows["round 1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "experiments/digits_smoke.toml"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="imports (and fedsec --help), ray (ray.init alone), run (a lone run's parts), warm (a "
                             "second run keeping Ray and actors), joined (a run joining a running Ray)")
    parser.add_argument("--as-before", nargs="*", choices=WAITS,
                        help="Ray's and Flower's own waits instead of fedsec's settings, all or those named (a "
                             "before/after)")
    parser.add_argument("--run-parts", action="store_true", help=argparse.SUPPRESS)  # the child's jobs
    parser.add_argument("--warm-parts", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--joined-parts", help=argparse.SUPPRESS)  # the Ray address to join
    args = parser.parse_args()
    if args.joined_parts:
        for key, value in joined_parts(Path(args.config), args.joined_parts).items():
            print(f"{key}\t{value}")
        return
    if args.run_parts or args.warm_parts:
        for key, value in (run_parts if args.run_parts else warm_parts)(Path(args.config)).items():
            print(f"{key}\t{value}")
        return
    as_before = list(WAITS) if args.as_before == [] else args.as_before or []
    os.environ[AS_BEFORE_ENV] = ",".join(as_before)  # the children read it (apply_as_before)
    seen: dict[str, list[float]] = {}

    def keep(key: str, value: float) -> None:
        seen.setdefault(key, []).append(value)

    def keep_lines(text: str) -> None:
        for line in text.strip().splitlines():
            key, value = line.rsplit("\t", 1)
            keep(key, float(value))

    fedsec = str(Path(sys.executable).with_name("fedsec"))
    for _ in range(args.repeats):
        if "imports" in args.parts:
            for module in ("torch", "flwr.simulation", "ray", "fedsec.cli"):
                keep(f"import {module}", fresh(f"import {module}"))
            keep("fedsec --help", command([fedsec, "--help"]))
        if "ray" in args.parts:
            keep("ray.init (local) alone", ray_init_seconds())
        for part, child in (("run", "--run-parts"), ("warm", "--warm-parts")):
            if part in args.parts:
                keep_lines(subprocess.run([sys.executable, __file__, child, "--config", args.config], check=True,
                                          cwd=ROOT, capture_output=True, text=True).stdout)
        if "joined" in args.parts:
            keep_lines(with_ray_head([sys.executable, __file__, "--joined-parts", "{address}", "--config",
                                      args.config]))
    load = Path("/proc/loadavg").read_text().split()[0]
    own = ", ".join(as_before)
    waits = f"Ray's and Flower's own waits for {own} (--as-before)" if as_before else "fedsec's settings"
    print(f"start-up of {args.config} ({args.repeats} repeats, {waits}; load average {load})")
    print(f"  {'':<42} {'best':>7}   {'median':>7}")
    for key, values in seen.items():
        print(f"  {key:<42} {min(values):7.2f} s {statistics.median(values):7.2f} s")


if __name__ == "__main__":
    main()
