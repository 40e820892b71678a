"""The client side of CKKS-encrypted aggregation: encrypt the weighted update instead of sending arrays.

The client flattens its update (trained arrays - received global arrays), multiplies it by its number of
examples (so that the server's sum divided by the total is FedAvg; under central DP it clips it to
``privacy.clip_norm`` instead, weight 1), encrypts it in chunks of the slot count with
the context the key authority gave it (:mod:`fedsec.crypto`), and replies with the ciphertext bytes, its
plaintext ``num-examples`` and metrics; no ArrayRecord leaves the client.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord

from fedsec.arrays import record_to_vector
from fedsec.crypto import ciphertext_bytes, encrypt_vector
from fedsec.protocol import ARRAYS_RECORD, NUM_EXAMPLES_KEY, encrypted_reply

_CONTEXTS: dict[str, bytes] = {}


def worker_context(crypto_ref: Any) -> bytes:
    """The client context (bytes) behind ``crypto_ref`` (a Ray ObjectRef or the bytes), fetched once per worker."""
    if isinstance(crypto_ref, bytes):
        return crypto_ref
    key = crypto_ref.hex()
    if key not in _CONTEXTS:
        import ray

        _CONTEXTS.clear()
        _CONTEXTS[key] = ray.get(crypto_ref)
    return _CONTEXTS[key]


def encrypted_train_reply(
    message: Message,
    arrays: ArrayRecord,
    metrics: MetricRecord,
    *,
    context: bytes,
    node: str,
    clip_norm: float | None = None,
) -> Message:
    """The train reply under encryption: CKKS chunks of num_examples * update (or, under central DP, of the
    update clipped to ``clip_norm``, weight 1), plus plaintext metrics."""
    global_arrays = message.content[ARRAYS_RECORD]
    update = record_to_vector(arrays).double() - record_to_vector(global_arrays).double()
    if clip_norm is None:
        weighted = update * float(metrics[NUM_EXAMPLES_KEY])
    else:
        weighted = update * min(1.0, clip_norm / max(float(update.norm()), 1e-12))
    t0 = time.perf_counter()
    chunks = encrypt_vector(weighted.numpy(), context)
    metrics["encrypt_seconds"] = time.perf_counter() - t0
    metrics["ciphertext_bytes"] = ciphertext_bytes(chunks)
    return encrypted_reply(message, chunks, metrics, node=node)
