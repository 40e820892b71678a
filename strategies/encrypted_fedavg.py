"""FedAvg over CKKS ciphertexts: the server adds encrypted updates it cannot read.

Homomorphic encryption: Cheon, Kim, Kim and Song, "Homomorphic Encryption for Arithmetic of Approximate Numbers"
(CKKS), ASIACRYPT 2017 (https://eprint.iacr.org/2016/421), with TenSEAL; the parameters and their measured error
are in :mod:`fedsec.crypto`. Each client sends its flattened update multiplied by its ``num-examples`` as CKKS
chunks (a ConfigRecord ``"ckks"`` with ``"chunks"``: list of bytes) plus its plaintext ``num-examples``; the server
sums the chunk lists with the *public* context only and hands the encrypted sum to a decryptor (the key
authority's, in a simulation the trusted setup); the new global model is global + sum / total examples, exactly
FedAvg up to the CKKS error.

With central DP (``dp_noise_std``), clients clip their update to ``privacy.clip_norm`` and send it with weight 1;
the server encrypts N(0, dp_noise_std^2) noise with the public key, adds it to the encrypted sum, and the new
model is global + sum / k (DP-FedAvg's fixed denominator, McMahan et al., ICLR 2018): the key authority only ever
decrypts a noised sum.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedsec.arrays import record_to_vector, vector_to_record
from fedsec.crypto import CryptoError, add_encrypted, ciphertext_bytes, encrypt_vector, load_context
from fedsec.protocol import CHUNKS_KEY, CKKS_RECORD, NUM_EXAMPLES_KEY, reply_sort_key

from .base import ClientDecision, RobustStrategy, RoundReport

__all__ = ["CHUNKS_KEY", "CKKS_RECORD", "Decryptor", "EncryptedFedAvg"]

Decryptor = Callable[[list[bytes], int], np.ndarray]


class EncryptedFedAvg(RobustStrategy):
    """FedAvg on CKKS-encrypted updates; the server holds only the public context.

    Parameters
    ----------
    public_context : bytes
        The key authority's serialized public context (no secret key: refused otherwise).
    decryptor : Callable[[list[bytes], int], np.ndarray]
        Decrypts the summed chunks to a vector of the given length (``KeyAuthority.decrypt_sum``); the
        strategy never gets the secret key.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``node_sampler``).

    Assumptions
    -----------
    Honest-but-curious server; the sum of weighted updates stays within the CKKS headroom
    (:attr:`fedsec.crypto.CkksParams.max_abs`), otherwise the decrypted sum is garbage (CKKS cannot detect it).
    Robust rules need per-client plaintext distances and cannot run here.

    Differences
    -----------
    A reply whose ciphertexts do not deserialize or add up (malformed bytes, other parameters, other length) is
    rejected and recorded, the rest are summed. ``update_norm`` is NaN: the server cannot see it.
    """

    def __init__(
        self,
        *,
        public_context: bytes,
        decryptor: Decryptor,
        dp_noise_std: float | None = None,
        expected_clients: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if load_context(public_context).has_secret_key():
            raise CryptoError("EncryptedFedAvg: the server's context holds the secret key; pass the public one")
        if dp_noise_std is not None and (expected_clients is None or expected_clients < 1):
            raise CryptoError("EncryptedFedAvg: central DP needs expected_clients >= 1 (the fixed denominator)")
        self.public_context = public_context
        self.decryptor = decryptor
        self.dp_noise_std = dp_noise_std
        self.expected_clients = expected_clients
        self.generator = torch.Generator().manual_seed(seed)
        super().__init__(**kwargs)

    def describe(self) -> str:
        if self.dp_noise_std is None:
            return "EncryptedFedAvg(CKKS)"
        return (f"EncryptedFedAvg(CKKS, DP noise std {self.dp_noise_std:.4g} on the encrypted sum, "
                f"k={self.expected_clients})")

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("EncryptedFedAvg never sees plaintext updates")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sum the valid replies' ciphertexts, have the sum decrypted, apply it to the global model."""
        if self._global_arrays is None:
            raise RuntimeError("aggregate_train called before configure_train: no global arrays to update")
        decisions: list[ClientDecision] = []
        valid: list[tuple[ClientDecision, list[bytes]]] = []
        for message in sorted(replies, key=reply_sort_key):
            decision, chunks = self._check_encrypted(message)
            decisions.append(decision)
            if chunks is not None:
                valid.append((decision, chunks))
        report = RoundReport(server_round=server_round, decisions=decisions)
        self.last_report = report
        t0 = time.perf_counter()
        summed, valid = self._sum(valid)
        t1 = time.perf_counter()
        if summed is None:
            report.skipped_reason = "no valid encrypted update"
            return None, None
        global_vector = record_to_vector(self._global_arrays).double()
        if self.dp_noise_std is not None:  # DP-FedAvg: clipped updates with weight 1, noise, fixed denominator k
            d = global_vector.numel()
            noise = self.dp_noise_std * torch.randn(d, generator=self.generator, dtype=torch.float64)
            summed = add_encrypted([summed, encrypt_vector(noise.numpy(), self.public_context)], self.public_context)
            weights = {id(d): 1.0 / self.expected_clients for d, _ in valid}
            total = float(self.expected_clients)
        else:
            total = float(sum(d.num_examples for d, _ in valid))
            weights = {id(d): d.num_examples / total for d, _ in valid}
        weighted_sum = torch.from_numpy(self.decryptor(summed, global_vector.numel()))
        t2 = time.perf_counter()
        for d, _ in valid:
            d.weight, d.status = weights[id(d)], "accepted"
        new_arrays = vector_to_record((global_vector + weighted_sum / total).float(), like=self._global_arrays)
        metrics = self._weighted_metrics([d for d, _ in valid])
        metrics["bytes_up"] = sum(ciphertext_bytes(c) for _, c in valid)
        metrics["he_add_seconds"] = t1 - t0
        metrics["decrypt_seconds"] = t2 - t1
        return new_arrays, metrics

    def _sum(
        self, valid: list[tuple[ClientDecision, list[bytes]]]
    ) -> tuple[list[bytes] | None, list[tuple[ClientDecision, list[bytes]]]]:
        """Encrypted sum of the valid chunk lists; a client whose chunks do not add is rejected, the rest summed."""
        if not valid:
            return None, valid
        try:
            return add_encrypted([c for _, c in valid], self.public_context), valid
        except CryptoError:
            pass
        total: list[bytes] | None = None
        kept = []
        for decision, chunks in valid:  # find the culprits one by one
            try:
                total = add_encrypted([chunks] if total is None else [total, chunks], self.public_context)
                kept.append((decision, chunks))
            except CryptoError as e:
                decision.status = f"invalid: {str(e).split(';')[0]}"
        return total, kept

    def _check_encrypted(self, message: Message) -> tuple[ClientDecision, list[bytes] | None]:
        parsed = self._parse_reply(message)
        if isinstance(parsed, ClientDecision):
            return parsed, None
        content, metrics, partition_id, node = parsed
        node_id = message.metadata.src_node_id
        num_examples = metrics.get(NUM_EXAMPLES_KEY)
        if content.array_records:
            return self._bad(node_id, partition_id, "invalid: plaintext arrays sent under encryption", node,
                             metrics), None
        chunks = content.config_records.get(CKKS_RECORD, {}).get(CHUNKS_KEY)
        if not isinstance(chunks, list) or not chunks or not all(isinstance(c, bytes) for c in chunks):
            return self._bad(node_id, partition_id, "invalid: no CKKS chunks in the reply", node, metrics), None
        if num_examples is None or not math.isfinite(num_examples) or num_examples <= 0:
            return self._bad(node_id, partition_id, f"invalid: '{NUM_EXAMPLES_KEY}' must be a positive number",
                             node, metrics), None
        decision = ClientDecision(node_id, partition_id, int(num_examples), math.nan, 0.0, "pending", node, metrics)
        return decision, chunks
