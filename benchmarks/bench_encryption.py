"""Per-round cost of CKKS-encrypted aggregation against the same run in plaintext.

    python benchmarks/bench_encryption.py [CONFIG] [--set key=value ...]
    python benchmarks/bench_encryption.py --set model.name=cnn_mcmahan --set rounds=2 --set train.clients_per_round=5

Runs CONFIG (default: the quickstart) twice, without and with ``encryption.scheme = "ckks"``, and prints the
median round time after round 1, the bytes each client uploads, their ratios, the client's encryption time and
the server's addition and the key authority's decryption times, and the final accuracies of both runs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from fedsec.config import load_experiment
from fedsec.runtime.runner import run_experiment


def run(config: str, overrides: list[str], out: Path) -> pd.DataFrame:
    result = run_experiment(load_experiment(config, overrides), out)
    return pd.read_csv(result.run_dir / "rounds.csv").set_index("round")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(Path(__file__).parents[1] / "experiments/quickstart.toml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(args.config, args.overrides, Path(tmp) / "plain")
        ckks = run(args.config, [*args.overrides, "encryption.scheme=ckks"], Path(tmp) / "ckks")
    later = plain.index[plain.index >= 2] if len(plain) > 2 else plain.index[plain.index >= 1]
    clients = plain.loc[later, "clients_accepted"].mean()
    p_round, c_round = plain.loc[later, "seconds"].median(), ckks.loc[later, "seconds"].median()
    p_bytes, c_bytes = plain.loc[later, "bytes_up"].mean() / clients, ckks.loc[later, "bytes_up"].mean() / clients
    print(f"config: {args.config} {' '.join(args.overrides)}; rounds measured: {list(later)}")
    print(f"{'':24} {'plaintext':>12} {'ckks':>12} {'ratio':>7}")
    print(f"{'round seconds (median)':24} {p_round:>12.2f} {c_round:>12.2f} {c_round / p_round:>7.2f}")
    print(f"{'bytes up per client':24} {p_bytes:>12,.0f} {c_bytes:>12,.0f} {c_bytes / p_bytes:>7.2f}")
    mean = ckks.loc[later].mean()
    print(f"client encryption s: {mean['encrypt_seconds']:.3f}; server addition s: {mean['he_add_seconds']:.3f}; "
          f"decryption s: {mean['decrypt_seconds']:.3f}")
    print(f"final accuracy: plaintext {plain['accuracy'].iloc[-1]:.4f}, ckks {ckks['accuracy'].iloc[-1]:.4f}")


if __name__ == "__main__":
    main()
