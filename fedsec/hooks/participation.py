"""Who took part in a round: replies received, accepted, failed; whether the round aggregated; the strategy's own
round metrics (training loss, bytes sent, CKKS timings); and the stop when no client could take part."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from fedsec.results.contract import Metric

from .base import RoundHook, RoundState

logger = logging.getLogger(__name__)

#: the strategy's round metrics copied into rounds.csv when it reports them
STRATEGY_METRICS = ("train_loss", "bytes_up", "encrypt_seconds", "sign_seconds", "he_add_seconds", "decrypt_seconds",
                    "ckks_recovered")


class Participation(RoundHook):
    """Counts the round's replies by outcome and stops the run when every reply failed."""

    name = "participation"
    description = "replies sampled, accepted and failed per round; stops when no client could take part"
    client_metrics = ("vectorized",)  # train.vectorize: 1 = trained with its cohort, 0 = on its own
    metrics = (
        Metric("clients_sampled", "clients sampled for the round (one row each in clients.csv, the dropped and late "
               "ones included)", final=False, integer=True),
        Metric("clients_accepted", "replies the strategy gave a weight above 0", final=False, integer=True),
        Metric("clients_failed", "replies that failed, were invalid or refused to train", final=False, integer=True),
        Metric("train_loss", "mean local training loss of the round's clients", final=False, better="lower"),
        Metric("bytes_up", "bytes the clients sent in the round", final=False, integer=True),
        Metric("encrypt_seconds", "CKKS: the clients' encryption time", final=False),
        Metric("sign_seconds", "CKKS: the clients' signing time", final=False),
        Metric("he_add_seconds", "CKKS: the server's ciphertext additions", final=False),
        Metric("decrypt_seconds", "CKKS: decryption of the aggregate", final=False),
        Metric("ckks_recovered", "threshold CKKS: committee members that did not answer (or were unreachable) whose "
               "partial decryption was rebuilt from the others' shares", final=False, integer=True),
    )

    def after_aggregate(self, rnd: RoundState) -> None:
        row, decisions = rnd.row, rnd.decisions
        row["clients_sampled"] = len(decisions)
        row["clients_accepted"] = sum(1 for d in decisions if d.weight > 0)
        row["clients_failed"] = sum(1 for d in decisions if d.status.startswith(("failed", "invalid", "refused")))
        for key in STRATEGY_METRICS:
            if rnd.train_metrics is not None and key in rnd.train_metrics:
                row[key] = float(rnd.train_metrics[key])

    def after_round(self, rnd: RoundState) -> str:
        failed = all_failed(rnd.decisions)
        if not failed:
            return ""
        logger.error("stopping after round %d: no client could take part: %s", rnd.server_round, failed)
        return f"all_clients_failed (round {rnd.server_round}: {failed})"


def all_failed(decisions: list[Any]) -> str:
    """'' when some client took part; else each failure kind with its count, e.g. "failed: ... x3"."""
    decisions = [d for d in decisions if not d.status.startswith(("dropped", "late"))]  # the devices, not the run
    if not decisions or any(d.status in ("accepted", "rejected") or d.status.startswith(("refused", "skipped"))
                            for d in decisions):
        return ""
    kinds = Counter(d.status.split(":")[0] + ": " + d.status.split(":", 1)[-1].strip()[:80] for d in decisions)
    return "; ".join(f"{kind} x{count}" for kind, count in kinds.items())
