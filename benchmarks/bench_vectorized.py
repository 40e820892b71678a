"""One cohort's local training: one client after another (fedsec's per-client path) against all of them stacked
(``train.vectorize``, :func:`fedsec.training.vectorized.train_stacked`); with ``--dp``, local DP-SGD
(:func:`fedsec.privacy.dp_sgd.dp_sgd_epoch` per client against
:func:`fedsec.training.stacked_dp_sgd.dp_train_stacked`; noise multiplier 1, clip 1).

    nice -n 10 .venv/bin/python benchmarks/bench_vectorized.py [--threads 2] [--repeats 3] [--dp]

Rows (the cohorts of issue-sized workloads, Fashion-MNIST-shaped data, one local epoch of SGD with momentum 0.9,
batch 32): the CNN with 100 clients of 60 examples (1,000 registered / 100 per round), logreg with 1,000 clients of 6
examples (10,000 / 1,000), the CNN with 10 clients of 600 examples (100 / 10). The per-client path reuses one model
and loads the global weights before each client, as a fedsec actor does (convolution weights channels-last on a CPU,
:mod:`fedsec.models.layout`, except under DP-SGD). Prints the best of ``--repeats`` for each (after one warm-up
call): a plain loop (the same clients one after another on a model as PyTorch builds it, contiguous), fedsec's
per-client path and its ratio to the plain loop, the stacked path and its ratio to the per-client path, the largest
parameter difference between the per-client and stacked paths; then a floor no stacking can beat on this machine:
one model (fedsec's layout) trained on all the clients' examples in batches of clients x 32 (the same arithmetic per
step in one dense kernel), and its ratio to the per-client path.
"""

from __future__ import annotations

import argparse
import time

import torch

from fedsec.models import build_model, channels_last_on_cpu
from fedsec.privacy.dp_sgd import dp_sgd_epoch
from fedsec.training.local import train_local
from fedsec.training.stacked_dp_sgd import dp_train_stacked
from fedsec.training.vectorized import train_stacked

ROWS = (("cnn", 100, 60), ("logreg", 1000, 6), ("cnn", 10, 600))


def one_after_another(model: torch.nn.Module, xs, ys, seeds, dp: bool = False
                      ) -> tuple[float, list[dict[str, torch.Tensor]]]:
    start = {k: v.clone() for k, v in model.state_dict().items()}
    t0, out = time.perf_counter(), []
    for x, y, seed in zip(xs, ys, seeds, strict=True):
        model.load_state_dict(start)
        generator = torch.Generator().manual_seed(seed)
        if dp:
            dp_sgd_epoch(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), x, y, batch_size=32,
                         max_grad_norm=1.0, noise_multiplier=1.0, generator=generator)
        else:
            train_local(model, x, y, epochs=1, batch_size=32, lr=0.05, momentum=0.9, generator=generator)
        out.append({k: v.detach().clone() for k, v in model.named_parameters()})
    seconds = time.perf_counter() - t0
    model.load_state_dict(start)
    return seconds, out


def stacked(model: torch.nn.Module, xs, ys, seeds, dp: bool = False) -> tuple[float, dict[str, torch.Tensor]]:
    t0 = time.perf_counter()
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    if dp:
        result = dp_train_stacked(model, xs, ys, epochs=1, batch_size=32, lr=0.05, momentum=0.9, max_grad_norm=1.0,
                                  noise_multipliers=[1.0] * len(xs), generators=generators)
    else:
        result = train_stacked(model, xs, ys, epochs=1, batch_size=32, lr=0.05, momentum=0.9, generators=generators)
    return time.perf_counter() - t0, result.params


def one_big_model(model: torch.nn.Module, xs, ys) -> float:
    """A floor for any stacking of these clients: one model, every client's examples in batches of clients x 32
    (the same examples and the same forward and backward work per step as the stacked path, in the best-shaped
    kernels: one dense convolution over all clients' examples instead of one per client)."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.cat(xs), torch.cat(ys)
    t0 = time.perf_counter()
    train_local(model, x, y, epochs=1, batch_size=32 * len(xs), lr=0.05, momentum=0.9,
                generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - t0
    model.load_state_dict(start)
    return seconds


def batch_sweep(batches: list[int], repeats: int) -> None:
    """The CNN's training throughput on this machine by batch size (6,000 examples, one model, one epoch): the
    arithmetic of the 100 x 60 row at each batch size, whatever the implementation that batches it."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6000, 1, 28, 28, generator=g), torch.randint(0, 10, (6000,), generator=g)
    model = channels_last_on_cpu(build_model("cnn", (1, 28, 28), 10, seed=0))  # fedsec's layout on a CPU
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for batch in batches:
        best = float("inf")
        for _ in range(repeats):
            model.load_state_dict(start)
            t0 = time.perf_counter()
            train_local(model, x, y, epochs=1, batch_size=batch, lr=0.05, momentum=0.9,
                        generator=torch.Generator().manual_seed(0))
            best = min(best, time.perf_counter() - t0)
        print(f"cnn, 6,000 examples, batch {batch:5d}: {best:.3f} s ({6000 / best:,.0f} examples/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dp", action="store_true", help="local DP-SGD (noise multiplier 1, clip 1)")
    parser.add_argument("--batch-sweep", type=int, nargs="*", metavar="B",
                        help="instead: the CNN's throughput at these batch sizes (e.g. 32 128 256 1024 3200)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.batch_sweep:
        batch_sweep(args.batch_sweep, args.repeats)
        return
    print(f"torch {torch.__version__}, {args.threads} threads, best of {args.repeats}{', DP-SGD' if args.dp else ''}")
    print(f"{'model':8} {'clients':>7} {'examples':>8} {'plain s':>8} {'one by one s':>13} {'vs plain':>8} "
          f"{'stacked s':>10} {'ratio':>6} {'max diff':>9} {'floor s':>8} {'floor ratio':>11}")
    for name, clients, examples in ROWS:
        shape = (1, 28, 28) if name == "cnn" else (784,)
        g = torch.Generator().manual_seed(0)
        xs = [torch.rand(examples, *shape, generator=g) for _ in range(clients)]
        ys = [torch.randint(0, 10, (examples,), generator=g) for _ in range(clients)]
        seeds = list(range(clients))
        model = build_model(name, shape, 10, seed=0)  # as a fedsec actor has it: channels-last, but not for DP-SGD
        model = model if args.dp else channels_last_on_cpu(model)
        plain_model = build_model(name, shape, 10, seed=0)
        one_after_another(plain_model, xs[:2], ys[:2], seeds[:2], args.dp)  # warm-up
        plain = min(one_after_another(plain_model, xs, ys, seeds, args.dp)[0] for _ in range(args.repeats))
        stacked(model, xs[:2], ys[:2], seeds[:2], args.dp)  # warm-up: torch.func's first call
        loop = min(one_after_another(model, xs, ys, seeds, args.dp)[0] for _ in range(args.repeats))
        runs = [stacked(model, xs, ys, seeds, args.dp) for _ in range(args.repeats)]
        fast = min(r[0] for r in runs)
        _, reference = one_after_another(model, xs, ys, seeds, args.dp)
        diff = max(float((runs[0][1][k][i] - reference[i][k]).abs().max()) for i in range(clients)
                   for k in reference[i])
        floor = min(one_big_model(model, xs, ys) for _ in range(args.repeats))
        print(f"{name:8} {clients:7d} {examples:8d} {plain:8.3f} {loop:13.3f} {loop / plain:8.2f} {fast:10.3f} "
              f"{fast / loop:6.2f} {diff:9.1e} {floor:8.3f} {floor / loop:11.2f}")


if __name__ == "__main__":
    main()
