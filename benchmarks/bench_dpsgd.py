"""Local training time with and without DP-SGD (Opacus) for one client, per grad_sample_mode.

    python benchmarks/bench_dpsgd.py [--model cnn] [--examples 3000] [--batch-size 32]

Trains one epoch of one client's Fashion-MNIST data in this process on one thread (as a Ray actor with
num_cpus = 1 would), once plainly (fedsec.training.train_local) and once per Opacus grad_sample_mode with Poisson
sampling, and prints seconds and the ratio to the plain epoch (best of 3 each).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from fedsec.data import load_fashion_mnist
from fedsec.models import build_model
from fedsec.training import train_local


def dp_epoch(model_name: str, x, y, batch_size: int, mode: str) -> float:
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    model = build_model(model_name, tuple(x.shape[1:]), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m, opt, dl = PrivacyEngine().make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                  noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True,
                                                  grad_sample_mode=mode)
        t0 = time.perf_counter()
        for xb, yb in dl:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(xb), yb, reduction="sum").div(max(len(yb), 1)).backward()
            opt.step()
    return time.perf_counter() - t0


def plain_epoch(model_name: str, x, y, batch_size: int) -> float:
    torch.manual_seed(0)
    model = build_model(model_name, tuple(x.shape[1:]), 10)
    t0 = time.perf_counter()
    train_local(model, x, y, epochs=1, batch_size=batch_size, lr=0.01, momentum=0.9,
                generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_fashion_mnist()
    x, y = torch.from_numpy(data.x_train[: args.examples]), torch.from_numpy(data.y_train[: args.examples])
    plain = min(plain_epoch(args.model, x, y, args.batch_size) for _ in range(3))
    print(f"model {args.model}, {args.examples} examples, batch {args.batch_size}, 1 thread")
    print(f"{'mode':>10} {'seconds':>8} {'ratio':>6}")
    print(f"{'plain':>10} {plain:>8.2f} {1.0:>6.2f}")
    for mode in ("hooks", "ew", "functorch"):
        try:
            seconds = min(dp_epoch(args.model, x, y, args.batch_size, mode) for _ in range(3))
        except Exception as e:  # noqa: BLE001 - a mode the model does not support is reported, not fatal
            print(f"{mode:>10} failed: {e}")
            continue
        print(f"{mode:>10} {seconds:>8.2f} {seconds / plain:>6.2f}")


if __name__ == "__main__":
    main()
