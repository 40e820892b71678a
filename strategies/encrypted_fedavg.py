"""FedAvg over CKKS ciphertexts: the server checks signed encrypted updates it cannot read; a separate key
authority adds and decrypts only their sum.

Homomorphic encryption: Cheon, Kim, Kim and Song, "Homomorphic Encryption for Arithmetic of Approximate Numbers"
(CKKS), ASIACRYPT 2017 (https://eprint.iacr.org/2016/421), with TenSEAL; parameters and measured error in
:mod:`fedsec.crypto.ckks`. Signatures: Ed25519 (:mod:`fedsec.crypto.signing`). The key authority runs in a process
of its own (:mod:`fedsec.crypto.authority`); this strategy holds only its :class:`DecryptionService` (public
context, clients' verification keys, ``decrypt_round``), never a key that decrypts or signs.

Each client sends its flattened update times a weight it declares (``ckks-weight``: 1, or its ``num-examples``
when the run's weighting is "reported"), as CKKS chunks (ConfigRecord ``"ckks"``: ``"chunks"``, ``"signature"``)
plus plaintext metrics. The server verifies each signature (bound to run, round, partition id and the chunks'
digest) and rejects and records a reply that fails; the authority verifies again, adds, decrypts, checks the sum's
plausibility and releases it; the new global model is global + sum / denominator.

With central DP (``dp_noise_std``), clients clip to ``privacy.clip_norm`` with weight 1; the authority adds
N(0, dp_noise_std^2) to the released sum and the denominator is k (DP-FedAvg, McMahan et al., ICLR 2018). A round
with no valid reply (an empty Poisson cohort) still asks the authority for a release: the noise alone.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedsec.arrays import record_to_vector, vector_to_record
from fedsec.crypto import CryptoError, DecryptionResult, SignedCiphertext, ciphertext_bytes, load_context
from fedsec.crypto.signing import verify_chunks
from fedsec.protocol import (
    CHUNKS_KEY,
    CKKS_RECORD,
    CKKS_WEIGHT_KEY,
    NUM_EXAMPLES_KEY,
    PARTITION_ID_KEY,
    SIGNATURE_KEY,
)

from ._trust import check_count, check_partition_id
from .base import ClientDecision, RobustStrategy, RoundReport, no_participant_reason

__all__ = ["CHUNKS_KEY", "CKKS_RECORD", "CKKS_WEIGHT_KEY", "SIGNATURE_KEY", "EncryptedFedAvg"]



class Authority(Protocol):
    """What the strategy needs of the key authority (:class:`fedsec.crypto.DecryptionService`)."""

    public_context: bytes
    verify_keys: dict[int, bytes]
    run_id: str
    min_clients: int

    def decrypt_round(self, server_round: int, members: list[SignedCiphertext], length: int, *,
                      noise_std: float = 0.0) -> DecryptionResult: ...


class EncryptedFedAvg(RobustStrategy):
    """FedAvg on signed CKKS-encrypted updates; the server holds only a decryption *service*, no secret key.

    Parameters
    ----------
    authority : DecryptionService
        The key authority's server view (:meth:`fedsec.crypto.KeyAuthorityHandle.server_view`): its public
        context must not hold the secret key (refused otherwise).
    dp_noise_std : float | None (default: None)
        Central DP: the noise std the authority adds to the released sum; needs ``expected_clients``.
    expected_clients : int | None (default: None)
        DP-FedAvg's fixed denominator k.
    weighting : "reported" | "capped" | "uniform" (default: "capped")
        "reported": clients encrypt num-examples x update and the sum is divided by the claimed total (FedAvg,
        and its count lie). "capped" and "uniform": clients encrypt the update with weight 1 and the sum is
        divided by the number of clients: the server cannot cap a count inside a ciphertext (a ciphertext times
        a plaintext needs a rescale this addition-only parameter set does not have), so capping falls back to
        uniform weights, which a count lie cannot move.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``node_sampler``, ...).

    Assumptions
    -----------
    Honest-but-curious server; at least ``min_clients`` honest-or-not clients per round (the authority releases
    nothing smaller). Robust rules need per-client plaintext distances and cannot run here.

    Differences
    -----------
    Replies without a valid signature (tampered chunks, a key not issued to that partition, another round or
    run), with a duplicate or invalid partition id, a bad count, or a ``ckks-weight`` that is not the run's, are
    rejected and recorded; the authority's own rejections (ciphertexts that decrypt to implausible vectors) and
    refusals (too few clients, overflow) are recorded too. ``update_norm`` is NaN: the server cannot see it.
    """

    uses_counts = True  # under weighting="reported" only

    def __init__(
        self,
        *,
        authority: Authority,
        dp_noise_std: float | None = None,
        expected_clients: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        holds_secret = getattr(authority, "holds_secret_key", None)  # threshold CKKS: OpenFHE, not TenSEAL
        if holds_secret() if holds_secret is not None else load_context(authority.public_context).has_secret_key():
            raise CryptoError("EncryptedFedAvg: the server's context holds the secret key; pass the public one")
        if dp_noise_std is not None and (expected_clients is None or expected_clients < 1):
            raise CryptoError("EncryptedFedAvg: central DP needs expected_clients >= 1 (the fixed denominator)")
        self.authority = authority
        self.public_context = authority.public_context
        self.dp_noise_std = dp_noise_std
        self.expected_clients = expected_clients
        self.seed = seed
        super().__init__(**kwargs)

    def describe(self) -> str:
        if self.dp_noise_std is None:
            return f"EncryptedFedAvg(CKKS, weighting={self.weighting})"
        return (f"EncryptedFedAvg(CKKS, DP noise std {self.dp_noise_std:.4g} on the encrypted sum, "
                f"k={self.expected_clients})")

    @property
    def client_weighted(self) -> bool:
        """Whether clients multiply their update by their num-examples before encrypting."""
        return self.dp_noise_std is None and self.weighting == "reported"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("EncryptedFedAvg never sees plaintext updates")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Verify the replies' signatures, have the authority add and decrypt the verified set, apply the sum."""
        if self._global_arrays is None:
            raise RuntimeError("aggregate_train called before configure_train: no global arrays to update")
        decisions, valid = self._checked_replies(replies, lambda m: self._check_encrypted(m, server_round))
        valid = self._consistent(valid)
        report = RoundReport(server_round=server_round, decisions=decisions)
        self.last_report = report
        if not valid and self.dp_noise_std is None:
            report.skipped_reason = "no valid encrypted update; " + no_participant_reason(decisions)
            return None, None
        global_vector = record_to_vector(self._global_arrays).double()
        d = global_vector.numel()
        result = self.authority.decrypt_round(server_round, [m for _, m in valid], d,
                                              noise_std=self.dp_noise_std or 0.0)
        by_pid = {m.partition_id: dec for dec, m in valid}
        who = getattr(self.authority, "decrypter", "key authority")  # who decrypts under this trust model
        for pid, why in result.rejected.items():
            if pid in by_pid:
                by_pid[pid].status = f"invalid: {who}: {why}"
        if result.vector is None:
            report.skipped_reason = f"{who} refused to decrypt: {result.refused}"
            for dec, _ in valid:
                if dec.status == "pending":
                    dec.status = f"skipped: {who} refused"
            return None, None
        accepted = [by_pid[pid] for pid in result.accepted]
        if self.dp_noise_std is not None:
            total = float(self.expected_clients)
        elif self.client_weighted:
            total = float(sum(dec.num_examples for dec in accepted))
        else:
            total = float(len(accepted))
        for dec in accepted:
            share = dec.num_examples if self.client_weighted else 1.0
            dec.counted_examples = float(share)  # 1 under uniform weights: the liar's claim weighs nothing
            dec.weight, dec.status = share / total, "accepted"
        weighted_sum = torch.from_numpy(result.vector)
        new_arrays = vector_to_record((global_vector + weighted_sum / total).float(), like=self._global_arrays)
        metrics = self._weighted_metrics(accepted)
        metrics["bytes_up"] = sum(ciphertext_bytes(m.chunks) for _, m in valid)
        metrics["he_add_seconds"] = result.add_seconds
        metrics["decrypt_seconds"] = result.decrypt_seconds
        if result.recovered is not None:  # threshold CKKS
            metrics["ckks_recovered"] = len(result.recovered)
        return new_arrays, metrics

    def _consistent(
        self, valid: list[tuple[ClientDecision, SignedCiphertext]]
    ) -> list[tuple[ClientDecision, SignedCiphertext]]:
        """Drop replies that repeat a partition id, or whose chunk count is not the round's most common one."""
        ids = Counter(m.partition_id for _, m in valid)
        counts = Counter(len(m.chunks) for _, m in valid if ids[m.partition_id] == 1)
        usual = counts.most_common(1)[0][0] if counts else 0
        kept = []
        for dec, m in valid:
            if ids[m.partition_id] > 1:
                dec.status = (f"invalid: '{PARTITION_ID_KEY}'={m.partition_id} is claimed by {ids[m.partition_id]} "
                              "replies this round")
            elif len(m.chunks) != usual:
                dec.status = f"invalid: {len(m.chunks)} ciphertext chunks, the round's others sent {usual}"
            else:
                kept.append((dec, m))
        return kept

    def _check_encrypted(self, message: Message, server_round: int) -> tuple[ClientDecision, SignedCiphertext | None]:
        parsed = self._parse_reply(message)
        if isinstance(parsed, ClientDecision):
            return parsed, None
        content, metrics, partition_id, node = parsed
        node_id = message.metadata.src_node_id
        bad = lambda why: (self._bad(node_id, partition_id, "invalid: " + why, node, metrics), None)  # noqa: E731
        why = check_partition_id(metrics.get(PARTITION_ID_KEY), num_partitions=self.num_partitions,
                                 key=PARTITION_ID_KEY)
        if why is not None:  # under encryption the id is required: the signature binds it
            partition_id = None
            return bad(why)
        if content.array_records:
            return bad("plaintext arrays sent under encryption")
        record = content.config_records.get(CKKS_RECORD, {})
        chunks = record.get(CHUNKS_KEY)
        if not isinstance(chunks, list) or not chunks or not all(isinstance(c, bytes) for c in chunks):
            return bad("no CKKS chunks in the reply")
        num_examples = metrics.get(NUM_EXAMPLES_KEY)
        why = check_count(num_examples, max_examples=self.max_examples, key=NUM_EXAMPLES_KEY)
        if why is not None:
            return bad(why)
        weight = metrics.get(CKKS_WEIGHT_KEY, 1.0)
        wanted = float(num_examples) if self.client_weighted else 1.0
        if weight != wanted:
            return bad(f"'{CKKS_WEIGHT_KEY}'={weight!r}: this run's clients encrypt update x {wanted:g} "
                       f"(weighting={self.weighting!r})")
        pid = int(metrics[PARTITION_ID_KEY])
        signature = record.get(SIGNATURE_KEY)
        why = verify_chunks(self.authority.verify_keys.get(pid), signature, run_id=self.authority.run_id,
                            server_round=server_round, partition_id=pid, chunks=chunks)
        if why is not None:
            return bad(why)
        decision = ClientDecision(node_id, pid, int(num_examples), math.nan, 0.0, "pending", node, metrics)
        return decision, SignedCiphertext(pid, chunks, bytes(signature))
