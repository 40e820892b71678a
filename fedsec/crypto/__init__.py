"""Encrypted aggregation: CKKS parameters, contexts and encryption (:mod:`.ckks`), Ed25519 signatures on
ciphertexts (:mod:`.signing`) and the key authority in a process of its own (:mod:`.authority`)."""

from .authority import (
    AuthorityConfig,
    AuthorityRef,
    ClientMaterial,
    DecryptionResult,
    DecryptionService,
    KeyAuthorityHandle,
    SignedCiphertext,
)
from .ckks import (
    MAX_PRIME_BITS,
    MIN_SCALE_BITS,
    SECURITY_BOUND_BITS,
    CkksParams,
    CryptoError,
    add_encrypted,
    ciphertext_bytes,
    decrypt_chunks,
    encrypt_vector,
    load_context,
)

__all__ = [
    "AuthorityConfig",
    "AuthorityRef",
    "ClientMaterial",
    "DecryptionResult",
    "DecryptionService",
    "KeyAuthorityHandle",
    "SignedCiphertext",
    "MAX_PRIME_BITS",
    "MIN_SCALE_BITS",
    "SECURITY_BOUND_BITS",
    "CkksParams",
    "CryptoError",
    "add_encrypted",
    "ciphertext_bytes",
    "decrypt_chunks",
    "encrypt_vector",
    "load_context",
]
