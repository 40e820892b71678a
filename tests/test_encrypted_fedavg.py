"""EncryptedFedAvg on real Flower messages carrying real CKKS ciphertexts: the curious server's view."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
from flower_messages import _instruction, arrays_of, started
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedsec.arrays import record_to_vector
from fedsec.crypto import CryptoError, KeyAuthority, encrypt_vector
from fedsec.strategies.encrypted_fedavg import CHUNKS_KEY, CKKS_RECORD, EncryptedFedAvg

pytestmark = pytest.mark.usefixtures("server_identity")
SHAPES = {"w": (3, 4), "b": (4,)}


@pytest.fixture(scope="module")
def authority() -> KeyAuthority:
    return KeyAuthority()


def encrypted_reply(node_id: int, pid: int, update: np.ndarray, num_examples: int, context: bytes) -> Message:
    chunks = encrypt_vector(update * num_examples, context, chunk_size=5)
    content = RecordDict({
        CKKS_RECORD: ConfigRecord({CHUNKS_KEY: chunks}),
        "metrics": MetricRecord({"num-examples": num_examples, "partition-id": pid, "train_loss": 0.5}),
    })
    return Message(content=content, reply_to=_instruction(node_id))


def test_encrypted_aggregate_equals_plaintext_fedavg(authority):
    rng = np.random.default_rng(0)
    global_arrays = arrays_of({k: rng.normal(size=s) for k, s in SHAPES.items()})
    d = sum(int(np.prod(s)) for s in SHAPES.values())
    updates = [rng.normal(size=d) for _ in range(4)]
    examples = [10, 30, 5, 55]
    replies = [encrypted_reply(100 + i, i, u, n, authority.client_context()) for i, (u, n) in
               enumerate(zip(updates, examples, strict=True))]
    decrypted: list[int] = []

    def decryptor(chunks, length):
        decrypted.append(len(chunks))
        return authority.decrypt_sum(chunks, length)

    strategy = started(EncryptedFedAvg(public_context=authority.server_context(), decryptor=decryptor), global_arrays)
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected = record_to_vector(global_arrays).double().numpy() + np.average(updates, axis=0, weights=examples)
    np.testing.assert_allclose(record_to_vector(arrays).double().numpy(), expected, atol=1e-5)
    assert decrypted == [4]  # the key authority decrypted one thing: the sum (16 values in 4 chunks of 5)
    assert [dec.weight for dec in strategy.last_report.decisions] == [n / 100 for n in examples]
    assert metrics["bytes_up"] > 4 * 16 * 4  # ciphertexts are larger than the float32 update


def test_server_holds_no_secret_key_and_refuses_one(authority):
    public = ts.context_from(authority.server_context())
    assert not public.is_private()
    vector = ts.ckks_vector(ts.context_from(authority.client_context()), [1.0, 2.0])
    foreign = ts.ckks_vector_from(public, vector.serialize())
    with pytest.raises(ValueError):
        foreign.decrypt()  # the server cannot decrypt a client's ciphertext
    with pytest.raises(CryptoError, match="holds the secret key"):
        EncryptedFedAvg(public_context=authority.client_context(), decryptor=authority.decrypt_sum)


def test_malformed_or_plaintext_replies_are_rejected_the_rest_summed(authority):
    global_arrays = arrays_of({k: np.zeros(s) for k, s in SHAPES.items()})
    ones = np.ones(16)
    good = [encrypted_reply(101, 1, ones, 10, authority.client_context()),
            encrypted_reply(102, 2, 3 * ones, 30, authority.client_context())]
    garbage = encrypted_reply(103, 3, ones, 10, authority.client_context())
    garbage.content[CKKS_RECORD][CHUNKS_KEY] = [b"not a ciphertext"] * 4
    plaintext = Message(content=RecordDict({"arrays": arrays_of({"w": np.ones((3, 4)), "b": np.ones(4)}),
                                            "metrics": MetricRecord({"num-examples": 5, "partition-id": 4})}),
                        reply_to=_instruction(104))
    strategy = started(EncryptedFedAvg(public_context=authority.server_context(), decryptor=authority.decrypt_sum),
                       global_arrays)
    arrays, _ = strategy.aggregate_train(1, [*good, garbage, plaintext])
    # (10 * 1 + 30 * 3) / 40 = 2.5
    np.testing.assert_allclose(record_to_vector(arrays).numpy(), np.full(16, 2.5), atol=1e-5)
    status = {dec.partition_id: dec.status for dec in strategy.last_report.decisions}
    assert status[1] == status[2] == "accepted"
    assert status[3].startswith("invalid:") and "deserialize" in status[3]
    assert status[4] == "invalid: plaintext arrays sent under encryption"


def test_central_dp_on_the_encrypted_sum_equals_plaintext_dp_fedavg(authority):
    """Clients clip to C and send weight 1; the server adds encrypted N(0, (zC)^2) noise; / k. Same seed, same
    noise as the plaintext DP-FedAvg kernel."""
    import torch

    from fedsec.arrays import vector_to_record
    from fedsec.clients.encrypted import encrypted_train_reply
    from fedsec.strategies.dp_fedavg import dp_fedavg_aggregate

    rng = np.random.default_rng(1)
    global_arrays = arrays_of({k: rng.normal(size=s) for k, s in SHAPES.items()})
    g = record_to_vector(global_arrays).double()
    updates = [torch.from_numpy(rng.normal(size=16) * scale) for scale in (0.1, 1.0, 3.0)]
    replies = []
    for i, u in enumerate(updates):
        instruction = Message(content=RecordDict({"arrays": global_arrays, "config": ConfigRecord()}),
                              dst_node_id=100 + i, message_type="train")
        trained = vector_to_record((g + u).float(), like=global_arrays)
        metrics = MetricRecord({"num-examples": 10 * (i + 1), "partition-id": i})
        replies.append(encrypted_train_reply(instruction, trained, metrics, context=authority.client_context(),
                                             node="n", clip_norm=1.0))
    strategy = started(EncryptedFedAvg(public_context=authority.server_context(), decryptor=authority.decrypt_sum,
                                       dp_noise_std=0.5 * 1.0, expected_clients=4, seed=7), global_arrays)
    arrays, _ = strategy.aggregate_train(1, replies)
    exact = torch.stack([record_to_vector(vector_to_record((g + u).float(), like=global_arrays)).double() - g
                         for u in updates])
    expected, _ = dp_fedavg_aggregate(exact, clip_norm=1.0, noise_multiplier=0.5, expected_clients=4,
                                      generator=torch.Generator().manual_seed(7))
    np.testing.assert_allclose(record_to_vector(arrays).double().numpy(), (g + expected).numpy(), atol=1e-5)
    assert [d.weight for d in strategy.last_report.decisions] == [0.25, 0.25, 0.25]
