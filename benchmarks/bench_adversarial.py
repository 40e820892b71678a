"""Cost of adversarial training per client round, and a central sanity check of the evasion audit's direction.

Part 1: one client's local epoch on 3,000 Fashion-MNIST examples with the ``cnn`` model,
batch 32, one thread: clean vs FGSM-AT (Wong et al. 2020, random start) vs PGD-AT (Madry et al. 2018, steps 3 and 7),
ratio 1.0, best of ``repeats``; printed as seconds and as ratios to clean. Physics: a PGD step is a forward and an
input-only backward, so PGD-AT costs about steps + 1 clean steps (a bit less: no weight gradients in the attack) and
FGSM-AT about 2.

Part 2 (sanity check, ``--central-epochs 0`` skips it): train the ``cnn`` centrally with SGD (momentum 0.9) on
Fashion-MNIST to > 80% clean accuracy, then R under FGSM and PGD (epsilon 0.1, 10 steps) and C&W L2's success rate
and median L2 on ``examples`` seeded test points. Expected: PGD R near 0, FGSM R above it, C&W success near 100%.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_adversarial.py``. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fedsec.audits.evasion import EvasionAudit, adversarial_batch
from fedsec.audits.input_space import InputSpace
from fedsec.data import load_dataset
from fedsec.models import build_model
from fedsec.training import evaluate, train_local

FMNIST_SPACE = InputSpace.from_normalisation(0.2860, 0.3530)


@dataclass
class Args:
    client_examples: int = 3000
    """examples in the benchmarked client's local epoch"""
    batch_size: int = 32
    """local batch size"""
    epsilon: float = 0.1
    """L-inf budget on [0, 1] pixels, for training and for the audit"""
    repeats: int = 3
    """best of this many timed epochs per setting"""
    central_epochs: int = 3
    """epochs of central training for part 2 (0 skips part 2)"""
    central_examples: int = 60000
    """training examples for part 2"""
    examples: int = 200
    """test points for the audit in part 2"""
    seed: int = 0
    """seed of the data subset, the model and the attacks"""


def local_epoch(model, x, y, *, method: str | None, steps: int, args: Args, generator: torch.Generator) -> float:
    """One shuffled SGD epoch (lr 0.01, momentum 0.9), optionally on adversarial batches; returns seconds."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    start = time.perf_counter()
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), args.batch_size):
        xb, yb = x[order[i : i + args.batch_size]], y[order[i : i + args.batch_size]]
        if method is not None:
            xb, yb = adversarial_batch(
                model, xb, yb, method=method, epsilon=args.epsilon, steps=steps, ratio=1.0, space=FMNIST_SPACE,
                generator=generator,
            )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()
    return time.perf_counter() - start


def part1(ds, args: Args) -> None:
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(ds.x_train), generator=g)[: args.client_examples]
    x, y = torch.from_numpy(ds.x_train)[idx], torch.from_numpy(ds.y_train)[idx]
    settings = [("clean", None, 0), ("fgsm-at", "fgsm", 1), ("pgd-at-3", "pgd", 3), ("pgd-at-7", "pgd", 7)]
    times = {name: float("inf") for name, _, _ in settings}
    for r in range(args.repeats):  # round-robin, so a burst of load on the shared cores hits every setting alike
        for name, method, steps in settings:
            model = build_model("cnn", ds.input_shape, ds.num_classes, seed=args.seed)
            gen = torch.Generator().manual_seed(args.seed + r)
            seconds = local_epoch(model, x, y, method=method, steps=steps, args=args, generator=gen)
            times[name] = min(times[name], seconds)
    for name, method, steps in settings:
        print(
            f"{name:9s} {times[name]:7.2f} s  x{times[name] / times['clean']:.2f} of clean  "
            f"(physics: ~{steps + 1 if method else 1})"
        )


def part2(ds, args: Args) -> None:
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(ds.x_train), generator=g)[: args.central_examples]
    x, y = torch.from_numpy(ds.x_train)[idx], torch.from_numpy(ds.y_train)[idx]
    xt, yt = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
    model = build_model("cnn", ds.input_shape, ds.num_classes, seed=args.seed)
    start = time.perf_counter()
    train_local(model, x, y, epochs=args.central_epochs, batch_size=32, lr=0.05, momentum=0.9, generator=g)
    clean = evaluate(model, xt, yt, num_classes=ds.num_classes).accuracy
    print(f"central cnn: {args.central_epochs} epochs on {len(x)} in {time.perf_counter() - start:.0f} s, "
          f"clean test accuracy {clean:.4f}")  # fmt: skip
    audit = EvasionAudit(
        model, space=FMNIST_SPACE, attacks=("fgsm", "pgd", "cw"), epsilon=args.epsilon, steps=10,
        examples=args.examples, seed=args.seed,
    )  # fmt: skip
    start = time.perf_counter()
    result = audit.evaluate(xt, yt)
    print(f"audit on {args.examples} test points in {time.perf_counter() - start:.0f} s "
          f"(clean on subset {result.clean_correct} / {result.total})")  # fmt: skip
    for name, entry in result.as_summary().items():
        print(f"  {name}: {entry}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Args):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = Args(**vars(parser.parse_args()))
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    ds = load_dataset("fashion-mnist")
    print(f"torch {torch.__version__}, 1 thread; {args}")
    part1(ds, args)
    if args.central_epochs > 0:
        part2(ds, args)


if __name__ == "__main__":
    main()
