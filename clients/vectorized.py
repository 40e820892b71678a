"""Vectorized cohorts (``train.vectorize``): the honest clients of a cohort message that run plain local SGD train
together (:func:`fedsec.training.vectorized.train_stacked`); the others keep the per-client path.

Under local DP the honest clients run DP-SGD together (:func:`fedsec.training.stacked_dp_sgd.dp_train_stacked`, the
same Poisson batches and noise draws as fedsec's per-client kernels); each client's budget check and accounting stay
its own (:func:`.dp.dp_from_stacked`), and a client whose round would overspend still refuses.

Who falls back, with the reason logged once per message: attackers in an attacking round (their attack decides what
they send), local DP through Opacus' engine (``privacy.grad_sample_mode`` other than "fedsec"), FedProx / FedSGD,
adversarial training, client-side data filters, and models with BatchNorm or Dropout. A client trained here reports
``vectorized = 1`` in its metrics (``clients.csv``), one on the per-client path ``vectorized = 0``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedsec.arrays import model_to_record
from fedsec.protocol import ARRAYS_RECORD, NUM_EXAMPLES_KEY, PARTITION_ID_KEY, server_round_of
from fedsec.training.stacked_dp_sgd import dp_train_stacked
from fedsec.training.vectorized import train_stacked, why_not_vectorized

from .dp import round_noise
from .honest import client_data, local_model
from .local_data import honest_client_data
from .spec import ClientSpec

logger = logging.getLogger(__name__)


@dataclass
class StackedReply:
    """One client's result from its cohort's stacked training: its arrays and reply metrics, and under local DP its
    accountant entries (one (noise multiplier, q, steps) per epoch), accounted by the client itself afterwards."""

    arrays: ArrayRecord
    metrics: MetricRecord
    dp_entries: list[tuple[float, float, int]] | None = None


Trained = dict[int, StackedReply]


def recipe_reason(spec: ClientSpec) -> str:
    """'' when the run's honest clients train with plain local SGD; otherwise why they cannot train stacked."""
    train = spec.train
    if spec.privacy.mode == "local" and spec.privacy.grad_sample_mode != "fedsec":
        return f"local DP through Opacus' engine (privacy.grad_sample_mode={spec.privacy.grad_sample_mode!r})"
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
    train, privacy = spec.train, spec.privacy
    recipe = dict(epochs=train.local_epochs, batch_size=train.batch_size, lr=train.lr, momentum=train.momentum,
                  weight_decay=train.weight_decay, generators=generators)
    if privacy.mode == "local":
        noises = [round_noise(spec, p, int(x.shape[0]))[0] for p, x in zip(chosen, xs, strict=True)]
        result = dp_train_stacked(model, xs, ys, max_grad_norm=privacy.max_grad_norm, noise_multipliers=noises,
                                  **recipe)
        entries = result.entries
    else:
        result = train_stacked(model, xs, ys, **recipe)
        entries = [None] * len(chosen)
    out: Trained = {}
    with torch.no_grad():
        for i, p in enumerate(chosen):
            for name, param in model.named_parameters():
                param.copy_(result.params[name][i])
            metrics = MetricRecord({NUM_EXAMPLES_KEY: int(xs[i].shape[0]), "train_loss": result.losses[i],
                                    PARTITION_ID_KEY: p, "vectorized": 1.0, **extras[i]})
            out[p] = StackedReply(model_to_record(model), metrics, entries[i])
    return out
