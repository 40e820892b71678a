"""OpenFHE's side of threshold CKKS, run by a Python that can import ``openfhe`` (not fedsec's).

OpenFHE: Al Badawi et al., "OpenFHE: Open-Source Fully Homomorphic Encryption Library", WAHC 2022
(https://eprint.iacr.org/2022/915); its multiparty CKKS (joint key generation over a common random polynomial,
partial decryptions fused by anyone) as in ``benchmarks/threshold_ckks_openfhe.py``, which measured it first.

Why a script of its own: OpenFHE's PyPI wheel (1.6.1.0.22.4) holds a CPython 3.10 extension only, and fedsec runs on
3.11, so each process that needs OpenFHE (a client, the server, the provisioning) talks to one of these over its
stdin/stdout (:mod:`fedsec.crypto.openfhe`). It imports nothing of fedsec and keeps no state between requests but
caches of deserialized public objects. A secret share is read from the file its owner's request names and never
written to the pipe; :func:`op_keygen` writes the share it makes to a new 0600 file itself.

Frames: 8 bytes big-endian length, then a pickle of ``(op, kwargs)``; the answer ``("ok", value)`` or
``("error", message)``. Vectors travel as float64 bytes, OpenFHE objects as their BINARY serialization.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys

import numpy as np
import openfhe as fhe

_CONTEXTS: dict[bytes, object] = {}
_PUBLIC_KEYS: dict[bytes, object] = {}


def _params(ring_dim: int, first_mod_bits: int, scaling_mod_bits: int) -> object:
    p = fhe.CCParamsCKKSRNS()
    p.SetMultiplicativeDepth(0)  # addition only: one prime, no key switching (BV, FIXEDMANUAL)
    p.SetScalingModSize(scaling_mod_bits)
    p.SetFirstModSize(first_mod_bits)
    p.SetScalingTechnique(fhe.FIXEDMANUAL)
    p.SetKeySwitchTechnique(fhe.BV)
    p.SetSecurityLevel(fhe.HEStd_128_classic)
    p.SetRingDim(ring_dim)
    return p


def _context(cc: bytes) -> object:
    if cc not in _CONTEXTS:
        context = fhe.DeserializeCryptoContextString(cc, fhe.BINARY)
        for feature in (fhe.PKE, fhe.KEYSWITCH, fhe.LEVELEDSHE, fhe.MULTIPARTY):
            context.Enable(feature)
        _CONTEXTS[cc] = context
    return _CONTEXTS[cc]


def _public_key(pk: bytes) -> object:
    if pk not in _PUBLIC_KEYS:
        _PUBLIC_KEYS[pk] = fhe.DeserializePublicKeyString(pk, fhe.BINARY)
    return _PUBLIC_KEYS[pk]


def _ciphertexts(chunks: list[bytes]) -> list[object]:
    return [fhe.DeserializeCiphertextString(c, fhe.BINARY) for c in chunks]


def _secret(path: str) -> object:
    with open(path, "rb") as f:
        return fhe.DeserializePrivateKeyString(f.read(), fhe.BINARY)


def op_context(ring_dim: int, first_mod_bits: int, scaling_mod_bits: int) -> dict:
    """A fresh crypto context (no keys) and what it allows: slots and log2 of the modulus."""
    cc = fhe.GenCryptoContext(_params(ring_dim, first_mod_bits, scaling_mod_bits))
    return {"cc": fhe.Serialize(cc, fhe.BINARY), "slots": cc.GetRingDimension() // 2,
            "ring_dim": cc.GetRingDimension()}


def op_keygen(cc: bytes, lead_pk: bytes | None, secret_path: str) -> bytes:
    """This party's key pair: the first party's fixes the common random polynomial, the others' reuse it
    (``MultipartyKeyGen(pk_1, fresh=True)``, the "star" variant). The secret share goes to a new 0600 file at
    ``secret_path``; the public key comes back."""
    context = _context(cc)
    pair = context.KeyGen() if lead_pk is None else context.MultipartyKeyGen(_public_key(lead_pk), False, True)
    _new_file(secret_path, fhe.Serialize(pair.secretKey, fhe.BINARY))
    return fhe.Serialize(pair.publicKey, fhe.BINARY)


def op_joint_key(cc: bytes, public_keys: list[bytes]) -> bytes:
    """The joint public key: the parties' public keys summed over the common polynomial (public material only)."""
    context = _context(cc)
    joint = _public_key(public_keys[0])
    for pk in public_keys[1:]:
        key = _public_key(pk)
        joint = context.MultiAddPubKeys(joint, key, key.GetKeyTag())
    return fhe.Serialize(joint, fhe.BINARY)


def op_encrypt(cc: bytes, pk: bytes, vector: bytes, slots: int) -> list[bytes]:
    """Encrypt a float64 vector under the joint public key, in chunks of ``slots`` values."""
    context, key = _context(cc), _public_key(pk)
    v = np.frombuffer(vector, dtype=np.float64)
    return [fhe.Serialize(context.Encrypt(key, context.MakeCKKSPackedPlaintext(v[i:i + slots].tolist())), fhe.BINARY)
            for i in range(0, len(v), slots)]


def _sum(context: object, members: list[list[bytes]]) -> list[object]:
    out = []
    for chunk in zip(*(_ciphertexts(m) for m in members), strict=True):
        acc = chunk[0]
        for ct in chunk[1:]:
            acc = context.EvalAdd(acc, ct)
        out.append(acc)
    return out


def op_add(cc: bytes, members: list[list[bytes]]) -> list[bytes]:
    """Chunk-wise sum of the members' ciphertext lists."""
    return [fhe.Serialize(c, fhe.BINARY) for c in _sum(_context(cc), members)]


def op_partial(cc: bytes, members: list[list[bytes]], secret_path: str, lead: bool) -> list[bytes]:
    """This party's partial decryption of the sum of ``members`` (added here: the party decrypts only the sum it
    computed itself). Exactly one party of a decryption is the lead (``MultipartyDecryptLead``)."""
    context = _context(cc)
    total = _sum(context, members)
    step = context.MultipartyDecryptLead if lead else context.MultipartyDecryptMain
    return [fhe.Serialize(p, fhe.BINARY) for p in step(total, _secret(secret_path))]


def op_fuse(cc: bytes, partials: list[list[bytes]], length: int) -> bytes:
    """Fuse one partial decryption per party (chunk by chunk) into the float64 plaintext of ``length`` values."""
    context = _context(cc)
    out = []
    for chunk in zip(*(_ciphertexts(p) for p in partials), strict=True):
        plain = context.MultipartyDecryptFusion(list(chunk))
        out.append(np.asarray(plain.GetRealPackedValue(), dtype=np.float64))
    return np.concatenate(out)[:length].tobytes() if out else b""


def _new_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def op_share_keys(cc: bytes, secret_path: str, n: int, t: int, index: int, out_paths: dict[int, str]) -> int:
    """Shamir-share this party's secret among the other parties (OpenFHE's ``ShareKeys``, t of n rebuild it): the
    share for party j (1-based) goes to a new 0600 file ``out_paths[j]``, written here; returns how many."""
    context = _context(cc)
    secret = _secret(secret_path)
    carrier = context.Encrypt(secret, context.MakeCKKSPackedPlaintext([0.0]))  # DCRTPoly has no Serialize: carry
    shares = context.ShareKeys(secret, n, t, index, "shamir")                   # it as a ciphertext's element
    for j, share in shares.items():
        box = carrier.CloneEmpty()
        box.SetElements([share])
        _new_file(out_paths[int(j)], fhe.Serialize(box, fhe.BINARY))
    return len(shares)


def op_recover_partial(cc: bytes, shares: dict[int, bytes], n: int, t: int, members: list[list[bytes]],
                       lead: bool) -> list[bytes]:
    """Rebuild a dropped party's secret from t holders' shares (OpenFHE's ``RecoverSharedKey``, "threshold FHE with
    aborts") and return its partial decryption of the sum of ``members``; the rebuilt secret is not kept."""
    context = _context(cc)
    held = {int(i): fhe.DeserializeCiphertextString(b, fhe.BINARY).GetElements()[0] for i, b in shares.items()}
    secret = fhe.PrivateKey(context)
    context.RecoverSharedKey(secret, held, n, t, "shamir")
    total = _sum(context, members)
    step = context.MultipartyDecryptLead if lead else context.MultipartyDecryptMain
    return [fhe.Serialize(p, fhe.BINARY) for p in step(total, secret)]


OPS = {"context": op_context, "keygen": op_keygen, "share_keys": op_share_keys, "joint_key": op_joint_key,
       "encrypt": op_encrypt, "add": op_add, "partial": op_partial, "recover_partial": op_recover_partial,
       "fuse": op_fuse}


def _read(stream) -> object | None:
    header = stream.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack(">Q", header)
    return pickle.loads(stream.read(size))  # noqa: S301 - the parent process that started this one


def _write(stream, value: object) -> None:
    data = pickle.dumps(value, protocol=4)
    stream.write(struct.pack(">Q", len(data)) + data)
    stream.flush()


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the pipe
    while (request := _read(stdin)) is not None:
        op, kwargs = request
        try:
            _write(stdout, ("ok", OPS[op](**kwargs)))
        except Exception as e:  # noqa: BLE001 - every failure goes back to the caller, which raises it
            _write(stdout, ("error", f"{op}: {type(e).__name__}: {e}"))


if __name__ == "__main__":
    main()
