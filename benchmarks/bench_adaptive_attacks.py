"""How far each attack moves Krum's and trimmed mean's aggregate, on real stacked updates: fixed vs adaptive.

    nice -n 10 .venv/bin/python benchmarks/bench_adaptive_attacks.py [--model mlp] [--clients 10] [--attackers 2]

One round of federated training on scikit-learn digits: ``--clients`` clients (IID shards of the training set, or
Dirichlet(``--alpha``) label shares with ``--alpha`` > 0), each trains one local epoch (SGD, lr 0.05, batch 32)
from the same initial model; clients 0..f-1 are the attackers. For every attack the f malicious updates are
stacked with the n - f honest ones and aggregated by Krum (num_malicious = f) and by trimmed mean (k = f, i.e.
trim_ratio f/n); the table gives the L2 distance of the aggregate from the honest updates' mean, its cosine with
that mean (negative: the model moves backwards), and the weight the rule gave the attackers. Attackers are
omniscient (they know the n - f honest updates) unless ``--knowledge colluding`` (they know their own f honest
updates only). Fixed attacks use fedsec's defaults (ALIE z from n and f, IPM epsilon 0.5, min-max / min-sum); the
adaptive ones search against the rule they attack.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector

from fedsec.clients.attacks.agr_tailored import tailored_update
from fedsec.clients.attacks.alie import alie_update, alie_z
from fedsec.clients.attacks.fang import fang_krum_update, fang_trim_update
from fedsec.clients.attacks.ipm import ipm_update
from fedsec.clients.attacks.minmax import optimised_update
from fedsec.clients.attacks.scale_search import Rule, search_alie_z, search_ipm_epsilon, simulate_round
from fedsec.data import load_digits
from fedsec.models import build_model
from fedsec.strategies import multikrum_aggregate, trimmed_mean
from fedsec.training import train_local


@dataclass(frozen=True)
class Args:
    model: str = "mlp"  # logreg | mlp
    clients: int = 10  # n
    attackers: int = 2  # f
    knowledge: str = "omniscient"  # omniscient | colluding
    alpha: float = 0.0  # > 0: Dirichlet label shares; 0: IID shards
    seed: int = 0


def honest_updates(args: Args) -> torch.Tensor:
    """(n, d): one local epoch per client from the same initial model."""
    data = load_digits(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    n = args.clients
    if args.alpha > 0:
        shards: list[list[int]] = [[] for _ in range(n)]
        for c in range(data.num_classes):
            idx = rng.permutation(np.flatnonzero(data.y_train == c))
            cuts = (np.cumsum(rng.dirichlet([args.alpha] * n)) * len(idx)).astype(int)[:-1]
            for i, part in enumerate(np.split(idx, cuts)):
                shards[i].extend(part.tolist())
        parts = [np.array(s) for s in shards]
    else:
        parts = np.array_split(rng.permutation(len(data.y_train)), n)
    model = build_model(args.model, data.input_shape, data.num_classes, seed=args.seed)
    start = parameters_to_vector(model.parameters()).detach().clone()
    rows = []
    for i, part in enumerate(parts):
        local = build_model(args.model, data.input_shape, data.num_classes, seed=args.seed)
        x = torch.as_tensor(data.x_train[part])
        y = torch.as_tensor(data.y_train[part])
        train_local(local, x, y, epochs=1, batch_size=32, lr=0.05, generator=torch.Generator().manual_seed(i))
        rows.append(parameters_to_vector(local.parameters()).detach() - start)
    return torch.stack(rows)


def main(args: Args) -> None:
    updates = honest_updates(args)
    n, d = updates.shape
    f = args.attackers
    honest = updates[f:]
    known = honest if args.knowledge == "omniscient" else updates[:f]
    reference = honest.mean(dim=0)
    ones = torch.ones(n)
    rules: dict[str, Rule] = {
        "krum": lambda u: multikrum_aggregate(u, ones[: u.shape[0]], num_malicious=f, num_selected=1),
        "trimmed_mean": lambda u: trimmed_mean(u, num_trimmed=f),
    }
    # The attackers' simulation: omniscient -> the server's rule on n rows; colluding -> f crafted + f own rows,
    # Krum with the largest f' it accepts there (2f rows need 2f' + 3 <= 2f), trimmed mean trimming f' = f / 2.
    sim: dict[str, Rule] = dict(rules)
    if args.knowledge != "omniscient":
        fk = max((2 * f - 3) // 2, 0)
        sim = {
            "krum": lambda u: multikrum_aggregate(u, ones[: u.shape[0]], num_malicious=fk, num_selected=1),
            "trimmed_mean": lambda u: trimmed_mean(u, num_trimmed=f // 2),
        }
    generator = torch.Generator().manual_seed(args.seed)
    attacks: dict[str, Callable[[str], torch.Tensor]] = {
        "none (attackers honest)": lambda rule: updates[:f],
        "sign_flip (own update)": lambda rule: -updates[:f],
        f"alie fixed z={alie_z(n, f):.3f}": lambda rule: alie_update(known, alie_z(n, f)),
        "ipm fixed eps=0.5": lambda rule: ipm_update(known, 0.5),
        "minmax (agnostic)": lambda rule: optimised_update(known, objective="minmax"),
        "minsum (agnostic)": lambda rule: optimised_update(known, objective="minsum"),
        "fang krum": lambda rule: fang_krum_update(known, sim["krum"], n=n, f=f),
        "fang trim": lambda rule: fang_trim_update(known, f=f, knowledge=args.knowledge, generator=generator),
        "tailored": lambda rule: tailored_update(
            known, sim[rule], f=f, criterion="accepted" if rule == "krum" else "deviation"
        ),
        "alie searched z": lambda rule: alie_update(known, search_alie_z(
            known, sim[rule], f=f, criterion="accepted" if rule == "krum" else "deviation")),
        "ipm searched eps": lambda rule: ipm_update(known, search_ipm_epsilon(known, sim[rule], f=f,
                                                                             criterion="deviation")),
    }
    print(f"# digits {args.model}: n={n}, f={f}, d={d}, knowledge={args.knowledge}, alpha={args.alpha}, "
          f"honest mean norm {reference.norm():.4f}, honest update norms median "
          f"{honest.norm(dim=1).median():.4f}")
    print("| attack | rule | L2 from honest mean | cosine with honest mean | attackers' weight | ms |")
    print("|---|---|---|---|---|---|")
    for name, craft in attacks.items():
        for rule_name, rule in rules.items():
            t0 = time.perf_counter()
            malicious = craft(rule_name)
            ms = 1000 * (time.perf_counter() - t0)
            aggregate, weights = rule(simulate_round(malicious, honest, f=f))
            dist = float((aggregate - reference).norm())
            cos = float(torch.nn.functional.cosine_similarity(aggregate, reference, dim=0))
            print(f"| {name} | {rule_name} | {dist:.4f} | {cos:+.3f} | {float(weights[:f].sum()):.3f} | {ms:.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field, default in Args.__dataclass_fields__.items():
        parser.add_argument(f"--{field}", type=type(default.default), default=default.default)
    main(Args(**vars(parser.parse_args())))
