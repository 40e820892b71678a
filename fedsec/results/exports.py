"""Results where users already look: a run's parameters, per-round metrics and summary exported to MLflow and to
TensorBoard scalars (``[tracking]``), beside the run directory, which stays the record.

- **MLflow** (``tracking.mlflow``: a tracking URI, e.g. ``"file:./mlruns"`` or ``"sqlite:///mlflow.db"``; needs
  ``pip install 'fedsec[mlflow]'``): one MLflow run per fedsec run, in the experiment ``tracking.experiment``,
  named after the run directory; params = the resolved config flattened (``data.dataset``, ``defense.strategy``,
  ...); metrics = every number of each ``rounds.csv`` row at ``step = round``, then the final numbers the console
  shows (:func:`fedsec.runtime.runner.console_metrics`: declared final and summary metrics, attack success) at the
  last round; tags = how the run stopped and the final model's health; artifacts = ``summary.json`` and
  ``config.toml``. A resumed run goes on in the same MLflow run (its id is kept in ``tracking.json``). MLflow 3
  keeps its file store only on request: a ``file:`` URI sets ``MLFLOW_ALLOW_FILE_STORE=true`` for this process.
- **TensorBoard** (``tracking.tensorboard``: a log directory; needs the ``tensorboard`` package): the same numbers as
  scalars under ``DIR/<run directory name>``, the config and the summary as text.

Metric names keep letters, digits and ``_ - . /``; any other character becomes ``_`` (``membership_tpr_at_1%_fpr``
-> ``membership_tpr_at_1_fpr``), as MLflow requires. An exporter that fails mid-run logs one warning and stops
exporting: it never fails the run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from fedsec.errors import FedsecInputError

logger = logging.getLogger(__name__)

__all__ = ["ExportError", "RunExporter", "flat_params", "metric_key", "require_packages"]

_NOT_A_METRIC = {"round"}


class ExportError(FedsecInputError):
    """A configured export cannot start (its package is missing, its store cannot be opened)."""


def metric_key(name: str) -> str:
    """A metric name MLflow and TensorBoard accept (letters, digits, ``_ - . /`` and spaces).

    >>> metric_key("membership_tpr_at_0.1%_fpr")
    'membership_tpr_at_0.1_fpr'
    """
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_\-. /]", "_", name))


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"data.dataset": "digits", ...}`` (lists and values as text).

    >>> flat_params({"seed": 0, "data": {"dataset": "digits"}, "audit": {"evasion": {"attacks": ["pgd"]}}})
    {'seed': '0', 'data.dataset': 'digits', 'audit.evasion.attacks': "['pgd']"}
    """
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in row.items():
        if key in _NOT_A_METRIC or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[metric_key(key)] = number
    return out


class _Mlflow:
    def __init__(self, uri: str, experiment: str, run_dir: Path, *, resume: bool) -> None:
        given = uri
        if uri.startswith(("file:", ".", "/")):  # a local file store, which MLflow 3 opens only when asked
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            # absolute: MLflow caches stores by URI, and a relative one would follow an earlier working directory
            local = uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:")
            uri = Path(local).resolve().as_uri()
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ExportError(f"tracking.mlflow={given!r}: needs MLflow; pip install 'fedsec[mlflow]'") from e
        self.record = run_dir / "tracking.json"
        try:
            self.client = MlflowClient(tracking_uri=uri)
            known = self.client.get_experiment_by_name(experiment)
            experiment_id = known.experiment_id if known else self.client.create_experiment(experiment)
            run_id = self._resumed_run(uri) if resume else None
            if run_id is None:
                run_id = self.client.create_run(experiment_id, run_name=run_dir.name,
                                                tags={"fedsec.run_dir": str(run_dir.resolve())}).info.run_id
            else:
                self.client.update_run(run_id, status="RUNNING")
        except Exception as e:  # noqa: BLE001 (any store error, in MLflow's own exception types)
            raise ExportError(f"tracking.mlflow={given!r}: cannot open the store ({e})") from e
        self.run_id = run_id
        self.record.write_text(json.dumps({"mlflow_run_id": run_id, "mlflow_uri": uri}) + "\n")

    def _resumed_run(self, uri: str) -> str | None:
        """The MLflow run a resumed run goes on in: the one recorded for this store (a resume may point
        ``tracking.mlflow`` at another store, which then gets a new run)."""
        try:
            record = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        return record.get("mlflow_run_id") if record.get("mlflow_uri") == uri else None

    def params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params  # a resumed run logged them already
        items = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def finish(self, tags: dict[str, str], files: list[Path], status: str) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status=status)


class _TensorBoard:
    def __init__(self, log_dir: str, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ExportError(f"tracking.tensorboard={log_dir!r}: needs the tensorboard package; "
                              "pip install 'fedsec[mlflow]' (or tensorboard)") from e
        self.writer = SummaryWriter(log_dir=str(Path(log_dir) / run_dir.name))

    def params(self, params: dict[str, str]) -> None:
        self.writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in params.items()), 0)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, tags: dict[str, str], files: list[Path], status: str) -> None:
        self.writer.add_text("summary", "\n".join(f"    {k}: {v}" for k, v in tags.items()), 0)
        self.writer.close()


def require_packages(tracking: Any) -> None:
    """Raise :class:`ExportError` when a configured tracker's package is missing (before a run starts)."""
    import importlib.util

    for key, module, install in (("mlflow", "mlflow", "pip install 'fedsec[mlflow]'"),
                                 ("tensorboard", "tensorboard", "pip install tensorboard")):
        value = getattr(tracking, key, None)
        if value and importlib.util.find_spec(module) is None:
            raise ExportError(f"tracking.{key}={value!r}: needs the {module} package; {install}")


class RunExporter:
    """Exports one run to the configured trackers: :meth:`start` (params), :meth:`round` (each ``rounds.csv``
    row), :meth:`finish` (the summary). Build it with :meth:`from_config`; ``None`` when nothing is configured."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    @classmethod
    def from_config(cls, tracking: Any, run_dir: Path, *, resume: bool = False) -> RunExporter | None:
        """The exporter of ``[tracking]`` (a TrackingConfig or a mapping) for ``run_dir``; raises
        :class:`ExportError` when a configured tracker cannot start."""
        get = tracking.get if isinstance(tracking, dict) else lambda key, default=None: getattr(tracking, key, default)
        sinks: list[Any] = []
        if get("mlflow"):
            sinks.append(_Mlflow(get("mlflow"), get("experiment") or "fedsec", run_dir, resume=resume))
        if get("tensorboard"):
            sinks.append(_TensorBoard(get("tensorboard"), run_dir))
        return cls(sinks) if sinks else None

    def _each(self, what: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, what)(*args)
            except Exception as e:  # noqa: BLE001 (an export must never fail the run)
                logger.warning("%s export stopped (%s): %s", type(sink).__name__.strip("_"), what, e)
                self.sinks.remove(sink)

    def start(self, resolved_config: dict[str, Any]) -> None:
        self._each("params", flat_params(resolved_config))

    def round(self, row: dict[str, Any]) -> None:
        self._each("metrics", _numbers(row), int(row.get("round", 0)))

    def finish(self, summary: dict[str, Any], run_dir: Path, final: list[tuple[str, Any]]) -> None:
        """The run ended: ``final`` = the (name, value) rows of the console table
        (:func:`fedsec.runtime.runner.console_metrics`) as ``final/<name>`` at the last round; tags; artifacts."""
        step = int(summary.get("rounds_completed") or 0)
        named = {name.split(" (")[0]: value for name, value in final}  # labels without their notes
        named["attack_success"] = summary.get("attack_success")
        values = _numbers({f"final/{k}": v for k, v in named.items()})
        health = summary.get("health") if isinstance(summary.get("health"), dict) else {}
        tags = {"fedsec.stopped_reason": str(summary.get("stopped_reason", "")),
                "fedsec.health": str(health.get("status", "unknown")),
                "fedsec.name": str(summary.get("name", ""))}
        if health.get("reason"):
            tags["fedsec.health_reason"] = str(health["reason"])
        status = "FINISHED" if summary.get("stopped_reason") in ("completed", "privacy_budget") else "KILLED"
        self._each("metrics", values, step)
        self._each("finish", tags, [run_dir / "summary.json", run_dir / "config.toml"], status)
