"""The client side of CKKS-encrypted aggregation: encrypt the update, sign the ciphertext, send no arrays.

The client flattens its update (trained arrays - received global arrays), multiplies it by the weight the run's
weighting asks for (``weighted``: its ``num-examples``, so that the sum over the claimed total is FedAvg; else 1;
under central DP it clips it to ``privacy.clip_norm`` instead, weight 1), encrypts it in chunks of the slot count
with the public context the key authority issued, signs the chunks with its own Ed25519 key for this run, round and
partition (:mod:`fedsec.crypto.signing`), and replies with the ciphertexts, the signature, its plaintext
``num-examples``, the weight it used (``ckks-weight``) and metrics; no ArrayRecord leaves the client.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedsec.arrays import record_to_vector
from fedsec.crypto import AuthorityRef, ClientMaterial, CryptoError, DecryptionResult, ciphertext_bytes, encrypt_vector
from fedsec.crypto.client_keys import (
    DECRYPT_RECORD,
    RELEASE_RECORD,
    ClientKeyDir,
    decryptor_of,
    parse_decrypt_request,
    release_record,
)
from fedsec.protocol import (
    ARRAYS_RECORD,
    CKKS_RECORD,
    CKKS_WEIGHT_KEY,
    NUM_EXAMPLES_KEY,
    PARTITION_ID_KEY,
    SIGNATURE_KEY,
    encrypted_reply,
    server_round_of,
)


class ClientKeyring:
    """A worker's view of its clients' keys: each partition's material (context, signing key), fetched once from
    the authority actor (``AuthorityRef``), read from the clients' key directory (``ClientKeyDir``, under
    ``encryption.trust = "clients"``) or given directly (tests, tools)."""

    def __init__(self, source: AuthorityRef | ClientKeyDir | dict[int, ClientMaterial]) -> None:
        self._source = source
        self._materials: dict[int, ClientMaterial] = dict(source) if isinstance(source, dict) else {}

    def material(self, partition_id: int) -> ClientMaterial:
        if partition_id not in self._materials:
            if not isinstance(self._source, AuthorityRef | ClientKeyDir):
                raise KeyError(f"no CKKS client material for partition {partition_id}")
            self._materials[partition_id] = self._source.client_material(partition_id)
        return self._materials[partition_id]


_KEYRINGS: dict[Any, ClientKeyring | bytes] = {}


def worker_context(crypto_ref: Any) -> ClientKeyring | bytes:
    """What ``crypto_ref`` stands for in this worker, fetched once: a :class:`ClientKeyring` for an
    :class:`AuthorityRef` (or a keyring, passed through); for a Ray ObjectRef or bytes, the legacy context bytes
    (its replies are unsigned and a signature-checking server rejects them)."""
    if isinstance(crypto_ref, ClientKeyring | bytes):
        return crypto_ref
    key = crypto_ref if isinstance(crypto_ref, AuthorityRef | ClientKeyDir) else crypto_ref.hex()
    if key not in _KEYRINGS:
        _KEYRINGS.clear()
        if isinstance(crypto_ref, AuthorityRef | ClientKeyDir):
            _KEYRINGS[key] = ClientKeyring(crypto_ref)
        else:
            import ray

            _KEYRINGS[key] = ray.get(crypto_ref)
    return _KEYRINGS[key]


def encrypted_train_reply(
    message: Message,
    arrays: ArrayRecord,
    metrics: MetricRecord,
    *,
    context: ClientKeyring | bytes,
    node: str,
    clip_norm: float | None = None,
    weighted: bool = False,
    member_bound: float | None = None,
) -> Message:
    """The train reply under encryption: signed CKKS chunks of w x update, w = num-examples when ``weighted``
    else 1 (under central DP, ``clip_norm``: the update clipped to it, weight 1), each coordinate clamped to
    +-``member_bound`` (this client's share of the CKKS headroom, so that the cohort's sum cannot wrap around;
    ``ckks_clamped`` counts the coordinates it changed), plus plaintext metrics."""
    global_arrays = message.content[ARRAYS_RECORD]
    update = record_to_vector(arrays).double() - record_to_vector(global_arrays).double()
    if clip_norm is not None:
        weight = 1.0
        vector = update * min(1.0, clip_norm / max(float(update.norm()), 1e-12))
    else:
        weight = float(metrics[NUM_EXAMPLES_KEY]) if weighted else 1.0
        vector = update * weight
    if member_bound is not None:
        metrics["ckks_clamped"] = int((vector.abs() > member_bound).sum())
        vector = vector.clamp(-member_bound, member_bound)
    t0 = time.perf_counter()
    material = None
    if isinstance(context, ClientKeyring):
        material = context.material(int(metrics[PARTITION_ID_KEY]))
        chunks = material.encrypt(vector.numpy())
    else:
        chunks = encrypt_vector(vector.numpy(), context)
    t1 = time.perf_counter()
    signature = material.sign(server_round_of(message), chunks) if material is not None else None
    metrics["encrypt_seconds"] = t1 - t0
    metrics["sign_seconds"] = time.perf_counter() - t1
    metrics["ciphertext_bytes"] = ciphertext_bytes(chunks)
    metrics[CKKS_WEIGHT_KEY] = weight
    reply = encrypted_reply(message, chunks, metrics, node=node)
    if signature is not None:
        reply.content[CKKS_RECORD][SIGNATURE_KEY] = signature
    return reply


def decrypt_reply(message: Message, crypto_ref: Any, *, partition_id: int) -> Message:
    """Under ``encryption.trust = "clients"``: answer the server's request to decrypt a round's sum
    (:mod:`fedsec.crypto.client_keys`). Refused unless this client is the round's decryptor; the release rules are
    the key authority's; the rounds released are recorded in the key directory so that a round is released once."""
    from fedsec.crypto.threshold import ThresholdKeyDir
    from fedsec.crypto.threshold_member import partial_reply

    if isinstance(crypto_ref, ThresholdKeyDir):  # a committee member's partial decryption
        return partial_reply(message, crypto_ref, partition_id=partition_id)
    if not isinstance(crypto_ref, ClientKeyDir):
        raise CryptoError("a decryption request reached a client that holds no secret key (encryption.trust is "
                          "not 'clients')")
    server_round, members, length, noise_std = parse_decrypt_request(message.content[DECRYPT_RECORD])
    seed, num_clients = crypto_ref.run_facts()
    turn = decryptor_of(seed, server_round, num_clients)
    if turn != partition_id:
        result = DecryptionResult(server_round, None, [], {}, refused=f"client {partition_id} is not round "
                                  f"{server_round}'s decryptor (client {turn} is)")
    else:
        released = crypto_ref.released_rounds(partition_id)
        result = crypto_ref.decryptor(released).decrypt_round(server_round, members, length, noise_std)
        if result.vector is not None:
            crypto_ref.record_released(partition_id, released)
    return Message(content=RecordDict({RELEASE_RECORD: release_record(result)}), reply_to=message)
