"""A CKKS key authority in a process of its own: it alone holds the secret key, and it decrypts only round sums.

Roles (``tests/test_trust_authority.py`` checks each). The trusted setup makes the CKKS keys and one Ed25519 signing key
pair per client (:mod:`fedsec.crypto.signing`), then keeps the secret key in a separate process: a Ray actor when Ray is
up (the runner's case), a ``multiprocessing`` process otherwise (unit tests, tools). The server gets a
:class:`DecryptionService`: the public context, the clients' *verification* keys, and one verb,
:meth:`DecryptionService.decrypt_round`, which sends the round's signed ciphertexts to the authority. The authority then

1. verifies every signature (bound to run id, round, partition id and the ciphertext digest) and drops the
   members that fail or repeat a partition id, recording why;
2. refuses unless at least ``min_clients`` distinct clients remain, and refuses a second release in a round (two
   sums of sets that differ by one client would reveal that client's update);
3. adds the ciphertexts itself (so the sum is provably the sum of those clients' signed ciphertexts) and
   decrypts it;
4. checks the result is plausible: every |value| within the CKKS headroom (:attr:`CkksParams.max_abs`; beyond it
   the sum wrapped around) and, when clients declared a norm bound, ||sum|| <= members x bound. An implausible
   sum is never released: the authority decrypts each member privately, drops the members whose own vector is
   implausible (a ciphertext made under another key decrypts to values of order 2^(data_bits - scale_bits), an
   overflowing client beyond the headroom), then, while the sum of the rest is still implausible (members each
   within the headroom whose sum is not), excludes the largest of them, each recorded; it releases the sum of the
   rest if it has at least ``min_clients`` members, and otherwise refuses the round and says why.
5. adds the central-DP noise N(0, noise_std^2) to the released vector (seeded), so only a noised sum leaves.
   Under central DP (``dp_noise_std`` set at start) the authority adds at least that noise whatever the server
   asks, and releases every round, whatever its number of members, down to the noise alone for an empty cohort:
   the noise is the guarantee (user-level DP covers a sum of one), and a refusal that depends on how many clients
   took part would itself reveal something the accountant does not cover (Poisson cohorts vary).

Limits of the simulation: under Ray every process of the cluster can reach the named actor, and clients fetch
their material (public context + their signing key) from it by name; a deployment would deliver it over an
authenticated channel. What the boundary guarantees here is that the *server's* objects hold no secret key and
no signing key, and that the only decryption they can obtain is a plausible sum of >= ``min_clients`` signed
ciphertexts of the current round, once per round.
"""

from __future__ import annotations

import logging
import multiprocessing
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ckks import CkksParams, CryptoError, add_encrypted, decrypt_chunks, encrypt_vector
from .signing import make_signing_keys, sign_chunks, verify_chunks

__all__ = ["AuthorityConfig", "AuthorityRef", "ClientMaterial", "DecryptionResult", "DecryptionService",
           "KeyAuthorityHandle", "SignedCiphertext", "implausible", "verified_members"]

logger = logging.getLogger(__name__)

SERVER_METHODS = frozenset({"server_info", "decrypt_round"})
SETUP_METHODS = frozenset({"server_info", "client_material"})


@dataclass(frozen=True)
class AuthorityConfig:
    """What the trusted setup is started with.

    Parameters
    ----------
    params : CkksParams
        CKKS parameters (validated when the keys are made).
    num_clients : int
        Partitions 0..num_clients-1 get a signing key each.
    min_clients : int (default: 2)
        The fewest distinct clients whose ciphertexts a released sum may contain; 1 would let the server read a
        single client's update.
    run_id : str (default: a fresh uuid)
        Bound into every signature, so ciphertexts of one run cannot be replayed in another.
    client_norm_bound : float | None (default: None)
        The L2 bound clients declare for the vector they encrypt (under central DP: ``privacy.clip_norm``); the
        released sum must satisfy ||sum|| <= members x bound. None: only the headroom check.
    seed : int (default: 0)
        Kept for callers; not the noise's seed: the central-DP noise on a released sum is drawn from a secret seed
        made inside the authority, since a server that knows the experiment's seed could otherwise regenerate the
        noise and subtract it (so CKKS runs under central DP are not reproducible noise for noise).
    dp_noise_std : float | None (default: None)
        Central DP: the least noise std on every released sum (the server cannot ask for less); releases then need
        no minimum number of members (step 5 of the module docstring).
    """

    params: CkksParams
    num_clients: int
    min_clients: int = 2
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    client_norm_bound: float | None = None
    seed: int = 0
    dp_noise_std: float | None = None

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise CryptoError(f"KeyAuthority: num_clients={self.num_clients} must be >= 1")
        if not 1 <= self.min_clients:
            raise CryptoError(f"KeyAuthority: min_clients={self.min_clients} must be >= 1 (2 or more keeps single "
                              "clients' updates hidden)")
        if self.client_norm_bound is not None and not (0 < self.client_norm_bound < float("inf")):
            raise CryptoError(f"KeyAuthority: client_norm_bound={self.client_norm_bound} must be finite and > 0")
        if self.dp_noise_std is not None and not (0 < self.dp_noise_std < float("inf")):
            raise CryptoError(f"KeyAuthority: dp_noise_std={self.dp_noise_std} must be finite and > 0")


@dataclass(frozen=True)
class SignedCiphertext:
    """One client's encrypted update for one round, with its signature."""

    partition_id: int
    chunks: list[bytes]
    signature: bytes


@dataclass(frozen=True)
class ClientMaterial:
    """What the trusted setup gives one client: the public context (encryption only) and its signing key."""

    partition_id: int
    run_id: str
    context: bytes
    signing_key: bytes

    def encrypt(self, vector: np.ndarray) -> list[bytes]:
        """The vector as CKKS chunks under this run's public context."""
        return encrypt_vector(vector, self.context)

    def sign(self, server_round: int, chunks: list[bytes]) -> bytes:
        return sign_chunks(self.signing_key, run_id=self.run_id, server_round=server_round,
                           partition_id=self.partition_id, chunks=chunks)


@dataclass
class DecryptionResult:
    """The authority's answer for one round: the released sum (None when refused) and what it dropped."""

    server_round: int
    vector: np.ndarray | None
    accepted: list[int]
    rejected: dict[int, str]
    refused: str | None = None
    add_seconds: float = 0.0
    decrypt_seconds: float = 0.0
    recovered: list[int] | None = None  # threshold CKKS: the members whose partial decryption was rebuilt


class _Authority:
    """The secret side; instantiated only inside the authority's process (or, under ``encryption.trust =
    "clients"``, as :class:`fedsec.crypto.client_keys.ClientDecryptor` inside a client)."""

    def __init__(self, config: AuthorityConfig) -> None:
        self.config = config
        self._context = config.params.make_context()
        self._setup_keys()
        self._signing, self._verify = make_signing_keys(range(config.num_clients))
        self._released: set[int] = set()
        self._rng = np.random.default_rng(secrets.randbits(128))  # not config.seed: the server knows that

    def _setup_keys(self) -> None:
        """The public contexts derived from ``self._context`` (server: no secret key; clients: encryption only)."""
        public = self._context.copy()
        public.make_context_public()
        self._server_context = public.serialize(save_galois_keys=False, save_relin_keys=False)
        self._client_context = self._context.serialize(save_secret_key=False, save_galois_keys=False,
                                                       save_relin_keys=False)

    def _noise(self, server_round: int, size: int, std: float) -> np.ndarray:
        """Central-DP noise for a released sum of ``server_round``."""
        return self._rng.normal(0.0, std, size=size)

    def server_info(self) -> dict[str, Any]:
        return {"context": self._server_context, "verify_keys": dict(self._verify), "run_id": self.config.run_id,
                "min_clients": self.config.min_clients, "max_abs": self.config.params.max_abs}

    def client_material(self, partition_id: int) -> ClientMaterial:
        if partition_id not in self._signing:
            raise CryptoError(f"KeyAuthority: partition {partition_id} is not one of the run's "
                              f"{self.config.num_clients} clients")
        return ClientMaterial(partition_id, self.config.run_id, self._client_context, self._signing[partition_id])

    def _implausible(self, vector: np.ndarray, members: int) -> str | None:
        return implausible(vector, members, max_abs=self.config.params.max_abs,
                           norm_bound=self.config.client_norm_bound)

    def _exclude_until_plausible(self, kept: dict[int, list[bytes]], own: dict[int, np.ndarray],
                                 result: DecryptionResult) -> None:
        """Members each plausible whose sum is not (two clients at 0.6x the headroom overflow it together): exclude
        the largest, relative to the headroom and the declared norm bound, until the sum of the rest is plausible,
        recording each; the round goes on without them instead of stalling."""
        limit, bound = self.config.params.max_abs, self.config.client_norm_bound

        def size(pid: int) -> float:
            vector = own[pid]
            peak = float(np.max(np.abs(vector))) / limit if vector.size else 0.0
            return max(peak, float(np.linalg.norm(vector)) / bound if bound else 0.0)

        total = np.sum([own[pid] for pid in kept], axis=0) if kept else np.zeros(0)
        for pid in sorted(kept, key=lambda p: (-size(p), p)):
            why = self._implausible(total, len(kept))
            if why is None:
                return
            result.rejected[pid] = (f"excluded: the members' sum was implausible ({why}) and this member's vector was "
                                    f"the largest left ({size(pid):.3g} x the bound)")
            total = total - own[pid]
            del kept[pid]

    def _decrypt(self, chunks: list[bytes], length: int) -> np.ndarray:
        return decrypt_chunks(self._context, chunks, length)

    def decrypt_round(self, server_round: int, members: list[SignedCiphertext], length: int,
                      noise_std: float = 0.0) -> DecryptionResult:
        result = DecryptionResult(server_round, None, [], {})
        if server_round in self._released:
            result.refused = (f"round {server_round} was already released once; a second sum of another set would "
                              "reveal the difference")
            return result
        kept = verified_members(members, self._verify, run_id=self.config.run_id, server_round=server_round,
                                rejected=result.rejected)
        noise_std = max(noise_std, self.config.dp_noise_std or 0.0)
        min_clients = 0 if self.config.dp_noise_std is not None else self.config.min_clients
        if len(kept) < min_clients:
            result.refused = (f"{len(kept)} verified distinct clients, the authority decrypts only sums of at least "
                              f"min_clients={min_clients}")
            return result
        if not kept:  # central DP, empty cohort: the mechanism still runs, and releases the noise alone
            self._released.add(server_round)
            result.vector, result.accepted = self._noise(server_round, length, noise_std), []
            return result
        t0 = time.perf_counter()
        try:
            total = add_encrypted(list(kept.values()), self._server_context)
        except CryptoError:  # signed but malformed: find the culprits one by one
            total = None
            for pid in list(kept):
                try:
                    total = add_encrypted([kept[pid]] if total is None else [total, kept[pid]], self._server_context)
                except CryptoError as e:
                    result.rejected[pid] = f"its ciphertext cannot be added: {str(e).split(';')[0]}"
                    del kept[pid]
            if total is None or len(kept) < max(min_clients, 1):
                result.refused = (f"{len(kept)} clients' ciphertexts add up, the authority decrypts only sums of at "
                                  f"least min_clients={max(min_clients, 1)}")
                return result
        t1 = time.perf_counter()
        vector = self._decrypt(total, length)
        why = self._implausible(vector, len(kept))
        if why is not None:  # never release it: find the members whose own vector is implausible
            own = {pid: self._decrypt(chunks, length) for pid, chunks in kept.items()}
            for pid in list(kept):
                bad = self._implausible(own[pid], 1)
                if bad is not None:
                    result.rejected[pid] = f"its ciphertext decrypts to an implausible vector: {bad}"
                    del kept[pid]
            self._exclude_until_plausible(kept, own, result)
            if len(kept) < max(min_clients, 1):
                result.refused = f"decrypted sum implausible ({why}); {len(kept)} plausible clients remain"
                result.add_seconds, result.decrypt_seconds = t1 - t0, time.perf_counter() - t1
                return result
            vector = self._decrypt(add_encrypted(list(kept.values()), self._server_context), length)
            again = self._implausible(vector, len(kept))
            if again is not None:
                result.refused = f"decrypted sum implausible: {again}"
                result.add_seconds, result.decrypt_seconds = t1 - t0, time.perf_counter() - t1
                return result
        if noise_std > 0:
            vector = vector + self._noise(server_round, vector.size, noise_std)
        self._released.add(server_round)
        result.vector, result.accepted = vector, sorted(kept)
        result.add_seconds, result.decrypt_seconds = t1 - t0, time.perf_counter() - t1
        return result


def implausible(vector: np.ndarray, members: int, *, max_abs: float, norm_bound: float | None) -> str | None:
    """Release rule 4: why a decrypted sum of ``members`` clients cannot be what they encrypted (None when it can):
    a value beyond the CKKS headroom (the sum wrapped around, or a ciphertext under another key), or, when clients
    declared a norm bound, ||sum|| beyond members x that bound."""
    peak = float(np.max(np.abs(vector))) if vector.size else 0.0
    if not np.isfinite(peak) or peak > max_abs * (1 + 1e-6):  # CKKS noise (~1e-8) on a sum at the bound
        return (f"max |value| {peak:.4g} exceeds the CKKS headroom {max_abs:.4g}: the sum wrapped around (overflow) "
                "or a ciphertext was made under another key")
    if norm_bound is not None:
        norm = float(np.linalg.norm(vector))
        if norm > members * norm_bound * (1 + 1e-6) + 1e-6:
            return f"||sum|| = {norm:.4g} exceeds {members} clients x the declared norm bound {norm_bound:g}"
    return None


def verified_members(members: list[SignedCiphertext], verify_keys: dict[int, bytes], *, run_id: str,
                     server_round: int, rejected: dict[int, str]) -> dict[int, list[bytes]]:
    """Release rule 1: the members whose signature verifies for this run and round, each partition id once (a
    repeated id drops every copy); each dropped member goes to ``rejected`` with the reason."""
    kept: dict[int, list[bytes]] = {}
    for m in members:
        pid = int(m.partition_id)
        if pid in kept or pid in rejected:
            rejected[pid] = "duplicate partition id in the set to decrypt"
            kept.pop(pid, None)
            continue
        why = verify_chunks(verify_keys.get(pid), m.signature, run_id=run_id, server_round=server_round,
                            partition_id=pid, chunks=m.chunks)
        if why is None:
            kept[pid] = m.chunks
        else:
            rejected[pid] = why
    return kept


# ---------------------------------------------------------------------- process backend
def _serve(config: AuthorityConfig, server_conn: Any, setup_conn: Any) -> None:  # pragma: no cover - child process
    """The authority process: answer the server's and the setup's requests, each from its own allowlist."""
    from multiprocessing.connection import wait

    try:
        authority = _Authority(config)
    except Exception as e:  # noqa: BLE001 - report start-up failures to the parent
        setup_conn.send(("error", e))
        return
    setup_conn.send(("ok", None))
    channels = {server_conn: SERVER_METHODS, setup_conn: SETUP_METHODS}
    while channels:
        for conn in wait(list(channels)):
            try:
                request = conn.recv()
            except EOFError:
                del channels[conn]
                continue
            if request is None:  # stop
                return
            method, args = request
            if method not in channels[conn]:
                conn.send(("error", CryptoError(f"KeyAuthority: {method!r} is not available on this channel")))
                continue
            try:
                conn.send(("ok", getattr(authority, method)(*args)))
            except Exception as e:  # noqa: BLE001 - the caller re-raises
                conn.send(("error", e))


class _Channel:
    """Calls into the authority process over one pipe (one call at a time)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def call(self, method: str, *args: Any) -> Any:
        self._conn.send((method, args))
        status, value = self._conn.recv()
        if status == "error":
            raise value
        return value


class _RayChannel:
    """Calls into the authority actor, limited to ``allowed`` methods."""

    def __init__(self, actor: Any, allowed: frozenset[str]) -> None:
        self._actor, self._allowed = actor, allowed

    def call(self, method: str, *args: Any) -> Any:
        import ray

        if method not in self._allowed:
            raise CryptoError(f"KeyAuthority: {method!r} is not available on this channel")
        return ray.get(getattr(self._actor, method).remote(*args))


class DecryptionService:
    """The server's side of the key authority: public context, verification keys, and decrypt_round; no keys
    that decrypt or sign."""

    def __init__(self, channel: _Channel | _RayChannel) -> None:
        self._channel = channel
        info = channel.call("server_info")
        self.public_context: bytes = info["context"]
        self.verify_keys: dict[int, bytes] = info["verify_keys"]
        self.run_id: str = info["run_id"]
        self.min_clients: int = info["min_clients"]
        self.max_abs: float = info["max_abs"]

    def server_context(self) -> bytes:
        return self.public_context

    def decrypt_round(self, server_round: int, members: list[SignedCiphertext], length: int, *,
                      noise_std: float = 0.0) -> DecryptionResult:
        """Ask the authority for the sum of ``members``' ciphertexts of ``server_round`` (see the module doc)."""
        return self._channel.call("decrypt_round", server_round, members, length, noise_std)


@dataclass(frozen=True)
class AuthorityRef:
    """What travels to Ray clients: the authority actor's name (they fetch their own material from it)."""

    actor_name: str
    namespace: str | None = None

    def client_material(self, partition_id: int) -> ClientMaterial:
        import ray

        actor = ray.get_actor(self.actor_name, namespace=self.namespace)
        return ray.get(actor.client_material.remote(partition_id))


class KeyAuthorityHandle:
    """The runner's handle on the key authority: start it with one call, give the server :meth:`server_view`,
    the clients :meth:`client_ref` (Ray) or :meth:`client_material` (in-process tools), and :meth:`stop` it."""

    def __init__(self, config: AuthorityConfig, *, backend: str, process: Any = None, setup: Any = None,
                 server: Any = None, actor: Any = None, actor_name: str | None = None) -> None:
        self.config, self.backend = config, backend
        self._process, self._setup, self._server, self._actor = process, setup, server, actor
        self._actor_name = actor_name

    @classmethod
    def start(cls, params: CkksParams, *, num_clients: int, min_clients: int = 2, run_id: str | None = None,
              client_norm_bound: float | None = None, seed: int = 0, backend: str = "auto",
              dp_noise_std: float | None = None) -> KeyAuthorityHandle:
        """Start the authority: ``backend`` "ray" (a named actor, needs ``ray.init`` first), "process" (a spawned
        process) or "auto" (Ray when it is initialized). Keys are made inside the authority."""
        config = AuthorityConfig(params=params, num_clients=num_clients, min_clients=min_clients,
                                 run_id=run_id or uuid.uuid4().hex, client_norm_bound=client_norm_bound, seed=seed,
                                 dp_noise_std=dp_noise_std)
        params.validate()
        if backend == "auto":
            try:
                import ray

                backend = "ray" if ray.is_initialized() else "process"
            except ImportError:
                backend = "process"
        if backend == "ray":
            import ray

            name = f"fedsec-key-authority-{config.run_id[:12]}"
            actor = ray.remote(num_cpus=0)(_Authority).options(name=name).remote(config)
            ray.get(actor.server_info.remote())  # wait until the keys exist
            logger.info("CKKS key authority: Ray actor %s, min_clients=%d", name, min_clients)
            return cls(config, backend="ray", actor=actor, actor_name=name)
        if backend != "process":
            raise CryptoError(f"KeyAuthority: backend={backend!r} must be 'auto', 'ray' or 'process'")
        mp = multiprocessing.get_context("spawn")
        server_parent, server_child = mp.Pipe()
        setup_parent, setup_child = mp.Pipe()
        process = mp.Process(target=_serve, args=(config, server_child, setup_child), daemon=True,
                             name="fedsec-key-authority")
        process.start()
        server_child.close()
        setup_child.close()
        status, value = setup_parent.recv()
        if status == "error":
            process.join(timeout=5)
            raise value
        logger.info("CKKS key authority: process %s, min_clients=%d", process.pid, min_clients)
        return cls(config, backend="process", process=process, setup=_Channel(setup_parent),
                   server=_Channel(server_parent))

    def server_view(self) -> DecryptionService:
        """What the server's strategy holds: public context, verification keys, decrypt_round."""
        if self.backend == "ray":
            return DecryptionService(_RayChannel(self._actor, SERVER_METHODS))
        return DecryptionService(self._server)

    def client_ref(self) -> AuthorityRef:
        """For Ray clients (``ClientSpec.crypto_ref``): they fetch their own material from the actor by name."""
        if self.backend != "ray" or self._actor_name is None:
            raise CryptoError("KeyAuthority: client_ref needs the Ray backend; use client_material(partition_id)")
        return AuthorityRef(self._actor_name)

    def client_material(self, partition_id: int) -> ClientMaterial:
        """The trusted setup's delivery to one client (public context + its signing key)."""
        if self.backend == "ray":
            import ray

            return ray.get(self._actor.client_material.remote(partition_id))
        return self._setup.call("client_material", partition_id)

    def stop(self) -> None:
        """End the authority (the secret key goes with it)."""
        if self.backend == "ray" and self._actor is not None:
            import ray

            if ray.is_initialized():
                ray.kill(self._actor)
            self._actor = None
        elif self._process is not None:
            try:
                self._setup._conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.terminate()
            self._process = None

    def __enter__(self) -> KeyAuthorityHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
