"""CKKS aggregation: correctness of the encrypted weighted sum, the server's lack of a secret key, and refusals.

Decryption goes through the real key authority (:class:`fedsec.crypto.KeyAuthorityHandle`, a spawned process),
as in a run.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import tenseal as ts

from fedsec.crypto import (
    CkksParams,
    CryptoError,
    KeyAuthorityHandle,
    SignedCiphertext,
    add_encrypted,
    ciphertext_bytes,
    encrypt_vector,
    load_context,
)

# Default params (N=4096, (60, 40), 2^40): measured max error 4e-8 after 100 additions of unit-range values
# (see fedsec.crypto's docstring); 1e-6 leaves 25x margin yet is 1e4 below the weighted values' own scale.
TOLERANCE = 1e-6
NUM_CLIENTS = 6


class Authority:
    """The key authority as these tests use it: the clients' public context, the server's view, and decryption of
    chunk lists signed by partitions 0, 1, ... (one fresh round per call: the authority releases once a round)."""

    def __init__(self, handle: KeyAuthorityHandle) -> None:
        self.params = handle.config.params
        self.materials = [handle.client_material(p) for p in range(NUM_CLIENTS)]
        self.service = handle.server_view()
        self._rounds = itertools.count(1)

    def client_context(self) -> bytes:
        return self.materials[0].context

    def server_context(self) -> bytes:
        return self.service.public_context

    def decrypt(self, members: list[list[bytes]], length: int) -> np.ndarray:
        """The released sum of ``members``' chunk lists; raises if the authority refuses or rejects one."""
        server_round = next(self._rounds)
        signed = [SignedCiphertext(p, chunks, self.materials[p].sign(server_round, chunks))
                  for p, chunks in enumerate(members)]
        result = self.service.decrypt_round(server_round, signed, length)
        assert result.vector is not None and not result.rejected, (result.refused, result.rejected)
        return result.vector


@pytest.fixture(scope="module")
def authority() -> Authority:
    # min_clients=1: these tests decrypt single vectors too (a run keeps the default of 2)
    with KeyAuthorityHandle.start(CkksParams(), num_clients=NUM_CLIENTS, min_clients=1, backend="process") as handle:
        yield Authority(handle)


def _client_updates(rng: np.random.Generator, d: int, num_examples: list[int]) -> list[np.ndarray]:
    """What clients send: update (values in [-1, 1]) times num_examples."""
    return [n * rng.uniform(-1.0, 1.0, size=d) for n in num_examples]


@pytest.mark.parametrize("chunk_size", [None, 1000])
def test_encrypted_weighted_sum_matches_plaintext(authority: Authority, chunk_size: int | None) -> None:
    rng = np.random.default_rng(0)
    slots = authority.params.slots
    d = 2 * slots + 37  # not a multiple of the slot count: the last chunk is partial
    num_examples = [13, 250, 1200, 40, 700]
    updates = _client_updates(rng, d, num_examples)
    encrypted = [encrypt_vector(u, authority.client_context(), chunk_size=chunk_size) for u in updates]
    expected_chunks = -(-d // (chunk_size or slots))
    assert all(len(chunks) == expected_chunks for chunks in encrypted)

    total = authority.decrypt(encrypted, d)  # the authority adds the members' ciphertexts, then decrypts
    server_sum = authority.decrypt([add_encrypted(encrypted, authority.server_context())], d)

    assert total.dtype == np.float64 and total.shape == (d,)
    np.testing.assert_allclose(total, np.sum(updates, axis=0), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(server_sum, total, rtol=0, atol=TOLERANCE)
    average = total / sum(num_examples)  # what FedAvg does with it
    raw = [u / n for u, n in zip(updates, num_examples, strict=True)]
    unweighted = np.mean(raw, axis=0)
    np.testing.assert_allclose(average, np.average(raw, axis=0, weights=num_examples), rtol=0, atol=TOLERANCE)
    assert np.abs(average - unweighted).max() > 1e-2  # the weighting is really applied


def test_clients_encrypt_without_the_secret_key(authority: Authority) -> None:
    x = np.linspace(-3.0, 3.0, 100)
    assert not load_context(authority.client_context()).has_secret_key()
    chunks = encrypt_vector(x, authority.client_context())
    np.testing.assert_allclose(authority.decrypt([chunks], 100), x, rtol=0, atol=TOLERANCE)


def test_default_ciphertext_is_eight_times_float32(authority: Authority) -> None:
    chunks = encrypt_vector(np.ones(authority.params.slots), authority.client_context())
    ratio = ciphertext_bytes(chunks) / (authority.params.slots * 4)
    assert len(chunks) == 1 and 7.5 < ratio < 8.5


def test_server_context_holds_no_secret_key(authority: Authority) -> None:
    server_bytes = authority.server_context()
    server = ts.context_from(server_bytes)
    assert not server.is_private() and not server.has_secret_key() and server.has_public_key()
    client = ts.context_from(authority.client_context())
    assert not client.is_private() and not client.has_secret_key() and client.has_public_key()

    chunks = encrypt_vector(np.arange(10.0), authority.client_context())
    vector = ts.ckks_vector_from(server, chunks[0])
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()


def test_add_encrypted_with_public_context_only(authority: Authority, caplog) -> None:
    x, y = np.arange(50.0), -0.5 * np.arange(50.0)
    public = ts.context_from(authority.server_context())
    chunks = [encrypt_vector(v, authority.client_context()) for v in (x, y)]
    with caplog.at_level(logging.WARNING, logger="fedsec.crypto"):
        total = add_encrypted(chunks, public)
    assert not caplog.records
    np.testing.assert_allclose(authority.decrypt([total], 50), x + y, rtol=0, atol=TOLERANCE)

    with caplog.at_level(logging.WARNING, logger="fedsec.crypto"):
        add_encrypted(chunks, CkksParams().make_context())  # a context holding a secret key
    assert any("secret key" in r.getMessage() for r in caplog.records)


def test_context_cache_reuses_deserialized_context(authority: Authority) -> None:
    data = authority.server_context()
    first = load_context(bytes(bytearray(data)))  # equal bytes, distinct object
    assert load_context(bytes(bytearray(data))) is first
    other = CkksParams().make_context().serialize(save_secret_key=False)  # other keys, other bytes
    assert load_context(other) is not first


@pytest.mark.parametrize(
    ("params", "key", "fragment"),
    [
        (CkksParams(4096, (60, 40, 40, 60), 40), "encryption.poly_modulus_degree=4096",
         "exceeds the 128-bit-security limit of 109 bits"),
        (CkksParams(8192, (60, 60, 60, 60), 40), "encryption.poly_modulus_degree=8192", "240 bits"),
        (CkksParams(3000, (60, 40), 40), "encryption.poly_modulus_degree=3000", "power of two"),
        (CkksParams(65536, (60, 40), 40), "encryption.poly_modulus_degree=65536", "power of two"),
        (CkksParams(8192, (60,), 40), "encryption.coeff_mod_bit_sizes=[60]", "at least two primes"),
        (CkksParams(8192, (61, 40), 40), "encryption.coeff_mod_bit_sizes=[61, 40]", "[2, 60]"),
        (CkksParams(8192, (60, 40), 59), "encryption.global_scale_bits=59", "must be below 59"),
        (CkksParams(8192, (60, 40), 10), "encryption.global_scale_bits=10", ">= 20"),
        (CkksParams(4096, (60, 15), 40), "encryption.coeff_mod_bit_sizes=[60, 15]", "SEAL refused"),
    ],
)
def test_invalid_params_raise_crypto_error_naming_the_key(params: CkksParams, key: str, fragment: str) -> None:
    with pytest.raises(CryptoError) as info:
        params.make_context()  # what the key authority runs when it starts
    assert key in str(info.value) and fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_authority_start_raises_what_seal_refused_in_its_process() -> None:
    with pytest.raises(CryptoError, match=r"coeff_mod_bit_sizes=\[60, 15\].*SEAL refused"):
        KeyAuthorityHandle.start(CkksParams(4096, (60, 15), 40), num_clients=2, backend="process")


def test_validate_accepts_secure_sets() -> None:
    for params in (CkksParams(), CkksParams(8192, (60, 40), 40), CkksParams(8192, [60, 40, 40, 60], 40)):
        params.validate()
    assert CkksParams(8192, [60, 40]).coeff_mod_bit_sizes == (60, 40)  # lists become tuples (hashable)


@pytest.mark.parametrize("bad", [b"", b"not a ciphertext", "truncated", "other-N"])
def test_malformed_ciphertext_raises(authority: Authority, bad) -> None:
    good = encrypt_vector(np.ones(20), authority.client_context())
    if bad == "truncated":
        bad = good[0][: len(good[0]) // 2]
    elif bad == "other-N":
        bad = encrypt_vector(np.ones(20), CkksParams(8192, (60, 40), 40).make_context())[0]
    with pytest.raises(CryptoError, match="client 1, chunk 0"):
        add_encrypted([good, [bad]], authority.server_context())


def test_mismatched_chunks_raise(authority: Authority) -> None:
    ctx = authority.client_context()
    one = encrypt_vector(np.ones(10), ctx)
    three = encrypt_vector(np.ones(3 * authority.params.slots), ctx)
    with pytest.raises(CryptoError, match=r"different or zero chunk counts \[1, 3\]"):
        add_encrypted([one, three], authority.server_context())
    with pytest.raises(CryptoError, match="holds 11 values for client 1"):
        add_encrypted([one, encrypt_vector(np.ones(11), ctx)], authority.server_context())
    with pytest.raises(CryptoError, match="at least one"):
        add_encrypted([], authority.server_context())
    with pytest.raises(CryptoError, match="expected length=11"):
        authority.decrypt([one], 11)


def test_encrypt_vector_refuses_what_ckks_cannot_hold(authority: Authority) -> None:
    ctx = authority.client_context()
    limit = authority.params.max_abs
    assert limit == 2.0 ** 18
    chunks = encrypt_vector(np.array([limit, -limit]), ctx)  # at the bound: fine
    np.testing.assert_allclose(authority.decrypt([chunks], 2), [limit, -limit], rtol=0, atol=TOLERANCE)
    with pytest.raises(CryptoError, match="headroom"):
        encrypt_vector(np.array([2.5 * limit]), ctx)
    with pytest.raises(CryptoError, match="non-finite"):
        encrypt_vector(np.array([1.0, np.nan]), ctx)
    with pytest.raises(CryptoError, match=r"chunk_size=5000 must be in \[1, 2048\]"):
        encrypt_vector(np.ones(10), ctx, chunk_size=5000)
    with pytest.raises(CryptoError, match="1-D"):
        encrypt_vector(np.ones((2, 3)), ctx)
    with pytest.raises(CryptoError, match="do not deserialize to a TenSEAL context"):
        encrypt_vector(np.ones(3), b"junk")
