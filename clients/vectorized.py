"""Vectorized cohorts (``train.vectorize``): the honest clients of a cohort message that run plain local SGD train
together (:func:`fedsec.training.vectorized.train_stacked`); the others keep the per-client path.

Who falls back, with the reason logged once per message: attackers in an attacking round (their attack decides what
they send), every client under local DP (Opacus' per-sample clipping and accounting), FedProx / FedSGD, adversarial
training, client-side data filters, and models with BatchNorm or Dropout. A client trained here reports
``vectorized = 1`` in its metrics (``clients.csv``), one on the per-client path ``vectorized = 0``.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedsec.arrays import model_to_record
from fedsec.protocol import ARRAYS_RECORD, NUM_EXAMPLES_KEY, PARTITION_ID_KEY, server_round_of
from fedsec.training.vectorized import train_stacked, why_not_vectorized

from .honest import client_data, local_model
from .local_data import honest_client_data
from .spec import ClientSpec

logger = logging.getLogger(__name__)

Trained = dict[int, tuple[ArrayRecord, MetricRecord]]


def recipe_reason(spec: ClientSpec) -> str:
    """'' when the run's honest clients train with plain local SGD; otherwise why they cannot train stacked."""
    train = spec.train
    if spec.privacy.mode == "local":
        return "local DP-SGD (per-sample clipping and accounting per client)"
    if train.algorithm != "fedavg":
        return f"train.algorithm={train.algorithm!r}"
    if train.adversarial.attack != "none":
        return "adversarial training"
    if spec.sanitize is not None:
        return "a client-side data filter"
    return ""


def train_cohort_stacked(spec: ClientSpec, message: Message, partition_ids: list[int]) -> Trained:
    """Train the cohort's eligible clients together; returns each one's (arrays, metrics), the reply it would have
    made on its own. An empty result: nobody eligible (the reason is logged)."""
    server_round = server_round_of(message)
    honest = [p for p in partition_ids
              if not (spec.schedule.is_malicious(p) and spec.schedule.attack_active(server_round))]
    data = client_data(spec)
    model = local_model(spec, data, message.content[ARRAYS_RECORD], reuse=True)
    reason = recipe_reason(spec) or why_not_vectorized(model)
    if reason or len(honest) < 2:
        if reason:
            logger.info("round %d: cohort of %d trains client by client: %s", server_round, len(partition_ids), reason)
        return {}
    xs, ys, generators, extras, chosen = [], [], [], [], []
    for p in honest:
        x, y = data.client_tensors(p)
        local = honest_client_data(spec, p, x, y, num_classes=data.data.num_classes, model=model,
                                   server_round=server_round)
        if local.x.shape[0] == 0:
            continue  # nothing to train on: the per-client path reports it as it always does
        seed = spec.schedule.client_seed(server_round, p)
        xs.append(local.x)
        ys.append(local.y)
        generators.append(torch.Generator().manual_seed(seed))
        extras.append(local.metrics or {})
        chosen.append(p)
    if len(chosen) < 2:
        return {}
    train = spec.train
    result = train_stacked(model, xs, ys, epochs=train.local_epochs, batch_size=train.batch_size, lr=train.lr,
                           momentum=train.momentum, weight_decay=train.weight_decay, generators=generators)
    out: Trained = {}
    with torch.no_grad():
        for i, p in enumerate(chosen):
            for name, param in model.named_parameters():
                param.copy_(result.params[name][i])
            metrics = MetricRecord({NUM_EXAMPLES_KEY: int(xs[i].shape[0]), "train_loss": result.losses[i],
                                    PARTITION_ID_KEY: p, "vectorized": 1.0, **extras[i]})
            out[p] = (model_to_record(model), metrics)
    return out
