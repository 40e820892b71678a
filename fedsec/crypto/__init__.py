"""Encrypted aggregation: CKKS parameters, contexts, encryption and the key authority (:mod:`.ckks`)."""

from .ckks import (
    MAX_PRIME_BITS,
    MIN_SCALE_BITS,
    SECURITY_BOUND_BITS,
    CkksParams,
    CryptoError,
    KeyAuthority,
    add_encrypted,
    ciphertext_bytes,
    encrypt_vector,
    load_context,
)

__all__ = [
    "MAX_PRIME_BITS",
    "MIN_SCALE_BITS",
    "SECURITY_BOUND_BITS",
    "CkksParams",
    "CryptoError",
    "KeyAuthority",
    "add_encrypted",
    "ciphertext_bytes",
    "encrypt_vector",
    "load_context",
]
