"""EncryptedFedAvg on real Flower messages carrying real, signed CKKS ciphertexts: the curious server's view.

The key authority runs in a process of its own (``backend="process"``); the strategy holds only its server view.
Signature, tampering, overflow and release rules are in ``test_trust_authority.py``; this file checks the
aggregate itself, the server's lack of a secret key, and central DP on the released sum.
"""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
import torch
from flower_messages import _instruction, arrays_of, started
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedsec.arrays import record_to_vector, vector_to_record
from fedsec.clients.encrypted import ClientKeyring, encrypted_train_reply
from fedsec.crypto import CkksParams, CryptoError, KeyAuthorityHandle
from fedsec.strategies.encrypted_fedavg import CHUNKS_KEY, CKKS_RECORD, EncryptedFedAvg

pytestmark = pytest.mark.usefixtures("server_identity")
SHAPES = {"w": (3, 4), "b": (4,)}
NUM_CLIENTS = 5


@pytest.fixture
def handle():  # a fresh authority per test: it releases one sum per round
    h = KeyAuthorityHandle.start(CkksParams(), num_clients=NUM_CLIENTS, min_clients=2, backend="process",
                                 seed=7)
    yield h
    h.stop()


@pytest.fixture
def keyring(handle):
    return ClientKeyring({p: handle.client_material(p) for p in range(NUM_CLIENTS)})


def client_reply(keyring, global_arrays, pid: int, update: np.ndarray, *, num_examples: int = 10,
                 weighted: bool = False, clip_norm: float | None = None) -> Message:
    """What a fedsec client sends: encrypted_train_reply on (global + update)."""
    instruction = Message(content=RecordDict({"arrays": global_arrays, "config": ConfigRecord({"server-round": 1})}),
                          dst_node_id=100 + pid, message_type=MessageType.TRAIN)
    g = record_to_vector(global_arrays).double()
    trained = vector_to_record((g + torch.from_numpy(update)).float(), like=global_arrays)
    metrics = MetricRecord({"num-examples": num_examples, "partition-id": pid, "train_loss": 0.5})
    return encrypted_train_reply(instruction, trained, metrics, context=keyring, node="n", weighted=weighted,
                                 clip_norm=clip_norm)


def test_encrypted_aggregate_equals_plaintext_fedavg_with_reported_counts(handle, keyring):
    rng = np.random.default_rng(0)
    global_arrays = arrays_of({k: rng.normal(size=s) for k, s in SHAPES.items()})
    updates = [rng.normal(size=16) for _ in range(4)]
    examples = [10, 30, 5, 55]
    replies = [client_reply(keyring, global_arrays, i, u, num_examples=n, weighted=True)
               for i, (u, n) in enumerate(zip(updates, examples, strict=True))]
    strategy = started(EncryptedFedAvg(authority=handle.server_view(), weighting="reported"), global_arrays)
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected = record_to_vector(global_arrays).double().numpy() + np.average(updates, axis=0, weights=examples)
    np.testing.assert_allclose(record_to_vector(arrays).double().numpy(), expected, atol=1e-5)
    assert [dec.weight for dec in strategy.last_report.decisions] == [n / 100 for n in examples]
    assert metrics["bytes_up"] > 4 * 16 * 4  # ciphertexts are larger than the float32 update


def test_server_holds_no_secret_key_and_refuses_one(handle, keyring):
    view = handle.server_view()
    public = ts.context_from(view.public_context)
    assert not public.is_private()
    material = keyring.material(0)
    vector = ts.ckks_vector(ts.context_from(material.context), [1.0, 2.0])
    with pytest.raises(ValueError):
        ts.ckks_vector_from(public, vector.serialize()).decrypt()  # the server cannot decrypt a client's ciphertext
    assert not hasattr(view, "decrypt_sum") and not hasattr(view, "_context")

    class Leaky:  # an "authority" whose public context is in fact the secret one
        public_context = CkksParams().make_context().serialize(save_secret_key=True)
        verify_keys: dict = {}
        run_id, min_clients = "x", 2

    with pytest.raises(CryptoError, match="holds the secret key"):
        EncryptedFedAvg(authority=Leaky())


def test_malformed_or_plaintext_replies_are_rejected_the_rest_summed(handle, keyring):
    global_arrays = arrays_of({k: np.zeros(s) for k, s in SHAPES.items()})
    ones = np.ones(16)
    good = [client_reply(keyring, global_arrays, 1, ones), client_reply(keyring, global_arrays, 2, 3 * ones)]
    garbage = client_reply(keyring, global_arrays, 3, ones)
    garbage.content[CKKS_RECORD][CHUNKS_KEY] = [b"not a ciphertext"] * 4
    plaintext = Message(content=RecordDict({"arrays": arrays_of({"w": np.ones((3, 4)), "b": np.ones(4)}),
                                            "metrics": MetricRecord({"num-examples": 5, "partition-id": 4})}),
                        reply_to=_instruction(104))
    strategy = started(EncryptedFedAvg(authority=handle.server_view()), global_arrays)
    arrays, _ = strategy.aggregate_train(1, [*good, garbage, plaintext])
    np.testing.assert_allclose(record_to_vector(arrays).numpy(), np.full(16, 2.0), atol=1e-5)  # (1 + 3) / 2
    status = {dec.partition_id: dec.status for dec in strategy.last_report.decisions}
    assert status[1] == status[2] == "accepted"
    assert status[3].startswith("invalid:") and "signature" in status[3]  # the chunks no longer match its signature
    assert status[4] == "invalid: plaintext arrays sent under encryption"


def test_central_dp_clips_at_the_client_and_divides_by_the_fixed_k(handle, keyring):
    """Clients clip to C = 1 with weight 1; the authority adds N(0, s^2) to the released sum; the model moves by
    (sum of clipped updates + noise) / k with k = 4 fixed. With s = 0 the move is exact; with s > 0 it differs from
    the exact move by the noise / k, whose spread matches s / k, drawn from a secret seed, not the given one."""
    rng = np.random.default_rng(1)
    global_arrays = arrays_of({k: rng.normal(size=s) for k, s in SHAPES.items()})
    g = record_to_vector(global_arrays).double().numpy()
    updates = [rng.normal(size=16) * scale for scale in (0.1, 1.0, 3.0)]
    clipped = [u * min(1.0, 1.0 / np.linalg.norm(u)) for u in updates]
    exact = g + np.sum(clipped, axis=0) / 4

    replies = [client_reply(keyring, global_arrays, i, u, num_examples=10 * (i + 1), clip_norm=1.0)
               for i, u in enumerate(updates)]
    strategy = started(EncryptedFedAvg(authority=handle.server_view(), dp_noise_std=0.0, expected_clients=4),
                       global_arrays)
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(record_to_vector(arrays).double().numpy(), exact, atol=1e-5)
    assert [d.weight for d in strategy.last_report.decisions] == [0.25, 0.25, 0.25]

    with KeyAuthorityHandle.start(CkksParams(), num_clients=NUM_CLIENTS, min_clients=2, backend="process",
                                  seed=7) as noisy:
        ring = ClientKeyring({p: noisy.client_material(p) for p in range(NUM_CLIENTS)})
        replies = [client_reply(ring, global_arrays, i, u, clip_norm=1.0) for i, u in enumerate(updates)]
        strategy = started(EncryptedFedAvg(authority=noisy.server_view(), dp_noise_std=2.0, expected_clients=4),
                           global_arrays)
        arrays, _ = strategy.aggregate_train(1, replies)
    noise = (record_to_vector(arrays).double().numpy() - exact) * 4  # the authority's N(0, 2^2) draws
    # 16 draws of std 2: their sample std lies in [0.8, 3.6] but with probability ~1e-4
    assert 0.8 < float(np.std(noise)) < 3.6
    # and they are not the experiment seed's draws, which the server could regenerate and subtract
    assert not np.allclose(noise, np.random.default_rng(7).normal(0.0, 2.0, size=16), atol=1e-2)
