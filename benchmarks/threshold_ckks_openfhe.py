"""Threshold CKKS aggregation with OpenFHE: a prototype for the benchmark, not yet a fedsec trust model.

OpenFHE: Al Badawi et al., "OpenFHE: Open-Source Fully Homomorphic Encryption Library", WAHC 2022
(https://eprint.iacr.org/2022/915); multiparty CKKS and "threshold FHE with aborts" as OpenFHE implements them.
Needs ``openfhe`` (PyPI), whose wheel 1.6.1.0.22.4 imports only on CPython 3.10 (its one ``py3-none-any`` wheel
holds a cp310 extension): ``bash scripts/openfhe_venv.sh`` makes ``.venv-openfhe`` for it. Why written here: OpenFHE's
Python examples do not cover t-of-n, and fedsec's vectors need chunking into packed ciphertexts.

Trust model: no key authority. n clients generate the joint key themselves; the server only adds ciphertexts and
fuses partial decryptions. OpenFHE's multiparty CKKS is n-of-n: the joint secret key is s = s_1 + ... + s_n and a
decryption needs one partial decryption per s_i. t-of-n comes from OpenFHE's "threshold FHE with aborts": after key
generation every client Shamir-shares its own s_i among the other n-1 clients (``ShareKeys``, t > n/2 enforced by
OpenFHE); when a client drops out, any t of the others hand their shares of its s_i to one survivor, who rebuilds
s_i (``RecoverSharedKey``) and computes the missing partial decryption with it.

Key generation is the "star" variant: client 1 makes a key pair (this fixes the common random polynomial a), every
other client makes its own pair over the same a (``MultipartyKeyGen(pk_1, fresh=True)``), and the server sums the
public keys with ``MultiAddPubKeys``. (The "chain" variant, ``MultipartyKeyGen(pk_{i-1})`` client after client,
needs n sequential rounds.)

Functions: :func:`setup`, :func:`encrypt`, :func:`add`, :func:`partial_decrypt`, :func:`fuse`, plus
:func:`recover_secret` (abort handling) and byte helpers. Vectors of any length d are split into ceil(d / slots)
ciphertexts of ``slots`` = N/2 values, as fedsec's TenSEAL path does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import openfhe as fhe

__all__ = [
    "Params", "Public", "ClientKey", "Partial", "setup", "encrypt", "add", "partial_decrypt", "fuse",
    "recover_secret", "ciphertext_bytes", "share_to_bytes", "share_from_bytes",
]

_SCALING = {"FIXEDMANUAL": fhe.FIXEDMANUAL, "FIXEDAUTO": fhe.FIXEDAUTO, "FLEXIBLEAUTO": fhe.FLEXIBLEAUTO,
            "FLEXIBLEAUTOEXT": fhe.FLEXIBLEAUTOEXT}
_KEYSWITCH = {"BV": fhe.BV, "HYBRID": fhe.HYBRID}


@dataclass(frozen=True)
class Params:
    """CKKS parameters for addition-only aggregation.

    mult_depth 0 + FIXEDMANUAL + BV key switching gives a modulus of one prime of ``first_mod_bits`` (no
    special primes: we never key-switch), so OpenFHE's 128-bit table allows N = 4096, as in fedsec's TenSEAL
    default; the scale is 2^scaling_mod_bits and the headroom for |sum| is about 2^(first - scaling - 1).
    """

    mult_depth: int = 0
    scaling_mod_bits: int = 40
    first_mod_bits: int = 60
    ring_dim: int = 0  # 0: the smallest OpenFHE allows at `security`
    scaling: str = "FIXEDMANUAL"
    key_switch: str = "BV"
    security: fhe.SecurityLevel = fhe.HEStd_128_classic

    def context(self) -> fhe.CryptoContext:
        p = fhe.CCParamsCKKSRNS()
        p.SetMultiplicativeDepth(self.mult_depth)
        p.SetScalingModSize(self.scaling_mod_bits)
        p.SetFirstModSize(self.first_mod_bits)
        p.SetScalingTechnique(_SCALING[self.scaling])
        p.SetKeySwitchTechnique(_KEYSWITCH[self.key_switch])
        p.SetSecurityLevel(self.security)
        if self.ring_dim:
            p.SetRingDim(self.ring_dim)
        cc = fhe.GenCryptoContext(p)
        for feature in (fhe.PKE, fhe.KEYSWITCH, fhe.LEVELEDSHE, fhe.MULTIPARTY):
            cc.Enable(feature)
        return cc


@dataclass
class Public:
    """What the server (and every client, for encryption) holds: the context and the joint public key."""

    cc: fhe.CryptoContext
    public_key: fhe.PublicKey
    n: int
    t: int

    @property
    def slots(self) -> int:
        return self.cc.GetRingDimension() // 2

    def describe(self) -> str:
        return (f"N={self.cc.GetRingDimension()} log2(Q)={math.log2(self.cc.GetModulus()):.1f} "
                f"scaling={self.cc.GetScalingTechnique().name} keyswitch={self.cc.GetKeySwitchTechnique().name}")


@dataclass
class ClientKey:
    """Client `index` (1-based, as OpenFHE's share maps are): its secret share s_i and the Shamir shares of the
    other clients' s_j that it holds (``held[j]`` = its share of s_j)."""

    index: int
    secret: fhe.PrivateKey
    held: dict[int, fhe.DCRTPoly] = field(default_factory=dict)


@dataclass
class Partial:
    """One party's partial decryption of every chunk of an aggregate; ``lead`` marks the one that includes c0."""

    chunks: list[fhe.Ciphertext]
    lead: bool
    length: int


def setup(n: int, t: int, params: Params = Params()) -> tuple[Public, list[ClientKey]]:
    """Joint key generation for n clients and t-of-n sharing of each client's secret (t > n/2; t = n: no sharing).

    All parties are simulated in this process; in a deployment each step runs on its own client and only
    public keys (to the server) and Shamir shares (pairwise, encrypted) travel.
    """
    if not 1 <= t <= n:
        raise ValueError(f"need 1 <= t <= n, got t={t}, n={n}")
    cc = params.context()
    first = cc.KeyGen()  # client 1 fixes the common random polynomial a
    pairs = [first] + [cc.MultipartyKeyGen(first.publicKey, False, True) for _ in range(n - 1)]
    joint = pairs[0].publicKey
    for kp in pairs[1:]:  # the server's job: sum b_i over the common a
        joint = cc.MultiAddPubKeys(joint, kp.publicKey, kp.publicKey.GetKeyTag())
    clients = [ClientKey(i + 1, kp.secretKey) for i, kp in enumerate(pairs)]
    if t < n:
        for owner in clients:
            shares = cc.ShareKeys(owner.secret, n, t, owner.index, "shamir")  # {j: f_owner(j)}, j != owner
            for j, share in shares.items():
                clients[j - 1].held[owner.index] = share
    return Public(cc, joint, n, t), clients


def encrypt(vector: np.ndarray, public: Public) -> list[fhe.Ciphertext]:
    """Encrypt a 1-D float vector under the joint public key, ceil(d / slots) ciphertexts."""
    v = np.asarray(vector, dtype=np.float64).ravel()
    s = public.slots
    cc, pk = public.cc, public.public_key
    return [cc.Encrypt(pk, cc.MakeCKKSPackedPlaintext(v[i:i + s].tolist())) for i in range(0, len(v), s)]


def add(ciphertexts: list[list[fhe.Ciphertext]], public: Public) -> list[fhe.Ciphertext]:
    """Chunk-wise sum of the clients' ciphertext lists (server side, public material only)."""
    if not ciphertexts:
        raise ValueError("nothing to add")
    cc = public.cc
    out = []
    for chunk in zip(*ciphertexts, strict=True):
        acc = chunk[0]
        for ct in chunk[1:]:
            acc = cc.EvalAdd(acc, ct)  # EvalAddMany would need Enable(ADVANCEDSHE)
        out.append(acc)
    return out


def partial_decrypt(ct: list[fhe.Ciphertext], secret: fhe.PrivateKey, lead: bool, public: Public,
                    length: int | None = None) -> Partial:
    """One party's share of the decryption of an aggregate. Exactly one party of a decryption is the lead."""
    cc = public.cc
    step = cc.MultipartyDecryptLead if lead else cc.MultipartyDecryptMain
    out = step(ct, secret)
    return Partial(out, lead, length if length is not None else len(ct) * public.slots)


def fuse(partials: list[Partial], public: Public) -> np.ndarray:
    """Server side: combine one partial per secret share (n of them, recovered ones included) into the plaintext.

    With fewer than n partials OpenFHE raises ("the approximation error is too high"): a heuristic check, not a
    guarantee (a sum past the headroom comes back wrong without an error).
    """
    if sum(p.lead for p in partials) != 1:
        raise ValueError("exactly one partial decryption must come from the lead")
    cc = public.cc
    out = []
    for chunk in zip(*(p.chunks for p in partials), strict=True):
        pt = cc.MultipartyDecryptFusion(list(chunk))
        out.append(np.asarray(pt.GetRealPackedValue(), dtype=np.float64))
    return np.concatenate(out)[:partials[0].length]


def recover_secret(dropped: int, holders: list[ClientKey], public: Public) -> fhe.PrivateKey:
    """Rebuild client `dropped`'s s_i from the shares of >= t surviving holders (threshold FHE with aborts).

    The survivor who runs this learns s_dropped in full: it can then make the dropped client's partial decryption,
    but it also holds that key share from now on (re-key after an abort if that matters).
    """
    shares = {h.index: h.held[dropped] for h in holders if dropped in h.held}
    key = fhe.PrivateKey(public.cc)
    public.cc.RecoverSharedKey(key, shares, public.n, public.t, "shamir")  # raises if len(shares) < t
    return key


def ciphertext_bytes(ct: fhe.Ciphertext) -> bytes:
    return fhe.Serialize(ct, fhe.BINARY)


def share_to_bytes(share: fhe.DCRTPoly, template: fhe.Ciphertext) -> bytes:
    """DCRTPoly has no Serialize/pickle in the Python wrapper: carry it as the single element of a ciphertext."""
    carrier = template.CloneEmpty()
    carrier.SetElements([share])
    return fhe.Serialize(carrier, fhe.BINARY)


def share_from_bytes(data: bytes) -> fhe.DCRTPoly:
    return fhe.DeserializeCiphertextString(data, fhe.BINARY).GetElements()[0]
