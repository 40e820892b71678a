"""``[audit.inversion]``: an honest-but-curious server inverts the updates it really received from the listed clients
in the listed rounds (:mod:`fedsec.audits.inversion`: DLG, iDLG, Inverting Gradients, with their papers), scored
against the clients' true examples (PSNR, SSIM, label accuracy). Under CKKS it holds only ciphertexts: the audit
records "no plaintext update available". Under central DP it sees each update before clipping and noise: DP-FedAvg
protects against other parties, not against the server itself, and the audit shows it."""

from __future__ import annotations

import logging
import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

from fedsec.errors import ConfigError
from fedsec.protocol import CKKS_RECORD, partition_of_reply
from fedsec.registry import Params
from fedsec.results.contract import SummaryMetric

from .base import RoundHook, RoundState, RunFacts, ServerContext

logger = logging.getLogger(__name__)


class InversionAuditParams(Params):
    """``[audit.inversion]`` keys."""

    method: Literal["dlg", "idlg", "ig"] = Field("ig", description="dlg | idlg | ig (Inverting Gradients).")
    rounds: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        [1], min_length=1, max_length=100, description="Rounds whose updates are attacked (each 1..100,000).")
    clients: list[Annotated[int, Field(ge=0, le=99_999)]] = Field(
        [0], min_length=1, max_length=100, description="Partition ids attacked (each 0..99,999).")
    iterations: int = Field(300, ge=1, le=100_000, description="Optimisation steps per restart.")
    restarts: int = Field(1, ge=1, le=100, description="Restarts (the best reconstruction is kept).")
    tv_weight: float = Field(1e-4, ge=0, le=10, description="ig: total-variation weight.")
    max_examples: int = Field(8, ge=1, le=1024, description="Refuse to attack clients holding more examples.")


class InversionAudit(RoundHook):
    """Gradient inversion of the updates the server received."""

    name = "inversion"
    section = "audit"
    description = "a curious server inverts received updates (DLG / iDLG / IG); PSNR, SSIM, label accuracy"
    Params = InversionAuditParams
    summary_metrics = (
        SummaryMetric("inversion_psnr", "inversion", "psnr", "mean PSNR of the reconstructions (dB)"),
        SummaryMetric("inversion_ssim", "inversion", "ssim", "mean SSIM of the reconstructions"),
        SummaryMetric("inversion_label_accuracy", "inversion", "label_accuracy", "share of labels recovered"),
    )

    @classmethod
    def check(cls, params: InversionAuditParams, facts: RunFacts) -> None:
        facts.require_images("audit.inversion", "reconstructions are scored as images")
        bad_rounds = [r for r in params.rounds if not 1 <= r <= facts.rounds]
        if bad_rounds:
            raise ConfigError(f"audit.inversion.rounds={params.rounds}: rounds {bad_rounds} do not exist "
                              f"(1..{facts.rounds})")
        bad = [c for c in params.clients if not 0 <= c < facts.num_clients]
        if bad:
            raise ConfigError(f"audit.inversion.clients={params.clients}: ids {bad} are not clients "
                              f"(0..{facts.num_clients - 1})")
        for r in params.rounds:
            sampled = facts.schedule.sampled(r)
            missing = [c for c in params.clients if c not in sampled]
            if missing:
                raise ConfigError(f"audit.inversion.clients={params.clients}: clients {missing} do not train in "
                                  f"round {r} (sampled: {sampled}); pick sampled clients or other rounds")

    def __init__(self, params: InversionAuditParams, ctx: ServerContext) -> None:
        super().__init__(params, ctx)
        self.pixel_space = ctx.facts.input_space
        self.records: list[dict[str, Any]] = []

    def state(self) -> dict[str, Any]:
        return {"records": self.records}

    def restore(self, state: dict[str, Any]) -> None:
        self.records = list(state["records"])

    def at_end(self, arrays: Any, summary: dict[str, Any]) -> None:
        if self.records:
            summary["inversion"] = self.records

    def on_replies(self, rnd: RoundState) -> None:
        p = self.params
        if rnd.server_round not in p.rounds:
            return
        for pid in p.clients:
            reply = next((r for r in rnd.replies if partition_of_reply(r) == pid), None)
            record: dict[str, Any] = {"round": rnd.server_round, "client": pid, "method": p.method}
            if reply is None or reply.has_error() or not reply.content.array_records:
                held = ("only CKKS ciphertexts (encrypted aggregation hides updates)"
                        if reply is not None and not reply.has_error() and CKKS_RECORD in reply.content.config_records
                        else "no reply from this client")
                record.update(status="unavailable", reason=f"no plaintext update available: the server holds {held}")
            else:
                self._invert(record, rnd, pid, next(iter(reply.content.array_records.values())))
            self.records.append(record)
            logger.info("inversion audit round %d client %d: %s", rnd.server_round, pid,
                        {k: v for k, v in record.items() if k != "psnr_per_image"})

    def _invert(self, record: dict[str, Any], rnd: RoundState, pid: int, arrays: Any) -> None:
        from fedsec.audits.inversion import GradientInversion

        ctx, p, facts = self.ctx, self.params, self.ctx.facts
        sent = rnd.sent
        update = {k: torch.from_numpy(np.array(arrays[k].numpy(), copy=True))
                  - torch.from_numpy(np.array(sent[k].numpy(), copy=True)) for k in arrays}
        idx = ctx.data.partitions[pid]
        n = idx.size
        if n > p.max_examples:
            record.update(status="skipped", reason=f"client {pid} holds {n} examples > audit.inversion."
                          f"max_examples={p.max_examples}")
            return
        train = facts.train
        attack = GradientInversion(
            lambda: build(facts, ctx), method=p.method, iterations=p.iterations, restarts=p.restarts,
            tv_weight=p.tv_weight, seed=facts.seed, input_space=self.pixel_space)
        global_params = {k: torch.from_numpy(np.array(sent[k].numpy(), copy=True)) for k in sent}
        result = attack.reconstruct(
            global_params, update, num_examples=n, input_shape=ctx.data.input_shape,
            local_steps=train.local_epochs * math.ceil(n / train.batch_size), lr=train.lr,
            batch_size=min(train.batch_size, n), momentum=train.momentum)
        if not result.available:  # the kernel's own check of what it was given
            record.update(status="unavailable", reason=result.reason)
            return
        originals = torch.from_numpy(np.array(ctx.data.x_train[idx]))
        labels = torch.from_numpy(np.array(ctx.data.y_train[idx], dtype=np.int64))
        score = result.score(originals, labels)
        record.update(status="done", examples=n, psnr=score.mean_psnr, ssim=score.mean_ssim,
                      label_accuracy=score.label_accuracy, seconds=result.seconds,
                      psnr_per_image=[float(v) for v in score.psnr])
        self._grid(originals, result, score, rnd.server_round, pid)

    def _grid(self, originals: torch.Tensor, result: Any, score: Any, server_round: int, pid: int) -> None:
        from fedsec.audits.inversion_plots import plot_reconstructions

        try:
            plot_reconstructions(originals, result.reconstructions[score.assignment], self.ctx.plots /
                                 f"inversion_round{server_round}_client{pid}.png", psnr=score.psnr,
                                 input_space=self.pixel_space)
        except (ValueError, RuntimeError, IndexError) as err:
            logger.warning("inversion grid not drawn: %s", err)


def build(facts: RunFacts, ctx: ServerContext) -> torch.nn.Module:
    """A fresh CPU model of the run's architecture (the attack's own copy, unseeded as the audit always built it)."""
    from fedsec.models import build_model

    return build_model(facts.model_name, ctx.data.input_shape, ctx.data.num_classes)
