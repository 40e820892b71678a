"""What a run says about itself: the final model's health (at chance, one class) and the attack metrics measured on
it, the membership bound compared only with what covered the attacked model, the console's final table read from
the declarations, and the run name after --set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedsec.hooks.health import HealthCheck, binomial_p_value, chance_threshold, is_meaningful, model_health
from fedsec.plan import plan_from_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BALANCED = torch.arange(1000) % 10  # 100 test labels of each of 10 classes


def digits(**sections) -> dict:
    raw = {"name": "digits-health", "rounds": 2, "data": {"dataset": "digits", "partition": "iid", "num_clients": 4},
           "model": {"name": "logreg"}, "train": {"clients_per_round": 4}}
    raw.update(sections)
    return raw


def _predictions(labels: torch.Tensor, correct: int, *, wrong_class_shift: int = 1) -> torch.Tensor:
    """Predictions that get exactly the first ``correct`` labels right and the others wrong."""
    pred = (labels + wrong_class_shift) % 10
    pred[:correct] = labels[:correct]
    return pred


def test_chance_rules_golden():
    # threshold = chance + chance (1 - chance) / 2: 0.1 + 0.1 * 0.9 / 2 = 0.145; two classes: 0.5 + 0.125
    assert chance_threshold(0.1) == pytest.approx(0.145) and chance_threshold(0.5) == pytest.approx(0.625)
    # P(X >= 4) for X ~ Bin(20, 0.1) = 1 - sum_{k<4} C(20,k) 0.1^k 0.9^(20-k) = 1 - 0.8670 = 0.1330
    assert binomial_p_value(4, 20, 0.1) == pytest.approx(0.13295, abs=1e-4)
    assert binomial_p_value(0, 20, 0.1) == 1.0


@pytest.mark.parametrize("examples", [1, 20, 360, 10_000])
@pytest.mark.parametrize("chance", [0.1, 0.101, 0.5, 0.999])
def test_binomial_tail_agrees_with_scipy(examples: int, chance: float) -> None:
    from scipy.stats import binom

    for correct in sorted({1, examples // 10, int(chance * examples) + 1, examples // 2, examples}):
        ours, theirs = binomial_p_value(correct, examples, chance), float(binom.sf(correct - 1, examples, chance))
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-300)
    assert binomial_p_value(examples + 1, examples, chance) == 0.0
    assert binomial_p_value(1, examples, 1.0) == 1.0 and binomial_p_value(1, examples, 0.0) == 0.0


def test_healthy_model_is_ok():
    health = model_health(_predictions(BALANCED, 800), BALANCED, num_classes=10)
    assert health.status == "ok" and health.reason == ""
    assert health.accuracy == 0.8 and health.chance == 0.1 and health.examples == 1000
    assert health.majority_share == pytest.approx(0.1)  # every class predicted 100 times
    assert is_meaningful({"health": health.as_dict()}) and is_meaningful({})  # no block: nothing to say


def test_accuracy_near_chance_is_at_chance():
    # 104 of 1000 right (the 0.104) with predictions spread over all classes: at chance, not one class
    health = model_health(_predictions(BALANCED, 104), BALANCED, num_classes=10)
    assert health.status == "at_chance" and health.accuracy == pytest.approx(0.104)
    assert "0.1040" in health.reason and "chance 0.1000" in health.reason and "below 0.1450" in health.reason
    assert not is_meaningful({"health": health.as_dict()})


def test_small_test_set_needs_significance_not_only_the_margin():
    # 4 of 20 right = 0.2 > 0.145, but chance alone does as well with p = 0.133: not above chance
    labels = torch.arange(20) % 10
    health = model_health(_predictions(labels, 4), labels, num_classes=10)
    assert health.status == "at_chance" and "binomial p = 0.13" in health.reason
    assert model_health(_predictions(labels, 12), labels, num_classes=10).status == "ok"  # 0.6: p ~ 1e-9


def test_one_class_collapse_is_named_even_when_accuracy_passes():
    # the backdoored model: everything classified as the target 0 (accuracy 0.10, "attack success 1.0")
    collapsed = model_health(torch.zeros(1000, dtype=torch.long), BALANCED, num_classes=10)
    assert collapsed.status == "one_class" and collapsed.majority_class == 0 and collapsed.majority_share == 1.0
    assert "class 0 for 100.0%" in collapsed.reason
    # 91% of predictions one class: still collapsed, though some inputs of other classes are right
    pred = torch.zeros(1000, dtype=torch.long)
    pred[:90] = BALANCED[:90]  # 90 inputs answered correctly (9 of them class 0 anyway)
    assert model_health(pred, BALANCED, num_classes=10).status == "one_class"


def test_a_skewed_test_set_sets_the_chance_level():
    # 95% of the test labels are class 0: answering 0 everywhere is the chance level itself, not a collapse
    labels = torch.zeros(1000, dtype=torch.long)
    labels[:50] = 1
    health = model_health(torch.zeros(1000, dtype=torch.long), labels, num_classes=2)
    assert health.chance == 0.95 and health.status == "at_chance"


def _context(tmp_path: Path, raw: dict):
    from fedsec.data.federated import build_federated_data
    from fedsec.hooks import ServerContext

    plan = plan_from_dict(raw)
    data = build_federated_data(plan.experiment.data, plan.experiment.seed)
    return plan, ServerContext.build(plan.facts, data, tmp_path, torch.device("cpu"))


def test_hook_marks_what_was_measured_on_a_collapsed_final_model(tmp_path):
    from fedsec.arrays import model_to_record

    plan, ctx = _context(tmp_path, digits(attack={"kind": "backdoor", "fraction": 0.25, "target": 0}))
    assert [h.cls for h in plan.hooks][-1] is HealthCheck  # built for every run, last
    model = ctx.fresh_model(seed=0)
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.arange(10.0) == 0)  # class 0 for every input
    summary = {"mia_advantage": 0.01, "membership": {"status": "done", "target": "global", "auc": 0.55},
               "model_inversion": {"top1_ssim": 0.2}, "evasion": {"pgd": {"correct": 10, "total": 100}}}
    HealthCheck(HealthCheck.Params(), ctx).at_end(model_to_record(model), summary)
    health = summary["health"]
    assert health["status"] == "one_class" and health["majority_share"] == 1.0 and health["majority_class"] == 0
    assert health["examples"] == ctx.y_test.numel() and health["accuracy"] == pytest.approx(
        float((ctx.y_test == 0).double().mean()))
    assert health["not_meaningful"] == ["attack_success", "mia_advantage", "membership", "evasion", "model_inversion"]
    assert summary["membership"]["meaningful"] is False and "class 0" in summary["membership"]["note"]
    assert summary["model_inversion"]["meaningful"] is False
    assert summary["evasion"] == {"pgd": {"correct": 10, "total": 100}}  # per-attack counts left as the sheet reads

    # a trained model: ok, nothing marked
    healthy = ctx.fresh_model(seed=0)
    from fedsec.training import train_local

    x = torch.from_numpy(ctx.data.x_train[:1000].copy())
    y = torch.from_numpy(ctx.data.y_train[:1000].astype("int64"))
    train_local(healthy, x, y, epochs=3, batch_size=32, lr=0.1, momentum=0.9,
                generator=torch.Generator().manual_seed(0))
    summary = {"membership": {"status": "done", "target": "global", "auc": 0.55}}
    HealthCheck(HealthCheck.Params(), ctx).at_end(model_to_record(healthy), summary)
    assert summary["health"]["status"] == "ok" and "not_meaningful" not in summary["health"]
    assert "meaningful" not in summary["membership"]


def test_attack_success_carries_the_health_note(tmp_path):
    from fedsec.runtime.runner import add_seed_metrics, console_metrics, health_line

    plan = plan_from_dict(digits(attack={"kind": "backdoor", "fraction": 0.25, "target": 0}))
    sick = {"name": plan.name, "rounds_completed": 2, "stopped_reason": "completed", "accuracy": 0.1,
            "attack_success_rate": 1.0,
            "health": {"status": "one_class", "reason": "the final model predicts class 0 for 100.0% of the 360 "
                       "test inputs", "not_meaningful": ["attack_success", "mia_advantage"]}}
    written = add_seed_metrics(plan, dict(sick), tmp_path)
    assert written["attack_success"] == 1.0 and written["attack_success_meaningful"] is False
    assert json.loads((tmp_path / "summary.json").read_text())["attack_success_meaningful"] is False
    rows = dict(console_metrics(written))
    # the success is the attack's own metric: its row says so, once
    assert rows["attack_success_rate (attack success, not meaningful)"] == 1.0 and rows["health"] == "one_class"
    assert not any(name.startswith("attack_success (") for name in rows)
    assert health_line(written).startswith("model health one_class: the final model predicts class 0")
    assert "(attack_success, mia_advantage)" in health_line(written)
    healthy = add_seed_metrics(plan, {**sick, "health": {"status": "ok"}}, tmp_path)
    assert healthy["attack_success_meaningful"] is True and health_line(healthy) == ""


def test_console_table_shows_what_the_config_measures():
    from fedsec.runtime.runner import console_metrics

    summary = {"rounds_completed": 3, "stopped_reason": "completed", "accuracy": 0.9, "loss": 0.3, "epsilon": 2.5,
               "robust_accuracy_pgd": 0.2, "source_recall": 0.4, "attack_success": 0.6,
               "attack_success_metric": "1 - source_recall", "attack_success_meaningful": True,
               "membership": {"status": "done", "auc": 0.61, "tpr_at_0.1%_fpr": 0.01, "tpr_at_1%_fpr": 0.05,
                              "empirical_epsilon_lower_bound": 0.3},
               "inversion": [{"status": "done", "psnr": 12.0, "ssim": 0.3, "label_accuracy": 1.0}],
               "mia_advantage": 0.02, "health": {"status": "ok"}, "wall_seconds": 10.0,
               "versions": {"torch": "2.13"}, "malicious_clients": [1]}
    rows = dict(console_metrics(summary))
    for name, value in [("accuracy", 0.9), ("epsilon", 2.5), ("robust_accuracy_pgd", 0.2), ("source_recall", 0.4),
                        ("attack_success (1 - source_recall)", 0.6), ("membership_auc", 0.61),
                        ("membership_tpr_at_0.1%_fpr", 0.01), ("membership_tpr_at_1%_fpr", 0.05),
                        ("inversion_psnr", 12.0), ("mia_advantage", 0.02), ("health", "ok"), ("wall_seconds", 10.0)]:
        assert rows[name] == value, name
    assert "versions" not in rows and "malicious_clients" not in rows  # not metrics
    names = [n for n, _ in console_metrics({"accuracy": 0.9, "loss": 0.3})]
    assert names == ["accuracy", "loss"]  # nothing the run did not measure


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """`fedsec run` with run_experiment replaced: records the plan it got and returns a canned summary."""
    import fedsec.runtime.runner as runner

    seen = {}

    def run_experiment(plan, out, **kwargs):
        seen["plan"] = plan
        summary = {"name": plan.name, "rounds_completed": 2, "stopped_reason": "completed", "accuracy": 0.1,
                   "loss": 2.3, "epsilon": 1.5, "attack_success": 1.0, "attack_success_metric": "attack_success_rate",
                   "attack_success_meaningful": False,
                   "health": {"status": "at_chance", "reason": "the final model's accuracy 0.1000 on 360 test inputs "
                              "is at chance 0.1028 (below 0.1489)", "not_meaningful": ["attack_success"]}}
        return runner.RunResult(run_dir=tmp_path / "run", summary=summary)

    monkeypatch.setattr(runner, "run_experiment", run_experiment)
    import fedsec.cli as cli

    monkeypatch.setattr(cli.console, "width", 200)  # table rows on one line each
    return seen


def test_cli_run_prints_declared_metrics_and_the_health_line(fake_run, tmp_path):
    from typer.testing import CliRunner

    from fedsec.cli import app

    config = tmp_path / "cfg.toml"
    config.write_text('name = "tiny"\nrounds = 2\n[data]\ndataset = "digits"\nnum_clients = 4\n'
                      '[train]\nclients_per_round = 4\n')
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    assert "epsilon" in result.output and "1.5000" in result.output
    assert "attack_success (attack_success_rate), not meaningful" in result.output
    assert "warning: model health at_chance: the final model's accuracy 0.1000" in " ".join(result.output.split())
    assert fake_run["plan"].name == "tiny"  # no --set: the config's name, unchanged


def test_cli_run_names_the_run_after_its_overrides(fake_run, tmp_path):
    from typer.testing import CliRunner

    from fedsec.cli import app, named_after_overrides

    config = tmp_path / "cfg.toml"
    config.write_text('name = "fmnist-labelflip-krum"\nrounds = 2\n[data]\ndataset = "digits"\nnum_clients = 6\n'
                      '[train]\nclients_per_round = 6\n[defense]\nstrategy = "krum"\nnum_malicious = 1\n')
    result = CliRunner().invoke(app, ["run", str(config), "--set", "defense.strategy=multikrum",
                                      "--set", "backend.num_cpus=1"])
    assert result.exit_code == 0, result.output
    plan = fake_run["plan"]
    assert plan.name == "fmnist-labelflip-krum+defense.strategy-multikrum"  # backend.* does not rename
    assert plan.experiment.defense.strategy == "multikrum"
    assert 'name = "fmnist-labelflip-krum+defense.strategy-multikrum"' in plan.to_toml()  # config.toml says so
    CliRunner().invoke(app, ["run", str(config), "--set", "defense.strategy=multikrum", "--set", "name=mine"])
    assert fake_run["plan"].name == "mine"  # an explicit name wins
    long = named_after_overrides("x" * 80, ["attack.fraction=0.3", "defense.strategy=trimmed_mean"])
    assert len(long) == 100 and long.startswith("x" * 80 + "+attack.fra+") and long[91] == "+"  # cut, then a hash
    assert named_after_overrides("a", ['data.root="/data/fm nist"']) == "a+data.root-_data_fm_nist"
    assert plan_from_dict({"name": long}).name == long  # still a valid name


@pytest.mark.parametrize(("mode", "target", "privacy", "compared", "alarm"), [
    # central DP noises the aggregate only: a client's raw update was never covered, so no comparison (no alarm)
    ("central", "client", {"epsilon": 1.0}, None, False),
    # the global model under central DP: covered by the run's epsilon; a bound above it is still a loud bug
    ("central", "global", {"epsilon": 1.0}, 1.0, True),
    # local DP covers the client's own training: compared with that client's epsilon, not the run's maximum
    ("local", "client", {"epsilon": 3.0, "client_epsilon": {"0": 6.0, "1": 2.0}}, 6.0, False),
    ("local", "client", {"epsilon": 9.0, "client_epsilon": {"0": 2.0, "1": 9.0}}, 2.0, True),
])
def test_membership_bound_is_compared_only_with_what_covered_the_model(tmp_path, monkeypatch, caplog, mode, target,
                                                                       privacy, compared, alarm):
    from types import SimpleNamespace

    import fedsec.audits.empirical_privacy as empirical
    from fedsec.arrays import model_to_record
    from fedsec.hooks.membership import MembershipAudit

    raw = digits(data={"dataset": "digits", "partition": "iid", "num_clients": 10}, train={"clients_per_round": 10},
                 privacy={"mode": mode, "epsilon": 8.0, "delta": 1e-3},
                 audit={"membership": {"target": target, "client": 0, "examples": 50}})
    plan, ctx = _context(tmp_path, raw)
    (hook,) = [h for h in plan.hooks if h.cls is MembershipAudit]
    audit = hook.build(ctx)
    model = model_to_record(ctx.fresh_model(seed=0))
    audit.client_model = model  # the client's last local model, as on_replies keeps it
    bound = SimpleNamespace(epsilon=5.0, epsilon_point=5.5, confidence=0.95)  # what a strong attack would imply
    monkeypatch.setattr(empirical, "best_epsilon_lower_bound", lambda *a, **k: bound)
    summary = {"privacy": {"mode": mode, **privacy}}
    with caplog.at_level("ERROR"):
        audit.at_end(model, summary)
    block = summary["membership"]
    assert block["status"] == "done" and block["empirical_epsilon_lower_bound"] == 5.0  # always reported
    assert block.get("accountant_epsilon") == compared
    assert ("alarm" in block) is alarm and ("PRIVACY VIOLATION" in caplog.text) is alarm
    if compared is None:
        assert block["bound_compared_with"].startswith("none: central DP covers the aggregate")
    elif target == "client":
        assert block["bound_compared_with"] == "client 0's own epsilon (local DP)"


@pytest.mark.usefixtures("shared_ray")
@pytest.mark.e2e
def test_e2e_collapsed_backdoor_run_says_so_everywhere(tmp_path, monkeypatch):
    """Every client poisons all its data towards class 0 (the issue's collapsed FedAvg): the model answers one class,
    its attack success of ~1.0 is marked not meaningful in summary.json, on the console and in the trackers."""
    from typer.testing import CliRunner

    from fedsec.cli import app

    pytest.importorskip("mlflow.tracking")  # the fedsec[mlflow] extra (scripts/dev.sh installs it)
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "collapse.toml"
    config.write_text('name = "collapse"\nrounds = 2\n[data]\ndataset = "digits"\npartition = "iid"\n'
                      'num_clients = 4\n[model]\nname = "logreg"\n[train]\nclients_per_round = 4\nlocal_epochs = 2\n'
                      'batch_size = 16\nlr = 0.1\n[attack]\nkind = "backdoor"\nclient_ids = [0, 1, 2, 3]\n'
                      'target = 0\npoison_ratio = 1.0\n[tracking]\nmlflow = "file:./mlruns"\ntensorboard = "tb"\n')
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["health"]["status"] == "one_class" and summary["health"]["majority_class"] == 0
    assert summary["attack_success"] > 0.9 and summary["attack_success_meaningful"] is False
    assert summary["health"]["not_meaningful"] == ["attack_success", "mia_advantage"]
    text = " ".join(result.output.split())
    assert "warning: model health one_class: the final model predicts class 0" in text
    assert "not meaningful (attack_success, mia_advantage)" in text
    mlflow = pytest.importorskip("mlflow.tracking")
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("fedsec").experiment_id])
    assert run.data.tags["fedsec.health"] == "one_class" and run.data.params["attack.kind"] == "backdoor"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [0, 1, 2]
    assert (tmp_path / "tb" / "run").is_dir()


def test_privacy_study_table_shows_the_attack_it_measures(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import fedsec.cli as cli
    import fedsec.studies.privacy_study as study
    from fedsec.cli import app

    def run_study(plan, budgets, out, *, on_cell=None, seeds=None, stop=None):
        for eps in budgets:
            on_cell(eps, {"epsilon_budget": eps, "seed": 0, "epsilon": min(eps, 99.0), "accuracy": 0.8,
                          "source_recall": 0.25, "flip_rate": 0.5, "attack_success": 0.75, "mia_advantage": 0.01,
                          "mia_bound": 0.5})
        return []

    monkeypatch.setattr(study, "run_study", run_study)
    monkeypatch.setattr(cli.console, "width", 250)  # one line per row: the header is checked as a whole
    config = tmp_path / "flip.toml"
    config.write_text('name = "flip"\nrounds = 2\n[data]\ndataset = "digits"\nnum_clients = 4\n[model]\n'
                      'name = "logreg"\n[train]\nclients_per_round = 4\n[attack]\nkind = "label_flip"\n'
                      'client_ids = [0]\nsource = 6\ntarget = 0\n[privacy]\nmode = "local"\ndelta = 1e-3\n')
    result = CliRunner().invoke(app, ["privacy-study", str(config), "--epsilons", "1,inf", "--out",
                                      str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "epsilon budget" in line)
    for column in ("epsilon spent", "accuracy", "source_recall", "flip_rate", "attack success (1 - source_recall)",
                   "membership advantage", "bound", "seed"):
        assert column in header, column
    assert "0.7500" in result.output and "0.2500" in result.output
