"""CKKS-encrypted FedAvg: clients encrypt, the server adds ciphertexts, a key authority decrypts only the sum.

CKKS: J. H. Cheon, A. Kim, M. Kim, Y. Song, "Homomorphic Encryption for Arithmetic of Approximate Numbers",
ASIACRYPT 2017, https://eprint.iacr.org/2016/421. Implemented with TenSEAL (Microsoft SEAL underneath).
Security bounds: M. Albrecht et al., "Homomorphic Encryption Security Standard", HomomorphicEncryption.org, 2018,
https://homomorphicencryption.org/standard/ (Table 1, 128-bit classical security, ternary secret: total
coefficient-modulus bits at most 27/54/109/218/438/881 for N = 1024 ... 32768).

Roles. The key authority (:mod:`fedsec.crypto.authority`, a process of its own) is the simulation's trusted
setup: it makes the keys and is the only party that decrypts (:func:`decrypt_chunks`), and only the aggregate.
Clients encrypt their weighted, flattened update with :func:`encrypt_vector`; :func:`add_encrypted` sums
clients' chunk lists holding only the public context.

Choice of parameters (aggregation is addition only: no multiplication, so no rescaling and no modulus chain).
A ciphertext lives at the "data level", all coefficient primes but the last, which is SEAL's special prime, used
only for key switching (TenSEAL always makes relinearization keys, so it needs >= 2 primes). Its serialized size
is about 2 polynomials x N coefficients x (data bits / 8) bytes after SEAL's zstd compression, i.e. a ratio to
float32 of about data_bits / 8, *independent of N*. The error is about 2^12 / 2^scale per slot for one
ciphertext and grows like sqrt(k) over k additions; |values| up to about 2^(data_bits - scale_bits - 1) survive
(the |sum| column allows one bit less, :attr:`CkksParams.max_abs`). Measured here (TenSEAL 0.3.18, 2 shared CPU
cores, unit-range inputs, one full ciphertext of N/2 slots; `python benchmarks/bench_ckks.py --compare`, which
also prints the encryption time per float):

    N      coeff bits         scale  bytes/float32  err(1 ct)  err(sum of 100)  |sum| <=
    8192   (60, 40, 40, 60)   2^40   20.2x          9e-9       1e-7             3e29
    8192   (60, 40)           2^40    8.0x          7e-9       8e-8             2.6e5
    4096   (60, 40)           2^40    8.0x          4e-9       5e-8             2.6e5  <- default
    4096   (40, 20, 40)       2^30    9.9x          4e-6       3e-5             2.7e8
    4096   (40, 20, 40)       2^20    9.9x          3e-3       6e-2             2.7e11
    4096   (50, 40)           2^30    7.2x          5e-6       4e-5             2.6e5
    4096   (40, 40)           2^30    6.0x          4e-6       3e-5             256
    2048   (30, 24)           2^20    4.2x          2e-3       2e-2             256

The default, N=4096 with (60, 40) and scale 2^40, keeps one 60-bit data prime (the largest SEAL allows, so the
smallest ciphertext for its precision and headroom: 8.0x float32), has 100 bits of modulus (<= 109 for 128-bit
security at N=4096), half the context size of N=8192 and a smaller error (fresh noise grows with N). Its
headroom is |sum| <= 2^18 = 262,144 per coordinate (:attr:`CkksParams.max_abs`), ample for updates weighted by
num_examples. Shrinking the data prime buys ~1 byte per float32 per 8 bits, paid in precision or headroom
(e.g. (40, 40) at 2^30: 6.0x but 1,000x the error and 2^8 headroom); [40, 20, 40] at N=4096 works but has two
data primes (9.9x) and, with scale 2^20, errors of 3e-2. For McMahan et al.'s CNN (d = 1,663,370) the default
costs a client 53 MB of ciphertext (8.0x), with max error 3e-8 on the num_examples-weighted sum; the times of
encryption, addition and decryption are measured by ``benchmarks/bench_ckks.py``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedsec.errors import FedsecInputError

if TYPE_CHECKING:
    import tenseal as ts

__all__ = [
    "CkksParams", "CryptoError", "add_encrypted", "ciphertext_bytes", "decrypt_chunks", "encrypt_vector",
    "load_context",
]


def _tenseal():  # noqa: ANN202 - the module
    """TenSEAL, imported on first use: every client process imports this module, and only encrypting runs need
    SEAL (0.1 s of each process's start)."""
    import tenseal

    return tenseal

logger = logging.getLogger(__name__)

#: Largest total coefficient-modulus bits for 128-bit classical security (HE standard 2018, Table 1).
SECURITY_BOUND_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
MAX_PRIME_BITS = 60  # SEAL's SEAL_USER_MOD_BIT_COUNT_MAX; 61 gives "bit_sizes is invalid"
MIN_SCALE_BITS = 20  # below this the per-slot error (~2^(12 - scale_bits)) exceeds 1e-2


class CryptoError(FedsecInputError):
    """Bad or insecure encryption parameters, or ciphertexts that cannot be used; the message says which."""


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters for addition-only aggregation.

    Parameters
    ----------
    poly_modulus_degree : int, default 4096
        N, a power of two in [1024, 32768]; a ciphertext holds N/2 values (slots).
    coeff_mod_bit_sizes : tuple[int, ...], default (60, 40)
        Bit sizes of the coefficient-modulus primes, each in [2, 60], at least two; the last is the special prime.
    global_scale_bits : int, default 40
        log2 of the CKKS scale; precision is about 2^(12 - global_scale_bits).
    """

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40)
    global_scale_bits: int = 40

    def __post_init__(self) -> None:
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(self.coeff_mod_bit_sizes))

    @property
    def slots(self) -> int:
        """Values per ciphertext, N/2."""
        return self.poly_modulus_degree // 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def data_bits(self) -> int:
        """Bits of the modulus a fresh ciphertext lives under (all primes but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def max_abs(self) -> float:
        """Largest |value| of an encrypted vector *and of the sum*, with one bit of margin; beyond it, wrap-around."""
        return 2.0 ** (self.data_bits - self.global_scale_bits - 2)

    def validate(self) -> None:
        """Raise one CryptoError listing every problem: what SEAL rejects, plus sets below 128-bit security."""
        n, sizes, scale = self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.global_scale_bits
        problems = []
        if n not in SECURITY_BOUND_BITS:
            problems.append(f"encryption.poly_modulus_degree={n} must be a power of two in [1024, 32768]")
        if len(sizes) < 2:
            problems.append(f"encryption.coeff_mod_bit_sizes={list(sizes)} needs at least two primes (data primes "
                            "plus the special prime TenSEAL needs for its relinearization keys), e.g. [60, 40]")
        bad = [b for b in sizes if not isinstance(b, (int, np.integer)) or not 2 <= b <= MAX_PRIME_BITS]
        if bad:
            problems.append(f"encryption.coeff_mod_bit_sizes={list(sizes)}: every size must be an integer in "
                            f"[2, {MAX_PRIME_BITS}] (SEAL's limit), got {bad}")
        bound = SECURITY_BOUND_BITS.get(n)
        if bound is not None and not bad and self.total_bits > bound:
            problems.append(
                f"encryption.poly_modulus_degree={n} with coeff_mod_bit_sizes {list(sizes)} ({self.total_bits} bits) "
                f"exceeds the 128-bit-security limit of {bound} bits for N={n} (HE standard 2018); use fewer or "
                f"smaller primes or N={2 * n}")
        if not isinstance(scale, (int, np.integer)) or scale < MIN_SCALE_BITS:
            problems.append(f"encryption.global_scale_bits={scale} must be an integer >= {MIN_SCALE_BITS} "
                            f"(the error is about 2^(12 - scale_bits))")
        elif len(sizes) >= 2 and not bad and scale + 1 >= self.data_bits:
            problems.append(
                f"encryption.global_scale_bits={scale} must be below {self.data_bits - 1}: SEAL refuses to encode "
                f"when scale_bits + 1 >= the data primes' bits ({self.data_bits} = sum of {list(sizes[:-1])}); "
                f"the headroom for |sum| is 2^(data_bits - scale_bits - 2)")
        if problems:
            raise CryptoError("; ".join(problems))

    def make_context(self) -> ts.Context:
        """A fresh TenSEAL context with all keys (public, secret, relinearization)."""
        self.validate()
        ts = _tenseal()
        try:
            context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=self.poly_modulus_degree,
                                 coeff_mod_bit_sizes=list(self.coeff_mod_bit_sizes))
        except (RuntimeError, ValueError) as e:  # e.g. no NTT-friendly primes of that size for this N
            raise CryptoError(f"encryption.coeff_mod_bit_sizes={list(self.coeff_mod_bit_sizes)} with "
                              f"poly_modulus_degree={self.poly_modulus_degree}: SEAL refused them ({e}); "
                              "use primes of 20 to 60 bits") from e
        context.global_scale = 2.0 ** self.global_scale_bits
        return context


@functools.lru_cache(maxsize=8)
def _context_from_bytes(data: bytes) -> ts.Context:
    ts = _tenseal()
    try:
        return ts.context_from(data)
    except (RuntimeError, ValueError) as e:
        raise CryptoError(f"context bytes ({len(data)} B) do not deserialize to a TenSEAL context: {e}") from e


def load_context(context: bytes | ts.Context) -> ts.Context:
    """The context for `context` bytes, deserialized once per distinct bytes (cached); contexts pass through.

    The returned object is shared between callers: do not mutate it (no make_context_public, no global_scale).
    """
    if isinstance(context, _tenseal().Context):
        return context
    return _context_from_bytes(bytes(context))


def _layout(context: ts.Context) -> tuple[int, int, float]:
    """(slots, data bits, scale) of a context."""
    seal = context.seal_context().data
    n = seal.key_context_data().parms().poly_modulus_degree()
    return n // 2, seal.first_context_data().total_coeff_modulus_bit_count(), context.global_scale


def _load_vector(context: ts.Context, data: bytes, where: str) -> ts.CKKSVector:
    if not isinstance(data, (bytes, bytearray)) or len(data) == 0:
        raise CryptoError(f"{where}: expected non-empty ciphertext bytes, got {type(data).__name__} "
                          f"of length {len(data) if hasattr(data, '__len__') else '?'}")
    try:
        return _tenseal().ckks_vector_from(context, bytes(data))
    except (RuntimeError, ValueError, TypeError) as e:
        raise CryptoError(f"{where}: {len(data)} bytes do not deserialize to a CKKS vector under this "
                          f"context ({e})") from e


def encrypt_vector(vector: np.ndarray, context: bytes | ts.Context, *,
                   chunk_size: int | None = None) -> list[bytes]:
    """Encrypt a 1-D vector of d values as ceil(d / chunk_size) serialized CKKS vectors.

    chunk_size defaults to the slot count N/2 (the fewest, fullest ciphertexts) and may not exceed it.
    Raises CryptoError for non-finite values or |value| above the context's headroom.
    """
    ctx = load_context(context)
    slots, data_bits, scale = _layout(ctx)
    x = np.asarray(vector, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise CryptoError(f"encrypt_vector needs a non-empty 1-D vector (flatten the update), got shape {x.shape}")
    size = slots if chunk_size is None else int(chunk_size)
    if not 1 <= size <= slots:
        raise CryptoError(f"chunk_size={chunk_size} must be in [1, {slots}] (the context's slot count)")
    if not np.isfinite(x).all():
        raise CryptoError(f"encrypt_vector: {int((~np.isfinite(x)).sum())} non-finite values; CKKS encodes "
                          "only finite numbers")
    limit = 2.0 ** (data_bits - np.log2(scale) - 2)
    peak = float(np.abs(x).max())
    if peak > limit:
        raise CryptoError(f"encrypt_vector: max |value| = {peak:.4g} exceeds this context's headroom {limit:.4g} "
                          "(2^(data_bits - scale_bits - 2)); scale the update down or use a smaller "
                          "encryption.global_scale_bits")
    ckks_vector = _tenseal().ckks_vector
    return [ckks_vector(ctx, x[i:i + size]).serialize() for i in range(0, x.size, size)]


def add_encrypted(updates: list[list[bytes]], public_context: bytes | ts.Context) -> list[bytes]:
    """Chunk-wise sum of several clients' encrypted vectors; needs only the public context.

    `updates[i]` is client i's chunk list from :func:`encrypt_vector`. All lists must have the same number of
    chunks, chunk j holding the same number of values for every client. Ciphertexts made under another key but the
    same parameters cannot be detected here: their sum decrypts to noise.
    """
    ctx = load_context(public_context)
    if ctx.has_secret_key():
        logger.warning("add_encrypted got a context holding the secret key; the server should hold only "
                       "the key authority's public context (DecryptionService.public_context)")
    if not updates:
        raise CryptoError("add_encrypted needs at least one client's chunks, got none")
    counts = [len(chunks) for chunks in updates]
    if len(set(counts)) != 1 or counts[0] == 0:
        raise CryptoError(f"add_encrypted: clients sent different or zero chunk counts {counts}; every client "
                          "must encrypt a vector of the same length with the same chunk_size")
    total = []
    for j in range(counts[0]):
        acc = _load_vector(ctx, updates[0][j], f"client 0, chunk {j}")
        for i in range(1, len(updates)):
            other = _load_vector(ctx, updates[i][j], f"client {i}, chunk {j}")
            if other.size() != acc.size():
                raise CryptoError(f"add_encrypted: chunk {j} holds {other.size()} values for client {i} but "
                                  f"{acc.size()} for client 0; encrypt same-length vectors with the same chunk_size")
            try:
                acc.add_(other)
            except (RuntimeError, ValueError) as e:  # e.g. scale or parameter mismatch
                raise CryptoError(f"add_encrypted: client {i}, chunk {j} cannot be added ({e})") from e
        total.append(acc.serialize())
    return total


def ciphertext_bytes(chunks: list[bytes]) -> int:
    """Total serialized size of a chunk list, what a client uploads."""
    return sum(len(c) for c in chunks)


def decrypt_chunks(context: ts.Context, chunks: list[bytes], length: int) -> np.ndarray:
    """Decrypt a chunk list to a float64 vector of ``length`` values; ``context`` must hold the secret key.

    Only the key authority (:mod:`fedsec.crypto.authority`) holds such a context in a run.
    """
    values = [np.asarray(_load_vector(context, c, f"chunk {j}").decrypt(), dtype=np.float64)
              for j, c in enumerate(chunks)]
    out = np.concatenate(values) if values else np.zeros(0)
    if out.size != length:
        raise CryptoError(f"decrypt_chunks: the chunks hold {out.size} values, expected length={length}")
    return out
