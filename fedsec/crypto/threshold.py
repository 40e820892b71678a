"""``encryption.trust = "threshold"``: no party holds the CKKS secret key; the committee decrypts a sum together.

Multiparty CKKS as OpenFHE implements it (Al Badawi et al., "OpenFHE", WAHC 2022, https://eprint.iacr.org/2022/915;
the scheme: Mouchet, Troncoso-Pastoriza, Bossuat and Hubaux, "Multiparty Homomorphic Encryption from
Ring-Learning-with-Errors", PETS 2021, https://eprint.iacr.org/2020/304), run in a side process of a Python that
imports OpenFHE (:mod:`.openfhe_side`):

- **Keys.** A committee of ``encryption.committee`` clients (the first ones of a seeded draw) makes the joint key:
  each member's own OpenFHE side process makes its key pair over the first member's common polynomial and writes
  the secret share to a 0600 file itself (``member-<id>.secret``); only the public keys leave, and the joint
  public key is their sum. The joint secret key s = s_1 + ... + s_n exists nowhere. The Ed25519 signing keys
  (:mod:`.signing`) are made in a spawned process of their own, as under ``trust = "clients"``.
- **Clients** encrypt their update under the joint public key and sign it (:mod:`fedsec.clients.encrypted`).
- **Decryption.** The server sends the round's signed ciphertexts to every committee member. Each member verifies
  every signature, refuses a set of fewer than ``min_clients`` distinct signed members and a second request in a
  round, adds the ciphertexts itself and returns its partial decryption of that sum (one member, the lead, also
  covers c0). The server fuses the partials (``MultipartyDecryptFusion``): the sum, and nothing else, since every
  member decrypted the same sum it computed itself.

Threshold: OpenFHE's multiparty CKKS is n-of-n: a fusion needs the partial of every member, and fewer partials
do not decrypt (OpenFHE refuses: "the approximation error is too high"). OpenFHE's t-of-n ("threshold FHE with
aborts": each member Shamir-shares its s_i, and t survivors rebuild a dropped member's share) is measured in
``benchmarks/bench_threshold_ckks.py`` but not wired in here: a round whose committee is not complete is refused
and recorded, so ``encryption.threshold`` must equal the committee size.

Differences from the other trust models (:mod:`.authority`, :mod:`.client_keys`), each said where it applies:
the headroom is smaller (the scale is 2^(first prime - 10) because OpenFHE floods each partial decryption with
noise of std 2^20: 2^9 per coordinate with the default 60-bit prime; clients clamp to their share of it, so an
honest cohort cannot overflow); a sum that still overflows is refused, not pruned, since finding the offender
would need decrypting single members; central DP is refused (no single party can add the noise after
decryption).

What holds against code in the server's own process: it holds the context, the joint public key and the
verification keys, and can obtain only a fused sum of ``min_clients`` signed members of the current round, once.
The members' share files are readable by the account that runs the clients (under ``fedsec run``, the server's);
under ``fedsec deploy`` with the server in its own account, they are not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from .authority import ClientMaterial, DecryptionResult, SignedCiphertext, verified_members
from .ckks import CkksParams, CryptoError
from .client_keys import (
    DECRYPT_RECORD,
    GROUP_FILE,
    RELEASE_RECORD,
    ClientKeyDir,
    _load,
    decrypt_request,
    parse_decrypt_request,
)
from .openfhe_side import OpenFheSide, side
from .signing import make_signing_keys

__all__ = ["HEADROOM_BITS", "ThresholdConfig", "ThresholdDecryption", "ThresholdHeldKeys", "ThresholdKeyDir",
           "ThresholdServerInfo", "committee_of", "partial_reply", "threshold_max_abs"]

logger = logging.getLogger(__name__)

HEADROOM_BITS = 10  # scale = 2^(first prime - 10): OpenFHE's partial decryptions carry noise of std 2^20
LEAD_KEY = "lead"  # in a decryption request: the committee member whose partial covers c0
RECOVER_OF_KEY = "recover-of"  # ... asks for a dropped member's partial, rebuilt from the holders' shares
SHARE_FROM_KEY = "share-from"  # ... the holders whose encrypted shares come with it (json list)
SHARES_KEY = "shares"  # ... and their boxes
SHARE_OF_KEY = "share-of"  # a share request: the dropped member whose secret a holder's share is of
SHARE_FOR_KEY = "share-for"  # ... and the member it is encrypted to


def threshold_max_abs(params: CkksParams) -> float:
    """Largest |value| of a sum under threshold CKKS (one bit of margin below the headroom)."""
    return 2.0 ** (HEADROOM_BITS - 1)


def committee_of(run_id: str, num_clients: int, size: int) -> tuple[int, ...]:
    """The committee: ``size`` partitions drawn by the run id (the server cannot pick them).

    >>> committee_of("run", 10, 3) == committee_of("run", 10, 3)
    True
    >>> len(set(committee_of("run", 10, 10)))
    10
    """
    seed = int.from_bytes(hashlib.sha256(f"{run_id}|committee".encode()).digest()[:8], "big")
    order = np.random.default_rng(seed).permutation(num_clients)
    return tuple(sorted(int(p) for p in order[:size]))


@dataclass(frozen=True)
class ThresholdConfig:
    """The committee and the public parameters; ``ring_dim`` and ``first_mod_bits`` come from the CKKS params."""

    ring_dim: int
    first_mod_bits: int
    num_clients: int
    committee: tuple[int, ...]
    threshold: int
    min_clients: int
    run_id: str
    client_norm_bound: float | None = None

    def index(self, partition_id: int) -> int:
        """A member's party index in OpenFHE's share maps (1-based, committee order)."""
        return self.committee.index(partition_id) + 1

    @property
    def scaling_mod_bits(self) -> int:
        return self.first_mod_bits - HEADROOM_BITS

    @property
    def max_abs(self) -> float:
        return 2.0 ** (HEADROOM_BITS - 1)


@dataclass(frozen=True)
class ThresholdServerInfo:
    """What the server gets: the context, the joint public key, verification keys; nothing that decrypts or signs."""

    cc: bytes
    joint_key: bytes
    slots: int
    verify_keys: dict[int, bytes]
    config: ThresholdConfig
    box_keys: dict[int, bytes]  # each member's X25519 public key: shares travel to a member encrypted to it


def _write(path: Path, payload: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)


def _signing_keys(num_clients: int, committee: tuple[int, ...], directory: str,
                  conn: Any) -> None:  # pragma: no cover - child process
    """The signing keys and the members' box keys, made in a process of their own: the clients' files written,
    the public halves sent back."""
    try:
        signing, verify = make_signing_keys(range(num_clients))
        for pid, key in signing.items():
            _write(Path(directory) / f"sign-{pid}.key", key)
        boxes = {}
        for pid in committee:
            secret = X25519PrivateKey.generate()
            _write(Path(directory) / f"box-{pid}.key", secret.private_bytes_raw())
            boxes[pid] = secret.public_key().public_bytes_raw()
        conn.send(("ok", (dict(verify), boxes)))
    except Exception as e:  # noqa: BLE001 - report it to the parent
        conn.send(("error", e))


def _make_signing_keys(num_clients: int, committee: tuple[int, ...],
                       directory: Path) -> tuple[dict[int, bytes], dict[int, bytes]]:
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    process = mp.Process(target=_signing_keys, args=(num_clients, committee, str(directory), child),
                         name="fedsec-sign-keys")
    process.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError as e:
        raise CryptoError("making the clients' signing keys failed: the process ended without an answer") from e
    finally:
        process.join(timeout=30)
    if status == "error":
        raise value
    return value


def provision_threshold_keys(params: CkksParams, *, num_clients: int, committee: int, threshold: int | None = None,
                             min_clients: int = 2, run_id: str | None = None, client_norm_bound: float | None = None,
                             directory: str | Path | None = None) -> tuple[ThresholdServerInfo, Path]:
    """Run the committee's key generation (each member in an OpenFHE side process of its own, which also
    Shamir-shares its secret among the other members when ``threshold`` < ``committee``) and make the signing and
    box keys; write the clients' files to ``directory`` (default: a fresh 0700 temporary directory)."""
    if not 2 <= committee <= num_clients:
        raise CryptoError(f"threshold CKKS: committee={committee} must be in [2, num_clients={num_clients}]")
    t = committee if threshold is None else threshold
    if not committee / 2 < t <= committee:
        raise CryptoError(f"threshold CKKS: threshold={t} must be in (committee / 2, committee] = "
                          f"({committee / 2:g}, {committee}] (OpenFHE's Shamir sharing needs a majority)")
    run_id = run_id or uuid.uuid4().hex
    config = ThresholdConfig(params.poly_modulus_degree, params.coeff_mod_bit_sizes[0], num_clients,
                             committee_of(run_id, num_clients, committee), t, min_clients, run_id, client_norm_bound)
    path = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="fedsec-threshold-keys-"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        info = _provision(config, path)
    except BaseException:
        if directory is None:  # ours: nothing half-made stays behind
            shutil.rmtree(path, ignore_errors=True)
        raise
    logger.info("threshold CKKS: committee %s made the joint key, %d of them decrypt (%s)", list(config.committee),
                config.threshold, path)
    return info, path


def _provision(config: ThresholdConfig, path: Path) -> ThresholdServerInfo:
    committee, t = len(config.committee), config.threshold
    coordinator = side()  # public operations only
    made = coordinator.call("context", ring_dim=config.ring_dim, first_mod_bits=config.first_mod_bits,
                            scaling_mod_bits=config.scaling_mod_bits)
    cc, public_keys = made["cc"], []
    for pid in config.committee:  # each member's key pair in a process of its own, which writes the share itself
        member = OpenFheSide()
        try:
            public_keys.append(member.call("keygen", cc=cc, lead_pk=public_keys[0] if public_keys else None,
                                           secret_path=str(path / f"member-{pid}.secret")))
        finally:
            member.close()
    if t < committee:  # each member shares its secret with the others, writing each holder's file itself
        for pid in config.committee:
            member = OpenFheSide()
            try:
                member.call("share_keys", cc=cc, secret_path=str(path / f"member-{pid}.secret"), n=committee, t=t,
                            index=config.index(pid), out_paths={config.index(h): str(_held(path, h, pid))
                                                                for h in config.committee if h != pid})
            finally:
                member.close()
    joint = coordinator.call("joint_key", cc=cc, public_keys=public_keys)
    verify, boxes = _make_signing_keys(config.num_clients, config.committee, path)
    info = ThresholdServerInfo(cc, joint, int(made["slots"]), verify, config, boxes)
    _write(path / GROUP_FILE, {"config": config, "info": info})
    return info


def _held(directory: Path, holder: int, owner: int) -> Path:
    """The file of ``holder``'s Shamir share of ``owner``'s secret."""
    return directory / f"held-{holder}-of-{owner}.share"


def _box_key(secret: bytes, peer: bytes, *, run_id: str, owner: int, holder: int, recipient: int) -> ChaCha20Poly1305:
    shared = X25519PrivateKey.from_private_bytes(secret).exchange(X25519PublicKey.from_public_bytes(peer))
    info = f"fedsec-threshold-share|{run_id}|{owner}|{holder}|{recipient}".encode()
    return ChaCha20Poly1305(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared))


@dataclass(frozen=True)
class ThresholdMaterial(ClientMaterial):
    """A client's material under threshold CKKS: the joint public key (in ``context``) and its signing key."""

    cc: bytes = b""
    slots: int = 0

    def encrypt(self, vector: np.ndarray) -> list[bytes]:
        data = np.ascontiguousarray(vector, dtype=np.float64)
        if data.ndim != 1 or data.size == 0 or not np.isfinite(data).all():
            raise CryptoError("threshold CKKS encrypts a non-empty, finite 1-D vector")
        return side().call("encrypt", cc=self.cc, pk=self.context, vector=data.tobytes(), slots=self.slots)


@dataclass(frozen=True)
class ThresholdKeyDir(ClientKeyDir):
    """The clients' key directory under threshold CKKS; a committee member also reads its own share's path."""

    def info(self) -> ThresholdServerInfo:
        return self._group()["info"]

    def client_material(self, partition_id: int) -> ClientMaterial:
        info = self.info()
        file = Path(self.path) / f"sign-{partition_id}.key"
        if not file.is_file():
            raise CryptoError(f"no signing key for partition {partition_id} in {self.path}")
        return ThresholdMaterial(partition_id, info.config.run_id, info.joint_key, _load(file), cc=info.cc,
                                 slots=info.slots)

    def decryptor(self, released: set[int]) -> Any:
        raise CryptoError("threshold CKKS has no single decryptor: the committee members decrypt together")

    def secret_path(self, partition_id: int) -> Path:
        return Path(self.path) / f"member-{partition_id}.secret"

    def box_secret(self, partition_id: int) -> bytes:
        return _load(Path(self.path) / f"box-{partition_id}.key")

    def held_share(self, holder: int, owner: int) -> bytes:
        return _held(Path(self.path), holder, owner).read_bytes()

    def record(self, partition_id: int) -> dict[str, Any]:
        """What this member released: per round the member set it decrypted (digest) and the dropped members whose
        partial decryption it made; per dropped member, whom it sent its share to (kept in the key directory)."""
        file = Path(self.path) / f"threshold-{partition_id}.json"
        try:
            return json.loads(file.read_text())
        except FileNotFoundError:
            return {"rounds": {}, "shared": {}}
        except (OSError, ValueError) as e:
            raise CryptoError(f"the committee member's record {file} is unreadable: {e}") from e

    def save_record(self, partition_id: int, record: dict[str, Any]) -> None:
        file = Path(self.path) / f"threshold-{partition_id}.json"
        partial = file.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        os.replace(partial, file)


def _refusal(server_round: int, why: str, rejected: dict[int, str] | None = None) -> DecryptionResult:
    return DecryptionResult(server_round, None, [], dict(rejected or {}), refused=why)


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
        key = _box_key(keys.box_secret(me), info.box_keys[holder], run_id=config.run_id, owner=dropped,
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
        key = _box_key(keys.box_secret(partition_id), info.box_keys[recipient], run_id=config.run_id, owner=owner,
                       holder=partition_id, recipient=recipient)
        nonce = os.urandom(12)
        box = nonce + key.encrypt(nonce, keys.held_share(partition_id, owner), None)
        mine["shared"][str(owner)] = recipient
        keys.save_record(partition_id, mine)
        return _answer(message, result, [box])
    return _answer(message, result, [])


class ThresholdDecryption:
    """The server's side under ``trust = "threshold"``: the context, the joint public key, the verification keys
    and :meth:`decrypt_round`, which asks every committee member for its partial decryption and fuses them (the
    interface of :class:`fedsec.crypto.DecryptionService`)."""

    def __init__(self, info: ThresholdServerInfo) -> None:
        self.info = info
        self.public_context = info.joint_key
        self.verify_keys = dict(info.verify_keys)
        self.run_id, self.min_clients = info.config.run_id, info.config.min_clients
        self.max_abs, self.num_clients = info.config.max_abs, info.config.num_clients
        self.committee = info.config.committee
        self._transport: Any = None
        self._node_of: dict[int, int] = {}
        self._timeout: float | None = None

    def holds_secret_key(self) -> bool:
        """Never: the server's material is the context and the joint public key."""
        return False

    def connect(self, transport: Any, node_of: dict[int, int], timeout: float | None) -> None:
        self._transport, self._node_of, self._timeout = transport, dict(node_of), timeout

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
        if self._transport is None:
            raise CryptoError("ThresholdDecryption.decrypt_round before connect(): the federation is not up")
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
        answers = self._ask(dict.fromkeys(self.committee, everyone))
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
        t1 = time.perf_counter()
        try:
            raw = side().call("fuse", cc=self.info.cc, partials=[partials[p] for p in self.committee],
                              length=length)
        except CryptoError as e:
            return _refusal(server_round, f"the partial decryptions do not fuse: {e}", rejected)
        vector = np.frombuffer(raw, dtype=np.float64).copy()
        accepted = list(next(iter(accepted_sets)))
        peak = float(np.max(np.abs(vector))) if vector.size else 0.0
        if not np.isfinite(peak) or peak > self.max_abs * (1 + 1e-6):
            return _refusal(server_round, f"max |value| {peak:.4g} of the fused sum exceeds the headroom "
                            f"{self.max_abs:.4g} (overflow); threshold CKKS cannot drop one member without "
                            "decrypting it alone, so the round is refused", rejected)
        bound = config.client_norm_bound
        if bound is not None and float(np.linalg.norm(vector)) > len(accepted) * bound * (1 + 1e-6) + 1e-6:
            return _refusal(server_round, f"||sum|| exceeds {len(accepted)} clients x the declared norm bound",
                            rejected)
        if recovered:
            logger.info("round %d: the partial decryptions of member(s) %s rebuilt from shares at member %d",
                        server_round, recovered, min(p for p in partials if p not in recovered))
        return DecryptionResult(server_round, vector, accepted, rejected, add_seconds=0.0,
                                decrypt_seconds=(t1 - t0) + (time.perf_counter() - t1), recovered=recovered)


def _share_request(server_round: int, length: int, dropped: int, recipient: int) -> ConfigRecord:
    record = decrypt_request(server_round, [], length, 0.0)
    record[SHARE_OF_KEY], record[SHARE_FOR_KEY] = dropped, recipient
    return record


class ThresholdHeldKeys:
    """The runner's handle under ``trust = "threshold"`` (the shape of :class:`.client_keys.ClientHeldKeys`)."""

    def __init__(self, info: ThresholdServerInfo, path: Path) -> None:
        self.info, self.path = info, path
        self._view: ThresholdDecryption | None = None

    @classmethod
    def start(cls, params: CkksParams, *, num_clients: int, committee: int, threshold: int | None = None,
              min_clients: int = 2, run_id: str | None = None, client_norm_bound: float | None = None,
              **_unused: Any) -> ThresholdHeldKeys:
        info, path = provision_threshold_keys(params, num_clients=num_clients, committee=committee,
                                              threshold=threshold, min_clients=min_clients, run_id=run_id,
                                              client_norm_bound=client_norm_bound)
        return cls(info, path)

    def server_view(self) -> ThresholdDecryption:
        if self._view is None:
            self._view = ThresholdDecryption(self.info)
        return self._view

    def client_ref(self) -> ThresholdKeyDir:
        return ThresholdKeyDir(str(self.path))

    def write_server_info(self, path: Path) -> None:
        _write(Path(path), self.info)

    def stop(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> ThresholdHeldKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
