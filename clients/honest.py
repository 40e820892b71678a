"""The honest client's round: SGD on its partition, from the global arrays it received.

Mini-batches come from a generator seeded by (seed, round, partition id) (:meth:`Schedule.client_seed`), so reruns
are identical. The ClientApp that dispatches honest, DP, malicious and encrypted clients is :mod:`fedsec.clients.app`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, MetricRecord

from fedsec.arrays import load_record, record_to_tensors
from fedsec.audits.evasion import adversarial_batch
from fedsec.audits.input_space import InputSpace
from fedsec.data.federated import WorkerData, worker_data
from fedsec.models import build_model, channels_last_on_cpu
from fedsec.protocol import NUM_EXAMPLES_KEY, PARTITION_ID_KEY
from fedsec.training import BatchHook, train_local
from fedsec.training.local import Objective

from .local_data import honest_client_data
from .spec import ClientSpec

DataPoison = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def client_data(spec: ClientSpec) -> WorkerData:
    """This worker's copy of the federated data (fetched once per process)."""
    return worker_data(spec.data_ref, spec.data, spec.seed)


_MODELS: dict[tuple[str, tuple[int, ...], int, str], torch.nn.Module] = {}
_DECODED: list = [None, None]  # [ArrayRecord, its tensors]: the global arrays last decoded in this process


def _global_state(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """The tensors of ``arrays``, decoded once per record object (a cohort's clients share one record)."""
    if _DECODED[0] is not arrays:
        _DECODED[:] = [arrays, record_to_tensors(arrays)]
    return _DECODED[1]


def local_model(spec: ClientSpec, data: WorkerData, arrays: ArrayRecord, *, reuse: bool = False) -> torch.nn.Module:
    """The global ``arrays`` in a model on the worker's device. ``reuse``: this process's one model of that
    architecture, reloaded (build and decode once per process and per record, not per client); only for callers
    that are done with the model before the next call (honest training turns it into arrays at once)."""
    if not reuse:
        model = build_model(spec.model_name, data.data.input_shape, data.data.num_classes)
        load_record(model, arrays)
        return model.to(data.device)
    key = (spec.model_name, tuple(data.data.input_shape), data.data.num_classes, str(data.device))
    model = _MODELS.get(key)
    if model is None:
        built = build_model(spec.model_name, data.data.input_shape, data.data.num_classes)
        model = _MODELS[key] = channels_last_on_cpu(built.to(data.device))  # oneDNN's layout: fedsec.models.layout
    model.load_state_dict(_global_state(arrays), strict=True)
    return model


def seed_torch(seed: int, device: torch.device) -> None:
    """``torch.manual_seed`` for what the client's training draws from torch's global generators. On a CPU worker
    only the CPU generator is seeded: ``torch.manual_seed`` also queues a CUDA seeding call with a captured stack
    trace when CUDA is not initialised (a cost paid by every client), and CPU ops never read it."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def input_space(spec: ClientSpec) -> InputSpace:
    """The box and scale of the model's inputs (evasion budgets are on [0, 1] pixels)."""
    if spec.normalisation is None:
        return InputSpace.unit()
    return InputSpace.from_normalisation(*spec.normalisation)


def adversarial_hook(spec: ClientSpec, seed: int) -> BatchHook | None:
    """Federated adversarial training (``[train.adversarial]``): part of every batch replaced by adversarial
    examples made on the fly against the client's current weights (PGD-AT, Madry et al. 2018; FGSM with random
    start, Wong et al. 2020); None when off."""
    config = spec.train.adversarial
    if config.attack == "none":
        return None
    space = input_space(spec)
    generator = torch.Generator().manual_seed(seed ^ 0xADE5)

    def hook(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return adversarial_batch(model, x, y, method=config.attack, epsilon=config.epsilon, steps=config.steps,
                                 ratio=config.ratio, space=space, generator=generator)

    return hook


def honest_train(
    spec: ClientSpec,
    arrays: ArrayRecord,
    *,
    server_round: int,
    partition_id: int,
    poison: DataPoison | None = None,
    objective: Objective | None = None,
) -> tuple[torch.nn.Module, MetricRecord]:
    """Train the global ``arrays`` on partition ``partition_id``'s data; returns the trained model and metrics.

    Deterministic in (seed, round, partition id). ``poison(x, y, generator)`` (a malicious client's data
    poisoning) replaces the local data before training, and ``objective`` (an attacker's own loss term,
    :func:`fedsec.training.local.objective_gradient`) joins the data loss. The returned model is this process's
    reused model (:func:`local_model`): read it before the next call.
    """
    train = spec.train
    data = client_data(spec)
    model = local_model(spec, data, arrays, reuse=True)
    x, y = data.client_tensors(partition_id)
    seed = spec.schedule.client_seed(server_round, partition_id)
    seed_torch(seed, data.device)
    extra: dict[str, float] = {}
    hook = None
    if poison is not None:  # a malicious client: its own data poisoning, no sanitization, no adversarial training
        x, y = poison(x, y, torch.Generator().manual_seed(seed ^ 0x5EED))
    else:
        local = honest_client_data(spec, partition_id, x, y, num_classes=data.data.num_classes, model=model,
                                   server_round=server_round)
        x, y, extra = local.x, local.y, local.metrics or {}
        hook = adversarial_hook(spec, seed)
    result = train_local(
        model,
        x,
        y,
        epochs=train.local_epochs,
        batch_size=train.batch_size,
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        generator=torch.Generator().manual_seed(seed),
        hook=hook,
        algorithm=train.algorithm,  # malicious clients that train (poison above) use the run's algorithm too
        proximal_mu=train.proximal_mu or 0.0,
        objective=objective,
    )
    metrics = MetricRecord(
        {NUM_EXAMPLES_KEY: result.num_examples, "train_loss": result.loss, PARTITION_ID_KEY: partition_id, **extra}
    )
    return model, metrics
