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
    min_clients: int
    run_id: str
    client_norm_bound: float | None = None

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


def _write(path: Path, payload: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)


def _signing_keys(num_clients: int, directory: str, conn: Any) -> None:  # pragma: no cover - child process
    """The signing keys, made in a process of their own: the clients' files, the verification keys back."""
    try:
        signing, verify = make_signing_keys(range(num_clients))
        for pid, key in signing.items():
            _write(Path(directory) / f"sign-{pid}.key", key)
        conn.send(("ok", dict(verify)))
    except Exception as e:  # noqa: BLE001 - report it to the parent
        conn.send(("error", e))


def _make_signing_keys(num_clients: int, directory: Path) -> dict[int, bytes]:
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    process = mp.Process(target=_signing_keys, args=(num_clients, str(directory), child), name="fedsec-sign-keys")
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


def provision_threshold_keys(params: CkksParams, *, num_clients: int, committee: int, min_clients: int = 2,
                             run_id: str | None = None, client_norm_bound: float | None = None,
                             directory: str | Path | None = None) -> tuple[ThresholdServerInfo, Path]:
    """Run the committee's key generation (each member in an OpenFHE side process of its own) and make the signing
    keys; write the clients' files to ``directory`` (default: a fresh 0700 temporary directory)."""
    if not 2 <= committee <= num_clients:
        raise CryptoError(f"threshold CKKS: committee={committee} must be in [2, num_clients={num_clients}]")
    run_id = run_id or uuid.uuid4().hex
    config = ThresholdConfig(params.poly_modulus_degree, params.coeff_mod_bit_sizes[0], num_clients,
                             committee_of(run_id, num_clients, committee), min_clients, run_id, client_norm_bound)
    path = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="fedsec-threshold-keys-"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
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
    joint = coordinator.call("joint_key", cc=cc, public_keys=public_keys)
    verify = _make_signing_keys(num_clients, path)
    info = ThresholdServerInfo(cc, joint, int(made["slots"]), verify, config)
    _write(path / GROUP_FILE, {"config": config, "info": info})
    logger.info("threshold CKKS: committee %s made the joint key (%s)", list(config.committee), path)
    return info, path


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


def _refusal(server_round: int, why: str, rejected: dict[int, str] | None = None) -> DecryptionResult:
    return DecryptionResult(server_round, None, [], dict(rejected or {}), refused=why)


def partial_reply(message: Message, keys: ThresholdKeyDir, *, partition_id: int) -> Message:
    """A committee member's answer to a decryption request: its partial decryption of the sum of the signed members
    it verified itself, once per round; a refusal says why."""
    record = message.content[DECRYPT_RECORD]
    server_round, members, _length, _noise = parse_decrypt_request(record)
    info = keys.info()
    config = info.config
    result = DecryptionResult(server_round, None, [], {})
    partial: list[bytes] = []
    released = keys.released_rounds(partition_id)
    if partition_id not in config.committee:
        result.refused = f"client {partition_id} is not on the decryption committee {list(config.committee)}"
    elif server_round in released:
        result.refused = (f"already decrypted round {server_round} once; a second sum of another set would reveal "
                          "the difference")
    else:
        kept = verified_members(members, info.verify_keys, run_id=config.run_id, server_round=server_round,
                                rejected=result.rejected)
        if len(kept) < config.min_clients:
            result.refused = (f"{len(kept)} verified distinct clients; committee members decrypt only sums of at "
                              f"least min_clients={config.min_clients}")
        else:
            t0 = time.perf_counter()
            try:
                partial = side().call("partial", cc=info.cc, members=[kept[p] for p in sorted(kept)],
                                      secret_path=str(keys.secret_path(partition_id)),
                                      lead=int(record.get(LEAD_KEY, -1)) == partition_id)
            except CryptoError as e:
                result.refused = f"could not decrypt the sum: {e}"
            else:
                released.add(server_round)
                keys.record_released(partition_id, released)
                result.accepted = sorted(kept)
                result.decrypt_seconds = time.perf_counter() - t0
    reply = ConfigRecord({"partial": partial or [b""], "result": json.dumps({
        "accepted": result.accepted, "rejected": {str(k): v for k, v in result.rejected.items()},
        "refused": result.refused, "decrypt_seconds": result.decrypt_seconds})})
    return Message(content=RecordDict({RELEASE_RECORD: reply}), reply_to=message)


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

    def decrypt_round(self, server_round: int, members: list[SignedCiphertext], length: int, *,
                      noise_std: float = 0.0) -> DecryptionResult:
        """Every committee member's partial decryption of the members' sum, fused; or a refusal that says why."""
        if self._transport is None:
            raise CryptoError("ThresholdDecryption.decrypt_round before connect(): the federation is not up")
        if noise_std > 0:
            return _refusal(server_round, "threshold CKKS adds no central-DP noise (no party decrypts alone)")
        lead = self.committee[0]
        messages = []
        for pid in self.committee:
            request = decrypt_request(server_round, members, length, 0.0)
            request[LEAD_KEY] = lead
            messages.append(Message(content=RecordDict({DECRYPT_RECORD: request}), dst_node_id=self._node_of[pid],
                                    message_type=MessageType.QUERY))
        pid_of_node = {node: pid for pid, node in self._node_of.items()}
        t0 = time.perf_counter()
        replies = list(self._transport.send_and_receive(messages, timeout=self._timeout))
        partials: dict[int, list[bytes]] = {}
        problems: dict[str, list[int]] = {}  # why -> the members it applies to
        accepted_sets: set[tuple[int, ...]] = set()
        rejected: dict[int, str] = {}
        for reply in replies:
            pid = pid_of_node.get(reply.metadata.src_node_id, -1)
            if reply.has_error():
                problems.setdefault(f"failed: {reply.error.reason}", []).append(pid)
                continue
            record = reply.content.config_records.get(RELEASE_RECORD)
            if record is None:
                problems.setdefault("answered without a partial decryption", []).append(pid)
                continue
            meta = json.loads(str(record["result"]))
            rejected.update({int(k): str(v) for k, v in meta["rejected"].items()})
            if meta["refused"]:
                problems.setdefault(f"refused: {meta['refused']}", []).append(pid)
                continue
            partials[pid] = [bytes(c) for c in record["partial"]]
            accepted_sets.add(tuple(meta["accepted"]))
        answered = {pid_of_node.get(r.metadata.src_node_id, -1) for r in replies}
        for pid in self.committee:
            if pid not in answered:
                problems.setdefault("did not answer", []).append(pid)
        if problems or len(partials) < len(self.committee):
            said = "; ".join(f"member(s) {', '.join(map(str, sorted(pids)))} {why}" for why, pids in problems.items())
            return _refusal(server_round, f"{len(partials)} of the committee's {len(self.committee)} partial "
                            f"decryptions (OpenFHE's multiparty CKKS needs all): {said}", rejected)
        if len(accepted_sets) != 1:
            return _refusal(server_round, "the committee members decrypted different member sets", rejected)
        t1 = time.perf_counter()
        try:
            raw = side().call("fuse", cc=self.info.cc, partials=[partials[p] for p in self.committee],
                              length=length)
        except CryptoError as e:
            return _refusal(server_round, f"the partial decryptions do not fuse: {e}")
        vector = np.frombuffer(raw, dtype=np.float64).copy()
        accepted = list(next(iter(accepted_sets)))
        peak = float(np.max(np.abs(vector))) if vector.size else 0.0
        if not np.isfinite(peak) or peak > self.max_abs * (1 + 1e-6):
            return _refusal(server_round, f"max |value| {peak:.4g} of the fused sum exceeds the headroom "
                            f"{self.max_abs:.4g} (overflow); threshold CKKS cannot drop one member without "
                            "decrypting it alone, so the round is refused")
        bound = self.info.config.client_norm_bound
        if bound is not None and float(np.linalg.norm(vector)) > len(accepted) * bound * (1 + 1e-6) + 1e-6:
            return _refusal(server_round, f"||sum|| exceeds {len(accepted)} clients x the declared norm bound")
        return DecryptionResult(server_round, vector, accepted, rejected, add_seconds=0.0,
                                decrypt_seconds=(t1 - t0) + (time.perf_counter() - t1))


class ThresholdHeldKeys:
    """The runner's handle under ``trust = "threshold"`` (the shape of :class:`.client_keys.ClientHeldKeys`)."""

    def __init__(self, info: ThresholdServerInfo, path: Path) -> None:
        self.info, self.path = info, path
        self._view: ThresholdDecryption | None = None

    @classmethod
    def start(cls, params: CkksParams, *, num_clients: int, committee: int, min_clients: int = 2,
              run_id: str | None = None, client_norm_bound: float | None = None, **_unused: Any) -> ThresholdHeldKeys:
        info, path = provision_threshold_keys(params, num_clients=num_clients, committee=committee,
                                              min_clients=min_clients, run_id=run_id,
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
