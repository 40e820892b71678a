"""The CKKS secret key lives in a separate authority process; the server's strategy cannot decrypt a
single client's ciphertext, tampered or foreign-key ciphertexts are rejected and recorded, overflow is detected."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flower_messages import arrays_of, started
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedsec.arrays import record_to_vector
from fedsec.clients.encrypted import ClientKeyring, encrypted_train_reply
from fedsec.crypto import CkksParams, CryptoError, KeyAuthorityHandle, SignedCiphertext, encrypt_vector
from fedsec.crypto.signing import make_signing_keys, sign_chunks
from fedsec.protocol import CHUNKS_KEY, CKKS_RECORD
from fedsec.strategies.encrypted_fedavg import SIGNATURE_KEY, EncryptedFedAvg

pytestmark = pytest.mark.usefixtures("server_identity")
SHAPES = {"w": (3, 4), "b": (4,)}
D = 16
NUM_CLIENTS = 6


@pytest.fixture
def handle():  # one authority per test: it releases one sum per round
    h = KeyAuthorityHandle.start(CkksParams(), num_clients=NUM_CLIENTS, min_clients=2, backend="process")
    yield h
    h.stop()


@pytest.fixture
def keyring(handle):
    return ClientKeyring({p: handle.client_material(p) for p in range(NUM_CLIENTS)})


def global_zero():
    return arrays_of({k: np.zeros(s) for k, s in SHAPES.items()})


def client_reply(keyring, pid: int, update: np.ndarray, *, server_round: int = 1, num_examples: int = 50,
                 weighted: bool = False) -> Message:
    """A real client reply: encrypted_train_reply on the trained arrays (global zero + update)."""
    instruction = Message(content=RecordDict({"arrays": global_zero(),
                                              "config": ConfigRecord({"server-round": server_round})}),
                          dst_node_id=100 + pid, message_type=MessageType.TRAIN)
    trained = arrays_of({"w": update[:12].reshape(3, 4), "b": update[12:]})
    metrics = MetricRecord({"num-examples": num_examples, "partition-id": pid, "train_loss": 0.5})
    return encrypted_train_reply(instruction, trained, metrics, context=keyring, node="n", weighted=weighted)


def strategy_for(handle, **kwargs):
    return started(EncryptedFedAvg(authority=handle.server_view(), **kwargs), global_zero())


def updates(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=D).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("weighting", ["capped", "reported"])
def test_signed_round_equals_plaintext_fedavg(handle, keyring, weighting):
    ups = updates(4)
    counts = [10, 30, 5, 55]
    weighted = weighting == "reported"
    replies = [client_reply(keyring, i, u, num_examples=n, weighted=weighted)
               for i, (u, n) in enumerate(zip(ups, counts, strict=True))]
    strategy = strategy_for(handle, weighting=weighting)
    arrays, metrics = strategy.aggregate_train(1, replies)
    weights = counts if weighted else [1, 1, 1, 1]  # capped falls back to uniform under CKKS
    expected = np.average(ups, axis=0, weights=weights)
    np.testing.assert_allclose(record_to_vector(arrays).double().numpy(), expected, atol=1e-5)
    assert [d.status for d in strategy.last_report.decisions] == ["accepted"] * 4
    assert metrics["bytes_up"] > 4 * D * 4


def _reachable(root, depth=4):
    """Every object reachable from ``root`` through at most ``depth`` references (modules excluded)."""
    seen, frontier, out = {id(root)}, [root], []
    for _ in range(depth):
        nxt = []
        for obj in frontier:
            for ref in gc.get_referents(obj):
                if id(ref) in seen or isinstance(ref, type(os)) or isinstance(ref, type):
                    continue
                seen.add(id(ref))
                out.append(ref)
                nxt.append(ref)
        frontier = nxt
    return out


def test_server_strategy_cannot_decrypt_a_single_client(handle, keyring):
    strategy = strategy_for(handle)
    # the secret key is in another process; nothing the strategy reaches holds it, or any signing key
    assert handle._process.pid != os.getpid()
    signing_keys = {keyring.material(p).signing_key for p in range(NUM_CLIENTS)}
    for obj in _reachable(strategy, depth=6):
        assert not (isinstance(obj, ts.Context) and obj.has_secret_key())
        assert not isinstance(obj, Ed25519PrivateKey)
        assert not (isinstance(obj, bytes) and obj in signing_keys)
    assert not ts.context_from(strategy.public_context).has_secret_key()
    assert not hasattr(strategy.authority, "client_material")
    with pytest.raises(CryptoError, match="not available"):
        strategy.authority._channel.call("client_material", 0)

    one = client_reply(keyring, 0, updates(1)[0], server_round=1)
    chunks, signature = one.content[CKKS_RECORD][CHUNKS_KEY], one.content[CKKS_RECORD][SIGNATURE_KEY]
    public = ts.context_from(strategy.public_context)
    with pytest.raises(ValueError):  # no secret key in this process
        ts.ckks_vector_from(public, chunks[0]).decrypt()
    member = SignedCiphertext(0, chunks, signature)
    alone = strategy.authority.decrypt_round(1, [member], D)
    assert alone.vector is None and "min_clients=2" in alone.refused
    twice = strategy.authority.decrypt_round(1, [member, member], D)  # the same client twice is one client
    assert twice.vector is None and "duplicate" in twice.rejected[0]
    # a ciphertext the server made itself (public key, no client signature) does not count as a member
    forged = encrypt_vector(np.zeros(D), strategy.public_context)
    fake = strategy.authority.decrypt_round(1, [member, SignedCiphertext(1, forged, b"\0" * 64)], D)
    assert fake.vector is None and "does not verify" in fake.rejected[1]


def test_one_release_per_round(handle, keyring):
    ups = updates(3, seed=5)
    members = []
    for i, u in enumerate(ups):
        r = client_reply(keyring, i, u, server_round=7)
        members.append(SignedCiphertext(i, r.content[CKKS_RECORD][CHUNKS_KEY], r.content[CKKS_RECORD][SIGNATURE_KEY]))
    service = handle.server_view()
    first = service.decrypt_round(7, members, D)
    np.testing.assert_allclose(first.vector, np.sum(ups, axis=0), atol=1e-5)
    again = service.decrypt_round(7, members[:2], D)  # sum(3) - sum(2) would reveal client 2
    assert again.vector is None and "already released" in again.refused
    replay = service.decrypt_round(8, members, D)  # signatures are bound to round 7
    assert replay.vector is None and all("does not verify" in why for why in replay.rejected.values())


def test_flipped_byte_and_foreign_key_are_rejected_and_recorded(handle, keyring):
    ups = updates(4, seed=1)
    replies = [client_reply(keyring, i, u) for i, u in enumerate(ups)]
    chunks = list(replies[1].content[CKKS_RECORD][CHUNKS_KEY])
    flipped = bytearray(chunks[0])
    flipped[len(flipped) // 2] ^= 0x01
    replies[1].content[CKKS_RECORD][CHUNKS_KEY] = [bytes(flipped), *chunks[1:]]
    foreign_private, _ = make_signing_keys([2])  # a signing key the trusted setup did not issue
    own = replies[2].content[CKKS_RECORD][CHUNKS_KEY]
    replies[2].content[CKKS_RECORD][SIGNATURE_KEY] = sign_chunks(
        foreign_private[2], run_id=handle.config.run_id, server_round=1, partition_id=2, chunks=own)
    strategy = strategy_for(handle)
    arrays, _ = strategy.aggregate_train(1, replies)
    status = [d.status for d in strategy.last_report.decisions]
    assert status[0] == status[3] == "accepted"
    assert status[1].startswith("invalid: signature does not verify")
    assert status[2].startswith("invalid: signature does not verify")
    np.testing.assert_allclose(record_to_vector(arrays).double().numpy(), (ups[0] + ups[3]) / 2, atol=1e-5)


def test_ciphertext_under_another_ckks_key_is_caught_by_the_authority(handle, keyring):
    """Signed by a genuine client, but encrypted under another CKKS key: it decrypts to values of order 2^19,
    beyond the headroom; the authority drops it (without releasing the garbage sum) and releases the rest."""
    ups = updates(4, seed=2)
    replies = [client_reply(keyring, i, u) for i, u in enumerate(ups)]
    other = CkksParams().make_context()
    foreign = encrypt_vector(ups[2].astype(np.float64), other)
    replies[2].content[CKKS_RECORD][CHUNKS_KEY] = foreign
    replies[2].content[CKKS_RECORD][SIGNATURE_KEY] = keyring.material(2).sign(1, foreign)
    strategy = strategy_for(handle)
    arrays, _ = strategy.aggregate_train(1, replies)
    status = [d.status for d in strategy.last_report.decisions]
    assert status[2].startswith("invalid: key authority: its ciphertext decrypts to an implausible vector")
    assert status.count("accepted") == 3
    np.testing.assert_allclose(record_to_vector(arrays).double().numpy(), np.mean([ups[0], ups[1], ups[3]], axis=0),
                               atol=1e-5)


def test_overflowing_sum_is_detected_and_recorded(handle, keyring):
    """Three clients each within the headroom 2^18 = 262,144 (2.5e5 per coordinate) sum to 7.5e5: the sum wraps
    around (it decrypted to -2.99e5 before); the authority excludes two, and refuses the round: one is too few."""
    big = np.full(D, 2.5e5, dtype=np.float32)
    replies = [client_reply(keyring, i, big) for i in range(3)]
    strategy = strategy_for(handle)
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is None and metrics is None
    reason = strategy.last_report.skipped_reason
    assert "key authority refused" in reason and "headroom" in reason
    # the two largest are excluded in turn (the sum still overflows after the first); one member is too few
    statuses = sorted(d.status.split(" (")[0] for d in strategy.last_report.decisions)
    assert statuses == ["invalid: key authority: excluded: the members' sum was implausible"] * 2 + \
        ["skipped: key authority refused"]


def test_round_without_participants_is_a_recorded_failure(handle, keyring):
    replies = [client_reply(keyring, i, u) for i, u in enumerate(updates(2))]
    for r in replies:
        r.content[CKKS_RECORD][SIGNATURE_KEY] = b"\0" * 64
    strategy = strategy_for(handle)
    assert strategy.aggregate_train(1, replies) == (None, None)
    assert "no client took part: 2 invalid" in strategy.last_report.skipped_reason


def test_declared_norm_bound_and_central_dp_denominator():
    """Under central DP clients clip to clip_norm = 1 (the bound they declare); a client that sends a vector of
    norm 4 is dropped by the authority, the rest released, and the model moves by sum / k (k = 4, fixed)."""
    with KeyAuthorityHandle.start(CkksParams(), num_clients=4, min_clients=2, client_norm_bound=1.0,
                                  backend="process") as h:
        ring = ClientKeyring({p: h.client_material(p) for p in range(4)})
        ups = [np.eye(D, dtype=np.float32)[i] * 0.5 for i in range(3)] + [np.full(D, 1.0, dtype=np.float32)]
        replies = [client_reply(ring, i, u) for i, u in enumerate(ups)]  # weight 1; client 3 has norm 4 > 1
        strategy = started(EncryptedFedAvg(authority=h.server_view(), dp_noise_std=0.0, expected_clients=4),
                           global_zero())
        arrays, _ = strategy.aggregate_train(1, replies)
        status = [d.status for d in strategy.last_report.decisions]
        assert status[:3] == ["accepted"] * 3
        assert status[3].startswith("invalid: key authority: its ciphertext decrypts to an implausible vector")
        assert "declared norm bound 1" in status[3]
        np.testing.assert_allclose(record_to_vector(arrays).double().numpy(), np.sum(ups[:3], axis=0) / 4, atol=1e-6)


def test_central_dp_authority_releases_every_round_with_at_least_its_noise():
    """Under central DP (dp_noise_std set at start) the authority releases an empty round (an empty Poisson cohort)
    as the noise alone, a round of one client as its noised update, and never less noise than configured, even if
    the server asks for none: refusing would reveal how many clients took part."""
    with KeyAuthorityHandle.start(CkksParams(), num_clients=4, min_clients=2, client_norm_bound=1.0, seed=3,
                                  dp_noise_std=0.5, backend="process") as h:
        ring = ClientKeyring({p: h.client_material(p) for p in range(4)})
        strategy = started(EncryptedFedAvg(authority=h.server_view(), dp_noise_std=0.5, expected_clients=2),
                           global_zero())
        arrays, _ = strategy.aggregate_train(1, [])  # nobody sampled
        empty = record_to_vector(arrays).double().numpy()
        assert strategy.last_report.decisions == [] and strategy.last_report.skipped_reason is None
        assert 0.05 < empty.std() * 2 < 1.5  # N(0, 0.5^2) / k with k = 2
        one = np.eye(D, dtype=np.float32)[0] * 0.5
        low_noise = started(EncryptedFedAvg(authority=h.server_view(), dp_noise_std=1e-9, expected_clients=2),
                            global_zero())
        arrays, _ = low_noise.aggregate_train(2, [client_reply(ring, 0, one, server_round=2)])
        released = record_to_vector(arrays).double().numpy() * 2  # the noised sum
        assert [d.status for d in low_noise.last_report.decisions] == ["accepted"]
        assert 0.2 < (released - one).std() < 1.0  # the configured 0.5, not the 1e-9 the server asked for


def test_two_clients_at_the_overflow_edge_are_excluded_instead_of_stalling_the_round(handle, keyring):
    """Two signed clients at 0.6x the headroom (2^18) overflow the sum together, each being plausible alone: the
    authority excludes the largest until the rest fits and releases the sum of the other members."""
    edge = np.full(D, 0.6 * 2**18, dtype=np.float32)
    edge_two = edge.copy()
    edge_two[0] *= 1.01  # the larger of the two goes first
    honest = updates(3, seed=5)
    replies = [client_reply(keyring, 0, edge), client_reply(keyring, 1, edge_two)]
    replies += [client_reply(keyring, 2 + i, u) for i, u in enumerate(honest)]
    strategy = strategy_for(handle)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None  # the round goes on
    status = {d.partition_id: d.status for d in strategy.last_report.decisions}
    assert status[1].startswith("invalid: key authority: excluded")
    assert all(status[p] == "accepted" for p in (0, 2, 3, 4))
    expected = np.mean([edge, *honest], axis=0)
    np.testing.assert_allclose(record_to_vector(arrays).double().numpy(), expected, rtol=1e-4)


def test_clients_clamp_what_they_encrypt_to_their_share_of_the_headroom(handle, keyring):
    """With a member bound of 2^18 / 2 each, two clients at the edge sum within the headroom: nothing is excluded."""
    big = np.full(D, 2.0e5, dtype=np.float32)
    bound = 2**18 / 2
    replies = []
    for pid in (0, 1):
        content = RecordDict({"arrays": global_zero(), "config": ConfigRecord({"server-round": 1})})
        instruction = Message(content=content, dst_node_id=100 + pid, message_type=MessageType.TRAIN)
        trained = arrays_of({"w": big[:12].reshape(3, 4), "b": big[12:]})
        metrics = MetricRecord({"num-examples": 50, "partition-id": pid, "train_loss": 0.5})
        reply = encrypted_train_reply(instruction, trained, metrics, context=keyring, node="n", member_bound=bound)
        assert reply.content["metrics"]["ckks_clamped"] == D
        replies.append(reply)
    strategy = strategy_for(handle)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert all(d.status == "accepted" for d in strategy.last_report.decisions)
    np.testing.assert_allclose(record_to_vector(arrays).double().numpy(), np.full(D, bound), rtol=1e-4)
