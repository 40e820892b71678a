"""``encryption.trust = "threshold"``: no party holds the CKKS secret key; a committee of clients decrypts together.

Multiparty CKKS as OpenFHE implements it (Al Badawi et al., "OpenFHE", WAHC 2022, https://eprint.iacr.org/2022/915;
the scheme: Mouchet, Troncoso-Pastoriza, Bossuat and Hubaux, "Multiparty Homomorphic Encryption from
Ring-Learning-with-Errors", PETS 2021, https://eprint.iacr.org/2020/304), with OpenFHE's "threshold FHE with aborts"
for t of n, run in a side process of a Python that imports OpenFHE (:mod:`.openfhe_side`). The parts:

- **Keys** (:mod:`.threshold_setup`). A committee of ``encryption.committee`` clients, drawn from the experiment
  seed, makes the joint key: each member's own OpenFHE process makes its key pair over the first member's common
  polynomial and writes its secret share to a 0600 file itself (``member-<id>.secret``), then Shamir-shares it
  among the other members (``ShareKeys``; each holder's file ``held-<holder>-of-<owner>.share`` written by the
  owner's process).
  Only public keys leave those processes; the joint public key is their sum, and the joint secret key
  s = s_1 + ... + s_n exists nowhere. The Ed25519 signing keys (:mod:`.signing`) and each member's X25519 box key
  are made in a spawned process, as under ``trust = "clients"``.
- **Clients** encrypt their update under the joint public key and sign it (:class:`ThresholdMaterial`,
  :mod:`fedsec.clients.encrypted`).
- **Members** (:mod:`.threshold_member`) answer the server: each verifies the round's signed ciphertexts, refuses
  fewer than ``min_clients`` distinct signed members and a second request in a round, adds them itself and returns
  its partial decryption of that sum; a survivor rebuilds a dropped member's share from ``threshold - 1`` holders'
  shares, each encrypted to it, for the same sum, once.
- **The server** (:mod:`.threshold_server`) asks every member, has missing ones rebuilt when at least ``threshold``
  answered, and fuses the partials (``MultipartyDecryptFusion``): the sum, and nothing else.

Differences from the other trust models (:mod:`.authority`, :mod:`.client_keys`): the headroom is smaller (the
scale is 2^(first prime - 10) because OpenFHE floods each partial decryption with noise of std 2^20: 2^9 per
coordinate; clients clamp to their share of it, so an honest cohort cannot overflow); a sum that still overflows is
refused, not pruned, since finding the offender would need decrypting single members; central DP is refused (no
single party can add the noise after decryption); a survivor that rebuilt a dropped member's share holds it from
then on (OpenFHE's design; the committee is not re-keyed).

What holds against code in the server's own process: it holds the context, the joint public key, the verification
and box public keys, and can obtain only the fused sum of ``min_clients`` signed members of the current round,
once. The members' files are readable by the account that runs the clients (under ``fedsec run``, the server's);
under ``fedsec deploy`` with the server in its own account, they are not.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .authority import ClientMaterial
from .ckks import CkksParams, CryptoError
from .client_keys import ClientKeyDir, read_key_file
from .openfhe_side import side

__all__ = ["HEADROOM_BITS", "ThresholdConfig", "ThresholdKeyDir", "ThresholdMaterial", "ThresholdServerInfo",
           "committee_of", "threshold_max_abs"]

HEADROOM_BITS = 10  # scale = 2^(first prime - 10): OpenFHE's partial decryptions carry noise of std 2^20
LEAD_KEY = "lead"  # in a decryption request: the committee member whose partial covers c0
RECOVER_OF_KEY = "recover-of"  # ... asks for a dropped member's partial, rebuilt from the holders' shares
SHARE_FROM_KEY = "share-from"  # ... the holders whose encrypted shares come with it (json list)
SHARES_KEY = "shares"  # ... and their boxes
SHARE_OF_KEY = "share-of"  # a share request: the dropped member whose secret a holder's share is of
SHARE_FOR_KEY = "share-for"  # ... and the member it is encrypted to


MAX_ABS = 2.0 ** (HEADROOM_BITS - 1)  # largest |value| of a sum (one bit of margin below the headroom)


def threshold_max_abs(params: CkksParams) -> float:
    """Largest |value| of a sum under threshold CKKS, whatever the parameters (the scale follows the first prime)."""
    return MAX_ABS


COMMITTEE_STREAM = 0xC0FFEE  # the committee's draw: its own stream of the experiment seed


def committee_of(seed: int, num_clients: int, size: int) -> tuple[int, ...]:
    """The committee: ``size`` partitions drawn from the experiment seed (so a run repeats, dropouts included), by
    the provisioning on the clients' side, not by the server.

    >>> committee_of(0, 10, 3) == committee_of(0, 10, 3)
    True
    >>> len(set(committee_of(0, 10, 10)))
    10
    """
    order = np.random.default_rng([seed, COMMITTEE_STREAM]).permutation(num_clients)
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
        return MAX_ABS


@dataclass(frozen=True)
class ThresholdServerInfo:
    """What the server gets: the context, the joint public key, verification keys; nothing that decrypts or signs."""

    cc: bytes
    joint_key: bytes
    slots: int
    verify_keys: dict[int, bytes]
    config: ThresholdConfig
    box_keys: dict[int, bytes]  # each member's X25519 public key: shares travel to a member encrypted to it


def held_share_path(directory: Path, holder: int, owner: int) -> Path:
    """The file of ``holder``'s Shamir share of ``owner``'s secret."""
    return directory / f"held-{holder}-of-{owner}.share"


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
        return ThresholdMaterial(partition_id, info.config.run_id, info.joint_key, self.signing_key(partition_id),
                                 cc=info.cc, slots=info.slots)

    def decryptor(self, released: set[int]) -> Any:
        raise CryptoError("threshold CKKS has no single decryptor: the committee members decrypt together")

    def secret_path(self, partition_id: int) -> Path:
        return Path(self.path) / f"member-{partition_id}.secret"

    def box_secret(self, partition_id: int) -> bytes:
        return read_key_file(Path(self.path) / f"box-{partition_id}.key")

    def held_share(self, holder: int, owner: int) -> bytes:
        return held_share_path(Path(self.path), holder, owner).read_bytes()

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
