"""[tracking]: a run's params, per-round metrics and summary exported to MLflow (a local file store) and to
TensorBoard scalars, read back with MLflow's client and TensorBoard's EventAccumulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsec.config import ConfigError
from fedsec.plan import plan_from_dict
from fedsec.results.exports import ExportError, RunExporter, flat_params, metric_key, require_packages
from fedsec.runtime.runner import console_metrics

ROWS = [{"round": 0, "accuracy": 0.1, "loss": 2.3, "seconds": 5.0},
        {"round": 1, "accuracy": 0.6, "loss": 1.1, "seconds": 1.0, "epsilon": 1.5},
        {"round": 2, "accuracy": 0.8, "loss": 0.6, "seconds": 1.0, "epsilon": 2.5, "note": "text is not a metric"}]
SUMMARY = {"name": "tiny", "rounds_completed": 2, "stopped_reason": "completed", "accuracy": 0.8, "loss": 0.6,
           "epsilon": 2.5, "attack_success": 0.3, "attack_success_metric": "attack_success_rate",
           "membership": {"status": "done", "auc": 0.61, "tpr_at_1%_fpr": 0.05},
           "health": {"status": "ok"}}
CONFIG = {"name": "tiny", "seed": 0, "data": {"dataset": "digits", "num_clients": 4},
          "audit": {"evasion": {"attacks": ["pgd"]}}}


def _export(run_dir: Path, tracking: dict, *, resume: bool = False, rows=ROWS) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(SUMMARY))
    (run_dir / "config.toml").write_text('name = "tiny"\n')
    exporter = RunExporter.from_config(tracking, run_dir, resume=resume)
    exporter.start(CONFIG)
    for row in rows:
        exporter.round(row)
    exporter.finish(SUMMARY, run_dir, console_metrics(SUMMARY))


def test_names_and_params_golden():
    assert metric_key("membership_tpr_at_1%_fpr") == "membership_tpr_at_1_fpr"  # MLflow refuses '%'
    assert metric_key("final/attack_success") == "final/attack_success"
    assert flat_params(CONFIG) == {"name": "tiny", "seed": "0", "data.dataset": "digits", "data.num_clients": "4",
                                   "audit.evasion.attacks": "['pgd']"}
    assert RunExporter.from_config({}, Path(".")) is None  # nothing configured: no exporter


def test_mlflow_file_store_reads_back(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "tiny-1"
    _export(run_dir, {"mlflow": "file:./mlruns"})
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())  # absolute: MLflow caches stores by URI
    (run,) = client.search_runs([client.get_experiment_by_name("fedsec").experiment_id])
    assert run.info.run_name == "tiny-1" and run.info.status == "FINISHED"
    assert run.data.params["data.dataset"] == "digits" and run.data.params["audit.evasion.attacks"] == "['pgd']"
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert [(m.step, m.value) for m in history] == [(0, 0.1), (1, 0.6), (2, 0.8)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epsilon")] == [1, 2]
    assert "note" not in run.data.metrics and "round" not in run.data.metrics
    final = {k: v for k, v in run.data.metrics.items() if k.startswith("final/")}
    assert final == {"final/rounds_completed": 2.0, "final/accuracy": 0.8, "final/loss": 0.6, "final/epsilon": 2.5,
                     "final/attack_success": 0.3, "final/membership_auc": 0.61,
                     "final/membership_tpr_at_1_fpr": 0.05}
    assert run.data.tags["fedsec.stopped_reason"] == "completed" and run.data.tags["fedsec.health"] == "ok"
    assert sorted(f.path for f in client.list_artifacts(run.info.run_id)) == ["config.toml", "summary.json"]
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow_run_id"] == run.info.run_id

    # a resumed run goes on in the same MLflow run
    _export(run_dir, {"mlflow": "file:./mlruns"}, resume=True, rows=[{"round": 3, "accuracy": 0.85}])
    (again,) = client.search_runs([run.info.experiment_id])
    assert again.info.run_id == run.info.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [0, 1, 2, 3]


def test_tensorboard_scalars_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "runs" / "tiny-1"
    _export(run_dir, {"tensorboard": str(tmp_path / "tb")})
    events = EventAccumulator(str(tmp_path / "tb" / "tiny-1"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"accuracy", "loss", "epsilon", "final/accuracy", "final/membership_auc"} <= set(scalars)
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("accuracy")] == [(0, 0.1), (1, 0.6), (2, 0.8)]
    assert events.Scalars("final/membership_auc")[0].value == pytest.approx(0.61)


def test_tracking_section_is_validated_and_only_written_when_given():
    assert "tracking" not in plan_from_dict({"data": {"dataset": "digits", "num_clients": 4},
                                             "train": {"clients_per_round": 4}}).resolved  # config.toml unchanged
    plan = plan_from_dict({"data": {"dataset": "digits", "num_clients": 4}, "train": {"clients_per_round": 4},
                           "tracking": {"mlflow": "file:./mlruns", "tensorboard": "tb"}})
    assert plan.resolved["tracking"] == {"mlflow": "file:./mlruns", "tensorboard": "tb"}
    with pytest.raises(ConfigError, match="tracking.mlfow"):
        plan_from_dict({"tracking": {"mlfow": "file:./mlruns"}})
    with pytest.raises(ConfigError, match="tracking.tensorboard"):
        plan_from_dict({"tracking": {"tensorboard": "a\nb"}})


def test_missing_package_is_a_clear_error(monkeypatch):
    import importlib.util

    from fedsec.config.sections import TrackingConfig

    real = importlib.util.find_spec
    present = real("json")  # any found spec: tensorboard counts as installed here, mlflow as missing

    def find_spec(name, *args):
        if name == "mlflow":
            return None
        return present if name == "tensorboard" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ExportError, match=r"tracking.mlflow='file:./mlruns': needs the mlflow package; pip install "
                                          r"'fedsec\[mlflow\]'"):
        require_packages(TrackingConfig(mlflow="file:./mlruns"))
    require_packages(TrackingConfig(tensorboard="tb"))  # only what is configured is required
