"""Local training time with and without DP-SGD for one client, per per-sample-gradient engine.

    nice -n 10 .venv/bin/python benchmarks/bench_dpsgd.py [--models cnn,logreg,mlp] [--examples 3000] [--batch-size 32]

Trains one epoch of one client's Fashion-MNIST data in this process on one thread (as a Ray actor with
num_cpus = 1 would), once plainly (fedsec.training.train_local) and once per DP-SGD engine, all with the same
clipping (C = 1), noise (z = 1) and Poisson sampling (q = 1 / ceil(n / batch)), and prints seconds and the ratio to
the plain epoch (best of --repeats each). Engines:

- ``opacus-hooks`` / ``opacus-ew`` / ``opacus-functorch``: ``PrivacyEngine.make_private`` with that
  grad_sample_mode and Opacus' Poisson DataLoader (fedsec's clients with ``privacy.grad_sample_mode`` hooks / ew /
  functorch).
- ``opacus-ghost``: Opacus 1.6 ghost clipping (``grad_sample_mode="ghost"``, criterion wrapped, two backward passes).
- ``opacus-hooks-sliced``: Opacus' GradSampleModule (hooks) and DPOptimizer, batches sliced from in-memory tensors
  with a Bernoulli mask instead of the DataLoader.
- ``fedsec-vmap`` / ``fedsec-unfold``: :func:`fedsec.privacy.dp_sgd.dp_sgd_epoch` (sliced batches) with torch.func
  per-sample gradients, or with fedsec's unfold kernel (one forward, one backward w.r.t. layer outputs only, per-sample
  weight gradients by einsum / unfold + bmm); ``fedsec-auto``: the kernel fedsec's clients use by default
  (``privacy.grad_sample_mode = "fedsec"``: unfold for Linear-only models, vmap for CNNs).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from fedsec.data import load_dataset
from fedsec.models import build_model
from fedsec.training import train_local

Z, C, LR = 1.0, 1.0, 0.01


def _model(name: str, x: torch.Tensor) -> torch.nn.Module:
    return build_model(name, tuple(x.shape[1:]), 10, seed=0)


def opacus_epoch(name: str, x, y, batch_size: int, mode: str) -> float:
    from opacus import PrivacyEngine

    model = _model(name, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine()
        if mode == "ghost":
            criterion = torch.nn.CrossEntropyLoss()
            m, opt, crit, dl = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                   criterion=criterion, noise_multiplier=Z, max_grad_norm=C,
                                                   poisson_sampling=True, grad_sample_mode="ghost")
        else:
            m, opt, dl = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                             noise_multiplier=Z, max_grad_norm=C, poisson_sampling=True,
                                             grad_sample_mode=mode)
            crit = torch.nn.CrossEntropyLoss()
        t0 = time.perf_counter()
        for xb, yb in dl:
            opt.zero_grad(set_to_none=True)
            crit(m(xb), yb).backward()
            opt.step()
    return time.perf_counter() - t0


def opacus_sliced_epoch(name: str, x, y, batch_size: int) -> float:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from fedsec.privacy.dp_sgd import poisson_batches

    n = x.shape[0]
    steps = -(-n // batch_size)
    q = 1 / steps
    m = GradSampleModule(_model(name, x))
    opt = DPOptimizer(torch.optim.SGD(m.parameters(), lr=LR, momentum=0.9), noise_multiplier=Z, max_grad_norm=C,
                      expected_batch_size=int(n * q))
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for idx in poisson_batches(n, sample_rate=q, steps=steps, generator=gen):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(m(x[idx]), y[idx]).backward()
        opt.step()
    return time.perf_counter() - t0


def fedsec_epoch(name: str, x, y, batch_size: int, kernel: str) -> float:
    from fedsec.privacy.dp_sgd import dp_sgd_epoch

    model = _model(name, x)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    t0 = time.perf_counter()
    dp_sgd_epoch(model, opt, x, y, batch_size=batch_size, max_grad_norm=C, noise_multiplier=Z,
                 generator=torch.Generator().manual_seed(0), kernel=kernel)
    return time.perf_counter() - t0


def plain_epoch(name: str, x, y, batch_size: int) -> float:
    model = _model(name, x)
    t0 = time.perf_counter()
    train_local(model, x, y, epochs=1, batch_size=batch_size, lr=LR, momentum=0.9,
                generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - t0


ENGINES = {
    "opacus-hooks": lambda n, x, y, b: opacus_epoch(n, x, y, b, "hooks"),
    "opacus-ew": lambda n, x, y, b: opacus_epoch(n, x, y, b, "ew"),
    "opacus-functorch": lambda n, x, y, b: opacus_epoch(n, x, y, b, "functorch"),
    "opacus-ghost": lambda n, x, y, b: opacus_epoch(n, x, y, b, "ghost"),
    "opacus-hooks-sliced": opacus_sliced_epoch,
    "fedsec-vmap": lambda n, x, y, b: fedsec_epoch(n, x, y, b, "vmap"),
    "fedsec-unfold": lambda n, x, y, b: fedsec_epoch(n, x, y, b, "unfold"),
    "fedsec-auto": lambda n, x, y, b: fedsec_epoch(n, x, y, b, "auto"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,logreg,mlp")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    x, y = torch.from_numpy(data.x_train[: args.examples]), torch.from_numpy(data.y_train[: args.examples]).long()
    engines = args.engines.split(",")
    for name in args.models.split(","):
        # interleaved repeats (plain, then every engine, then again), best of each: robust to a shared machine's load
        times: dict[str, list[float]] = {"plain": [], **{e: [] for e in engines}}
        failed: dict[str, str] = {}
        for _ in range(args.repeats):
            times["plain"].append(plain_epoch(name, x, y, args.batch_size))
            for engine in engines:
                if engine in failed:
                    continue
                try:
                    times[engine].append(ENGINES[engine](name, x, y, args.batch_size))
                except Exception as e:  # noqa: BLE001 - an engine the model does not support is reported, not fatal
                    failed[engine] = f"{type(e).__name__}: {str(e)[:100]}"
        plain = min(times["plain"])
        print(f"model {name}, {args.examples} examples, batch {args.batch_size}, 1 thread, best of {args.repeats}")
        print(f"{'engine':>20} {'seconds':>8} {'ratio':>6}")
        print(f"{'plain':>20} {plain:>8.3f} {1.0:>6.2f}")
        for engine in engines:
            if engine in failed:
                print(f"{engine:>20} failed: {failed[engine]}")
            else:
                best = min(times[engine])
                print(f"{engine:>20} {best:>8.3f} {best / plain:>6.2f}", flush=True)

if __name__ == "__main__":
    main()
