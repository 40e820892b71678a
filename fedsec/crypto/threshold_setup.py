"""Threshold CKKS's keys (:mod:`.threshold`): the committee's joint key made by each member's own OpenFHE process,
the members' Shamir shares of each other's secrets, the signing and box keys; and the runner's handle.

Why written here: OpenFHE's Python examples run every party in one process; here each member's secret is made, and
shared, by a process of its own that writes the files and returns public keys only.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .ckks import CkksParams, CryptoError
from .client_keys import GROUP_FILE, ClientHeldKeys, write_key_file, write_signing_keys
from .openfhe_side import OpenFheSide, side
from .spawned import call_spawned
from .threshold import ThresholdConfig, ThresholdKeyDir, ThresholdServerInfo, committee_of, held_share_path
from .threshold_server import ThresholdDecryption

__all__ = ["ThresholdHeldKeys", "provision_threshold_keys"]

logger = logging.getLogger(__name__)


def _signing_keys(num_clients: int, committee: tuple[int, ...],
                  directory: str) -> tuple[dict[int, bytes], dict[int, bytes]]:  # pragma: no cover - child process
    """The signing keys and the members' box keys, made in a process of their own (:func:`.spawned.call_spawned`):
    the clients' files written, the public halves returned."""
    verify = write_signing_keys(num_clients, directory)
    boxes = {}
    for pid in committee:
        secret = X25519PrivateKey.generate()
        write_key_file(Path(directory) / f"box-{pid}.key", secret.private_bytes_raw())
        boxes[pid] = secret.public_key().public_bytes_raw()
    return verify, boxes


def provision_threshold_keys(params: CkksParams, *, num_clients: int, committee: int, threshold: int | None = None,
                             min_clients: int = 2, run_id: str | None = None, client_norm_bound: float | None = None,
                             seed: int = 0, directory: str | Path | None = None) -> tuple[ThresholdServerInfo, Path]:
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
                             committee_of(seed, num_clients, committee), t, min_clients, run_id, client_norm_bound)
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
        public_keys.append(_in_own_process("keygen", cc=cc, lead_pk=public_keys[0] if public_keys else None,
                                           secret_path=str(path / f"member-{pid}.secret")))
    if t < committee:  # each member shares its secret with the others, writing each holder's file itself
        for pid in config.committee:
            _in_own_process("share_keys", cc=cc, secret_path=str(path / f"member-{pid}.secret"), n=committee, t=t,
                            index=config.index(pid), out_paths={config.index(h): str(held_share_path(path, h, pid))
                                                                for h in config.committee if h != pid})
    joint = coordinator.call("joint_key", cc=cc, public_keys=public_keys)
    verify, boxes = call_spawned(_signing_keys, config.num_clients, config.committee, str(path),
                                 name="fedsec-sign-keys", what="making the clients' signing keys")
    info = ThresholdServerInfo(cc, joint, int(made["slots"]), verify, config, boxes)
    write_key_file(path / GROUP_FILE, {"config": config, "info": info})
    return info


def _in_own_process(op: str, **kwargs: Any) -> Any:
    """One OpenFHE operation on a member's secret in a side process of its own, ended right after."""
    member = OpenFheSide()
    try:
        return member.call(op, **kwargs)
    finally:
        member.close()


class ThresholdHeldKeys(ClientHeldKeys):
    """The runner's handle under ``trust = "threshold"``: :class:`.client_keys.ClientHeldKeys` (``write_server_info``,
    ``stop`` removes the key directory) over the committee's keys."""

    @classmethod
    def start(cls, params: CkksParams, *, num_clients: int, committee: int = 3,  # type: ignore[override]
              threshold: int | None = None, min_clients: int = 2, run_id: str | None = None,
              client_norm_bound: float | None = None, seed: int = 0, **_unused: Any) -> ThresholdHeldKeys:
        info, path = provision_threshold_keys(params, num_clients=num_clients, committee=committee,
                                              threshold=threshold, min_clients=min_clients, run_id=run_id,
                                              client_norm_bound=client_norm_bound, seed=seed)
        return cls(info, path)  # type: ignore[arg-type]

    def server_view(self) -> ThresholdDecryption:  # type: ignore[override]
        if self._view is None:
            self._view = ThresholdDecryption(self.info)  # type: ignore[arg-type]
        return self._view  # type: ignore[return-value]

    def client_ref(self) -> ThresholdKeyDir:
        return ThresholdKeyDir(str(self.path))
