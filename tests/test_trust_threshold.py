"""``encryption.trust = "threshold"`` (fedsec/crypto/threshold.py): a committee of clients makes a joint CKKS key with
OpenFHE, each member's share written by its own side process; the server holds the context, the joint public key
and the verification keys, and can obtain only the fusion of every member's partial decryption of a sum of at least
two signed members of the current round, once. Needs OpenFHE's Python 3.10 side environment
(``bash scripts/openfhe_venv.sh``; ``bash scripts/dev.sh setup`` makes it where a Python 3.10 is found)."""

from __future__ import annotations

import json
import stat

import numpy as np
import pandas as pd
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message, MessageType, RecordDict

from fedsec.arrays import record_to_vector
from fedsec.clients.encrypted import ClientKeyring, decrypt_reply
from fedsec.config import ConfigError
from fedsec.crypto import CkksParams, CryptoError, SignedCiphertext
from fedsec.crypto.client_keys import DECRYPT_RECORD, RELEASE_RECORD, decrypt_request
from fedsec.crypto.openfhe_side import OPENFHE_PYTHON_ENV, missing_reason, side
from fedsec.crypto.signing import sign_chunks
from fedsec.crypto.threshold import SHARE_FOR_KEY, SHARE_OF_KEY
from fedsec.crypto.threshold_member import box_key
from fedsec.crypto.threshold_setup import ThresholdHeldKeys
from fedsec.plan import plan_from_dict
from fedsec.strategies.encrypted_fedavg import EncryptedFedAvg
from tests.flower_messages import started
from tests.in_process import run_in_process
from tests.test_trust_authority import NUM_CLIENTS, client_reply, global_zero, updates

pytestmark = pytest.mark.usefixtures("server_identity")
needs_openfhe = pytest.mark.skipif(bool(missing_reason()), reason=missing_reason() or "OpenFHE reachable")


class Clients:
    """The clients' side of the decryption requests: each partition's real ``decrypt_reply``; ``drop``: partitions
    whose answer is lost."""

    def __init__(self, ref, drop=()):
        self.ref, self.drop = ref, set(drop)

    def send_and_receive(self, messages, *, timeout=None):
        return [decrypt_reply(m, self.ref, partition_id=m.metadata.dst_node_id - 100) for m in messages
                if m.metadata.dst_node_id - 100 not in self.drop]


@pytest.fixture(scope="module")
def made():
    """One committee of 3, any 2 of which decrypt, for the module (each test uses rounds of its own: members
    decrypt a round once)."""
    handle = ThresholdHeldKeys.start(CkksParams(), num_clients=NUM_CLIENTS, committee=3, threshold=2, min_clients=2)
    yield handle
    handle.stop()


def connected(handle, drop=()):
    view = handle.server_view()
    view.connect(Clients(handle.client_ref(), drop), {p: 100 + p for p in range(NUM_CLIENTS)}, timeout=None)
    return view


def members(ring, pids, ups, server_round):
    out = []
    for p, u in zip(pids, ups, strict=True):
        m = ring.material(p)
        chunks = m.encrypt(np.asarray(u, dtype=np.float64))
        out.append(SignedCiphertext(p, chunks, m.sign(server_round, chunks)))
    return out


@needs_openfhe
def test_each_member_writes_its_own_share_and_the_server_holds_none(made):
    committee = made.info.config.committee
    assert len(committee) == 3 and set(committee) <= set(range(NUM_CLIENTS))
    assert stat.S_IMODE(made.path.stat().st_mode) == 0o700
    files = sorted(p.name for p in made.path.iterdir() if not p.name.startswith("threshold-"))
    assert files == sorted(["group.key", *(f"member-{p}.secret" for p in committee),
                            *(f"box-{p}.key" for p in committee),  # each holder's Shamir share of each other's key
                            *(f"held-{h}-of-{p}.share" for p in committee for h in committee if h != p),
                            *(f"sign-{p}.key" for p in range(NUM_CLIENTS))])
    assert all(stat.S_IMODE((made.path / f).stat().st_mode) == 0o600 for f in files)
    view = made.server_view()
    shares = {(made.path / f).read_bytes() for f in files if f.startswith(("member-", "held-", "box-"))}
    signing = {ClientKeyring(made.client_ref()).material(p).signing_key for p in range(NUM_CLIENTS)}
    held = {v for v in vars(view.info).values() if isinstance(v, bytes)} | set(view.verify_keys.values())
    assert not (shares | signing) & held and not view.holds_secret_key()


@needs_openfhe
def test_the_committee_releases_the_signed_sum_once(made):
    ring, ups = ClientKeyring(made.client_ref()), updates(3, seed=5)
    strategy = started(EncryptedFedAvg(authority=connected(made)), global_zero())
    new, metrics = strategy.aggregate_train(1, [client_reply(ring, p, u) for p, u in enumerate(ups)])
    assert new is not None and metrics["bytes_up"] > 0
    np.testing.assert_allclose(record_to_vector(new).numpy(), np.mean(ups, axis=0), atol=1e-5)
    again = strategy.authority.decrypt_round(1, members(ring, [0, 1], ups[:2], 1), 16)
    assert again.vector is None and "already decrypted round 1 once" in again.refused
    for pid in made.info.config.committee:  # each member's record is in the key directory
        assert list(json.loads((made.path / f"threshold-{pid}.json").read_text())["rounds"]) == ["1"]


@needs_openfhe
def test_a_dropped_member_is_rebuilt_from_shares_and_fewer_than_t_do_not_decrypt(made):
    ring, ups = ClientKeyring(made.client_ref()), updates(2, seed=1)
    committee = made.info.config.committee
    result = connected(made, drop=[committee[0]]).decrypt_round(2, members(ring, [0, 1], ups, 2), 16)
    assert result.refused is None and result.recovered == [committee[0]]  # the lead itself dropped
    np.testing.assert_allclose(result.vector, ups[0] + ups[1], atol=1e-5)
    two = connected(made, drop=committee[1:]).decrypt_round(3, members(ring, [0, 1], ups, 3), 16)
    assert two.vector is None and "1 of the committee's 3 partial decryptions (2 answering members" in two.refused
    info = made.info  # and OpenFHE itself refuses to fuse two of three partial decryptions
    chunks = members(ring, [0], ups[:1], 3)[0].chunks
    partials = [side().call("partial", cc=info.cc, members=[chunks], secret_path=str(made.path / f"member-{p}.secret"),
                            lead=i == 0) for i, p in enumerate(info.config.committee[:2])]
    with pytest.raises(CryptoError, match="approximation error is too high"):
        side().call("fuse", cc=info.cc, partials=partials, length=16)


def _share(handle, holder, owner, recipient):
    record = decrypt_request(7, [], 16, 0.0)
    record[SHARE_OF_KEY], record[SHARE_FOR_KEY] = owner, recipient
    reply = decrypt_reply(Message(content=RecordDict({DECRYPT_RECORD: record}), dst_node_id=100 + holder,
                                  message_type=MessageType.QUERY), handle.client_ref(), partition_id=holder)
    record = reply.content.config_records[RELEASE_RECORD]
    return bytes(record["partial"][0]), json.loads(str(record["result"]))["refused"]


@needs_openfhe
def test_a_share_goes_to_one_recipient_and_opens_only_there():
    with ThresholdHeldKeys.start(CkksParams(), num_clients=NUM_CLIENTS, committee=4, threshold=3) as handle:
        info, keys = handle.info, handle.client_ref()
        holder, owner, first, second = info.config.committee
        box, refused = _share(handle, holder, owner, first)
        assert refused is None and _share(handle, holder, owner, first)[1] is None  # the same recipient again
        assert "a second recipient would hold that secret too" in _share(handle, holder, owner, second)[1]
        assert "three distinct committee members" in _share(handle, holder, owner, holder)[1]

        def opened(recipient):
            key = box_key(keys.box_secret(recipient), info.box_keys[holder], run_id=info.config.run_id,
                           owner=owner, holder=holder, recipient=recipient)
            return key.decrypt(box[:12], box[12:], None)

        assert opened(first) == keys.held_share(holder, owner)  # the holder's share of the owner's secret
        with pytest.raises(InvalidTag):
            opened(second)  # another member cannot open it, nor can the server, which holds no box key


@needs_openfhe
def test_one_member_a_forged_member_and_a_non_member_are_refused(made):
    ring, view, ups = ClientKeyring(made.client_ref()), connected(made), updates(3, seed=2)
    alone = view.decrypt_round(4, members(ring, [0], ups[:1], 4), 16)
    assert alone.vector is None and "at least min_clients=2" in alone.refused
    good = members(ring, [0, 1], ups[:2], 5)
    chunks = ring.material(2).encrypt(np.asarray(ups[2], dtype=np.float64))
    stranger = Ed25519PrivateKey.generate().private_bytes_raw()  # a key provisioning never issued
    forged = SignedCiphertext(2, chunks, sign_chunks(stranger, run_id=view.run_id, server_round=5, partition_id=2,
                                                     chunks=chunks))
    result = view.decrypt_round(5, [*good, forged], 16)
    assert result.accepted == [0, 1] and 2 in result.rejected
    np.testing.assert_allclose(result.vector, ups[0] + ups[1], atol=1e-5)
    outsider = next(p for p in range(NUM_CLIENTS) if p not in view.committee)
    request = Message(content=RecordDict({DECRYPT_RECORD: decrypt_request(6, good, 16, 0.0)}),
                      dst_node_id=100 + outsider, message_type=MessageType.QUERY)
    reply = decrypt_reply(request, made.client_ref(), partition_id=outsider)
    assert "is not on the decryption committee" in str(reply.content.config_records[RELEASE_RECORD]["result"])


RAW = {"name": "threshold", "seed": 1, "rounds": 2, "data": {"dataset": "digits", "partition": "iid", "num_clients": 4},
       "model": {"name": "logreg"}, "train": {"clients_per_round": 4, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
       "defense": {"strategy": "fedavg"}}


@needs_openfhe
def test_a_threshold_run_reaches_the_plaintext_accuracy(tmp_path):
    """One message per client for plaintext, cohorts of two nodes for threshold CKKS (the decryption requests
    travel through the cohort transport too)."""
    plain = run_in_process(RAW, tmp_path / "plain")
    joint = run_in_process({**RAW, "encryption": {"scheme": "ckks", "trust": "threshold", "committee": 3}},
                           tmp_path / "threshold", cohort_nodes=2)
    assert joint.attrs["stopped_reason"] == "completed"
    assert (joint["accuracy"] - plain["accuracy"]).abs().max() <= 1e-3
    assert (joint["loss"] - plain["loss"]).abs().max() <= 1e-3


@needs_openfhe
def test_committee_members_whose_devices_drop_are_rebuilt_in_a_run(tmp_path):
    """``clients.dropout``: a committee member unreachable in a round is not asked; its partial decryption is rebuilt
    from the others' shares, and those rounds equal plaintext FedAvg under the same drops. Seed 0: one of the three
    members drops in rounds 1 and 2, two in round 3, which is refused (fewer than threshold = 2 answer)."""
    raw = {**RAW, "seed": 0, "rounds": 3, "clients": {"dropout": 0.3}, "data": {**RAW["data"], "num_clients": 6},
           "train": {**RAW["train"], "clients_per_round": 6}}
    plain = run_in_process(raw, tmp_path / "plain")
    joint = run_in_process({**raw, "encryption": {"scheme": "ckks", "trust": "threshold", "committee": 3}},
                           tmp_path / "threshold")
    assert joint.attrs["stopped_reason"] == "completed"
    assert joint["ckks_recovered"].tolist()[1:3] == [1, 1] and joint["skipped"].tolist()[1:] == [0, 0, 1]
    assert (joint["accuracy"] - plain["accuracy"]).abs()[:3].max() <= 1e-3
    clients = pd.read_csv(tmp_path / "threshold" / "clients.csv")
    assert set(clients.loc[clients["round"] == 3, "status"]) >= {"skipped: decryption committee refused"}


@pytest.mark.parametrize(("change", "why"), [
    ({"encryption": {"scheme": "ckks", "trust": "threshold", "committee": 5}}, "use at most data.num_clients=4"),
    ({"encryption": {"scheme": "ckks", "trust": "threshold", "committee": 3, "threshold": 4}},
     r"encryption.threshold=4: must be in \(committee / 2, committee\] = \(1.5, 3\]"),
    ({"encryption": {"scheme": "ckks", "trust": "threshold"}, "train": {**RAW["train"], "sampling": "poisson"},
      "privacy": {"mode": "central", "epsilon": 8.0, "clip_norm": 1.0}}, "no party decrypts alone"),
])
def test_what_threshold_ckks_cannot_do_is_refused_with_the_reason(change, why):
    with pytest.raises(ConfigError, match=why):
        plan_from_dict({**RAW, **change})


def test_without_openfhe_the_config_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv(OPENFHE_PYTHON_ENV, "/nonexistent/python3.10")
    with pytest.raises(ConfigError, match="scripts/openfhe_venv.sh"):
        plan_from_dict({**RAW, "encryption": {"scheme": "ckks", "trust": "threshold"}})
