"""Threshold CKKS with OpenFHE (benchmarks/threshold_ckks_openfhe.py): (a) correctness, n = 5; (b) fewer than the
threshold, and dropouts recovered from t-of-n shares; (c) costs for the quickstart CNN's d = 46,730 at n = 3 and 10.

Usage (OpenFHE's wheel imports only on CPython 3.10):
    bash scripts/openfhe_venv.sh && .venv-openfhe/bin/python benchmarks/bench_threshold_ckks.py [a|b|c ...] [--alt]
(default: a b c; --alt: N=8192, depth 1, FLEXIBLEAUTO, for comparison)
Measured on a 2-core machine shared with other jobs: timings are indicative only.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time

import numpy as np
import threshold_ckks_openfhe as tc

D = 46_730
RNG = np.random.default_rng(42)
PARAMS = tc.Params(mult_depth=0, scaling_mod_bits=50, first_mod_bits=60, scaling="FIXEDMANUAL", key_switch="BV")
ALT = tc.Params(mult_depth=1, scaling_mod_bits=50, first_mod_bits=60, scaling="FLEXIBLEAUTO", key_switch="BV")


def vectors(n: int) -> list[np.ndarray]:
    return [RNG.uniform(-1.0, 1.0, D) for _ in range(n)]


def decrypt_all(agg, keys, pub) -> np.ndarray:
    parts = [tc.partial_decrypt(agg, k, i == 0, pub, D) for i, k in enumerate(keys)]
    return tc.fuse(parts, pub)


def check_a(params: tc.Params) -> None:
    n = 5
    pub, clients = tc.setup(n, n, params)
    print(f"(a) n-of-n, n={n}, d={D}: {pub.describe()}, {pub.slots} slots, {-(-D // pub.slots)} ciphertexts/client")
    xs = vectors(n)
    agg = tc.add([tc.encrypt(x, pub) for x in xs], pub)
    err = np.abs(decrypt_all(agg, [c.secret for c in clients], pub) - np.sum(xs, axis=0)).max()
    print(f"    fused sum vs plaintext sum: max abs error {err:.3e}  ({'PASS' if err < 1e-6 else 'FAIL'} < 1e-6)")


def check_b(params: tc.Params) -> None:
    n, t = 5, 3
    pub, clients = tc.setup(n, t, params)
    xs = vectors(n)
    truth = np.sum(xs, axis=0)
    agg = tc.add([tc.encrypt(x, pub) for x in xs], pub)
    keys = {c.index: c.secret for c in clients}
    print(f"(b) n={n}, t={t} (OpenFHE requires t > n/2), {pub.describe()}")

    # n-of-n with one partial missing: fusion still returns numbers, but garbage.
    parts = [tc.partial_decrypt(agg, keys[i], i == 1, pub, D) for i in (1, 2, 3, 4)]
    print(f"    4 of 5 partial decryptions fused: {fused_error(parts, pub, truth)}")
    bad = []
    for k in range(len(agg)):
        ps = [tc.Partial(p.chunks[k:k + 1], p.lead, pub.slots) for p in parts]
        try:
            bad.append(np.abs(tc.fuse(ps, pub) - truth[k * pub.slots:(k + 1) * pub.slots][:pub.slots]).max())
        except RuntimeError:
            bad.append(None)
    ok = [b for b in bad if b is not None]
    print(f"      per chunk: {bad.count(None)} of {len(bad)} chunks raise; the others decode to errors of "
          f"{min(ok):.1e}..{max(ok):.1e}" if ok else f"      per chunk: all {len(bad)} chunks raise")

    # Any t survivors: each missing client's key is rebuilt from the t survivors' shares, then decrypted.
    worst = 0.0
    for survivors in itertools.combinations(range(1, n + 1), t):
        holders = [clients[i - 1] for i in survivors]
        recovered = {j: tc.recover_secret(j, holders, pub) for j in range(1, n + 1) if j not in survivors}
        worst = max(worst, np.abs(decrypt_all(agg, [keys[i] for i in survivors] + list(recovered.values()), pub)
                                  - truth).max())
    print(f"    every {t}-subset of the {n} clients (10 subsets, 2 dropouts each, keys recovered): "
          f"max abs error {worst:.3e}")

    # One dropout (client 4), shares carried as bytes (DCRTPoly is not serializable by itself).
    template = agg[0]
    wire = {h.index: tc.share_to_bytes(h.held[4], template) for h in (clients[0], clients[1], clients[4])}
    rebuilt = [tc.ClientKey(i, keys[i], {4: tc.share_from_bytes(b)}) for i, b in wire.items()]
    sk4 = tc.recover_secret(4, rebuilt, pub)
    err = np.abs(decrypt_all(agg, [keys[1], keys[2], keys[3], keys[5], sk4], pub) - truth).max()
    print(f"    client 4 drops; shares of s_4 from clients 1,2,5 sent as bytes ({len(wire[1])} B each): "
          f"max abs error {err:.3e}")

    # Fewer than t: two holders cannot rebuild s_4 (OpenFHE refuses) and without s_4 the fusion is garbage.
    try:
        tc.recover_secret(4, [clients[0], clients[1]], pub)
        print("    2 holders < t: recovery unexpectedly succeeded")
    except RuntimeError as e:
        print(f"    2 holders < t: RecoverSharedKey raises: {str(e).split(':')[-1].strip()}")
    parts = [tc.partial_decrypt(agg, keys[i], i == 1, pub, D) for i in (1, 2, 3, 5)]
    print(f"    without s_4's partial (4 of 5 fused): {fused_error(parts, pub, truth)}")

    # Lagrange interpolation of a wrong share set (t shares, one from another owner's polynomial) -> wrong key.
    bad = [tc.ClientKey(1, keys[1], {4: clients[0].held[4]}), tc.ClientKey(2, keys[2], {4: clients[1].held[4]}),
           tc.ClientKey(5, keys[5], {4: clients[4].held[3]})]
    sk_bad = tc.recover_secret(4, bad, pub)
    holders = [keys[1], keys[2], keys[3], keys[5], sk_bad]
    parts = [tc.partial_decrypt(agg, k, i == 0, pub, D) for i, k in enumerate(holders)]
    print(f"    t shares but one wrong (a share of s_3 passed as s_4's): recovery accepts it (shares are not "
          f"verifiable); fusion: {fused_error(parts, pub, truth)}")


def fused_error(parts, pub, truth) -> str:
    """Max abs error of a fusion, or what OpenFHE raised (CKKS decoding rejects a result whose imaginary parts
    are too large, which is how an incomplete set of partials usually shows)."""
    try:
        return f"max abs error {np.abs(tc.fuse(parts, pub) - truth).max():.3e}"
    except RuntimeError as e:
        return "OpenFHE raises: " + str(e).split("):")[-1].strip()


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def check_c(params: tc.Params) -> None:
    print(f"(c) costs, d={D} (2 shared CPU cores, measured under load)")
    print("    n  t | setup s | enc s/client | B/ct    x float32 | add s  | partial s/client | fuse s | err")
    for n in (3, 10):
        t = n // 2 + 1
        (pub, clients), t_setup = timed(tc.setup, n, t, params)
        xs = vectors(n)
        enc = []
        cts = []
        for x in xs:
            c, s = timed(tc.encrypt, x, pub)
            cts.append(c)
            enc.append(s)
        nbytes = len(tc.ciphertext_bytes(cts[0][0]))
        total = sum(len(tc.ciphertext_bytes(c)) for c in cts[0])
        agg, t_add = timed(tc.add, cts, pub)
        part_t, parts = [], []
        for i, c in enumerate(clients):
            p, s = timed(tc.partial_decrypt, agg, c.secret, i == 0, pub, D)
            parts.append(p)
            part_t.append(s)
        y, t_fuse = timed(tc.fuse, parts, pub)
        err = np.abs(y - np.sum(xs, axis=0)).max()
        print(f"   {n:2d} {t:2d} | {t_setup:7.2f} | {statistics.median(enc):12.3f} | {nbytes:7d} "
              f"{nbytes / (pub.slots * 4):5.2f}x | {t_add:6.3f} | {statistics.median(part_t):16.3f} | "
              f"{t_fuse:6.3f} | {err:.1e}")
        print(f"          one client's upload: {total} B for {D} floats = {total / (4 * D):.2f}x float32 "
              f"({len(cts[0])} ciphertexts)")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    params = ALT if "--alt" in sys.argv else PARAMS
    print(f"params: {params}")
    for step in args or ["a", "b", "c"]:
        globals()[f"check_{step}"](params)
