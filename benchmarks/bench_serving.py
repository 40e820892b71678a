"""Serving benchmark: /predict load test (no monitor, PRADA, the extraction warning) and Knockoff extraction on
Fashion-MNIST against an open endpoint, against top-1 + PRADA blocking and against top-1 + extraction-warning
blocking.

Bounded and local only: the servers run in child processes on 127.0.0.1, the client sends a fixed number of
requests sequentially over one keep-alive connection, and everything stops by itself. Throughput is requests over
the summed request latencies of one sequential client; the monitor-off and monitor-on servers are measured in
alternation (paired), because other processes on a shared machine make back-to-back runs drift.

    nice -n 10 .venv/bin/python benchmarks/bench_serving.py [--requests 300] [--budget 4000] [--out bench.json]
        [--cells open,prada_knockoff,prada_jacobian,warning_knockoff]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

from fedsec.extraction import RemoteModel, jacobian_extract, knockoff_extract
from fedsec.serving import AccessPolicy, create_app, free_port, load_final_model, make_key
from fedsec.serving.reference import raw_dataset, train_reference_model


@dataclass
class Args:
    requests: int = 300  # per load-test cell (batch 64 cells use requests // 3; 0: skip the load test)
    budget: int = 4000  # Knockoff query budget (0: skip the extraction part)
    train_examples: int = 20000  # target model: first N Fashion-MNIST training images
    epochs: int = 3  # target model epochs
    out: str = ""  # write all numbers as JSON here
    run_dir: str = ""  # reuse a target run directory (final_model.pt) instead of training one
    cells: str = "open,prada_knockoff,prada_jacobian,warning_knockoff"  # extraction cells to run


def _serve(run_dir: str, policy: dict, port: int) -> None:
    import uvicorn

    torch.set_num_threads(1)
    app = create_app(load_final_model(run_dir), AccessPolicy.from_dict(policy))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


class Server:
    """The app in a child process (so client and server do not share a GIL)."""

    def __init__(self, run_dir: Path, policy: dict) -> None:
        self.port = free_port()
        self.proc = mp.get_context("spawn").Process(target=_serve, args=(str(run_dir), policy, self.port), daemon=True)

    def __enter__(self) -> str:
        self.proc.start()
        url = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    return url
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.join(10)


def policy(output: str, monitor: str, kind: str = "prada") -> tuple[dict, str]:
    key, hashed = make_key("bench")
    settings = {"mode": monitor, "kind": kind}
    settings |= {"delta": 0.9, "min_queries": 100} if kind == "prada" else {"threshold": 0.8, "min_queries": 200}
    return {
        "max_batch_size": 256,
        "roles": {"r": {"permissions": ["predict", "predict_probabilities"], "output": output}},
        "keys": [{"id": "bench", "role": "r", "hash": hashed}],
        "monitor": settings,
    }, key


def load_test(run_dir: Path, x: np.ndarray, *, batch: int, requests: int) -> list[dict]:
    """Paired load test: three servers (no monitor / PRADA logging / extraction warning logging) get the same
    honest i.i.d. stream, request by request in rotation, so drifting load from other processes hits all alike."""
    order = np.random.default_rng(0).permutation(len(x))  # an honest i.i.d. stream: no input sent twice
    if (requests + 5) * batch > len(x):
        raise ValueError(f"requests={requests} x batch={batch} exceeds the {len(x)} test images")
    bodies = [json.dumps({"inputs": x[order[i * batch : (i + 1) * batch]].tolist()}).encode()
              for i in range(requests + 5)]
    modes = ("off", "prada", "extraction_warning")
    policies = [policy("probabilities", "off"), policy("probabilities", "log", "prada"),
                policy("probabilities", "log", "extraction_warning")]
    latencies: dict[str, list[float]] = {m: [] for m in modes}
    with Server(run_dir, policies[0][0]) as url_off, Server(run_dir, policies[1][0]) as url_prada, \
            Server(run_dir, policies[2][0]) as url_warning, httpx.Client(timeout=60) as client:
        targets = [(m, url, {"X-API-Key": key, "content-type": "application/json"})
                   for m, url, (_, key) in zip(modes, (url_off, url_prada, url_warning), policies, strict=True)]
        for i, body in enumerate(bodies):
            shift = i % len(targets)
            for mode, url, headers in targets[shift:] + targets[:shift]:
                t = time.perf_counter()
                r = client.post(url + "/predict", content=body, headers=headers)
                if i >= 5:  # the first 5 requests warm up
                    latencies[mode].append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"{mode}: HTTP {r.status_code} {r.text}")
    rows = []
    for mode in modes:
        lat = np.asarray(latencies[mode])
        rows.append({"batch": batch, "monitor": mode, "requests": requests, "rps": len(lat) / lat.sum(),
                     "inputs_per_s": len(lat) * batch / lat.sum(), "p50_ms": 1e3 * float(np.percentile(lat, 50)),
                     "p99_ms": 1e3 * float(np.percentile(lat, 99))})
    return rows


def extraction(run_dir: Path, args: Args) -> list[dict]:
    served = load_final_model(run_dir)
    _, _, x_test, y_test, _ = raw_dataset("fashion-mnist")
    pool, eval_x, eval_y = x_test[:5000], x_test[5000:], y_test[5000:]
    target = served.probabilities(torch.from_numpy(eval_x)).argmax(1).numpy()
    common = dict(eval_x=eval_x, eval_y=eval_y, target_labels=target, surrogate="cnn", epochs=10, seed=0)
    rows = []
    cells = {"open": ("open (probabilities, no monitor)", "probabilities", "off", "prada", "knockoff"),
             "prada_knockoff": ("top-1 + PRADA block", "label", "block", "prada", "knockoff"),
             "prada_jacobian": ("top-1 + PRADA block", "label", "block", "prada", "jacobian"),
             "warning_knockoff": ("top-1 + extraction warning block", "label", "block", "extraction_warning",
                                  "knockoff")}
    chosen = [c for c in args.cells.split(",") if c]
    if unknown := [c for c in chosen if c not in cells]:
        raise SystemExit(f"--cells: unknown {unknown}; choose from {sorted(cells)}")
    for name, output, monitor, kind, method in (cells[c] for c in chosen):
        pol, key = policy(output, monitor, kind)
        with Server(run_dir, pol) as url:
            remote = RemoteModel(url, key=key, batch_size=50)
            t = time.perf_counter()
            if method == "knockoff":
                res = knockoff_extract(remote, pool, budget=args.budget, **common)
            else:
                res = jacobian_extract(remote, pool[:100], budget=args.budget, **common)
            seconds = time.perf_counter() - t
        rows.append({"endpoint": name, "method": method, "budget": args.budget, "queries_answered": res.queries_spent,
                     "stopped_early": res.stopped_early, "stop_decision": res.stop_decision,
                     "final_agreement": res.final_agreement, "final_accuracy": res.final_accuracy,
                     "curve": [(p.queries, round(p.agreement, 4)) for p in res.curve], "seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in vars(Args()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = Args(**vars(parser.parse_args()))
    torch.set_num_threads(1)
    _, _, x_test, y_test, _ = raw_dataset("fashion-mnist")
    if args.run_dir:
        run_dir = Path(args.run_dir)
        probs = load_final_model(run_dir).probabilities(torch.from_numpy(x_test))
        acc = float((probs.argmax(1).numpy() == y_test).mean())
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="bench-serving-")) / "run"
        t = time.perf_counter()
        acc = train_reference_model(run_dir, model="cnn", dataset="fashion-mnist", epochs=args.epochs,
                                    max_train=args.train_examples, seed=0)
        print(f"trained in {time.perf_counter() - t:.0f} s", flush=True)
    print(f"target cnn on Fashion-MNIST ({run_dir}): test accuracy {acc:.4f}", flush=True)
    load = []
    for batch in (1, 64) if args.requests else ():
        n = args.requests if batch == 1 else max(args.requests // 3, 20)
        for row in load_test(run_dir, x_test, batch=batch, requests=n):
            load.append(row)
            print(json.dumps(row), flush=True)
    for batch in (1, 64) if args.requests else ():
        off = next(r for r in load if r["batch"] == batch and r["monitor"] == "off")
        for kind in ("prada", "extraction_warning"):
            on = next(r for r in load if r["batch"] == batch and r["monitor"] == kind)
            print(f"batch {batch}: {kind} costs {100 * (1 - on['rps'] / off['rps']):.1f}% of throughput", flush=True)
    rows = extraction(run_dir, args) if args.budget else []
    if args.out:
        Path(args.out).write_text(json.dumps({"target_accuracy": acc, "load": load, "extraction": rows}, indent=2))


if __name__ == "__main__":
    main()
