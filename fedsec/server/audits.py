"""The server's audits: model-level attacks on the global model and on the updates the server received.

- ``[audit.evasion]``: robust accuracy R of the global model under FGSM / PGD / C&W every ``every`` rounds and at
  the end (:mod:`fedsec.audits.evasion`); ``rounds.csv`` gets ``robust_accuracy_<attack>``, ``summary.json`` the
  counts behind each value, ``plots/`` a grid of clean vs adversarial inputs.
- ``[audit.inversion]``: an honest-but-curious server inverts the updates it really received from the listed
  clients in the listed rounds (:mod:`fedsec.audits.inversion`), scored against the clients' true examples (PSNR,
  SSIM, label accuracy). Under CKKS it holds only ciphertexts: the audit records "no plaintext update available".
  Under central DP it sees each update before clipping and noise: DP-FedAvg protects against other parties, not
  against the server itself, and the audit shows it.
- ``[audit.membership]``: LiRA (offline, shadow models trained with fedsec's own training loop on held-out data) or
  Yeom's threshold over every threshold, on the final global model or on one client's last local model; AUC, TPR
  at 0.1% / 1% FPR, and the epsilon lower bound the attack implies next to the accountant's epsilon (a bound above
  the accountant's is logged as an error: it would be a bug in fedsec's DP).
- ``[audit.model_inversion]``: MI-Face class representatives from the final model's outputs alone.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message

from fedsec.arrays import load_record, record_to_tensors
from fedsec.audits import evasion as ev
from fedsec.audits.image_metrics import InputSpace as PixelSpace
from fedsec.config import Experiment
from fedsec.data.federated import FederatedData
from fedsec.models import build_model
from fedsec.plan import RunPlan
from fedsec.protocol import CKKS_RECORD, partition_of_reply
from fedsec.training import train_local

logger = logging.getLogger(__name__)


class ServerAudits:
    """Runs the configured audits during and after a run; collects their rows and summary blocks."""

    def __init__(self, plan: RunPlan, data: FederatedData, *, model: torch.nn.Module, x_test: torch.Tensor,
                 y_test: torch.Tensor, plots: Path) -> None:
        self.plan, self.data, self.model = plan, data, model
        self.e: Experiment = plan.experiment
        self.x, self.y = x_test, y_test
        self.plots = plots
        self.summary: dict[str, Any] = {}
        norm = plan.dataset.normalisation
        self.space = ev.InputSpace.from_normalisation(*norm) if norm else ev.InputSpace.unit()
        self.pixel_space = PixelSpace(*norm) if norm else PixelSpace()
        self.client_models: dict[int, ArrayRecord] = {}  # membership target = client: its last local model

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the audits' results so far and the membership target's local model."""
        return {"summary": self.summary, "client_models": {
            pid: record_to_tensors(record) for pid, record in self.client_models.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        from flwr.app import Array

        self.summary = dict(state["summary"])
        self.client_models = {int(pid): ArrayRecord({k: Array(np.ascontiguousarray(v.numpy())) for k, v in rec.items()})
                              for pid, rec in state["client_models"].items()}

    # ------------------------------------------------------------------ evasion
    def _evasion(self, arrays: ArrayRecord, *, final: bool) -> dict[str, float]:
        config = self.e.audit.evasion
        load_record(self.model, arrays)
        audit = ev.EvasionAudit(
            self.model, space=self.space, attacks=tuple(config.attacks if final else
                                                        [a for a in config.attacks if a != "cw"] or ["fgsm"]),
            epsilon=config.epsilon, steps=config.steps, examples=config.examples, seed=self.e.seed,
            cw_confidence=config.cw_confidence, cw_max_iter=config.cw_max_iter,
            cw_binary_search_steps=config.cw_binary_search_steps, cw_learning_rate=config.cw_learning_rate,
            cw_initial_const=config.cw_initial_const)
        result = audit.evaluate(self.x, self.y)
        if final:
            self.summary["evasion"] = {
                name: {"correct": rec.correct, "total": rec.total, "robust_accuracy": rec.robust_accuracy,
                       "counts": f"{rec.correct} / {rec.total}", "epsilon": rec.epsilon,
                       **({"success_rate": rec.success_rate, "median_l2": rec.median_l2}
                          if rec.success_rate is not None else {})}
                for name, rec in result.records.items()}
            self.summary["evasion_clean_subset"] = {"correct": result.clean_correct, "total": result.total,
                                                    "accuracy": result.clean_correct / result.total}
            self._evasion_grid()
        return result.as_row()

    def _evasion_grid(self) -> None:
        from fedsec.audits.evasion_plots import plot_adversarial_grid

        config = self.e.audit.evasion
        x, y = self.x[:8], self.y[:8]
        adv = ev.pgd(self.model, x, y, epsilon=config.epsilon, steps=config.steps, space=self.space,
                     generator=torch.Generator(device=x.device).manual_seed(self.e.seed))
        with torch.no_grad():
            self.model.eval()
            clean_pred = self.model(x).argmax(1).tolist()
            adv_pred = self.model(adv).argmax(1).tolist()
        try:
            plot_adversarial_grid(x.cpu(), adv.cpu(), clean_pred, adv_pred, self.plots / "evasion_examples.png",
                                  space=self.space)
        except (ValueError, RuntimeError) as err:  # a plot must never fail a run
            logger.warning("evasion grid not drawn: %s", err)

    def after_round(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        """Audits of the new global model after ``server_round``: evasion every k rounds and after the last one."""
        config = self.e.audit.evasion
        if config is None:
            return {}
        if server_round == self.e.rounds:
            return self._evasion(arrays, final=True)
        if config.every == 0 or server_round % config.every:
            return {}
        return self._evasion(arrays, final=False)

    # ------------------------------------------------------------------ inversion (on received updates)
    def on_replies(self, server_round: int, global_arrays: ArrayRecord, replies: list[Message]) -> None:
        """Gradient inversion of the listed clients' updates of this round (what the server really received)."""
        target = self.e.audit.membership
        if target is not None and target.target == "client":
            for reply in replies:
                if partition_of_reply(reply) == target.client and not reply.has_error():
                    records = list(reply.content.array_records.values())
                    if records:
                        self.client_models[target.client] = records[0]
        config = self.e.audit.inversion
        if config is None or server_round not in config.rounds:
            return
        from fedsec.audits.inversion import GradientInversion

        for pid in config.clients:
            reply = next((r for r in replies if partition_of_reply(r) == pid), None)
            record: dict[str, Any] = {"round": server_round, "client": pid, "method": config.method}
            if reply is None or reply.has_error() or not reply.content.array_records:
                held = ("only CKKS ciphertexts (encrypted aggregation hides updates)"
                        if reply is not None and not reply.has_error() and CKKS_RECORD in reply.content.config_records
                        else "no reply from this client")
                record.update(status="unavailable", reason=f"no plaintext update available: the server holds {held}")
                self.summary.setdefault("inversion", []).append(record)
                logger.info("inversion audit round %d client %d: %s", server_round, pid, record["reason"])
                continue
            arrays = next(iter(reply.content.array_records.values()))
            update = {k: torch.from_numpy(np.array(arrays[k].numpy(), copy=True))
                      - torch.from_numpy(np.array(global_arrays[k].numpy(), copy=True)) for k in arrays}
            idx = self.data.partitions[pid]
            n = idx.size
            if n > config.max_examples:
                record.update(status="skipped", reason=f"client {pid} holds {n} examples > audit.inversion."
                              f"max_examples={config.max_examples}")
                self.summary.setdefault("inversion", []).append(record)
                logger.warning("inversion audit: %s", record["reason"])
                continue
            train = self.e.train
            attack = GradientInversion(
                lambda: build_model(self.e.model.name, self.data.input_shape, self.data.num_classes),
                method=config.method, iterations=config.iterations, restarts=config.restarts,
                tv_weight=config.tv_weight, seed=self.e.seed, input_space=self.pixel_space)
            global_params = {k: torch.from_numpy(np.array(global_arrays[k].numpy(), copy=True)) for k in global_arrays}
            result = attack.reconstruct(
                global_params, update, num_examples=n, input_shape=self.data.input_shape,
                local_steps=train.local_epochs * math.ceil(n / train.batch_size), lr=train.lr,
                batch_size=min(train.batch_size, n), momentum=train.momentum)
            if not result.available:  # the kernel's own check of what it was given
                record.update(status="unavailable", reason=result.reason)
            else:
                originals = torch.from_numpy(np.array(self.data.x_train[idx]))
                labels = torch.from_numpy(np.array(self.data.y_train[idx], dtype=np.int64))
                score = result.score(originals, labels)
                record.update(status="done", examples=n, psnr=score.mean_psnr, ssim=score.mean_ssim,
                              label_accuracy=score.label_accuracy, seconds=result.seconds,
                              psnr_per_image=[float(v) for v in score.psnr])
                self._inversion_grid(originals, result, score, server_round, pid)
            self.summary.setdefault("inversion", []).append(record)
            logger.info("inversion audit round %d client %d: %s", server_round, pid,
                        {k: v for k, v in record.items() if k != "psnr_per_image"})

    def _inversion_grid(self, originals: torch.Tensor, result: Any, score: Any, server_round: int, pid: int) -> None:
        from fedsec.audits.inversion_plots import plot_reconstructions

        try:
            order = score.assignment
            plot_reconstructions(originals, result.reconstructions[order], self.plots /
                                 f"inversion_round{server_round}_client{pid}.png", psnr=score.psnr,
                                 input_space=self.pixel_space)
        except (ValueError, RuntimeError, IndexError) as err:
            logger.warning("inversion grid not drawn: %s", err)

    # ------------------------------------------------------------------ at the end
    def at_end(self, arrays: ArrayRecord, *, privacy_summary: dict[str, Any]) -> dict[str, float]:
        """Final audits; returns the columns they add to the last round's row."""
        row: dict[str, float] = {}
        if self.e.audit.evasion is not None and "evasion" not in self.summary:  # the run stopped early
            row.update(self._evasion(arrays, final=True))
        if self.e.audit.membership is not None:
            self._membership(arrays, privacy_summary)
        if self.e.audit.model_inversion is not None and self.e.audit.model_inversion.enabled:
            self._model_inversion(arrays)
        return row

    def _membership(self, arrays: ArrayRecord, privacy_summary: dict[str, Any]) -> None:
        from fedsec.audits.empirical_privacy import best_epsilon_lower_bound, check_against_accountant
        from fedsec.audits.inversion_plots import plot_roc
        from fedsec.audits.lira import LiRA, loss_threshold_attack

        config, e, data = self.e.audit.membership, self.e, self.data
        target_arrays = arrays
        if config.target == "client":
            target_arrays = self.client_models.get(config.client)
            if target_arrays is None:
                self.summary["membership"] = {"status": "unavailable", "reason": f"no plaintext model of client "
                                              f"{config.client} was received (encrypted or never trained)"}
                return
            members_pool = data.partitions[config.client]
        else:
            members_pool = np.concatenate(data.partitions)
        rng = np.random.default_rng([e.seed, 0x11FA])
        n_test = data.y_test.size
        k = min(config.examples, members_pool.size, n_test // 2)
        test_order = rng.permutation(n_test)
        members = np.sort(rng.choice(members_pool, size=k, replace=False))
        non_members, population = test_order[:k], test_order[k:]
        device = self.x.device
        x = torch.cat([torch.from_numpy(np.array(data.x_train[members])).to(device), self.x[non_members]])
        y = torch.cat([torch.from_numpy(np.array(data.y_train[members], dtype=np.int64)).to(device),
                       self.y[non_members]])
        is_member = torch.cat([torch.ones(k, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)])
        target = build_model(e.model.name, data.input_shape, data.num_classes).to(device)
        load_record(target, target_arrays)
        target.eval()
        if config.method == "lira":
            train = e.train

            def train_fn(xs: torch.Tensor, ys: torch.Tensor, seed: int) -> torch.nn.Module:
                model = build_model(e.model.name, data.input_shape, data.num_classes, seed=seed).to(device)
                train_local(model, xs, ys, epochs=config.shadow_epochs, batch_size=train.batch_size, lr=train.lr,
                            momentum=train.momentum, generator=torch.Generator().manual_seed(seed))
                return model.eval()

            result = LiRA(train_fn, num_shadows=config.shadows, seed=e.seed).infer(
                target, x, y, is_member=is_member, x_population=self.x[population], y_population=self.y[population])
        else:
            result = loss_threshold_attack(target, x, y, is_member=is_member)
        delta = e.privacy.delta
        bound = best_epsilon_lower_bound(result.fpr, result.tpr, num_members=result.num_members,
                                         num_nonmembers=result.num_nonmembers, delta=delta)
        block = {"status": "done", "target": config.target, **result.as_dict(),
                 "empirical_epsilon_lower_bound": bound.epsilon, "empirical_epsilon_point": bound.epsilon_point,
                 "bound_delta": delta, "bound_confidence": bound.confidence}
        spent = privacy_summary.get("epsilon")
        if spent is not None:
            block["accountant_epsilon"] = spent
            alarm = check_against_accountant(bound.epsilon, spent)
            if alarm:
                logger.error("%s", alarm)
                block["alarm"] = alarm
        self.summary["membership"] = block
        try:
            plot_roc(result, self.plots / "membership_roc.png", title=f"{config.method} on the {config.target} model")
        except (ValueError, RuntimeError) as err:
            logger.warning("ROC not drawn: %s", err)

    def _model_inversion(self, arrays: ArrayRecord) -> None:
        from fedsec.audits.inversion_plots import plot_class_representatives
        from fedsec.audits.model_inversion import ModelInversion

        load_record(self.model, arrays)
        config = self.e.audit.model_inversion
        result = ModelInversion(self.model, input_shape=self.data.input_shape, num_classes=self.data.num_classes,
                                input_space=self.pixel_space, max_iter=config.max_iter).infer(self.x, self.y)
        self.summary["model_inversion"] = {**result.summary(), "top1_ssim": result.top1("ssim"),
                                           "seconds": result.seconds}
        try:
            plot_class_representatives(result.representatives, self.plots / "model_inversion.png",
                                       classes=result.classes.tolist())
        except (ValueError, RuntimeError) as err:
            logger.warning("class representatives not drawn: %s", err)
