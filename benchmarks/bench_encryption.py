"""Per-round cost of CKKS-encrypted aggregation against the same run in plaintext, and the cost of its trust
machinery (Ed25519 signing and verification, the key authority in a separate process).

    python benchmarks/bench_encryption.py [CONFIG] [--set key=value ...]
    python benchmarks/bench_encryption.py --set model.name=cnn_mcmahan --set rounds=2 --set train.clients_per_round=5
    python benchmarks/bench_encryption.py --micro [--dim 47000] [--clients 10]

Runs CONFIG (default: the quickstart) twice, without and with ``encryption.scheme = "ckks"``, and prints the
median round time after round 1, the bytes each client uploads, their ratios (targets: <= 1.5x time, <= 8.5x
bytes), the client's encryption and signing times, the authority's addition and decryption times, and the final
accuracies of both runs.

``--micro`` measures the pieces without Ray, for ``--clients`` vectors of ``--dim`` values: encryption, signing,
the server's verification, the authority round trip (a spawned process: pipe transfer, verification, addition,
decryption, plausibility check) against addition and decryption in the calling process (no authority).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fedsec.crypto import (
    CkksParams,
    KeyAuthorityHandle,
    SignedCiphertext,
    add_encrypted,
    decrypt_chunks,
    encrypt_vector,
)
from fedsec.crypto.signing import verify_chunks
from fedsec.plan import load_plan
from fedsec.runtime.runner import run_experiment


def run(config: str, overrides: list[str], out: Path) -> pd.DataFrame:
    result = run_experiment(load_plan(config, overrides), out)
    return pd.read_csv(result.run_dir / "rounds.csv").set_index("round")


def runs(config: str, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(config, overrides, Path(tmp) / "plain")
        ckks = run(config, [*overrides, "encryption.scheme=ckks"], Path(tmp) / "ckks")
    later = plain.index[plain.index >= 2] if len(plain) > 2 else plain.index[plain.index >= 1]
    clients = plain.loc[later, "clients_accepted"].mean()
    p_round, c_round = plain.loc[later, "seconds"].median(), ckks.loc[later, "seconds"].median()
    p_bytes, c_bytes = plain.loc[later, "bytes_up"].mean() / clients, ckks.loc[later, "bytes_up"].mean() / clients
    print(f"config: {config} {' '.join(overrides)}; rounds measured: {list(later)}")
    print(f"{'':24} {'plaintext':>12} {'ckks':>12} {'ratio':>7}")
    print(f"{'round seconds (median)':24} {p_round:>12.2f} {c_round:>12.2f} {c_round / p_round:>7.2f}")
    print(f"{'bytes up per client':24} {p_bytes:>12,.0f} {c_bytes:>12,.0f} {c_bytes / p_bytes:>7.2f}")
    mean = ckks.loc[later].mean()
    sign = mean.get("sign_seconds", float("nan"))
    print(f"client encryption s: {mean['encrypt_seconds']:.3f}; signing s: {sign:.4f}; "
          f"authority addition s: {mean['he_add_seconds']:.3f}; decryption + checks s: {mean['decrypt_seconds']:.3f}")
    skipped = [int(frame["skipped"].fillna(0).sum()) for frame in (plain, ckks)]
    print(f"skipped rounds: plaintext {skipped[0]}, ckks {skipped[1]}")
    print(f"final accuracy: plaintext {plain['accuracy'].iloc[-1]:.4f}, ckks {ckks['accuracy'].iloc[-1]:.4f}")


def micro(dim: int, clients: int, repeats: int) -> None:
    params = CkksParams()
    rng = np.random.default_rng(0)
    vectors = [rng.normal(scale=0.01, size=dim) for _ in range(clients)]
    with KeyAuthorityHandle.start(params, num_clients=clients, min_clients=2, backend="process") as handle:
        materials = [handle.client_material(p) for p in range(clients)]
        service = handle.server_view()
        t_enc, t_sign, t_verify, t_round, t_add, t_dec = [], [], [], [], [], []
        for r in range(1, repeats + 1):
            members = []
            for p, v in enumerate(vectors):
                t0 = time.perf_counter()
                chunks = encrypt_vector(v, materials[p].context)
                t1 = time.perf_counter()
                signature = materials[p].sign(r, chunks)
                t2 = time.perf_counter()
                assert verify_chunks(service.verify_keys[p], signature, run_id=service.run_id, server_round=r,
                                     partition_id=p, chunks=chunks) is None
                t3 = time.perf_counter()
                t_enc.append(t1 - t0)
                t_sign.append(t2 - t1)
                t_verify.append(t3 - t2)
                members.append(SignedCiphertext(p, chunks, signature))
            t0 = time.perf_counter()
            result = service.decrypt_round(r, members, dim)
            t_round.append(time.perf_counter() - t0)
            t_add.append(result.add_seconds)
            t_dec.append(result.decrypt_seconds)
            assert result.vector is not None, result.refused
            err = float(np.abs(result.vector - np.sum(vectors, axis=0)).max())
    secret = params.make_context()  # the baseline: add and decrypt in this process, no authority, no signatures
    public = secret.serialize(save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    t_old = []
    for _ in range(repeats):
        encrypted = [encrypt_vector(v, public) for v in vectors]
        t0 = time.perf_counter()
        decrypt_chunks(secret, add_encrypted(encrypted, public), dim)
        t_old.append(time.perf_counter() - t0)
    med = statistics.median
    print(f"micro: d={dim}, {clients} clients, {repeats} rounds, CKKS N={params.poly_modulus_degree}; "
          f"max error {err:.2e}")
    print(f"per client   encrypt {med(t_enc) * 1e3:8.2f} ms   sign {med(t_sign) * 1e3:6.3f} ms   "
          f"server verify {med(t_verify) * 1e3:6.3f} ms")
    print(f"per round    authority round trip {med(t_round) * 1e3:8.2f} ms (add {med(t_add) * 1e3:.2f} ms, decrypt + "
          f"checks {med(t_dec) * 1e3:.2f} ms; the rest: pipe transfer and signature checks)")
    print(f"             in-process add + decrypt {med(t_old) * 1e3:8.2f} ms (no authority process)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(Path(__file__).parents[1] / "experiments/quickstart.toml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--micro", action="store_true", help="measure the pieces without Ray")
    parser.add_argument("--dim", type=int, default=47_000, help="--micro: values per client (~ the quickstart CNN)")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.micro:
        micro(args.dim, args.clients, args.repeats)
    else:
        runs(args.config, args.overrides)


if __name__ == "__main__":
    main()
