"""A threshold CKKS committee member's answers to the server (:mod:`.threshold`): its partial decryption of a
round's sum, a dropped member's partial rebuilt from the holders' shares, and its share of a dropped member's secret
encrypted to the member that rebuilds it. Every rule is checked here, on the member's side, and what it released is
recorded in the key directory (``threshold-<id>.json``), not in Flower's node state.

Shares travel encrypted to their recipient: X25519 between the holder's and the recipient's box keys, HKDF-SHA256
bound to the run, the dropped member, the holder and the recipient, ChaCha20-Poly1305 (the ``cryptography``
package); the server relays boxes it cannot open.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import ConfigRecord, Message, RecordDict

from .authority import DecryptionResult, verified_members
from .ckks import CryptoError
from .client_keys import DECRYPT_RECORD, RELEASE_RECORD, parse_decrypt_request
from .openfhe_side import side
from .threshold import (
    LEAD_KEY,
    RECOVER_OF_KEY,
    SHARE_FOR_KEY,
    SHARE_FROM_KEY,
    SHARE_OF_KEY,
    SHARES_KEY,
    ThresholdConfig,
    ThresholdKeyDir,
    ThresholdServerInfo,
)

__all__ = ["box_key", "partial_reply"]


def box_key(secret: bytes, peer: bytes, *, run_id: str, owner: int, holder: int, recipient: int) -> ChaCha20Poly1305:
    """The key of a share box from ``holder`` to ``recipient`` (either side computes it from its own secret and the
    other's public key)."""
    shared = X25519PrivateKey.from_private_bytes(secret).exchange(X25519PublicKey.from_public_bytes(peer))
    info = f"fedsec-threshold-share|{run_id}|{owner}|{holder}|{recipient}".encode()
    return ChaCha20Poly1305(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared))


def _set_digest(kept: dict[int, list[bytes]]) -> str:
    digest = hashlib.sha256()
    for pid in sorted(kept):
        digest.update(f"{pid}|{len(kept[pid])}|".encode())
        for chunk in kept[pid]:
            digest.update(hashlib.sha256(chunk).digest())
    return digest.hexdigest()


def _answer(message: Message, result: DecryptionResult, payload: list[bytes]) -> Message:
    reply = ConfigRecord({"partial": payload or [b""], "result": json.dumps({
        "accepted": result.accepted, "rejected": {str(k): v for k, v in result.rejected.items()},
        "refused": result.refused, "decrypt_seconds": result.decrypt_seconds})})
    return Message(content=RecordDict({RELEASE_RECORD: reply}), reply_to=message)


def partial_reply(message: Message, keys: ThresholdKeyDir, *, partition_id: int) -> Message:
    """A committee member's answer to the server: its partial decryption of the sum of the signed members it
    verified itself, once per round; with ``recover-of``, the partial decryption of a dropped member's secret rebuilt
    from the holders' shares, for the same sum; with ``share-of``, its share of a dropped member's secret, encrypted
    to the member that rebuilds it. A refusal says why."""
    record = message.content[DECRYPT_RECORD]
    if SHARE_OF_KEY in record:
        return _share_reply(message, keys, partition_id=partition_id)
    server_round, members, _length, _noise = parse_decrypt_request(record)
    info = keys.info()
    config = info.config
    result = DecryptionResult(server_round, None, [], {})
    partial: list[bytes] = []
    mine = keys.record(partition_id)
    done = mine["rounds"].get(str(server_round))
    recover = int(record[RECOVER_OF_KEY]) if RECOVER_OF_KEY in record else None
    if partition_id not in config.committee:
        result.refused = f"client {partition_id} is not on the decryption committee {list(config.committee)}"
        return _answer(message, result, partial)
    if recover is None and done is not None:
        result.refused = (f"already decrypted round {server_round} once; a second sum of another set would reveal "
                          "the difference")
        return _answer(message, result, partial)
    kept = verified_members(members, info.verify_keys, run_id=config.run_id, server_round=server_round,
                            rejected=result.rejected)
    if len(kept) < config.min_clients:
        result.refused = (f"{len(kept)} verified distinct clients; committee members decrypt only sums of at least "
                          f"min_clients={config.min_clients}")
        return _answer(message, result, partial)
    lead = int(record.get(LEAD_KEY, -1))
    t0 = time.perf_counter()
    try:
        if recover is None:
            partial = side().call("partial", cc=info.cc, members=[kept[p] for p in sorted(kept)],
                                  secret_path=str(keys.secret_path(partition_id)), lead=lead == partition_id)
            mine["rounds"][str(server_round)] = {"set": _set_digest(kept), "recovered": []}
        else:
            why = _recovery_refusal(config, partition_id, recover, done, _set_digest(kept))
            if why:
                result.refused = why
                return _answer(message, result, partial)
            shares = _opened_shares(record, keys, info, partition_id, recover)
            partial = side().call("recover_partial", cc=info.cc, shares=shares, n=len(config.committee),
                                  t=config.threshold, members=[kept[p] for p in sorted(kept)], lead=lead == recover)
            done["recovered"].append(recover)
    except (CryptoError, KeyError, ValueError) as e:
        result.refused = f"could not decrypt the sum: {e}"
        return _answer(message, result, [])
    keys.save_record(partition_id, mine)
    result.accepted = sorted(kept)
    result.decrypt_seconds = time.perf_counter() - t0
    return _answer(message, result, partial)


def _recovery_refusal(config: ThresholdConfig, me: int, dropped: int, done: dict[str, Any] | None,
                      digest: str) -> str:
    """Why this member must not make ``dropped``'s partial decryption now ('' when it may): only for a member of
    the committee other than itself, only for the very sum it decrypted itself this round, once."""
    if dropped not in config.committee or dropped == me:
        return f"recover-of={dropped}: not another member of the committee"
    if config.threshold == len(config.committee):
        return "the committee shared no keys (threshold = committee): a dropped member cannot be replaced"
    if done is None:
        return ("this member has not decrypted this round's sum itself; it rebuilds a dropped member's partial only "
                "for that sum")
    if done["set"] != digest:
        return "the member set differs from the one this member decrypted this round"
    if dropped in done["recovered"]:
        return f"member {dropped}'s partial decryption for this round was made once already"
    return ""


def _opened_shares(record: ConfigRecord, keys: ThresholdKeyDir, info: ThresholdServerInfo, me: int,
                   dropped: int) -> dict[int, bytes]:
    """The holders' shares of ``dropped``'s secret, each opened with this member's box key; this member's own
    share read from its file. Raises ValueError for a box that does not open or too few shares."""
    config = info.config
    holders = json.loads(str(record[SHARE_FROM_KEY]))
    boxes = list(record[SHARES_KEY])
    shares = {config.index(me): keys.held_share(me, dropped)}
    for holder, box in zip(holders, boxes, strict=True):
        holder = int(holder)
        if holder not in config.committee or holder in (me, dropped):
            continue
        key = box_key(keys.box_secret(me), info.box_keys[holder], run_id=config.run_id, owner=dropped,
                       holder=holder, recipient=me)
        try:
            shares[config.index(holder)] = key.decrypt(bytes(box[:12]), bytes(box[12:]), None)
        except Exception as e:  # noqa: BLE001 - cryptography's InvalidTag: a box not made for this member
            raise ValueError(f"member {holder}'s share does not open with this member's key") from e
    if len(shares) < config.threshold:
        raise ValueError(f"{len(shares)} shares of member {dropped}'s secret, {config.threshold} rebuild it")
    return shares


def _share_reply(message: Message, keys: ThresholdKeyDir, *, partition_id: int) -> Message:
    """A holder's share of a dropped member's secret, encrypted to the member that rebuilds it; each dropped
    member's share goes to one recipient only (a second recipient would hold it too)."""
    record = message.content[DECRYPT_RECORD]
    info = keys.info()
    config = info.config
    owner, recipient = int(record[SHARE_OF_KEY]), int(record[SHARE_FOR_KEY])
    result = DecryptionResult(int(record["round"]), None, [], {})
    mine = keys.record(partition_id)
    earlier = mine["shared"].get(str(owner))
    if {owner, recipient, partition_id} - set(config.committee) or len({owner, recipient, partition_id}) < 3:
        result.refused = (f"share of member {owner} for member {recipient}: both, and this holder, must be three "
                          "distinct committee members")
    elif config.threshold == len(config.committee):
        result.refused = "the committee shared no keys (threshold = committee)"
    elif earlier is not None and earlier != recipient:
        result.refused = (f"this holder sent its share of member {owner} to member {earlier} already; a second "
                          "recipient would hold that secret too")
    else:
        key = box_key(keys.box_secret(partition_id), info.box_keys[recipient], run_id=config.run_id, owner=owner,
                       holder=partition_id, recipient=recipient)
        nonce = os.urandom(12)
        box = nonce + key.encrypt(nonce, keys.held_share(partition_id, owner), None)
        mine["shared"][str(owner)] = recipient
        keys.save_record(partition_id, mine)
        return _answer(message, result, [box])
    return _answer(message, result, [])
