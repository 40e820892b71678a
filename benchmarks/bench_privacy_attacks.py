"""Privacy attacks on Fashion-MNIST: gradient inversion (1 vs 5 local steps, DP-like noise) and LiRA.

    nice -n 10 python benchmarks/bench_privacy_attacks.py [--part inversion|lira|all] [--images 3]
        [--iterations 500] [--shadows 16] [--out bench_privacy_attacks.json]

Inversion: the `cnn` model at its seeded initialisation; each of ``--images`` single test images is trained on by
fedsec's own ``train_local`` (SGD, lr 0.05, batch 1) for 1 or 5 local steps, and the server runs Inverting Gradients
(cosine + TV, labels recovered iDLG-style) and iDLG on the update it received. Then DP-SGD-like updates (per-example
clipping to norm 1, Gaussian noise of std ``sigma``) for several ``sigma``. Reports PSNR/SSIM on pixel scale,
label accuracy and seconds.

LiRA (offline, ``--shadows`` OUT shadows) and the loss-threshold attack against (a) an overfit target (100 training
examples, 100 epochs) and (b) a generalising one (2,000 examples, 5 epochs), both the `cnn`; members and
non-members are 100 + 100 candidates; shadows train with the same recipe on disjoint population data. Reports AUC,
TPR at 0.1% / 1% FPR and the empirical epsilon lower bound (delta 1e-5, 95%).

Runs on one thread (as a Ray actor with num_cpus = 1 would).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch.nn import functional as F

from fedsec.audits.empirical_privacy import best_epsilon_lower_bound
from fedsec.audits.image_metrics import FASHION_MNIST
from fedsec.audits.inversion import GradientInversion
from fedsec.audits.lira import LiRA, loss_threshold_attack
from fedsec.data import load_dataset
from fedsec.models import build_model
from fedsec.training import train_local

SHAPE = (1, 28, 28)
LR = 0.05


def client_update(x, y, *, steps: int, sigma: float | None = None, seed: int = 0):
    """Global params and the update of one client holding (x, y) after ``steps`` local SGD steps (batch 1)."""
    model = build_model("cnn", SHAPE, 10, seed=0)
    start = [p.detach().clone() for p in model.parameters()]
    if sigma is None:
        train_local(model, x, y, epochs=steps, batch_size=1, lr=LR, generator=torch.Generator().manual_seed(seed))
        return start, [p.detach() - s for p, s in zip(model.parameters(), start, strict=True)]
    # one DP-SGD step on a batch of one: clip to norm 1, add N(0, sigma^2) per coordinate
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    gen = torch.Generator().manual_seed(seed)
    noisy = [g / max(1.0, float(norm)) + sigma * torch.randn(g.shape, generator=gen) for g in grads]
    return start, [-LR * g for g in noisy]


def run_inversion(args) -> list[dict]:
    ds = load_dataset("fashion-mnist")
    x_all, y_all = torch.tensor(ds.x_test), torch.tensor(ds.y_test)
    rows = []
    cells = [("ig", 1, None), ("idlg", 1, None), ("ig", 5, None)] + [("ig", 1, s) for s in (0.01, 0.1, 1.0)]
    for method, steps, sigma in cells:
        iterations = args.iterations if method == "ig" else max(1, args.iterations // 20)
        attack = GradientInversion(lambda: build_model("cnn", SHAPE, 10), method=method, iterations=iterations,
                                   input_space=FASHION_MNIST)  # fmt: skip
        scores = []
        for i in range(args.images):
            x, y = x_all[i : i + 1], y_all[i : i + 1]
            params, update = client_update(x, y, steps=steps, sigma=sigma, seed=i)
            result = attack.reconstruct(params, update, num_examples=1, input_shape=SHAPE, lr=LR, local_steps=steps,
                                        batch_size=1)  # fmt: skip
            s = result.score(x, y)
            scores.append((s.mean_psnr, s.mean_ssim, s.label_accuracy, result.seconds))
        row = {
            "method": method, "local_steps": steps, "dp_sigma": sigma, "iterations": iterations,
            "psnr_mean": sum(s[0] for s in scores) / len(scores), "psnr_each": [round(s[0], 2) for s in scores],
            "ssim_mean": sum(s[1] for s in scores) / len(scores),
            "label_accuracy": sum(s[2] for s in scores) / len(scores),
            "seconds_per_image": sum(s[3] for s in scores) / len(scores),
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def run_lira(args) -> list[dict]:
    ds = load_dataset("fashion-mnist")
    x, y = torch.tensor(ds.x_train), torch.tensor(ds.y_train)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(x.shape[0], generator=gen)
    rows = []
    for setting, n_train, epochs in (("overfit", 100, 100), ("generalising", 2000, 5)):

        def train_fn(xs, ys, seed, epochs=epochs):
            model = build_model("cnn", SHAPE, 10, seed=seed)
            train_local(model, xs, ys, epochs=epochs, batch_size=32, lr=0.05, momentum=0.9,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
            return model

        members = perm[:n_train]
        nonmembers = perm[n_train : n_train + 100]
        population = perm[n_train + 100 : n_train + 100 + 2 * n_train]
        cand = torch.cat([members[:100], nonmembers])
        is_member = torch.arange(200) < 100
        t0 = time.perf_counter()
        target = train_fn(x[members], y[members], 12345)
        lira = LiRA(train_fn, num_shadows=args.shadows, shadow_fraction=0.5, seed=0)
        r = lira.infer(target, x[cand], y[cand], is_member=is_member, x_population=x[population],
                       y_population=y[population])  # fmt: skip
        yeom = loss_threshold_attack(target, x[cand], y[cand], is_member=is_member)
        for res in (r, yeom):
            eps = best_epsilon_lower_bound(res.fpr, res.tpr, num_members=100, num_nonmembers=100, delta=1e-5)
            row = {"setting": setting, "train_examples": n_train, "epochs": epochs, **res.as_dict(),
                   "eps_lower_95": round(eps.epsilon, 3), "eps_point": round(eps.epsilon_point, 3),
                   "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["inversion", "lira", "all"], default="all")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--shadows", type=int, default=16)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    if args.part in ("inversion", "all"):
        rows += run_inversion(args)
    if args.part in ("lira", "all"):
        rows += run_lira(args)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)


if __name__ == "__main__":
    main()
