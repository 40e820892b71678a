"""``encryption.trust = "clients"``: the clients hold the CKKS secret key; the server holds the public context only.

The model of NVIDIA FLARE's homomorphic encryption (its provisioning tool writes a TenSEAL context with the secret
key for the clients and one without it for the server; https://nvflare.readthedocs.io, "Homomorphic Encryption"),
with fedsec's release rules (:mod:`.authority`, steps 1-5) moved into a client:

- **Provisioning** runs in a spawned process of its own: it makes the CKKS keys, one Ed25519 signing key pair per
  client and a secret noise seed, writes them to a key directory for the clients (``group.key``: the secret
  context, every verification key, the release settings; ``sign-<id>.key``: one client's signing key; the
  directory is created 0700 and removed when the run ends) and hands the caller only :class:`ServerKeyInfo` (public
  context, verification keys, run id, ``min_clients``). The process that starts a run, which under Ray is also the
  server's, never holds a key that decrypts or signs.
- **Clients** encrypt and sign as under the key authority (:mod:`fedsec.clients.encrypted`).
- **Decryption**: the server adds nothing itself; it sends the round's signed ciphertexts to the round's
  *decryptor*, the client :func:`decryptor_of` names from the experiment seed and the round (the server cannot pick a
  friendlier one, nor ask a second client about the same round), which verifies every signature, adds the
  ciphertexts itself, decrypts the sum only if it holds at least ``min_clients`` distinct signed members, checks
  its plausibility, adds the central-DP noise drawn from the secret noise seed, and releases it once per round
  (the released rounds are recorded in the clients' key directory, beside the keys).

Differences from FLARE: FLARE's server never sees the global model (clients decrypt it for themselves); here the
decryptor releases the (noised) sum to the server, which applies it, so that the server evaluates, audits and
serves the global model as under the other models. What the server learns is the sum, as under SecAgg+ and the key
authority; a single client's update needs a colluding client (``attack.kind = "collude_with_server"`` measures it).

What holds against code in the server's own process: no object the server's code is handed holds a key that
decrypts or signs, there is no named actor to find, and the only decryption it can obtain is a plausible sum of
``min_clients`` signed members of the current round, once. Not against code that reaches the clients' processes:
under Flower's simulation engine the client actors are Ray actors the driver (the server's process) holds handles
to; and the key directory is readable by the operating-system account that runs the clients. Under ``fedsec
deploy`` (Flower's deployment engine, the server in another account) or with SuperNodes on the clients' machines,
only the clients can read them (docs/encryption.md, "Trust model").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import secrets
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from .authority import AuthorityConfig, ClientMaterial, DecryptionResult, SignedCiphertext, _Authority
from .ckks import CkksParams, CryptoError, load_context
from .signing import make_signing_keys
from .spawned import call_spawned

__all__ = ["ClientDecryption", "ClientDecryptor", "ClientHeldKeys", "ClientKeyDir", "DECRYPT_RECORD",
           "MessagedDecryption", "RELEASE_RECORD", "ServerKeyInfo", "ServerKeys", "decryptor_of",
           "provision_client_keys"]

logger = logging.getLogger(__name__)

GROUP_FILE = "group.key"
DECRYPT_RECORD = "ckks-decrypt"  # QUERY message content: the round's signed members for the decryptor client
RELEASE_RECORD = "ckks-release"  # its reply: the released sum (float64 bytes) and what was dropped


def decryptor_of(seed: int, server_round: int, num_clients: int) -> int:
    """The partition that decrypts round ``server_round``'s sum: fixed by the run id and the round, so the server
    cannot choose it, nor ask two clients about one round.

    >>> decryptor_of(0, 1, 4) == decryptor_of(0, 1, 4)
    True
    >>> sorted({decryptor_of(0, r, 4) for r in range(1, 41)})
    [0, 1, 2, 3]
    """
    digest = hashlib.sha256(f"decryptor|{seed}|{server_round}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_clients


@dataclass(frozen=True)
class ServerKeyInfo:
    """What the server gets from provisioning: nothing that decrypts or signs."""

    public_context: bytes
    verify_keys: dict[int, bytes]
    run_id: str
    min_clients: int
    max_abs: float
    num_clients: int
    seed: int = 0  # the experiment's: it names each round's decryptor (decryptor_of), so runs repeat


def write_key_file(path: Path, payload: Any) -> None:
    """A new key file (pickled, mode 0600, never over an existing one): what :func:`read_key_file` reads."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)


def signing_key_path(directory: str | Path, partition_id: int) -> Path:
    """The file of one client's signing key in a key directory (both client-held trust models)."""
    return Path(directory) / f"sign-{partition_id}.key"


def write_signing_keys(num_clients: int, directory: str | Path) -> dict[int, bytes]:
    """Every client's signing key written to its file in ``directory``; the verification keys returned."""
    signing, verify = make_signing_keys(range(num_clients))
    for pid, key in signing.items():
        write_key_file(signing_key_path(directory, pid), key)
    return dict(verify)


def _provision(config: AuthorityConfig, directory: str) -> ServerKeyInfo:  # pragma: no cover - child process
    """The provisioning process: make the keys, write the clients' files, return the server's info."""
    context = config.params.make_context()
    public = context.copy()
    public.make_context_public()
    verify = write_signing_keys(config.num_clients, directory)
    write_key_file(Path(directory) / GROUP_FILE, {
        "config": config, "verify_keys": verify, "noise_seed": secrets.randbits(128),
        "context": context.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False)})
    return ServerKeyInfo(public.serialize(save_galois_keys=False, save_relin_keys=False), verify,
                         config.run_id, config.min_clients, config.params.max_abs, config.num_clients, config.seed)


def provision_client_keys(params: CkksParams, *, num_clients: int, min_clients: int = 2, run_id: str | None = None,
                          client_norm_bound: float | None = None, dp_noise_std: float | None = None,
                          seed: int = 0, directory: str | Path | None = None) -> tuple[ServerKeyInfo, Path]:
    """Make the clients' keys in a spawned process; write them to ``directory`` (default: a fresh 0700 temporary
    directory); return the server's info and the directory."""
    params.validate()
    config = AuthorityConfig(params=params, num_clients=num_clients, min_clients=min_clients,
                             run_id=run_id or uuid.uuid4().hex, client_norm_bound=client_norm_bound,
                             dp_noise_std=dp_noise_std, seed=seed)
    path = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="fedsec-client-keys-"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        value = call_spawned(_provision, config, str(path), name="fedsec-provision-keys",
                             what="provisioning the clients' CKKS keys")
    except BaseException:
        if directory is None:  # ours: nothing half-made stays behind
            shutil.rmtree(path, ignore_errors=True)
        raise
    logger.info("CKKS keys held by the clients: %s (%d clients, min_clients=%d)", path, num_clients, min_clients)
    return value, path


class ClientDecryptor(_Authority):
    """The release rules of :class:`fedsec.crypto.authority._Authority` in the round's decryptor client, over the
    shared secret context; ``released``: the rounds this client already released (:meth:`ClientKeyDir.released_rounds`),
    updated in place."""

    def __init__(self, config: AuthorityConfig, context: bytes, verify_keys: dict[int, bytes], noise_seed: int,
                 released: set[int]) -> None:
        self.config = config
        self._context = load_context(context)
        self._setup_keys()
        self._signing, self._verify = {}, dict(verify_keys)
        self._released = released
        self._noise_seed = noise_seed

    def _noise(self, server_round: int, size: int, std: float) -> np.ndarray:
        """Seeded by the secret noise seed and the round: the server, which knows the experiment's seed, cannot
        regenerate it."""
        return np.random.default_rng([self._noise_seed, server_round]).normal(0.0, std, size=size)


@dataclass(frozen=True)
class ClientKeyDir:
    """What travels to the clients (``ClientSpec.crypto_ref``): the key directory's path; each worker reads its
    files once."""

    path: str

    def _group(self) -> dict[str, Any]:
        return read_key_file(Path(self.path) / GROUP_FILE)

    def signing_key(self, partition_id: int) -> bytes:
        """This client's signing key, from its file."""
        file = signing_key_path(self.path, partition_id)
        if not file.is_file():
            raise CryptoError(f"no CKKS signing key for partition {partition_id} in {self.path}")
        return read_key_file(file)

    def client_material(self, partition_id: int) -> ClientMaterial:
        group = self._group()
        return ClientMaterial(partition_id, group["config"].run_id, group["context"], self.signing_key(partition_id))

    def decryptor(self, released: set[int]) -> ClientDecryptor:
        group = self._group()
        return ClientDecryptor(group["config"], group["context"], group["verify_keys"], group["noise_seed"], released)

    def released_rounds(self, partition_id: int) -> set[int]:
        """The rounds this client released as a decryptor, from its record in the key directory (kept there, not in
        Flower's ``context.state``, which a SuperNode's runtime API hands to any local process that asks)."""
        record = Path(self.path) / f"released-{partition_id}.json"
        try:
            return {int(r) for r in json.loads(record.read_text())}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, TypeError) as e:
            raise CryptoError(f"the decryptor's record {record} is unreadable: {e}") from e

    def record_released(self, partition_id: int, rounds: set[int]) -> None:
        record = Path(self.path) / f"released-{partition_id}.json"
        partial = record.with_suffix(".partial")
        partial.write_text(json.dumps(sorted(rounds)))
        os.replace(partial, record)  # whole or not at all

    def run_facts(self) -> tuple[int, int]:
        """(experiment seed, number of clients): what a client needs to know whose turn a round's decryption is."""
        config = self._group()["config"]
        return config.seed, config.num_clients


_LOADED: dict[Path, Any] = {}


def read_key_file(path: Path) -> Any:
    """A key file this run's provisioning wrote (pickled, mode 0600), read once per worker."""
    if path not in _LOADED:
        if any(p.parent != path.parent for p in _LOADED):  # another run's keys: keep one run's in a worker
            _LOADED.clear()
        try:
            with path.open("rb") as f:
                _LOADED[path] = pickle.load(f)  # noqa: S301 - files this run's provisioning wrote, mode 0600
        except OSError as e:
            raise CryptoError(f"cannot read the clients' CKKS keys at {path}: {e}") from e
    return _LOADED[path]


def decrypt_request(server_round: int, members: list[SignedCiphertext], length: int, noise_std: float) -> ConfigRecord:
    """The content of a decryption request (one ConfigRecord)."""
    return ConfigRecord({
        "round": server_round, "length": length, "noise-std": float(noise_std),
        "members": json.dumps([[m.partition_id, len(m.chunks)] for m in members]),
        "chunks": [c for m in members for c in m.chunks] or [b""],
        "signatures": [m.signature for m in members] or [b""],
    })


def parse_decrypt_request(record: ConfigRecord) -> tuple[int, list[SignedCiphertext], int, float]:
    """(round, members, length, noise std) of a decryption request; raises :class:`CryptoError` when malformed."""
    try:
        layout = json.loads(str(record["members"]))
        chunks, signatures = list(record["chunks"]), list(record["signatures"])
        members, start = [], 0
        for (pid, count), signature in zip(layout, signatures, strict=False):
            members.append(SignedCiphertext(int(pid), [bytes(c) for c in chunks[start:start + int(count)]],
                                            bytes(signature)))
            start += int(count)
        return int(record["round"]), members, int(record["length"]), float(record["noise-std"])
    except (KeyError, TypeError, ValueError) as e:
        raise CryptoError(f"malformed decryption request: {e}") from e


def release_record(result: DecryptionResult) -> ConfigRecord:
    """The decryptor's answer: the sum as float64 bytes (empty when refused) and what it dropped."""
    vector = b"" if result.vector is None else np.asarray(result.vector, dtype=np.float64).tobytes()
    return ConfigRecord({"vector": vector, "result": json.dumps({
        "accepted": result.accepted, "rejected": {str(k): v for k, v in result.rejected.items()},
        "refused": result.refused, "add_seconds": result.add_seconds, "decrypt_seconds": result.decrypt_seconds})})


def parse_release(server_round: int, record: ConfigRecord, length: int) -> DecryptionResult:
    meta = json.loads(str(record["result"]))
    raw = bytes(record["vector"])
    vector = np.frombuffer(raw, dtype=np.float64).copy() if raw else None
    if vector is not None and vector.size != length:
        return DecryptionResult(server_round, None, [], {}, refused=f"the decryptor released {vector.size} values, "
                                f"the model has {length}")
    return DecryptionResult(server_round, vector, [int(p) for p in meta["accepted"]],
                            {int(k): str(v) for k, v in meta["rejected"].items()}, refused=meta["refused"],
                            add_seconds=float(meta["add_seconds"]), decrypt_seconds=float(meta["decrypt_seconds"]))


class MessagedDecryption:
    """What the server's views that reach their decrypting clients through Flower messages share (``clients`` and
    ``threshold``): :meth:`connect` gives them the transport, the partitions' nodes and the simulated devices once
    the federation is up."""

    decrypter = "decrypting client"  # who refuses, in the strategy's records

    def __init__(self, *, verify_keys: dict[int, bytes], run_id: str, min_clients: int, max_abs: float,
                 num_clients: int) -> None:
        self.verify_keys = dict(verify_keys)
        self.run_id, self.min_clients, self.max_abs, self.num_clients = run_id, min_clients, max_abs, num_clients
        self._transport: Any = None
        self._node_of: dict[int, int] = {}
        self._timeout: float | None = None
        self._devices: Any = None

    def connect(self, transport: Any, node_of: dict[int, int], timeout: float | None, *,
                devices: Any = None) -> None:
        """The transport to the clients and their nodes; ``devices`` (:class:`fedsec.federation.Federation`): the
        clients it marks unreachable in a round (``clients.dropout``, ``clients.availability``) cannot answer."""
        self._transport, self._node_of, self._timeout = transport, dict(node_of), timeout
        self._devices = devices

    def _offline(self, server_round: int, partition_ids: list[int]) -> dict[int, str]:
        """The clients of ``partition_ids`` the simulated devices mark unreachable this round, with the reason."""
        if self._transport is None:
            raise CryptoError(f"{type(self).__name__}.decrypt_round before connect(): the federation is not up")
        return self._devices.absent(server_round, partition_ids) if self._devices is not None else {}


class ClientDecryption(MessagedDecryption):
    """The server's side under ``trust = "clients"``: the public context, the verification keys and
    :meth:`decrypt_round`, which asks the round's decryptor client (the same interface as the key authority's
    :class:`fedsec.crypto.DecryptionService`); a round whose decryptor is unreachable is refused."""

    decrypter = "decryptor client"

    def __init__(self, info: ServerKeyInfo) -> None:
        if load_context(info.public_context).has_secret_key():
            raise CryptoError("ClientDecryption: the server's context holds the secret key; provisioning is broken")
        super().__init__(verify_keys=info.verify_keys, run_id=info.run_id, min_clients=info.min_clients,
                         max_abs=info.max_abs, num_clients=info.num_clients)
        self.public_context, self.seed = info.public_context, info.seed

    def decrypt_round(self, server_round: int, members: list[SignedCiphertext], length: int, *,
                      noise_std: float = 0.0) -> DecryptionResult:
        """Send ``members`` to the round's decryptor client; its release, or a refusal that says why."""
        pid = decryptor_of(self.seed, server_round, self.num_clients)
        offline = self._offline(server_round, [pid])
        if offline:
            return DecryptionResult(server_round, None, [], {}, refused=f"the round's decryptor client {pid} is "
                                    f"unreachable ({offline[pid]}); one client decrypts a round under "
                                    "trust='clients' (trust='threshold' rebuilds a missing member)")
        message = Message(content=RecordDict({DECRYPT_RECORD: decrypt_request(server_round, members, length,
                                                                              noise_std)}),
                          dst_node_id=self._node_of[pid], message_type=MessageType.QUERY)
        replies = list(self._transport.send_and_receive([message], timeout=self._timeout))
        if not replies:
            return DecryptionResult(server_round, None, [], {}, refused=f"the decryptor client {pid} did not answer")
        reply = replies[0]
        if reply.has_error():
            return DecryptionResult(server_round, None, [], {},
                                    refused=f"the decryptor client {pid} failed: {reply.error.reason}")
        record = reply.content.config_records.get(RELEASE_RECORD)
        if record is None:
            return DecryptionResult(server_round, None, [], {},
                                    refused=f"the decryptor client {pid} answered without a release")
        return parse_release(server_round, record, length)


class ServerKeys:
    """The server's handle when the key info comes from a file (``fedsec deploy``: the ServerApp runs in a process
    of its own); only :meth:`server_view`, as the other handles."""

    def __init__(self, info: Any) -> None:
        self.info = info
        self._view: Any = None

    @classmethod
    def read(cls, path: Path) -> ServerKeys:
        from .threshold import ThresholdServerInfo

        with Path(path).open("rb") as f:
            info = pickle.load(f)  # noqa: S301 - written by this run's `fedsec deploy`
        if not isinstance(info, ServerKeyInfo | ThresholdServerInfo):
            raise CryptoError(f"{path} does not hold the server's CKKS key info")
        return cls(info)

    def server_view(self) -> Any:
        """:class:`ClientDecryption`, or under threshold CKKS :class:`.threshold.ThresholdDecryption`."""
        if self._view is None:
            if isinstance(self.info, ServerKeyInfo):
                self._view = ClientDecryption(self.info)
            else:
                from .threshold_server import ThresholdDecryption

                self._view = ThresholdDecryption(self.info)
        return self._view


class ClientHeldKeys:
    """The runner's handle under ``trust = "clients"``, shaped like :class:`fedsec.crypto.KeyAuthorityHandle`:
    :meth:`start` provisions, :meth:`server_view` is the server's :class:`ClientDecryption`, :meth:`client_ref` the
    clients' :class:`ClientKeyDir`, :meth:`stop` removes the key directory."""

    def __init__(self, info: ServerKeyInfo, path: Path) -> None:
        self.info, self.path = info, path
        self._view: ClientDecryption | None = None

    @classmethod
    def start(cls, params: CkksParams, *, num_clients: int, min_clients: int = 2, run_id: str | None = None,
              client_norm_bound: float | None = None, seed: int = 0, backend: str = "auto",
              dp_noise_std: float | None = None) -> ClientHeldKeys:
        """Provision (``backend`` is the key authority's and unused; ``seed``, the experiment's, names each round's
        decryptor; the noise seed is a secret drawn at provisioning)."""
        info, path = provision_client_keys(params, num_clients=num_clients, min_clients=min_clients, run_id=run_id,
                                           client_norm_bound=client_norm_bound, dp_noise_std=dp_noise_std, seed=seed)
        return cls(info, path)

    def server_view(self) -> ClientDecryption:
        if self._view is None:
            self._view = ClientDecryption(self.info)
        return self._view

    def client_ref(self) -> ClientKeyDir:
        return ClientKeyDir(str(self.path))

    def write_server_info(self, path: Path) -> None:
        """The server's public info to a file of its own (outside the clients' key directory)."""
        write_key_file(Path(path), self.info)

    def stop(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> ClientHeldKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
