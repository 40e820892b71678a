"""New kinds added through the registries only (one file each and one registration line), run end to end.

Nothing outside the test changes: the attack declares its own ``[attack]`` key and success metric, the strategy its
own ``[defense]`` key, the audit hook its ``[audit.*]`` key and columns, the dataset its ``[data]`` key; the run
plan validates them from the registries, the clients (Ray actors) receive the built attack inside their spec, and
sweeps, reports and worst-case tables read their declarations. ``tests/extension/`` is such a plugin
(``FEDSEC_PLUGINS``, :mod:`fedsec.plugins`), used by the processes a sweep or a resumed run starts.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from pydantic import Field

from fedsec.clients.attacks import ATTACKS, Attack, AttackContext
from fedsec.config import ConfigError
from fedsec.plan import load_plan, plan_from_dict
from fedsec.registry import Params
from fedsec.strategies import STRATEGIES, RobustStrategy


class BlowUpParams(Params):
    factor: float = Field(50.0, gt=1, description="how much larger the sent update is.")


class BlowUp(Attack):
    """Sends ``factor`` x its honest update (a test attack)."""

    kind = "blow_up"
    description = "test attack: factor x the update"
    Params = BlowUpParams

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return update * self.params.factor


class SmallestNormsParams(Params):
    keep: int = Field(2, ge=1, description="updates kept: those of smallest L2 norm.")


class SmallestNorms(RobustStrategy):
    """Mean of the ``keep`` updates of smallest norm (a test rule)."""

    Params = SmallestNormsParams
    description = "test rule: mean of the smallest-norm updates"

    def __init__(self, *, keep: int = 2, **kwargs) -> None:
        self.keep = keep
        super().__init__(**kwargs)

    def aggregate_updates(self, updates, num_examples):
        chosen = torch.linalg.vector_norm(updates, dim=1).argsort()[: self.keep]
        weights = torch.zeros(updates.shape[0], dtype=updates.dtype, device=updates.device)
        weights[chosen] = 1.0 / len(chosen)
        return weights @ updates, weights


@pytest.fixture
def registered():
    ATTACKS.register("blow_up", BlowUp)  # the one registration line of the attack
    STRATEGIES.register("smallest_norms", SmallestNorms)  # ... and of the strategy
    yield
    ATTACKS.unregister("blow_up")
    STRATEGIES.unregister("smallest_norms")


def raw(**attack) -> dict:
    return {"name": "ext", "rounds": 2, "data": {"dataset": "digits", "partition": "iid", "num_clients": 4},
            "model": {"name": "logreg"}, "train": {"clients_per_round": 4, "batch_size": 16, "lr": 0.1},
            "attack": {"kind": "blow_up", "client_ids": [2], **attack},
            "defense": {"strategy": "smallest_norms", "keep": 3}}


@pytest.mark.usefixtures("registered")
def test_new_kinds_validate_their_own_keys():
    plan = plan_from_dict(raw(factor=20.0))
    assert isinstance(plan.attack, BlowUp) and plan.attack.params.factor == 20.0
    defense = plan.resolved["defense"]  # the kind's own keys, next to the keys every rule shares
    assert {k: v for k, v in defense.items() if k not in ("weighting", "weight_cap", "sanitize")} == {
        "strategy": "smallest_norms", "keep": 3}
    assert defense["weighting"] == "capped" and defense["sanitize"]["method"] == "none"
    with pytest.raises(ConfigError, match=r"attack.factor=0.5: Input should be greater than 1"):
        plan_from_dict(raw(factor=0.5))
    with pytest.raises(ConfigError, match=r"defense.kep: unknown key for defense.strategy='smallest_norms'"):
        plan_from_dict({**raw(), "defense": {"strategy": "smallest_norms", "kep": 3}})


def test_unregistered_kinds_are_refused():
    with pytest.raises(ConfigError, match="attack.kind='blow_up': unknown attack"):
        plan_from_dict(raw())


@pytest.mark.e2e
@pytest.mark.usefixtures("registered")
def test_new_attack_and_strategy_run_end_to_end(tmp_path: Path):
    from fedsec.runtime.runner import run_experiment

    result = run_experiment(plan_from_dict(raw()), tmp_path / "run")
    assert result.summary["rounds_completed"] == 2 and result.summary["strategy"] == "smallest_norms"
    clients = pd.read_csv(result.run_dir / "clients.csv")
    attacker = clients[clients["client"] == 2]
    honest = clients[clients["client"] != 2]
    # the blown-up update is the largest in every round, so the rule drops it; the three honest ones share it
    assert len(attacker) == 2 and (attacker["accepted"] == 0).all() and (attacker["malicious"] == 1).all()
    assert (honest["accepted"].round(6) == round(1 / 3, 6)).all()
    assert (attacker["update_norm"].to_numpy() > 10 * honest.groupby("round")["update_norm"].max().to_numpy()).all()
    assert pd.read_csv(result.run_dir / "rounds.csv")["accuracy"].iloc[-1] > 0.8


# ------------------------------------------------------------------------------------------ a plugin of four kinds
EXTENSION_NAMES = {"attack": "zero_out", "strategy": "momentum_mean", "hook": "weight_norm", "dataset": "noisy_digits"}
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def plugin(monkeypatch):
    """tests/extension registered here and in every process fedsec starts (FEDSEC_PLUGINS); unregistered after."""
    import importlib
    import sys

    from fedsec.data import DATASETS
    from fedsec.hooks import HOOKS

    monkeypatch.setenv("FEDSEC_PLUGINS", "extension")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(TESTS))
    from fedsec.plugins import load_plugins

    load_plugins()
    yield importlib.import_module("extension")
    for registry, name in ((ATTACKS, "zero_out"), (STRATEGIES, "momentum_mean"), (HOOKS, "weight_norm"),
                           (DATASETS, "noisy_digits")):
        registry.unregister(name)
    for module in [m for m in sys.modules if m == "extension" or m.startswith("extension.")]:
        del sys.modules[module]
    import fedsec.plugins

    fedsec.plugins._loaded.discard("extension")


PLUGIN_CONFIG = """name = "plugin"
seed = 1
rounds = 3

[data]
dataset = "noisy_digits"
partition = "iid"
num_clients = 4
noise_std = 0.05

[model]
name = "logreg"

[train]
clients_per_round = 4
local_epochs = 2
batch_size = 16
lr = 0.1

[attack]
kind = "zero_out"
client_ids = [1]
relabel = 8

[defense]
strategy = "momentum_mean"
beta = 0.5

[audit.weight_norm]
scale = 2.0
"""


@pytest.mark.usefixtures("plugin")
def test_plugin_kinds_validate_their_own_keys(tmp_path):
    cfg = tmp_path / "plugin.toml"
    cfg.write_text(PLUGIN_CONFIG)
    plan = load_plan(cfg)
    assert plan.resolved["data"]["noise_std"] == 0.05 and plan.resolved["attack"]["relabel"] == 8
    assert plan.resolved["audit"] == {"weight_norm": {"scale": 2.0}}
    assert [h.cls.name for h in plan.hooks][-1:] == ["weight_norm"] and plan.hooks[-1].params.scale == 2.0
    for override, message in (("data.noise_std=-1", "data.noise_std=-1: Input should be greater than or equal to 0"),
                              ("audit.weight_norm.scale=0", "audit.weight_norm.scale=0: Input should be greater"),
                              ("audit.weight_norm.sclae=2", "audit.weight_norm.sclae: unknown key for "
                                                            "[audit.weight_norm]"),
                              ("audit.weight_nrom.scale=2", "audit.weight_nrom: unknown audit"),
                              ("defense.beta=1", "defense.beta=1: Input should be less than 1")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_plan(cfg, [override])
    from fedsec.plan.results import declared_metrics, final_metrics, summary_metrics

    assert "zero_error_rate" in final_metrics() and "global_norm" in {m.name for m in declared_metrics()}
    assert "weight_norm_scaled" in {m.name for m in summary_metrics()}


@pytest.mark.slow  # sweep, report and worst case of plugin kinds (~2 min): bash scripts/dev.sh slow
@pytest.mark.e2e
@pytest.mark.usefixtures("plugin")
def test_plugin_kinds_reach_sweep_report_and_worst_case(tmp_path):
    """A sweep over the plugin's strategy and FedAvg, each cell its own `fedsec run` process: the attack's success
    metric and the audit's number land in rounds.csv, summary.json, sweep.csv, the reports and the worst-case table
    without any list of names being edited."""
    from fedsec.report.build import write_report
    from fedsec.studies.sweep import SweepRunner, load_sweep
    from fedsec.studies.worst_case import write_worst_case

    (tmp_path / "base.toml").write_text(PLUGIN_CONFIG)
    (tmp_path / "grid.toml").write_text('base = "base.toml"\n[grid]\n"defense.strategy" = ["momentum_mean", '
                                        '"fedavg"]\n"attack.kind" = ["zero_out"]\n')
    out = tmp_path / "sweep"
    results = SweepRunner(load_sweep(tmp_path / "grid.toml"), out).run()
    assert [r.status for r in results] == ["done", "done"], [r.error for r in results]
    cell = out / "cells" / "strategy-momentum_mean__kind-zero_out"
    rounds = pd.read_csv(cell / "rounds.csv")
    assert {"zero_error_rate", "global_norm"} <= set(rounds.columns) and rounds["global_norm"].iloc[1:].gt(0).all()
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["attack_success_metric"] == "zero_error_rate"
    assert summary["attack_success"] == summary["zero_error_rate"] == rounds["zero_error_rate"].iloc[-1]
    assert summary["weight_norm"]["status"] == "done" and summary["weight_norm"]["scaled"] > 0
    sweep = pd.read_csv(out / "sweep.csv")
    assert {"zero_error_rate", "attack_success", "weight_norm_scaled", "weight_norm_status",
            "zero_error_rate_mean"} <= set(sweep.columns)
    assert sweep["weight_norm_scaled"].gt(0).all() and (sweep["attack_success_metric"] == "zero_error_rate").all()
    worst = pd.read_csv(write_worst_case(out))
    assert (worst["worst_success_metric"] == "zero_error_rate").all()
    assert worst["worst_success"].tolist() == sweep["zero_error_rate"].tolist()
    report = write_report(out).read_text()
    assert "zero_error_rate" in report and "test 0s the global model gets wrong" in report
    run_report = write_report(cell).read_text()
    assert "weight_norm_scaled" in run_report and "global_norm" in run_report


@pytest.mark.slow  # a plugin strategy killed and resumed (~2.5 min): bash scripts/dev.sh slow
@pytest.mark.e2e
@pytest.mark.usefixtures("plugin")
def test_plugin_strategy_state_survives_kill_9_and_resume(tmp_path):
    """The momentum rule's velocity is in the checkpoint: a run SIGKILLed after round 1 and resumed with
    `fedsec run --resume` writes the rows of the uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    cfg = tmp_path / "plugin.toml"
    cfg.write_text(PLUGIN_CONFIG)
    fedsec = [sys.executable, "-m", "fedsec.cli", "run"]
    full = subprocess.run([*fedsec, str(cfg), "--out", str(tmp_path / "full")], capture_output=True, text=True,
                          timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*fedsec, str(cfg), "--out", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "latest.pt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended or hung before round 1"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run([*fedsec, "--resume", str(killed)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("rounds.csv", "clients.csv"):
        a, b = (pd.read_csv(d / name).filter(regex=r"^(?!.*seconds$)").drop(columns=["node"], errors="ignore")
                for d in (tmp_path / "full", killed))
        pd.testing.assert_frame_equal(a, b, obj=name)
    assert json.loads((killed / "summary.json").read_text())["weight_norm"]["status"] == "done"
