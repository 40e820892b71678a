"""``encryption.trust = "clients"`` (fedsec/crypto/client_keys.py): the keys are provisioned in a process of their
own, the server holds the public context and verification keys only, and the only decryption it can obtain is the
sum of at least two signed members of the current round, released once by the round's decryptor client."""

from __future__ import annotations

import gc
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message, MessageType, RecordDict

from fedsec.arrays import record_to_vector
from fedsec.clients.encrypted import ClientKeyring, decrypt_reply
from fedsec.crypto import CkksParams, SignedCiphertext, encrypt_vector, load_context
from fedsec.crypto.client_keys import (
    DECRYPT_RECORD,
    RELEASE_RECORD,
    ClientHeldKeys,
    decrypt_request,
    decryptor_of,
    parse_release,
)
from fedsec.crypto.openfhe_side import missing_reason
from fedsec.crypto.signing import sign_chunks
from fedsec.strategies.encrypted_fedavg import EncryptedFedAvg
from tests.flower_messages import started
from tests.in_process import run_in_process
from tests.test_trust_authority import NUM_CLIENTS, client_reply, global_zero, updates

pytestmark = pytest.mark.usefixtures("server_identity")


class Clients:
    """The clients' side of the decryption requests: each partition's real ``decrypt_reply`` with its own state."""

    def __init__(self, ref):
        self.ref = ref

    def send_and_receive(self, messages, *, timeout=None):
        return [decrypt_reply(m, self.ref, partition_id=m.metadata.dst_node_id - 100) for m in messages]


@pytest.fixture
def keys():
    handle = ClientHeldKeys.start(CkksParams(), num_clients=NUM_CLIENTS, min_clients=2)
    yield handle
    handle.stop()


def connected(handle):
    view = handle.server_view()
    view.connect(Clients(handle.client_ref()), {p: 100 + p for p in range(NUM_CLIENTS)}, timeout=None)
    return view


def secret_contexts() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, ts.Context) and o.has_secret_key())


def test_provisioning_leaves_the_starting_process_without_a_key_that_decrypts_or_signs():
    before = secret_contexts()
    handle = ClientHeldKeys.start(CkksParams(), num_clients=3, min_clients=2)
    try:
        view = handle.server_view()
        assert secret_contexts() == before  # made and written by the provisioning process, never loaded here
        assert not load_context(view.public_context).has_secret_key()
        assert stat.S_IMODE(handle.path.stat().st_mode) == 0o700
        files = sorted(p.name for p in handle.path.iterdir())
        assert files == ["group.key", "sign-0.key", "sign-1.key", "sign-2.key"]
        assert all(stat.S_IMODE((handle.path / f).stat().st_mode) == 0o600 for f in files)
        signing = {ClientKeyring(handle.client_ref()).material(p).signing_key for p in range(3)}
        held = [v for v in vars(view).values() if isinstance(v, bytes)] + list(view.verify_keys.values())
        assert not signing & set(held)  # the server's view holds verification keys, no signing key
    finally:
        handle.stop()
    assert not handle.path.exists()  # the keys go with the run


def test_the_rounds_decryptor_releases_a_signed_sum_once(keys):
    ring, ups = ClientKeyring(keys.client_ref()), updates(3, seed=5)
    strategy = started(EncryptedFedAvg(authority=connected(keys)), global_zero())
    new, metrics = strategy.aggregate_train(1, [client_reply(ring, p, u) for p, u in enumerate(ups)])
    assert new is not None and metrics["bytes_up"] > 0
    np.testing.assert_allclose(record_to_vector(new).numpy(), np.mean(ups, axis=0), atol=1e-6)
    again = strategy.authority.decrypt_round(1, [], 16)  # a second sum of round 1, of any set: refused
    assert again.vector is None and "already released once" in again.refused
    turn = decryptor_of(keys.info.seed, 1, NUM_CLIENTS)  # the record is in the key directory, not Flower's state
    assert (keys.path / f"released-{turn}.json").read_text() == "[1]"


def members(ring, pids, ups, server_round=1):
    out = []
    for p, u in zip(pids, ups, strict=True):
        m = ring.material(p)
        chunks = encrypt_vector(u, m.context)
        out.append(SignedCiphertext(p, chunks, m.sign(server_round, chunks)))
    return out


def test_one_member_is_refused_and_only_the_rounds_decryptor_answers(keys):
    ring, view, ups = ClientKeyring(keys.client_ref()), connected(keys), updates(2, seed=1)
    alone = view.decrypt_round(1, members(ring, [0], ups[:1]), 16)
    assert alone.vector is None and "at least min_clients=2" in alone.refused
    turn = decryptor_of(view.seed, 2, NUM_CLIENTS)
    other = (turn + 1) % NUM_CLIENTS
    request = Message(content=RecordDict({DECRYPT_RECORD: decrypt_request(2, members(ring, [0, 1], ups, 2), 16,
                                                                          0.0)}), dst_node_id=100 + other,
                      message_type=MessageType.QUERY)
    reply = decrypt_reply(request, keys.client_ref(), partition_id=other)
    answer = parse_release(2, reply.content.config_records[RELEASE_RECORD], 16)
    assert answer.vector is None and f"is not round 2's decryptor (client {turn} is)" in answer.refused


def test_a_forged_member_is_dropped_by_the_decryptor(keys):
    ring, view, ups = ClientKeyring(keys.client_ref()), connected(keys), updates(3, seed=2)
    good = members(ring, [0, 1], ups[:2])
    chunks = encrypt_vector(ups[2], ring.material(2).context)
    stranger = Ed25519PrivateKey.generate().private_bytes_raw()  # a key provisioning never issued
    forged = SignedCiphertext(2, chunks, sign_chunks(stranger, run_id=view.run_id, server_round=1, partition_id=2,
                                                     chunks=chunks))
    result = view.decrypt_round(1, [*good, forged], 16)
    assert result.accepted == [0, 1] and 2 in result.rejected
    np.testing.assert_allclose(result.vector, ups[0] + ups[1], atol=1e-6)


def test_central_dp_noise_is_drawn_from_a_secret_not_the_experiments_seed():
    ups, noise = updates(2, seed=3), []
    for _ in range(2):  # the same seed, two provisionings: the server cannot regenerate the noise from the seed
        with ClientHeldKeys.start(CkksParams(), num_clients=NUM_CLIENTS, min_clients=2, seed=0,
                                  dp_noise_std=0.5) as handle:
            ring, view = ClientKeyring(handle.client_ref()), connected(handle)
            result = view.decrypt_round(1, members(ring, [0, 1], ups), 16)
            noise.append(result.vector - (ups[0] + ups[1]))
    assert 0.2 < float(np.std(noise[0])) < 1.0 and not np.allclose(noise[0], noise[1])


def test_a_round_whose_decryptor_drops_is_refused_and_recorded(tmp_path):
    """``clients.dropout``: one client decrypts a round under this model, and when the simulated device it runs on is
    unreachable that round nobody decrypts it (seed 0: the decryptors of rounds 1 and 2 drop; the same run under
    threshold CKKS rebuilds them, tests/test_trust_threshold.py). The decryptor is drawn from the seed: runs repeat."""
    raw = {"name": "drops", "seed": 0, "rounds": 3, "clients": {"dropout": 0.3},
           "data": {"dataset": "digits", "partition": "iid", "num_clients": 6}, "model": {"name": "logreg"},
           "train": {"clients_per_round": 6, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
           "defense": {"strategy": "fedavg"}, "encryption": {"scheme": "ckks", "trust": "clients"}}
    rows = run_in_process(raw, tmp_path / "run")
    assert rows["skipped"].tolist()[1:] == [1, 1, 0] and rows.attrs["stopped_reason"] == "completed"
    clients = pd.read_csv(tmp_path / "run" / "clients.csv")
    assert set(clients.loc[clients["round"] == 1, "status"]) >= {"skipped: decryptor client refused"}


SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "digits_smoke.toml"
COLLUDE = ["rounds=2", "encryption.scheme=ckks", "attack.kind=collude_with_server", "attack.client_ids=[3]"]


@pytest.mark.e2e
@pytest.mark.usefixtures("shared_ray")
@pytest.mark.parametrize("trust", ["clients", "authority", pytest.param(
    "threshold", marks=pytest.mark.skipif(bool(missing_reason()), reason=missing_reason() or "OpenFHE reachable"))])
def test_what_the_servers_process_reaches_under_ray(tmp_path, trust):
    """Under Flower's simulation engine (the driver is the server's process): with the key authority the named
    actor decrypts the victim alone; with the clients' keys the driver holds their key directory handle (the
    ClientApp lives there) and the key files are readable: docs/encryption.md says neither holds there."""
    from fedsec.plan import load_plan
    from fedsec.runtime.runner import run_experiment

    result = run_experiment(load_plan(SMOKE, [*COLLUDE, f"encryption.trust={trust!r}"]), tmp_path / "run")
    block = result.summary["collusion"]
    routes = {name: r["victim_update_error"] for name, r in block["routes"].items()}
    reached = {"authority": {"ray_named_actor"}, "clients": {"objects_in_process", "key_files"},
               "threshold": {"objects_in_process", "key_files"}}[trust]
    tolerance = 1e-5 if trust == "threshold" else 1e-6  # OpenFHE's partial decryptions carry more noise
    # the victim's update alone, to CKKS's precision (other tests' keys left in this process decrypt to noise)
    assert {name for name, error in routes.items() if error is not None and error < tolerance} == reached
    assert block["best_error"] < tolerance  # and one colluder with the withheld replies gets it under every model
