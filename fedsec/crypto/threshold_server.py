"""The server's side of threshold CKKS (:mod:`.threshold`): ask every committee member for its partial decryption of
the round's sum, have a member that did not answer rebuilt at a survivor when at least ``threshold`` answered, fuse.
It holds the context, the joint public key and the verification keys only.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from .authority import DecryptionResult, SignedCiphertext, implausible
from .ckks import CryptoError
from .client_keys import DECRYPT_RECORD, RELEASE_RECORD, MessagedDecryption, decrypt_request
from .openfhe_side import side
from .threshold import (
    LEAD_KEY,
    RECOVER_OF_KEY,
    SHARE_FOR_KEY,
    SHARE_FROM_KEY,
    SHARE_OF_KEY,
    SHARES_KEY,
    ThresholdServerInfo,
)

__all__ = ["ThresholdDecryption"]

logger = logging.getLogger(__name__)


def _refusal(server_round: int, why: str, rejected: dict[int, str] | None = None) -> DecryptionResult:
    return DecryptionResult(server_round, None, [], dict(rejected or {}), refused=why)


class ThresholdDecryption(MessagedDecryption):
    """The server's side under ``trust = "threshold"``: the context, the joint public key, the verification keys
    and :meth:`decrypt_round`, which asks every committee member for its partial decryption and fuses them (the
    interface of :class:`fedsec.crypto.DecryptionService`); members the simulated devices mark unreachable are not
    asked and are rebuilt from shares, as members that do not answer."""

    decrypter = "decryption committee"

    def __init__(self, info: ThresholdServerInfo) -> None:
        config = info.config
        super().__init__(verify_keys=info.verify_keys, run_id=config.run_id, min_clients=config.min_clients,
                         max_abs=config.max_abs, num_clients=config.num_clients)
        self.info, self.public_context, self.committee = info, info.joint_key, config.committee

    def holds_secret_key(self) -> bool:
        """Never: the server's material is the context and the joint public key."""
        return False

    def _ask(self, requests: dict[int, ConfigRecord]) -> dict[int, tuple[str, Any]]:
        """Send each member its request; per member ("ok", (payload, meta)), ("refused", why) or ("lost", why).
        Members given the same record object get one content object (cohort transports need it)."""
        contents: dict[int, RecordDict] = {}
        for record in requests.values():
            contents.setdefault(id(record), RecordDict({DECRYPT_RECORD: record}))
        messages = [Message(content=contents[id(record)], dst_node_id=self._node_of[pid],
                            message_type=MessageType.QUERY) for pid, record in requests.items()]
        pid_of_node = {node: pid for pid, node in self._node_of.items()}
        out: dict[int, tuple[str, Any]] = {pid: ("lost", "did not answer") for pid in requests}
        for reply in self._transport.send_and_receive(messages, timeout=self._timeout):
            pid = pid_of_node.get(reply.metadata.src_node_id, -1)
            if pid not in out:
                continue
            record = None if reply.has_error() else reply.content.config_records.get(RELEASE_RECORD)
            if record is None:
                out[pid] = ("lost", f"failed: {reply.error.reason}" if reply.has_error() else "answered nothing")
                continue
            meta = json.loads(str(record["result"]))
            out[pid] = ("refused", f"refused: {meta['refused']}") if meta["refused"] else \
                ("ok", ([bytes(c) for c in record["partial"]], meta))
        return out

    def decrypt_round(self, server_round: int, members: list[SignedCiphertext], length: int, *,
                      noise_std: float = 0.0) -> DecryptionResult:
        """Every committee member's partial decryption of the members' sum, fused; a member that does not answer is
        replaced, when at least ``threshold`` did, by its secret rebuilt from the others' shares at one of them;
        otherwise a refusal that says why."""
        offline = self._offline(server_round, list(self.committee))
        if noise_std > 0:
            return _refusal(server_round, "threshold CKKS adds no central-DP noise (no party decrypts alone)")
        lead, config = self.committee[0], self.info.config

        def request(**extra: Any) -> ConfigRecord:
            record = decrypt_request(server_round, members, length, 0.0)
            record[LEAD_KEY] = lead
            for key, value in extra.items():
                record[key] = value
            return record

        t0 = time.perf_counter()
        everyone = request()
        answers = self._ask(dict.fromkeys([p for p in self.committee if p not in offline], everyone))
        answers.update({pid: ("lost", why) for pid, why in offline.items()})
        partials = {pid: value[0] for pid, (status, value) in answers.items() if status == "ok"}
        rejected: dict[int, str] = {}
        for status, value in answers.values():
            if status == "ok":
                rejected.update({int(k): str(v) for k, v in value[1]["rejected"].items()})
        accepted_sets = {tuple(value[1]["accepted"]) for status, value in answers.values() if status == "ok"}
        problems = {pid: value for pid, (status, value) in answers.items() if status != "ok"}
        lost = [pid for pid, (status, _) in answers.items() if status == "lost"]
        recovered: list[int] = []
        if lost and len(problems) == len(lost) and len(partials) >= config.threshold < len(self.committee):
            recipient = min(partials)
            holders = [p for p in sorted(partials) if p != recipient][:config.threshold - 1]
            for dropped in lost:
                boxes = self._ask(dict.fromkeys(holders, _share_request(server_round, length, dropped, recipient)))
                if any(status != "ok" for status, _ in boxes.values()):
                    problems[dropped] += "; its share holders: " + "; ".join(
                        f"member {h} {v}" for h, (st, v) in boxes.items() if st != "ok")
                    continue
                answer = self._ask({recipient: request(**{
                    RECOVER_OF_KEY: dropped, SHARE_FROM_KEY: json.dumps(holders),
                    SHARES_KEY: [boxes[h][1][0][0] for h in holders] or [b""]})})[recipient]
                if answer[0] != "ok":
                    problems[dropped] += f"; rebuilding it at member {recipient}: {answer[1]}"
                    continue
                partials[dropped] = answer[1][0]
                recovered.append(dropped)
                del problems[dropped]
        if problems:
            by_reason: dict[str, list[int]] = {}
            for pid, why in problems.items():
                by_reason.setdefault(why, []).append(pid)
            said = "; ".join(f"member(s) {', '.join(map(str, sorted(p)))} {why}" for why, p in by_reason.items())
            need = (f"{config.threshold} answering members rebuild the others" if config.threshold < len(
                self.committee) else "OpenFHE's multiparty CKKS needs every member")
            return _refusal(server_round, f"{len(partials)} of the committee's {len(self.committee)} partial "
                            f"decryptions ({need}): {said}", rejected)
        if len(accepted_sets) != 1:
            return _refusal(server_round, "the committee members decrypted different member sets", rejected)
        try:
            raw = side().call("fuse", cc=self.info.cc, partials=[partials[p] for p in self.committee],
                              length=length)
        except CryptoError as e:
            return _refusal(server_round, f"the partial decryptions do not fuse: {e}", rejected)
        vector = np.frombuffer(raw, dtype=np.float64).copy()
        accepted = list(next(iter(accepted_sets)))
        why = implausible(vector, len(accepted), max_abs=self.max_abs, norm_bound=config.client_norm_bound)
        if why is not None:  # no member is decrypted alone to find the culprit: the round is refused
            return _refusal(server_round, f"the fused sum is implausible ({why}); threshold CKKS cannot drop one "
                            "member without decrypting it alone", rejected)
        if recovered:
            logger.info("round %d: the partial decryptions of member(s) %s rebuilt from shares at member %d",
                        server_round, recovered, min(p for p in partials if p not in recovered))
        return DecryptionResult(server_round, vector, accepted, rejected, add_seconds=0.0,
                                decrypt_seconds=time.perf_counter() - t0, recovered=recovered)


def _share_request(server_round: int, length: int, dropped: int, recipient: int) -> ConfigRecord:
    record = decrypt_request(server_round, [], length, 0.0)
    record[SHARE_OF_KEY], record[SHARE_FOR_KEY] = dropped, recipient
    return record
