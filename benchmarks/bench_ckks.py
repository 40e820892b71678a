"""Cost of CKKS-encrypted FedAvg (fedsec.crypto): encryption, ciphertext size, server addition, decryption, error.

    python benchmarks/bench_ckks.py [--clients 10] [--dims 47146 1663370] [--poly-modulus-degree 4096]
                                    [--coeff-mod-bit-sizes 60 40] [--global-scale-bits 40] [--compare]

For each model size d (47,146: fedsec's small CNN; 1,663,370: the CNN of McMahan et al., AISTATS 2017), every
client encrypts update * num_examples (update ~ N(0, 0.05^2), num_examples in [500, 1500]); the server adds the
clients' ciphertexts with the public context only; the key authority (fedsec.crypto.KeyAuthorityHandle, a spawned
process, as in a run) decrypts the sum. Columns: mean per-client encryption time, one client's ciphertext bytes and
their ratio to the float32 update, the server's addition time for all clients, decryption time (measured inside
the authority: decryption and its plausibility check, without the pipe transfer), and the max abs error of the
decrypted sum (and of the FedAvg average, sum / total examples) against the float64 plaintext sum.

--compare first prints, for several parameter sets, one full ciphertext's size ratio, encryption time and error
after 1 and 100 additions of unit-range values: the table in fedsec.crypto's module docstring.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field

import numpy as np
import tenseal as ts

from fedsec.crypto import (
    CkksParams,
    CryptoError,
    DecryptionResult,
    KeyAuthorityHandle,
    SignedCiphertext,
    add_encrypted,
    ciphertext_bytes,
    encrypt_vector,
)


@dataclass
class Args:
    dims: list[int] = field(default_factory=lambda: [47_146, 1_663_370])
    """model sizes d (number of parameters) to benchmark"""
    clients: int = 10
    """clients whose ciphertexts the server adds"""
    poly_modulus_degree: int = 4096
    """CKKS N (slots = N/2)"""
    coeff_mod_bit_sizes: list[int] = field(default_factory=lambda: [60, 40])
    """coefficient-modulus prime sizes"""
    global_scale_bits: int = 40
    """log2 of the CKKS scale"""
    seed: int = 0
    """seed of the synthetic updates"""
    compare: bool = False
    """also print the parameter-set comparison"""


COMPARE_SETS = [
    (8192, (60, 40, 40, 60), 40), (8192, (60, 40), 40), (4096, (60, 40), 40), (4096, (60, 49), 40),
    (4096, (40, 20, 40), 30), (4096, (40, 20, 40), 20), (4096, (50, 40), 30), (4096, (40, 40), 30),
    (2048, (30, 24), 20),
]


def start_authority(params: CkksParams) -> KeyAuthorityHandle:
    """The key authority in its own process; min_clients=1 so that it decrypts a single ciphertext too."""
    return KeyAuthorityHandle.start(params, num_clients=1, min_clients=1, backend="process")


def decrypt(handle: KeyAuthorityHandle, server_round: int, chunks: list[bytes], length: int) -> DecryptionResult:
    """The authority's release of ``chunks`` (one ciphertext or a sum the server made), signed as client 0."""
    member = SignedCiphertext(0, chunks, handle.client_material(0).sign(server_round, chunks))
    result = handle.server_view().decrypt_round(server_round, [member], length)
    if result.vector is None:
        raise CryptoError(f"the key authority refused: {result.refused or result.rejected}")
    return result


def compare_params(rng: np.random.Generator, additions: int = 100) -> None:
    print(f"{'N':>6} {'coeff bits':>18} {'scale':>6} {'bytes/ct':>9} {'x float32':>9} {'enc us/float':>12} "
          f"{'err 1 ct':>9} {f'err {additions} adds':>12} {'|sum| <=':>9}")
    for n, sizes, scale in COMPARE_SETS:
        params = CkksParams(n, sizes, scale)
        try:
            handle = start_authority(params)
        except CryptoError as e:
            print(f"{n:>6} {str(list(sizes)):>18} {scale:>6} refused: {e}")
            continue
        with handle:
            context = handle.client_material(0).context
            xs = rng.uniform(-1.0, 1.0, size=(additions, params.slots))
            t0 = time.perf_counter()
            encrypted = [encrypt_vector(x, context) for x in xs]
            enc_us = (time.perf_counter() - t0) / xs.size * 1e6
            err1 = np.abs(decrypt(handle, 1, encrypted[0], params.slots).vector - xs[0]).max()
            total = decrypt(handle, 2, add_encrypted(encrypted, context), params.slots).vector
            err = np.abs(total - xs.sum(axis=0)).max()
        size = ciphertext_bytes(encrypted[0])
        print(f"{n:>6} {str(list(sizes)):>18} {'2^' + str(scale):>6} {size:>9,} {size / (params.slots * 4):>9.2f} "
              f"{enc_us:>12.2f} {err1:>9.1e} {err:>12.1e} {params.max_abs:>9.3g}")
    print()


def main() -> None:
    defaults = Args()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=defaults.dims)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--poly-modulus-degree", type=int, default=defaults.poly_modulus_degree)
    parser.add_argument("--coeff-mod-bit-sizes", type=int, nargs="+", default=defaults.coeff_mod_bit_sizes)
    parser.add_argument("--global-scale-bits", type=int, default=defaults.global_scale_bits)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--compare", action="store_true")
    args = Args(**vars(parser.parse_args()))
    rng = np.random.default_rng(args.seed)

    print(f"tenseal {ts.__version__}; cores: {os.cpu_count()}")
    if args.compare:
        compare_params(rng)

    params = CkksParams(args.poly_modulus_degree, tuple(args.coeff_mod_bit_sizes), args.global_scale_bits)
    t0 = time.perf_counter()
    handle = start_authority(params)
    start = time.perf_counter() - t0
    with handle:
        client_context, server_context = handle.client_material(0).context, handle.server_view().public_context
        print(f"N={params.poly_modulus_degree}, coeff_mod_bit_sizes={list(params.coeff_mod_bit_sizes)}, "
              f"scale=2^{params.global_scale_bits}, slots={params.slots}; authority start-up (process and keys) "
              f"{start:.2f} s; context bytes: client {len(client_context):,}, server {len(server_context):,}; "
              f"{args.clients} clients\n")
        print(f"{'d':>10} {'chunks':>6} {'enc s/client':>12} {'ct MB/client':>12} {'x float32':>9} "
              f"{'server add s':>12} {'decrypt s':>9} {'max err sum':>11} {'max err avg':>11} {'plain add s':>11}")
        for server_round, d in enumerate(args.dims, start=1):
            num_examples = rng.integers(500, 1501, size=args.clients)
            updates = [(n * rng.normal(0.0, 0.05, size=d).astype(np.float32)).astype(np.float64) for n in num_examples]

            t0 = time.perf_counter()
            encrypted = [encrypt_vector(u, client_context) for u in updates]
            enc = (time.perf_counter() - t0) / args.clients
            size = ciphertext_bytes(encrypted[0])

            t0 = time.perf_counter()
            summed = add_encrypted(encrypted, server_context)
            add = time.perf_counter() - t0

            released = decrypt(handle, server_round, summed, d)
            total, dec = released.vector, released.decrypt_seconds

            t0 = time.perf_counter()
            plain = np.sum(updates, axis=0)
            plain_s = time.perf_counter() - t0
            err = np.abs(total - plain).max()
            err_avg = err / num_examples.sum()
            print(f"{d:>10,} {len(encrypted[0]):>6} {enc:>12.3f} {size / 1e6:>12.2f} {size / (4 * d):>9.2f} "
                  f"{add:>12.3f} {dec:>9.3f} {err:>11.1e} {err_avg:>11.1e} {plain_s:>11.4f}")


if __name__ == "__main__":
    main()
