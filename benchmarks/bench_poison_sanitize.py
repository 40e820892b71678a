"""Filter quality of each client-side sanitizer on poisoned client data (central, no federation).

    nice -n 10 python benchmarks/bench_poison_sanitize.py [--dataset digits|fashion-mnist] [--examples 500]
        [--clients 3]

For each of ``--clients`` "clients" (disjoint random subsets of ``--examples`` training points, one seed each), poisons
the client's data per scenario (none, label noise 20% / 40%, BadNets trigger 10% / 20%, far outliers 10%) with
fedsec.data.poison, runs every filter of fedsec.sanitize on it, and prints per (scenario, filter) the mean over clients
of: precision, recall, false-drop rate on clean points (FDR), the source surveys' DQ_filtered (Al-Karaki et al. 2024,
Table 1) and A, and seconds per client. Precision and recall are pooled over clients (counts added), as rounds.csv
totals do.

``--stand-in cnn`` adds the filters that use a global model: a stand-in for it is trained centrally (5 epochs of
SGD, lr 0.05, momentum 0.9) on 3,000 *other* training points of which 10% carry the same trigger (a global model
that has learned the backdoor), then isolation forest runs on its penultimate embeddings and cleanlab on
probabilities from per-fold fine-tuned copies of it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedsec.data import load_dataset
from fedsec.data.poison import poison_client_data
from fedsec.metrics.filtering import filter_quality, total_filter_quality
from fedsec.models import build_model
from fedsec.sanitize import build_sanitizer
from fedsec.training import evaluate, train_local

SCENARIOS: dict[str, dict] = {
    "clean": {},
    "label_noise 20%": {"kind": "label_noise", "rate": 0.2},
    "label_noise 40%": {"kind": "label_noise", "rate": 0.4},
    "trigger 10%": {"kind": "trigger", "rate": 0.1, "target": 0},
    "trigger 20%": {"kind": "trigger", "rate": 0.2, "target": 0},
    "outliers 10%": {"kind": "outliers", "rate": 0.1, "magnitude": 10.0},
}
FILTERS: dict[str, tuple[str, dict]] = {
    "threshold (seed, k=3.5)": ("threshold", {}),
    "threshold robust_z": ("threshold", {"variant": "robust_z"}),
    "isolation_forest auto": ("isolation_forest", {}),
    "isolation_forest c=0.1": ("isolation_forest", {"contamination": 0.1}),
    "label_issues (logreg, 5-fold)": ("label_issues", {}),
}


MODEL_FILTERS: dict[str, tuple[str, dict]] = {
    "isolation_forest emb auto": ("isolation_forest", {"features": "embedding"}),
    "isolation_forest emb c=0.1": ("isolation_forest", {"features": "embedding", "contamination": 0.1}),
    "label_issues (model, 3-fold)": ("label_issues", {"classifier": "model", "n_folds": 3, "epochs": 2}),
}


def stand_in_model(data, name: str, indices: np.ndarray) -> torch.nn.Module:
    """A model trained on ``indices`` with 10% of them trigger-poisoned (target 0)."""
    p = poison_client_data(
        data.x_train[indices],
        data.y_train[indices],
        kind="trigger",
        rate=0.1,
        num_classes=data.num_classes,
        seed=1234,
        target=0,
    )
    model = build_model(name, data.input_shape, data.num_classes, seed=0)
    start = time.perf_counter()
    train_local(
        model,
        torch.as_tensor(p.x),
        torch.as_tensor(p.y),
        epochs=5,
        batch_size=32,
        lr=0.05,
        momentum=0.9,
        generator=torch.Generator().manual_seed(0),
    )
    acc = evaluate(model, torch.as_tensor(data.x_test), torch.as_tensor(data.y_test), num_classes=data.num_classes)
    print(f"stand-in {name}: trained in {time.perf_counter() - start:.1f} s, test accuracy {acc.accuracy:.3f}")
    return model


def _fmt(v: float) -> str:
    return "  -  " if v != v else f"{v:5.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--stand-in", default="", help="model name: add the filters that use a global model")
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    order = np.random.default_rng(0).permutation(len(data.y_train))
    if args.clients * args.examples > order.size:
        parser.error(f"--clients x --examples = {args.clients * args.examples} exceeds the {order.size} train points")
    clients = [order[i * args.examples : (i + 1) * args.examples] for i in range(args.clients)]
    filters, model = dict(FILTERS), None
    if args.stand_in:
        rest = order[args.clients * args.examples :][:3000]
        model = stand_in_model(data, args.stand_in, rest)
        filters.update(MODEL_FILTERS)
    print(f"{args.dataset}: {args.clients} clients x {args.examples} examples; mean over clients (P/R pooled)")
    print(f"{'scenario':16} {'filter':30} {'prec':>5} {'recall':>6} {'FDR':>5} {'DQ_f':>6} {'A':>5} {'s/client':>8}")
    for scenario, spec in SCENARIOS.items():
        for label, (method, keys) in filters.items():
            qualities, seconds = [], []
            for seed, idx in enumerate(clients):
                x, y = data.x_train[idx], data.y_train[idx]
                if spec:
                    kind_keys = {k: v for k, v in spec.items() if k not in ("kind", "rate")}
                    p = poison_client_data(
                        x, y, kind=spec["kind"], rate=spec["rate"], num_classes=data.num_classes, seed=seed, **kind_keys
                    )
                    x, y, poisoned = p.x, p.y, p.poisoned
                else:
                    poisoned = np.zeros(len(y), bool)
                start = time.perf_counter()
                result = build_sanitizer(method, **keys).filter(x, y, model=model, seed=seed)
                seconds.append(time.perf_counter() - start)
                qualities.append(filter_quality(result.keep, poisoned))
            total = total_filter_quality(qualities)
            print(
                f"{scenario:16} {label:30} {_fmt(total.precision)} {_fmt(total.recall):>6} "
                f"{_fmt(total.false_drop_rate)} {total.dq_filtered:6.4f} {total.anomaly_rate:5.3f} "
                f"{np.mean(seconds):8.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
