"""``[tracking]`` (MLflow / TensorBoard exports) says where a run's numbers are also sent, not what it computes: a
resume may add or change it, a sweep's cell fingerprint ignores it, a deployment reuses its finished run; any other
key still makes another run."""

from __future__ import annotations

import json
import tomllib

import pytest

from fedsec.config import experiment_from_dict
from fedsec.errors import FedsecInputError
from fedsec.results import RunDirectory
from fedsec.results.run_directory import RESUME_MAY_CHANGE, identity_changes

RAW = {"name": "tracked", "rounds": 2, "data": {"dataset": "digits", "partition": "iid", "num_clients": 4},
       "model": {"name": "logreg"}, "train": {"clients_per_round": 4}}
TRACKED = {**RAW, "tracking": {"mlflow": "file:./mlruns", "tensorboard": "tb"}}


def test_identity_ignores_tracking_and_the_backend_address_only():
    assert "tracking" in RESUME_MAY_CHANGE
    base = {"seed": 0, "backend": {"address": "", "num_cpus": 1.0}}
    assert identity_changes(base, {**base, "tracking": {"mlflow": "file:./mlruns"}}) == set()  # added
    assert identity_changes({**base, "tracking": {"mlflow": "a"}}, {**base, "tracking": {"mlflow": "b"}}) == set()
    assert identity_changes(base, {**base, "backend": {"address": "auto", "num_cpus": 1.0}}) == set()
    assert identity_changes(base, {**base, "backend": {"address": "", "num_cpus": 2.0}}) == {"backend.num_cpus"}
    assert identity_changes(base, {**base, "seed": 1, "tracking": {"mlflow": "a"}}) == {"seed"}
    assert identity_changes(base, {**base, "trackingx": 1}) == {"trackingx"}  # a section, not a name prefix


def test_a_resume_may_add_tracking_and_writes_it_to_config_toml(tmp_path):
    out = tmp_path / "run"
    first = RunDirectory(out, experiment_from_dict(RAW))
    first.add_round({"round": 0, "accuracy": 0.1, "loss": 2.3, "seconds": 0.1})
    first.close()  # interrupted after round 0
    assert "tracking" not in tomllib.loads((out / "config.toml").read_text())
    resumed = RunDirectory(out, experiment_from_dict(TRACKED), resume=True)
    assert [r["round"] for r in resumed.rounds] == [0]
    resumed.close()
    stored = tomllib.loads((out / "config.toml").read_text())
    assert stored["tracking"] == {"mlflow": "file:./mlruns", "tensorboard": "tb"}  # written as used
    with pytest.raises(FedsecInputError, match=r"different config \(changed: seed\)"):
        RunDirectory(out, experiment_from_dict({**TRACKED, "seed": 1}), resume=True)


def test_the_sweep_fingerprint_ignores_tracking():
    from fedsec.plan import plan_from_dict
    from fedsec.studies.sweep import _fingerprint

    plain = _fingerprint(plan_from_dict(RAW))
    assert _fingerprint(plan_from_dict(TRACKED)) == plain
    assert _fingerprint(plan_from_dict({**TRACKED, "tracking": {"tensorboard": "elsewhere"}})) == plain
    assert _fingerprint(plan_from_dict({**RAW, "seed": 1})) != plain  # what it computes still counts


def test_a_deployment_reuses_its_finished_run_when_only_tracking_differs(tmp_path):
    from fedsec.plan import plan_from_dict
    from fedsec.studies.assess import _same_finished_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(plan_from_dict(RAW).to_toml())
    (run / "summary.json").write_text(json.dumps({"stopped_reason": "completed"}))
    (run / "final_model.pt").write_bytes(b"model")
    assert _same_finished_run(run, plan_from_dict(TRACKED))
    assert not _same_finished_run(run, plan_from_dict({**TRACKED, "rounds": 3}))


def test_mlflow_resumed_into_another_store_starts_a_run_there(tmp_path, monkeypatch):
    pytest.importorskip("mlflow.tracking")
    from mlflow.tracking import MlflowClient

    from fedsec.results.exports import RunExporter

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunExporter.from_config({"mlflow": "file:./first"}, run_dir).start({"seed": 0})
    first_id = json.loads((run_dir / "tracking.json").read_text())["mlflow_run_id"]
    RunExporter.from_config({"mlflow": "file:./second"}, run_dir, resume=True).start({"seed": 0})
    record = json.loads((run_dir / "tracking.json").read_text())
    assert record["mlflow_run_id"] != first_id and record["mlflow_uri"] == (tmp_path / "second").as_uri()
    second = MlflowClient(tracking_uri=(tmp_path / "second").as_uri())
    assert second.get_run(record["mlflow_run_id"]).data.params == {"seed": "0"}
    # resumed again into the same store: it goes on in the same run
    RunExporter.from_config({"mlflow": "file:./second"}, run_dir, resume=True).start({"seed": 0})
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow_run_id"] == record["mlflow_run_id"]
