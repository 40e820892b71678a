"""Post-hoc audits of a finished run: ``fedsec audit membership|inversion|model-inversion RUN_DIR``, and the
bookkeeping that ``fedsec audit evasion`` and ``fedsec assess`` share.

A finished run directory holds its resolved ``config.toml``, ``summary.json`` and ``final_model.pt``. An audit
rebuilds what the run's server held at the end, from those files: the run plan (:func:`fedsec.plan.plan_from_dict`
on ``config.toml``: the same facts, schedule and seed), the federated data (the same seeded partition) and the
final global model; then it runs the round hook of the in-run audit (:mod:`fedsec.hooks`) on the final arrays, as
the server would have after the last round, and writes what it measured into the run's ``summary.json`` (its
block, ``audit_commands[<block>]`` with the command, ``seed_metrics`` and ``security_sheet``), then re-runs the
health check (when registered) so a model at chance marks the new numbers too.

Membership (``[audit.membership]``, target ``global``) and MI-Face (``[audit.model_inversion]``) need only the
final model: the post-hoc audit is the in-run audit. Membership against one client's last local model
(``target = "client"``) is not possible after the run: the server kept no client model.

Gradient inversion attacks an update a client sent, and a finished run keeps none. The in-run audit
(``[audit.inversion]``) is the only way to attack the updates the run really exchanged. After the run, ``fedsec
audit inversion`` attacks a *fresh* update: the client's local training for one more round (round R + 1) from the
final model, with the run's ``[train]`` settings and seeding, as an honest-but-curious server would receive it next.
It refuses where that update is not what the server would see: under CKKS (the server holds ciphertexts), under
local DP (the client would send a DP-SGD update; a plain update would overstate the leakage), and for a malicious
client. For a client with poisoned data, a data filter or adversarial training the fresh update is plain SGD on the
client's clean examples, and the record says so.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedsec.config import ConfigError, read_toml
from fedsec.errors import FedsecInputError
from fedsec.metrics.security_sheet import security_sheet
from fedsec.metrics.seed_sheet import seed_metrics
from fedsec.results.lock import RunLock

if TYPE_CHECKING:  # torch, the data and the plan load when an audit runs, not when the CLI starts
    from fedsec.plan import RunPlan

logger = logging.getLogger(__name__)

__all__ = ["FinishedRun", "audit_inversion", "audit_membership", "audit_model_inversion", "open_run",
           "read_evasion", "record_evasion", "record_serving", "update_after_evasion", "write_summary"]


@dataclass
class FinishedRun:
    """A finished run directory, read back: its plan, config, summary, and the rebuilt server context."""

    path: Path
    plan: RunPlan
    config: dict[str, Any]
    summary: dict[str, Any]
    _ctx: Any = None
    _arrays: Any = None

    def server(self) -> tuple[Any, Any]:
        """(:class:`~fedsec.hooks.ServerContext`, final ArrayRecord), built once: the run's data and final model."""
        if self._ctx is None:
            import torch

            from fedsec.arrays import model_to_record
            from fedsec.data.federated import build_federated_data
            from fedsec.hooks import ServerContext
            from fedsec.results.model_file import load_final_model

            data = build_federated_data(self.plan.data_config, self.plan.seed)
            self._ctx = ServerContext.build(self.plan.facts, data, self.path / "plots", torch.device("cpu"))
            self._ctx.plots.mkdir(exist_ok=True)
            self._arrays = model_to_record(load_final_model(self.path).module)
        return self._ctx, self._arrays

    def hook(self, name: str, params: Mapping[str, Any], *, check: bool = True) -> Any:
        """The round hook ``name`` with ``params``, validated (and, with ``check``, checked against the run as the
        plan does)."""
        from fedsec.hooks import HOOKS
        from fedsec.registry import parse_params

        cls = HOOKS.get(name)
        parsed = parse_params(cls.Params, dict(params), section=f"{cls.section or 'hook'}.{name}",
                              kind=f"fedsec audit {name.replace('_', '-')}")
        if check:
            cls.check(parsed, self.plan.facts)
        return cls(parsed, self.server()[0])


def open_run(run_dir: str | Path) -> FinishedRun:
    """Read a finished run directory (a :class:`FedsecInputError` naming the missing file otherwise)."""
    from fedsec.plan import plan_from_dict
    from fedsec.results.model_file import MODEL_FILE

    path = Path(run_dir)
    for name, what in (("config.toml", "resolved config"), ("summary.json", "summary"), (MODEL_FILE, "final model")):
        if not (path / name).is_file():
            raise FedsecInputError(f"{path}: no {name} ({what}); post-hoc audits need a finished run directory "
                                   "(`fedsec run` writes it)")
    config = read_toml(path / "config.toml", what="run config")
    plan = plan_from_dict(config, source=str(path / "config.toml"))
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise FedsecInputError(f"{path / 'summary.json'}: unreadable ({e})") from e
    if not isinstance(summary, dict):
        raise FedsecInputError(f"{path / 'summary.json'}: not a JSON object")
    return FinishedRun(path, plan, config, summary)


@contextmanager
def locked(run_dir: str | Path) -> Iterator[None]:
    """Hold the run directory's lock (a run still writing it is refused, naming its PID)."""
    lock = RunLock(Path(run_dir))
    lock.acquire()
    try:
        yield
    finally:
        lock.release(restore_stale=True)


# ------------------------------------------------------------------------------------------------- the audits

def audit_membership(run: FinishedRun, *, method: str = "yeom", examples: int = 500, shadows: int = 8,
                     shadow_epochs: int = 5, command: str) -> dict[str, Any]:
    """``[audit.membership]`` (target ``global``) on the final model; returns and records the block."""
    ctx, arrays = run.server()
    hook = run.hook("membership", {"method": method, "examples": examples, "shadows": shadows,
                                   "shadow_epochs": shadow_epochs, "target": "global"})
    hook.at_end(arrays, run.summary)
    return _recorded(run, "membership", command)


def audit_model_inversion(run: FinishedRun, *, max_iter: int = 300, command: str) -> dict[str, Any]:
    """``[audit.model_inversion]`` (MI-Face) on the final model; returns and records the block."""
    ctx, arrays = run.server()
    hook = run.hook("model_inversion", {"enabled": True, "max_iter": max_iter})
    hook.at_end(arrays, run.summary)
    run.summary["model_inversion"]["classes"] = ctx.data.num_classes  # the sheet's denominator of top-1
    return _recorded(run, "model_inversion", command)


def audit_inversion(run: FinishedRun, *, client: int = 0, method: str = "ig", iterations: int = 300,
                    restarts: int = 1, tv_weight: float = 1e-4, max_examples: int = 8,
                    command: str) -> dict[str, Any]:
    """Invert a fresh update of ``client`` (one more round from the final model; see the module docstring);
    returns the record, appended to ``summary["inversion"]``."""
    import numpy as np
    import torch

    from fedsec.arrays import load_record, model_to_record
    from fedsec.hooks import RoundState
    from fedsec.training import train_local

    facts = run.plan.facts
    facts.require_images("fedsec audit inversion", "reconstructions are scored as images")
    if not 0 <= client < facts.num_clients:
        raise ConfigError(f"--client={client}: not a client of this run (0..{facts.num_clients - 1})")
    server_round = facts.rounds + 1
    record: dict[str, Any] = {"round": server_round, "client": client, "method": method,
                              "update": "fresh: one more round of local training from the final model (post hoc)"}
    why = _inversion_refusal(run.plan, client)
    previous = [r for r in run.summary.get("inversion") or [] if isinstance(r, dict)
                and (r.get("round"), r.get("client")) != (server_round, client)]
    if why:
        record.update(status="unavailable", reason=why)
    else:
        ctx, arrays = run.server()
        # the hook's rounds and clients name in-run updates; the fresh one is attacked directly (checked above)
        hook = run.hook("inversion", {"method": method, "iterations": iterations, "restarts": restarts,
                                      "tv_weight": tv_weight, "max_examples": max_examples}, check=False)
        idx = ctx.data.partitions[client]
        model = ctx.fresh_model()
        load_record(model, arrays)
        train = facts.train
        train_local(model, torch.from_numpy(np.array(ctx.data.x_train[idx])),
                    torch.from_numpy(np.array(ctx.data.y_train[idx], dtype=np.int64)), epochs=train.local_epochs,
                    batch_size=train.batch_size, lr=train.lr, momentum=train.momentum,
                    weight_decay=train.weight_decay,
                    generator=torch.Generator().manual_seed(facts.schedule.client_seed(server_round, client)))
        hook._invert(record, RoundState(server_round, arrays), client, model_to_record(model))
        note = _inversion_note(run.plan, client)
        if note:
            record["note"] = note
    run.summary["inversion"] = [*previous, record]
    in_run = any(r.get("update") is None for r in previous)
    _recorded(run, "inversion", f"the run's [audit.inversion] and {command}" if in_run else command)
    return record


def _inversion_refusal(plan: RunPlan, client: int) -> str:
    facts = plan.facts
    if facts.encrypted:
        return "no plaintext update available: under CKKS the server holds only ciphertexts"
    if facts.privacy.mode == "local":
        return ("not simulated: under local DP the client sends a DP-SGD update (clipped and noised), and a plain "
                "update would overstate the leakage; [audit.inversion] attacks the updates the run really sent")
    if client in facts.schedule.malicious:
        return f"client {client} is malicious in this run: its update is the attack's, not its data's"
    return ""


def _inversion_note(plan: RunPlan, client: int) -> str:
    e = plan.experiment
    changes = [what for what, applies in (
        ("its data is poisoned ([data.poison])", client in plan.poisoned),
        ("it filters its data ([defense.sanitize])", e.defense.sanitize.method != "none"),
        ("it trains adversarially ([train.adversarial])", e.train.adversarial.attack != "none")) if applies]
    if not changes:
        return ""
    return (f"in the run {' and '.join(changes)}; this fresh update is plain SGD on the client's clean examples")


# -------------------------------------------------------------------------------- evasion and serving blocks

def choose_epsilon(epsilons: list[float], config: Mapping[str, Any]) -> float:
    """The budget the sheet's R is read at: the run's ``audit.evasion.epsilon`` if measured, else 0.1 (the
    audit's default) if measured, else the first budget."""
    configured = ((config.get("audit") or {}).get("evasion") or {}).get("epsilon")
    for wanted in (configured, 0.1):
        match = [e for e in epsilons if wanted is not None and math.isclose(e, float(wanted))]
        if match:
            return match[0]
    return epsilons[0]


def read_evasion(folder: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """``(curve, cw)`` from ``folder/curve.csv`` and ``folder/cw.json`` (written by ``fedsec audit evasion``):
    ``curve[epsilon][attack]`` holds correct, total, robust_accuracy, counts and epsilon; ``cw`` the C&W block, or
    None when C&W did not run."""
    import csv

    with (folder / "curve.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise FedsecInputError(f"{folder / 'curve.csv'}: no rows")
    curve: dict[str, dict[str, Any]] = {}
    for row in rows:
        correct, total = int(row["correct"]), int(row["total"])
        curve.setdefault(row["epsilon"], {})[row["attack"]] = {
            "correct": correct, "total": total, "robust_accuracy": correct / total if total else None,
            "counts": f"{correct} / {total}", "epsilon": float(row["epsilon"])}
    cw = None
    if (folder / "cw.json").is_file():
        block = json.loads((folder / "cw.json").read_text())
        cw = {k: block.get(k) for k in ("robust_accuracy", "counts", "success_rate", "median_l2", "max_iter")}
    return curve, cw


def record_evasion(run: FinishedRun, *, command: str, epsilon: float | None = None) -> dict[str, Any]:
    """Read ``RUN_DIR/evasion/curve.csv`` (and ``cw.json``), written by ``fedsec audit evasion``: the budget
    :func:`choose_epsilon` picks becomes ``summary["evasion"]`` (the sheet's R), every budget ``evasion_curve``,
    C&W ``evasion_cw`` (apart: with no budget it would always be the strongest attack). An in-run R it replaces is
    kept as ``evasion_in_run``."""
    curve, cw = read_evasion(run.path / "evasion")
    eps = epsilon if epsilon is not None else choose_epsilon([float(k) for k in curve], run.config)
    key = next(k for k in curve if math.isclose(float(k), eps))
    summary = run.summary
    if "evasion" in summary and "evasion" not in (summary.get("audit_commands") or {}):
        summary["evasion_in_run"] = summary["evasion"]
    summary["evasion"], summary["evasion_curve"] = dict(curve[key]), curve
    summary.pop("evasion_cw", None)
    if cw is not None:  # kept apart: C&W has no budget, and would always be R's strongest attack
        summary["evasion_cw"] = cw
    return _recorded(run, "evasion", command)


def serving_block(report: Mapping[str, Any], *, report_path: str, eval_inputs: int | None = None) -> dict[str, Any]:
    """The ``summary["serving"]`` block (what the sheet reads for A/C, Q and extraction fidelity) from a deployment
    scenario's ``report.json``; ``eval_inputs``: how many held-out inputs the extraction agreement is over."""
    access, queries, ex = report["A/C"], report["Q"], report.get("extraction") or {}
    return {
        "unauthorized_attempts": int(access["attempts"]), "unauthorized_blocked": int(access["blocked"]),
        "queries": int(queries["queries"]), "anomalous_detected": int(queries["detected"]),
        "monitor_detection_rate_attacker": report.get("monitor_detection_rate_attacker"),
        "monitor_false_positive_rate_honest": report.get("monitor_false_positive_rate_honest"),
        "extraction": {"method": ex.get("method"), "budget": ex.get("budget"), "queries_spent": ex.get("queries_spent"),
                       "stop_decision": ex.get("stop_decision"), "agreement": ex.get("final_agreement"),
                       "accuracy": ex.get("final_accuracy"), "eval_inputs": eval_inputs},
        "scenario": report.get("scenario"), "report": report_path,
    }


def record_serving(run: FinishedRun, report: Mapping[str, Any], *, report_path: str, command: str,
                   eval_inputs: int | None = None) -> dict[str, Any]:
    """Record a scenario's A/C, Q and extraction numbers as the run's ``summary["serving"]``."""
    run.summary["serving"] = serving_block(report, report_path=report_path, eval_inputs=eval_inputs)
    return _recorded(run, "serving", command)


# ------------------------------------------------------------------------------------------------- the summary

def _recorded(run: FinishedRun, block: str, command: str) -> Any:
    run.summary.setdefault("audit_commands", {})[block] = command
    return run.summary.get(block)


def recheck_health(run: FinishedRun) -> None:
    """Run the health hook (when registered) on the final model, so it marks the numbers just measured on it."""
    from fedsec.hooks import HOOKS

    if "health" in HOOKS:
        ctx, arrays = run.server()
        HOOKS.get("health")(HOOKS.get("health").Params(), ctx).at_end(arrays, run.summary)


def write_summary(run: FinishedRun, *, commands: Mapping[str, str] | None = None,
                  worst_case: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Recompute ``seed_metrics`` and ``security_sheet`` and write ``summary.json`` (atomically); returns the sheet."""
    summary = run.summary
    if commands:  # kept, so a later post-hoc audit quotes the same commands
        summary["audit_commands"] = {**(summary.get("audit_commands") or {}), **commands}
    if worst_case is None and isinstance(summary.get("worst_case"), dict):
        worst_case = summary["worst_case"]
    elif worst_case is not None:
        summary["worst_case"] = dict(worst_case)
    summary["seed_metrics"] = seed_metrics(summary, run.config)
    summary["security_sheet"] = security_sheet(summary, run.config, worst_case=worst_case)
    tmp = run.path / "summary.json.tmp"
    tmp.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    tmp.replace(run.path / "summary.json")
    return summary["security_sheet"]


def json_safe(value: Any) -> Any:
    """Plain JSON: non-finite floats become None, NumPy scalars and arrays Python values, tuples lists."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if type(value).__module__ == "numpy":  # arrays and scalars, without importing NumPy here
        return json_safe(value.tolist() if hasattr(value, "shape") and value.shape else value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


Progress = Callable[[str], Any]


# ------------------------------------------------------------------------------------------------------- CLI

def _console() -> Any:
    from rich.console import Console

    return Console()


@contextmanager
def step(console: Any, text: str) -> Iterator[None]:
    """A spinner while a long step runs, then one line with its time (plain text, never markup)."""
    import time

    t0 = time.perf_counter()
    with console.status(text.replace("[", "\\["), spinner="dots"):
        yield
    console.print(f"{text}: done in {time.perf_counter() - t0:.1f} s", markup=False, highlight=False)


def print_numbers(console: Any, title: str, rows: list[tuple[str, Any]]) -> None:
    """A two-column table of numbers (``Text`` cells: values from files are never read as markup)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        if value is None:
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(Text(name), Text(shown))
    console.print(table)


def block_rows(block: str, summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The numbers of one summary block, in the order a person reads them."""
    value = summary.get(block)
    if block == "membership" and isinstance(value, Mapping):
        keys = ("status", "attack", "target", "auc", "tpr_at_0.1%_fpr", "tpr_at_1%_fpr", "balanced_accuracy",
                "num_members", "num_nonmembers", "empirical_epsilon_lower_bound", "accountant_epsilon", "alarm",
                "reason", "note")
        return [(k, value.get(k)) for k in keys]
    if block == "model_inversion" and isinstance(value, Mapping):
        return [(k, v) for k, v in value.items() if not isinstance(v, list | dict)]
    if block == "inversion" and isinstance(value, list):
        rows: list[tuple[str, Any]] = []
        for r in value:
            label = f"round {r.get('round')}, client {r.get('client')}"
            shown = (f"PSNR {r['psnr']:.2f} dB, SSIM {r.get('ssim', 0):.3f}, labels {r.get('label_accuracy', 0):.3f}"
                     if r.get("status") == "done" else f"{r.get('status')}: {r.get('reason')}")
            rows.append((label, shown))
        return rows
    if block == "evasion" and isinstance(value, Mapping):
        curve = summary.get("evasion_curve") or {"": value}
        rows = [(f"{a} at epsilon {b.get('epsilon')}", f"{b['robust_accuracy']:.4f} ({b.get('counts')})")
                for budget in curve.values() for a, b in budget.items()
                if a != "cw" and isinstance(b, Mapping) and b.get("robust_accuracy") is not None]
        cw = summary.get("evasion_cw")
        if isinstance(cw, Mapping):
            rows.append(("cw (L2, no budget)", f"{cw.get('robust_accuracy', 0):.4f} ({cw.get('counts')}), success "
                         f"{cw.get('success_rate') or 0:.3f}, median L2 {cw.get('median_l2') or 0:.3f}"))
        r = summary.get("seed_metrics", {}).get("R", {})
        if r.get("value") not in (None, "not measured"):
            rows.append(("R on the sheet", f"{r['percent']} ({r['inputs']}, {r.get('attack')})"))
        return rows
    return []


def finish(console: Any, run: FinishedRun, block: str, *, report: Callable[[Path], None] | None) -> None:
    """Health recheck, summary.json, the run's report, and the block's numbers and the sheet line on the console."""
    recheck_health(run)
    sheet = write_summary(run)
    print_numbers(console, f"{run.plan.name}: {block.replace('_', ' ')} audit", block_rows(block, run.summary))
    if run.summary.get("health", {}).get("status") not in (None, "ok"):
        console.print(f"warning: {run.summary['health'].get('reason')}: these numbers are not meaningful",
                      markup=False, highlight=False, soft_wrap=True)
    seeds = ", ".join(f"{k} {v.get('percent', v['value'])}" for k, v in run.summary["seed_metrics"].items()
                      if v.get("value") != "not measured")
    console.print(f"summary.json updated: {block}, seed_metrics ({seeds or 'none measured'}), security_sheet "
                  f"({sum(e['value'] != 'not measured' for e in sheet.values())} of {len(sheet)} entries measured)",
                  markup=False, highlight=False, soft_wrap=True)
    if report is not None:
        report(run.path)


def update_after_evasion(run_dir: Path, *, command: str, report: Callable[[Path], None] | None = None) -> bool:
    """After ``fedsec audit evasion RUN_DIR`` wrote ``evasion/curve.csv``: record it in the run's summary, sheet and
    report and print the numbers. A directory that is not a finished run (no ``summary.json``: a model file
    alone) is left as it is; returns whether the run was updated."""
    console = _console()
    if not (Path(run_dir) / "summary.json").is_file():
        if (Path(run_dir) / "evasion" / "curve.csv").is_file():  # the numbers all the same
            curve, cw = read_evasion(Path(run_dir) / "evasion")
            print_numbers(console, f"{Path(run_dir).name}: evasion audit",
                          block_rows("evasion", {"evasion": {}, "evasion_curve": curve, "evasion_cw": cw}))
        console.print(f"{run_dir} has no summary.json: robust accuracies are in evasion/curve.csv; no sheet updated",
                      markup=False, highlight=False, soft_wrap=True)
        return False
    with locked(run_dir):
        run = open_run(run_dir)
        record_evasion(run, command=command)
        finish(console, run, "evasion", report=report)
    return True


def register(audit_app: Any, *, report: Callable[[Path], None] | None = None) -> None:
    """Add ``membership``, ``inversion`` and ``model-inversion`` to the ``fedsec audit`` typer group; ``report(dir)``
    re-writes the run's report afterwards (the CLI passes its ``fedsec report``; studies do not import it)."""
    def run_audit(run_dir: Path, block: str, command: str, audit: Callable[[FinishedRun], Any], what: str) -> None:
        console = _console()
        try:
            with locked(run_dir):
                run = open_run(run_dir)
                with step(console, f"{what} on {run_dir}"):
                    audit(run)
                finish(console, run, block, report=report)
        except FedsecInputError as e:  # config errors, a locked or incomplete run directory
            from rich.console import Console
            from rich.text import Text

            Console(stderr=True).print(Text.assemble(("audit error:", "bold red"), " ", str(e)), highlight=False,
                                       soft_wrap=True)
            raise typer.Exit(code=2) from None

    @audit_app.command("membership")
    def membership(
        run_dir: Annotated[Path, typer.Argument(help="A finished run directory (config.toml, summary.json, "
                                                     "final_model.pt).")],
        method: Annotated[str, typer.Option("--method", help="yeom (loss threshold) | lira (offline LiRA).")] = "yeom",
        examples: Annotated[int, typer.Option("--examples", min=10, max=100_000,
                                              help="Members and non-members each.")] = 500,
        shadows: Annotated[int, typer.Option("--shadows", min=1, max=256, help="lira: shadow models.")] = 8,
        shadow_epochs: Annotated[int, typer.Option("--shadow-epochs", min=1, max=1000,
                                                   help="lira: epochs each shadow model trains.")] = 5,
    ) -> None:
        """Membership inference on a finished run's final model ([audit.membership], target global)."""
        command = f"fedsec audit membership {run_dir} --method {method} --examples {examples}" + (
            f" --shadows {shadows} --shadow-epochs {shadow_epochs}" if method == "lira" else "")
        run_audit(run_dir, "membership", command, lambda run: audit_membership(
            run, method=method, examples=examples, shadows=shadows, shadow_epochs=shadow_epochs, command=command),
            f"membership inference ({method}{f', {shadows} shadow models' if method == 'lira' else ''})")

    @audit_app.command("model-inversion")
    def model_inversion(
        run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
        max_iter: Annotated[int, typer.Option("--max-iter", min=1, max=100_000, help="MI-Face iterations.")] = 300,
    ) -> None:
        """MI-Face class representatives from a finished run's final model ([audit.model_inversion])."""
        command = f"fedsec audit model-inversion {run_dir} --max-iter {max_iter}"
        run_audit(run_dir, "model_inversion", command,
                  lambda run: audit_model_inversion(run, max_iter=max_iter, command=command), "MI-Face")

    @audit_app.command("inversion")
    def inversion(
        run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
        client: Annotated[int, typer.Option("--client", min=0, help="The partition id whose fresh update is "
                                            "inverted.")] = 0,
        method: Annotated[str, typer.Option("--method", help="dlg | idlg | ig (Inverting Gradients).")] = "ig",
        iterations: Annotated[int, typer.Option("--iterations", min=1, max=100_000,
                                                help="Optimisation steps per restart.")] = 300,
        restarts: Annotated[int, typer.Option("--restarts", min=1, max=100)] = 1,
        max_examples: Annotated[int, typer.Option("--max-examples", min=1, max=1024,
                                                  help="Refuse clients holding more examples.")] = 8,
    ) -> None:
        """Gradient inversion of a fresh update: the client's training for one more round from the final model
        (a finished run keeps no updates; [audit.inversion] attacks the ones the run really sent)."""
        command = (f"fedsec audit inversion {run_dir} --client {client} --method {method} --iterations "
                   f"{iterations} --restarts {restarts} --max-examples {max_examples}")
        run_audit(run_dir, "inversion", command, lambda run: audit_inversion(
            run, client=client, method=method, iterations=iterations, restarts=restarts,
            max_examples=max_examples, command=command), f"gradient inversion ({method}) of client {client}")
