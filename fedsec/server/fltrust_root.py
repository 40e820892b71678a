"""The server's own update on a small clean root dataset, for FLTrust (Cao et al., NDSS 2021).

The server holds ``defense.root_size`` training examples (default 100, the paper's), drawn with the experiment
seed from the whole training set, and each round trains the current global model on them as a client would (same
optimiser, learning rate, batch size and ``train.algorithm``: FedProx's proximal term, FedSGD's one full-batch
step) for as many local iterations as an average client takes (the paper's
setting: the server update uses the clients' number of local iterations; with 100 root examples that means
several passes over them); the difference to the global model is g0. Matching the iterations matters: FLTrust
rescales every client update to ||g0||, so a server update from fewer steps slows the whole federation down.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsec.arrays import load_record, model_to_record, record_to_vector
from fedsec.config import TrainConfig
from fedsec.data.federated import FederatedData
from fedsec.models import build_model
from fedsec.training import train_local


def make_root_update(
    data: FederatedData, *, model_name: str, train: TrainConfig, root_size: int, seed: int, calls: int = 0
) -> Callable[[ArrayRecord], torch.Tensor]:
    """A function: global arrays -> the server's flattened update on its root dataset (``calls``: how many rounds
    it already served, for a resumed run: each call's training is seeded by its number)."""
    rng = np.random.default_rng([seed, 0x7005])
    idx = np.sort(rng.choice(data.y_train.size, size=min(root_size, data.y_train.size), replace=False))
    x = torch.from_numpy(np.array(data.x_train[idx]))
    y = torch.from_numpy(np.array(data.y_train[idx], dtype=np.int64))
    model = build_model(model_name, data.input_shape, data.num_classes)
    client_steps = train.local_epochs * math.ceil(data.y_train.size / len(data.partitions) / train.batch_size)
    epochs = 1 if train.algorithm == "fedsgd" else max(1, round(client_steps / math.ceil(idx.size / train.batch_size)))
    calls = [calls]

    def server_update(arrays: ArrayRecord) -> torch.Tensor:
        calls[0] += 1
        load_record(model, arrays)
        seed_i = int(np.random.SeedSequence([seed, 0x7005, calls[0]]).generate_state(1)[0])
        torch.manual_seed(seed_i)
        train_local(model, x, y, epochs=epochs, batch_size=train.batch_size, lr=train.lr,
                    momentum=train.momentum, weight_decay=train.weight_decay,
                    generator=torch.Generator().manual_seed(seed_i), algorithm=train.algorithm,
                    proximal_mu=train.proximal_mu or 0.0)
        return record_to_vector(model_to_record(model)) - record_to_vector(arrays)

    return server_update
