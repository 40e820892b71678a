"""Ed25519 signatures on encrypted updates, bound to (run id, round, partition id, ciphertext digest).

Ed25519: Bernstein, Duif, Lange, Schwabe and Yang, "High-speed high-security signatures", Journal of Cryptographic
Engineering 2(2), 2012, https://ed25519.cr.yp.to/ (RFC 8032), through the ``cryptography`` package.

Why. Anyone holding the CKKS public context can encrypt, so a ciphertext alone says nothing about who made it: the
server could pass off one client's ciphertext (or one it made) as "the sum", and a flipped byte decrypts to
garbage without error. Each client gets an Ed25519 key pair from the trusted setup (the key authority,
:mod:`fedsec.crypto.authority`) and signs

    b"fedsec-ckks-v1" | run id | round | partition id | SHA-256 over the chunks (each length-prefixed)

so a signature cannot be replayed in another run or round, or for another client, and any change to any chunk
fails verification. The server verifies before adding; the authority verifies again before it decrypts.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

__all__ = ["SIGNATURE_BYTES", "ciphertext_digest", "make_signing_keys", "sign_chunks", "signed_message",
           "verify_chunks"]

DOMAIN = b"fedsec-ckks-v1"
SIGNATURE_BYTES = 64


def make_signing_keys(partition_ids: Iterable[int]) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Fresh Ed25519 key pairs, one per partition: (private keys, public keys), each 32 raw bytes by partition id."""
    private: dict[int, bytes] = {}
    public: dict[int, bytes] = {}
    for pid in partition_ids:
        key = Ed25519PrivateKey.generate()
        private[int(pid)] = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        public[int(pid)] = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, public


def ciphertext_digest(chunks: Sequence[bytes]) -> bytes:
    """SHA-256 over the number of chunks and each chunk with its length (no two chunk lists share a digest)."""
    h = hashlib.sha256(struct.pack(">Q", len(chunks)))
    for chunk in chunks:
        h.update(struct.pack(">Q", len(chunk)))
        h.update(chunk)
    return h.digest()


def signed_message(*, run_id: str, server_round: int, partition_id: int, digest: bytes) -> bytes:
    """The bytes a client signs: domain, run id, round, partition id and the ciphertext digest."""
    run = run_id.encode()
    return DOMAIN + struct.pack(">H", len(run)) + run + struct.pack(">qq", server_round, partition_id) + digest


def sign_chunks(private_key: bytes, *, run_id: str, server_round: int, partition_id: int,
                chunks: Sequence[bytes]) -> bytes:
    """The client's signature (64 bytes) on its chunks for this run, round and partition."""
    message = signed_message(run_id=run_id, server_round=server_round, partition_id=partition_id,
                             digest=ciphertext_digest(chunks))
    return Ed25519PrivateKey.from_private_bytes(private_key).sign(message)


def verify_chunks(public_key: bytes | None, signature: object, *, run_id: str, server_round: int, partition_id: int,
                  chunks: Sequence[bytes]) -> str | None:
    """None if ``signature`` is partition ``partition_id``'s signature on ``chunks`` for this run and round;
    otherwise why not (no key for that partition, malformed or wrong signature)."""
    if public_key is None:
        return f"no signing key was issued to partition {partition_id}"
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_BYTES:
        return f"missing or malformed signature (expected {SIGNATURE_BYTES} bytes)"
    message = signed_message(run_id=run_id, server_round=server_round, partition_id=partition_id,
                             digest=ciphertext_digest(chunks))
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(bytes(signature), message)
    except InvalidSignature:
        return ("signature does not verify: the ciphertext was altered, or signed with a key the trusted setup did "
                "not issue to this partition, or for another run or round")
    return None
