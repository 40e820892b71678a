"""Central DP-SGD on Fashion-MNIST: test accuracy at epsilon 1, 2, 4, 8 and without DP, per model and defaults.

    nice -n 10 .venv/bin/python benchmarks/bench_dpsgd_models.py [--models cnn_tanh,cnn] [--examples 10000]
        [--epochs 10] [--batch-size 250] [--lr 0.5] [--clip 1.0] [--seeds 0]

One process, one thread per run, fedsec's DP-SGD step (:func:`fedsec.privacy.dp_sgd.dp_sgd_epoch`: Poisson
batches, per-sample clipping to --clip, Gaussian noise) with the noise calibrated by fedsec's dual accountant
(Opacus RDP and dp_accounting RDP, the larger within the budget, delta 1e-5) for the planned steps. Prints one row
per (model, epsilon, seed) and the mean over seeds. The point is to find defaults under which the budget changes the
accuracy (Tramer and Boneh, ICLR 2021: large batches, tuned lr; Papernot et al., AAAI 2021: tanh).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from fedsec.data import load_dataset
from fedsec.models import build_model
from fedsec.privacy import calibrate_noise, epsilon_after
from fedsec.privacy.dp_sgd import dp_sgd_epoch
from fedsec.training import evaluate, train_local


def make(name: str, shape: tuple[int, ...], seed: int) -> torch.nn.Module:
    return build_model(name, shape, 10, seed=seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cnn_tanh,cnn")
    p.add_argument("--epsilons", default="1,2,4,8,inf")
    p.add_argument("--examples", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--seeds", default="0")
    a = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    x, y = torch.from_numpy(data.x_train[: a.examples]), torch.from_numpy(data.y_train[: a.examples]).long()
    xt, yt = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test).long()
    steps_per_epoch = math.ceil(a.examples / a.batch_size)
    q, steps = 1 / steps_per_epoch, steps_per_epoch * a.epochs
    print(f"n={a.examples} batch={a.batch_size} q={q:.4f} epochs={a.epochs} steps={steps} lr={a.lr} "
          f"momentum={a.momentum} clip={a.clip} delta={a.delta}", flush=True)
    for name in a.models.split(","):
        for eps_s in a.epsilons.split(","):
            eps = float(eps_s)
            accs = []
            for seed in (int(s) for s in a.seeds.split(",")):
                model = make(name, tuple(x.shape[1:]), seed)
                opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
                t0 = time.perf_counter()
                if math.isinf(eps):
                    z, spent = 0.0, math.inf
                    train_local(model, x, y, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, momentum=a.momentum,
                                generator=torch.Generator().manual_seed(seed))
                else:
                    z = calibrate_noise(epsilon=eps, delta=a.delta, sample_rate=q, steps=steps)
                    spent = epsilon_after(noise_multiplier=z, sample_rate=q, steps=steps, delta=a.delta)
                    gen = torch.Generator().manual_seed(seed)
                    for _ in range(a.epochs):
                        dp_sgd_epoch(model, opt, x, y, batch_size=a.batch_size, max_grad_norm=a.clip,
                                     noise_multiplier=z, generator=gen)
                acc = evaluate(model, xt, yt, num_classes=10).accuracy
                accs.append(acc)
                print(f"{name:>12} eps={eps:<5g} seed={seed} z={z:.3f} spent={spent:.3f} acc={acc:.4f} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
            mean = sum(accs) / len(accs)
            std = (sum((v - mean) ** 2 for v in accs) / max(len(accs) - 1, 1)) ** 0.5
            print(f"{name:>12} eps={eps:<5g} mean {mean:.4f} +- {std:.4f} over {len(accs)} seeds", flush=True)


if __name__ == "__main__":
    main()
