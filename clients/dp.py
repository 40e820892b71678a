"""Local (sample-level) differential privacy: each client trains with DP-SGD and keeps its own accountant.

DP-SGD: Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (https://arxiv.org/abs/1607.00133), with
Opacus' semantics (Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch", 2021):
ceil(n_i / batch_size) steps per epoch, each on a Poisson batch with rate q = 1 / steps, per-sample gradients
clipped to ``privacy.max_grad_norm``, Gaussian noise ``noise_multiplier * max_grad_norm``. The per-sample gradients
come from fedsec's kernels (:mod:`fedsec.privacy.dp_sgd`, ``privacy.grad_sample_mode = "fedsec"``, the default:
faster, same step as Opacus' for the same generator) or from Opacus' engine ("hooks", "ew", "functorch"). Every
epsilon is the guard's: the larger of two independent accountants' (:func:`fedsec.privacy.account`; Opacus RDP
and dp_accounting RDP, or PRV and PLD), both reported (``epsilon_opacus_rdp``, ...).

Each client's accountant history lives in Flower's ``context.state`` (per node, kept across rounds), so a client
picked in k rounds has spent k rounds. Its noise multiplier is ``privacy.noise_multiplier`` or calibrated (Opacus'
``get_noise_multiplier``) to spend ``privacy.epsilon`` over exactly the rounds it will be picked in (the seeded
sampling is known in advance) and its local steps. Before training, a client whose next round would push its
epsilon above the budget refuses to train (a ``refused`` reply, :mod:`fedsec.protocol`), so no client ever
overspends.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch.nn import functional as F

from fedsec.privacy import account, calibrate_noise, epsilon_after_history
from fedsec.privacy.dp_sgd import dp_sgd_epoch, epoch_sampling
from fedsec.protocol import NUM_EXAMPLES_KEY, PARTITION_ID_KEY
from fedsec.training import LossMeter, local_sgd

from .honest import adversarial_hook, client_data, local_model, seed_torch
from .local_data import honest_client_data
from .spec import ClientSpec

if TYPE_CHECKING:
    from .vectorized import StackedReply

STATE_KEY = "fedsec.dp"


class PrivacyBudgetExhausted(RuntimeError):
    """This client's next round would spend more than its privacy budget (the client replies with a refusal)."""


_NOISE: dict[tuple[str, int], float] = {}


def client_noise(spec: ClientSpec, partition_id: int, *, sample_rate: float, steps_per_round: int) -> float:
    """The client's noise multiplier: given, or calibrated to its planned participation (cached per worker)."""
    privacy = spec.privacy
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    key = (f"{spec.schedule}:{privacy.model_dump_json()}:{spec.train.model_dump_json()}", partition_id)
    if key not in _NOISE:
        steps = max(1, spec.schedule.participation(partition_id)) * steps_per_round
        _NOISE[key] = calibrate_noise(epsilon=privacy.epsilon, delta=privacy.delta, sample_rate=sample_rate,
                                      steps=steps, accountant=privacy.accountant)
    return _NOISE[key]


def load_history(state: RecordDict) -> list[tuple[float, float, int]]:
    record = state.get(STATE_KEY)
    if record is None:
        return []
    return list(zip(record["noise"], record["rate"], record["steps"], strict=True))


def save_history(state: RecordDict, history: list[tuple[float, float, int]]) -> None:
    state[STATE_KEY] = ConfigRecord({
        "noise": [float(h[0]) for h in history],
        "rate": [float(h[1]) for h in history],
        "steps": [int(h[2]) for h in history],
    })


def _dp_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # an empty Poisson batch still takes its (noise-only) step, as the accounting assumes
    return F.cross_entropy(output, target, reduction="sum") / max(len(target), 1)


@dataclass
class DPRound:
    """What one client's DP round will use, checked against its budget before it trains: the noise multiplier, the
    sample rate and steps the accountant is given, and the accountant history so far."""

    noise: float
    sample_rate: float
    steps_per_round: int
    history: list[tuple[float, float, int]]


def round_noise(spec: ClientSpec, partition_id: int, n: int) -> tuple[float, float, int]:
    """(noise multiplier, sample rate, steps) of the client's round on ``n`` examples: the rate and steps the
    accountant is given (:func:`fedsec.privacy.dp_sgd.epoch_sampling`, times the local epochs)."""
    sample_rate, steps_per_epoch = epoch_sampling(n, spec.train.batch_size)
    steps_per_round = spec.train.local_epochs * steps_per_epoch
    noise = client_noise(spec, partition_id, sample_rate=sample_rate, steps_per_round=steps_per_round)
    return noise, sample_rate, steps_per_round


def plan_dp_round(spec: ClientSpec, *, n: int, server_round: int, partition_id: int, state: RecordDict) -> DPRound:
    """The client's noise and sampling for a round on ``n`` examples, and its history (from ``state``, or the
    checkpoint's on a resumed run). Raises :class:`PrivacyBudgetExhausted` when the round would overspend."""
    privacy = spec.privacy
    noise, sample_rate, steps_per_round = round_noise(spec, partition_id, n)
    history = load_history(state)
    if not history and spec.dp_histories and partition_id in spec.dp_histories:  # a resumed run: the checkpoint's
        history = list(spec.dp_histories[partition_id])
    after = epsilon_after_history(
        [*history, (noise, sample_rate, steps_per_round)], delta=privacy.delta, accountant=privacy.accountant
    )
    if after > privacy.epsilon:
        raise PrivacyBudgetExhausted(
            f"privacy budget exhausted: round {server_round} would raise client {partition_id}'s epsilon to "
            f"{after:.3f} > {privacy.epsilon}"
        )
    return DPRound(noise, sample_rate, steps_per_round, history)


def add_entry(history: list[tuple[float, float, int]], z: float, q: float, steps: int) -> None:
    """Append one epoch's (noise, rate, steps); one entry per (noise, rate) run, as Opacus' accountant keeps."""
    if history and history[-1][:2] == (z, q):
        history[-1] = (z, q, history[-1][2] + steps)
    else:
        history.append((z, q, steps))


def dp_metrics(spec: ClientSpec, dp: DPRound, *, n: int, loss: float, partition_id: int, state: RecordDict,
               extra: dict[str, float]) -> tuple[MetricRecord, list[tuple[float, float, int]]]:
    """Account the round (``dp.history`` now holds it), store the history in ``state``; the reply's metrics and
    the stored history."""
    spent = account(dp.history, delta=spec.privacy.delta, primary=spec.privacy.accountant)
    save_history(state, dp.history)
    metrics = MetricRecord({
        NUM_EXAMPLES_KEY: n,
        "train_loss": loss,
        PARTITION_ID_KEY: partition_id,
        "epsilon": spent.epsilon,
        **{f"epsilon_{name.replace('.', '_')}": value for name, value in spent.epsilons.items()},
        "noise_multiplier": dp.noise,
        **extra,
    })
    return metrics, load_history(state)


def dp_train(
    spec: ClientSpec, arrays: ArrayRecord, *, server_round: int, partition_id: int, state: RecordDict
) -> tuple[torch.nn.Module, MetricRecord, list[tuple[float, float, int]]]:
    """DP-SGD on the client's partition; updates the accountant history in ``state``; returns model, metrics and the
    history (which the client reports, so the server can checkpoint it).

    Raises :class:`PrivacyBudgetExhausted` before training when the round would overspend."""
    train, privacy = spec.train, spec.privacy
    data = client_data(spec)
    x, y = data.client_tensors(partition_id)
    extra: dict[str, float] = {}
    if spec.poisoned or spec.sanitize is not None or spec.example_canaries is not None:
        local = honest_client_data(spec, partition_id, x, y, num_classes=data.data.num_classes,
                                   model=local_model(spec, data, arrays), server_round=server_round)
        x, y, extra = local.x, local.y, local.metrics or {}
    n = x.shape[0]
    dp = plan_dp_round(spec, n=n, server_round=server_round, partition_id=partition_id, state=state)
    seed = spec.schedule.client_seed(server_round, partition_id)
    seed_torch(seed, data.device)
    model = local_model(spec, data, arrays)
    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                                weight_decay=train.weight_decay)
    if privacy.grad_sample_mode == "fedsec":
        generator = torch.Generator().manual_seed(seed)
        hook = adversarial_hook(spec, seed)
        losses: list[tuple[float, int]] = []
        for _ in range(train.local_epochs):
            add_entry(dp.history, *dp_sgd_epoch(model, optimizer, x, y, batch_size=train.batch_size,
                                                max_grad_norm=privacy.max_grad_norm, noise_multiplier=dp.noise,
                                                generator=generator, hook=hook, losses=losses))
        seen = sum(b for _, b in losses)
        loss = sum(s for s, _ in losses) / seen if seen else float("nan")
    else:
        dp.history, loss = _opacus_train(spec, model, optimizer, x, y, history=dp.history, noise=dp.noise, seed=seed)
    metrics, history = dp_metrics(spec, dp, n=n, loss=loss, partition_id=partition_id, state=state, extra=extra)
    return model, metrics, history


def _opacus_train(spec: ClientSpec, model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  y: torch.Tensor, *, history: list[tuple[float, float, int]], noise: float, seed: int
                  ) -> tuple[list[tuple[float, float, int]], float]:
    """DP-SGD through Opacus' engine (``privacy.grad_sample_mode`` hooks / ew / functorch): the new accountant
    history and the training loss."""
    from opacus import PrivacyEngine

    train, privacy = spec.train, spec.privacy
    n = x.shape[0]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=train.batch_size,
                                         generator=torch.Generator().manual_seed(seed))
    engine = PrivacyEngine(accountant=privacy.accountant)
    engine.accountant.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' notes on secure RNG and on the optimal RDP order
        private_model, private_optimizer, private_loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise,
            max_grad_norm=privacy.max_grad_norm, poisson_sampling=True, grad_sample_mode=privacy.grad_sample_mode,
        )
        result = local_sgd(private_model, private_optimizer, lambda _epoch: private_loader,
                           epochs=train.local_epochs, meter=LossMeter(over="all"), device=x.device, loss_fn=_dp_loss,
                           hook=adversarial_hook(spec, seed), num_examples=n)
    return list(engine.accountant.history), result.loss


def dp_from_stacked(spec: ClientSpec, trained: StackedReply, *, server_round: int, partition_id: int,
                    state: RecordDict) -> tuple[ArrayRecord, MetricRecord, list[tuple[float, float, int]]]:
    """A client trained with its cohort (:mod:`.vectorized`): the same budget check as :func:`dp_train` (raises
    :class:`PrivacyBudgetExhausted`, and the stacked result is dropped), then its own accounting of the epochs it
    ran. Returns arrays, metrics and the history."""
    n = int(trained.metrics[NUM_EXAMPLES_KEY])
    dp = plan_dp_round(spec, n=n, server_round=server_round, partition_id=partition_id, state=state)
    for z, q, steps in trained.dp_entries or []:
        add_entry(dp.history, z, q, steps)
    extra = {k: v for k, v in trained.metrics.items() if k not in (NUM_EXAMPLES_KEY, "train_loss", PARTITION_ID_KEY)}
    metrics, history = dp_metrics(spec, dp, n=n, loss=float(trained.metrics["train_loss"]),
                                  partition_id=partition_id, state=state, extra=extra)
    return trained.arrays, metrics, history
