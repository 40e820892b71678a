"""``fedsec assess DEPLOYMENT.toml``: one security sheet for a deployment, from training to serving.

A deployment file names what is deployed (an experiment config to train, or a finished run directory to reuse),
how it is served (an access policy, :mod:`fedsec.serving.access`), who uses it (a scenario: honest users,
unauthorized users and an extraction attacker, :mod:`fedsec.serving.scenario`) and which post-hoc audits to run
(:mod:`fedsec.studies.posthoc`). The command

1. trains the experiment into ``DIR/run`` (or reuses a finished run: the one named, or ``DIR/run`` when it holds
   the same config), with the run's own audits (``[audit.*]``, sanitization, privacy);
2. runs the post-hoc audits on the final model (``[audits.evasion]``, ``membership``, ``inversion``,
   ``model_inversion``) and records each in the run's ``summary.json``;
3. serves the final model on a free local port with the access policy and runs the scenario against it
   (``DIR/scenario.toml``, written from the deployment; results in ``DIR/scenario/``: ``report.json``, the query
   log), and records its A/C, Q and extraction fidelity as the run's ``summary["serving"]``;
4. writes the sheet (:mod:`fedsec.metrics.security_sheet`): into the run's ``summary.json`` (with ``seed_metrics``)
   and report, and into ``DIR/summary.json`` (``security_sheet``), ``DIR/report.md`` and ``DIR/report.html``, and
   prints it. Every entry names the separate command that gives the same number (``fedsec run``, ``fedsec audit
   ...``, ``fedsec attack scenario DIR/scenario.toml``).

DEPLOYMENT.toml (paths relative to the file)::

    name = "digits-defended"
    experiment = "digits_defended_run.toml"  # or: run_dir = "runs/finished-run"
    set = ["rounds=3"]                        # overrides of the experiment (fedsec run --set)
    access = "policies/prada_block.toml"      # the access policy the model is served with

    [scenario]                                # the tables of a scenario file (fedsec attack scenario)
    seed = 0
    honest = { users = 2, queries = 100, batch_size = 10 }
    unauthorized = { attempts = 2 }
    attacker = { method = "jacobian", budget = 200, batch_size = 20, epochs = 3, seeds = 20 }

    [audits.membership]                       # post-hoc audits (fedsec audit <name> RUN_DIR); each optional
    method = "yeom"
    examples = 200
    [audits.evasion]
    epsilons = [0.1]
    [worst_case]                              # optional: a finished `fedsec worst-case` study
    dir = "runs/worst-case-study"
    defense = "median"                        # its row (default: the run's defense.strategy)

The studies layer does not import the serving or report layers: the CLI passes the scenario runner and the report
writer to :func:`register`.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedsec.config import ConfigError, read_toml
from fedsec.errors import FedsecError, FedsecInputError
from fedsec.metrics.security_sheet import security_sheet_html, security_sheet_markdown, sheet_rows

from . import posthoc

if TYPE_CHECKING:  # the plan (and torch with it) loads when an assessment runs, not when the CLI starts
    from fedsec.plan import RunPlan

logger = logging.getLogger(__name__)

SCENARIO_DATASETS = ("digits", "fashion-mnist")  # the inputs the scenario's users and attacker query with


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ScenarioTables(_Strict):
    """``[scenario]``: a scenario file's tables, checked by the scenario runner."""

    seed: int = Field(0, ge=0, description="The scenario's seed (queries, keys, the attacker).")
    honest: dict[str, Any] = Field(default_factory=dict, description="[honest]: users, role, queries, batch_size.")
    unauthorized: dict[str, Any] = Field(default_factory=dict, description="[unauthorized]: attempts, wrong_role.")
    attacker: dict[str, Any] = Field(default_factory=dict, description="[attacker]: role, method, budget, ...")


class EvasionStep(_Strict):
    """``[audits.evasion]``: ``fedsec audit evasion RUN_DIR``."""

    epsilons: list[float] = Field([0.1], min_length=1, max_length=20, description="L-inf budgets in (0, 1].")
    steps: int = Field(10, ge=1, le=1000, description="PGD steps.")
    examples: int = Field(500, ge=1, le=100_000, description="Seeded test subset.")
    cw_max_iter: int = Field(0, ge=0, le=1000, description="C&W iterations per binary-search step (0: no C&W).")


class MembershipStep(_Strict):
    """``[audits.membership]``: ``fedsec audit membership RUN_DIR``."""

    method: Literal["yeom", "lira"] = "yeom"
    examples: int = Field(500, ge=10, le=100_000)
    shadows: int = Field(8, ge=1, le=256)
    shadow_epochs: int = Field(5, ge=1, le=1000)


class InversionStep(_Strict):
    """``[audits.inversion]``: ``fedsec audit inversion RUN_DIR`` (a fresh update of one client)."""

    client: int = Field(0, ge=0)
    method: Literal["dlg", "idlg", "ig"] = "ig"
    iterations: int = Field(300, ge=1, le=100_000)
    restarts: int = Field(1, ge=1, le=100)
    max_examples: int = Field(8, ge=1, le=1024)


class ModelInversionStep(_Strict):
    """``[audits.model_inversion]``: ``fedsec audit model-inversion RUN_DIR``."""

    max_iter: int = Field(300, ge=1, le=100_000)


class AuditSteps(_Strict):
    evasion: EvasionStep | None = None
    membership: MembershipStep | None = None
    inversion: InversionStep | None = None
    model_inversion: ModelInversionStep | None = None


class WorstCaseRef(_Strict):
    dir: str = Field(description="A finished worst-case study directory (worst_case.csv).")
    defense: str = Field("", description="Its row; default: the run's defense.strategy.")


class Deployment(_Strict):
    """A deployment file (see the module docstring)."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    experiment: str = ""
    run_dir: str = ""
    set: list[str] = Field(default_factory=list)
    access: str = Field(min_length=1)
    scenario: ScenarioTables = Field(default_factory=ScenarioTables)
    audits: AuditSteps = Field(default_factory=AuditSteps)
    worst_case: WorstCaseRef | None = None


@dataclass
class Loaded:
    deployment: Deployment
    path: Path
    plan: RunPlan
    experiment: Path | None  # the config to train, or None (a finished run is reused)
    run_dir: Path | None  # the finished run to reuse


def load_deployment(path: str | Path) -> Loaded:
    """Read and check a deployment file; every problem is a one-line :class:`ConfigError` naming the key."""
    from fedsec.plan import load_plan

    path = Path(path)
    raw = read_toml(path, what="deployment file")
    try:
        dep = Deployment.model_validate(raw)
    except ValidationError as e:
        problems = [f"{'.'.join(map(str, err['loc'])) or '(file)'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
    base = path.parent
    if bool(dep.experiment) == bool(dep.run_dir):
        raise ConfigError(f"{path}: give exactly one of experiment = CONFIG (train it) or run_dir = DIR (reuse a "
                          f"finished run); got {'both' if dep.experiment else 'neither'}")
    if dep.run_dir and dep.set:
        raise ConfigError(f"{path}: set = {dep.set}: overrides apply to an experiment, not to a finished run_dir")
    if dep.experiment:
        experiment = base / dep.experiment
        plan, run_dir = load_plan(experiment, dep.set), None
    else:
        experiment, run_dir = None, base / dep.run_dir
        plan = posthoc.open_run(run_dir).plan
    dataset = plan.facts.dataset_name
    if dataset not in SCENARIO_DATASETS:
        raise ConfigError(f"{path}: data.dataset={dataset!r}: the scenario's users and attacker query with "
                          f"{' or '.join(SCENARIO_DATASETS)} inputs; deploy a model of one of them")
    if not (base / dep.access).is_file():
        raise ConfigError(f"{path}: access = {dep.access!r}: no such file (paths are relative to the deployment)")
    if dep.audits.inversion is not None and not 0 <= dep.audits.inversion.client < plan.facts.num_clients:
        raise ConfigError(f"{path}: audits.inversion.client={dep.audits.inversion.client}: not a client "
                          f"(0..{plan.facts.num_clients - 1})")
    for eps in dep.audits.evasion.epsilons if dep.audits.evasion else []:
        if not 0 < eps <= 1:
            raise ConfigError(f"{path}: audits.evasion.epsilons: {eps} must be in (0, 1] (pixels in [0, 1])")
    if (dep.audits.evasion or dep.audits.model_inversion or dep.audits.inversion) and not plan.facts.images:
        raise ConfigError(f"{path}: audits.evasion / inversion / model_inversion need image inputs; "
                          f"{dataset!r} gives vectors")
    return Loaded(dep, path, plan, experiment, run_dir)


def scenario_file(loaded: Loaded, run_dir: Path, out: Path) -> Path:
    """Write ``out/scenario.toml``: the deployment's scenario against ``run_dir``, served with its access policy
    (``fedsec attack scenario out/scenario.toml`` reproduces it)."""
    import tomli_w

    dep = loaded.deployment
    tables = {"name": dep.name, "seed": dep.scenario.seed, "access": str((loaded.path.parent / dep.access).resolve()),
              "target": {"run_dir": str(run_dir.resolve())}, "honest": dep.scenario.honest,
              "unauthorized": dep.scenario.unauthorized, "attacker": dep.scenario.attacker}
    path = out / "scenario.toml"
    path.write_text(f"# written by fedsec assess {loaded.path}\n" + tomli_w.dumps(tables))
    return path


def worst_case_row(loaded: Loaded) -> dict[str, Any] | None:
    """The row of the named worst-case study for this run's defense (with ``source``), or None."""
    ref = loaded.deployment.worst_case
    if ref is None:
        return None
    path = loaded.path.parent / ref.dir / "worst_case.csv"
    if not path.is_file():
        raise ConfigError(f"{loaded.path}: worst_case.dir = {ref.dir!r}: no worst_case.csv there (run `fedsec "
                          "worst-case SWEEP.toml` first)")
    defense = ref.defense or loaded.plan.strategy_name
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    row = next((r for r in rows if r.get("defense") == defense), None)
    if row is None:
        raise ConfigError(f"{loaded.path}: worst_case.defense = {defense!r}: not a row of {path} (rows: "
                          f"{', '.join(r.get('defense', '') for r in rows)})")
    out: dict[str, Any] = dict(row)
    for key in ("worst_accuracy", "worst_success"):
        out[key] = float(row[key]) if row.get(key) not in (None, "") else None
    out["source"] = str(path)
    return out


@dataclass
class Steps:
    """What the assessment ran: each step's command and seconds."""

    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, command: str, seconds: float) -> None:
        self.items.append({"step": name, "command": command, "seconds": round(seconds, 2)})


def _timed(console: Any, steps: Steps, name: str, command: str, text: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    with posthoc.step(console, text):
        result = fn()
    steps.add(name, command, time.perf_counter() - t0)
    return result


def run_assessment(loaded: Loaded, out: Path, *, run_scenario: Callable[..., dict[str, Any]],
                   check_scenario: Callable[[Path], Any], report: Callable[[Path], None] | None = None,
                   overwrite: bool = False, console: Any = None, verbose: bool = False) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns ``DIR/summary.json``'s content."""
    console = console or posthoc._console()
    dep, steps = loaded.deployment, Steps()
    out.mkdir(parents=True, exist_ok=True)
    run_dir = loaded.run_dir or out / "run"
    scenario = scenario_file(loaded, run_dir, out)
    check_scenario(scenario)  # the scenario's tables and roles, before any training
    worst = worst_case_row(loaded)
    if loaded.experiment is not None:
        run_command = (f"fedsec run {loaded.experiment}" + "".join(f" --set {s}" for s in dep.set)
                       + f" --out {run_dir}")
        _train(loaded, run_dir, run_command, steps, console, overwrite=overwrite, verbose=verbose)
    else:
        run_command = f"fedsec run {run_dir / 'config.toml'} (the reused run {run_dir})"
    with posthoc.locked(run_dir):
        run = posthoc.open_run(run_dir)
        _audits(run, dep.audits, steps, console)
        command = f"fedsec attack scenario {scenario} --out {out / 'scenario'}"
        report_json = _timed(console, steps, "scenario", command, "serving the final model and running the scenario",
                             lambda: run_scenario(scenario, out=out / "scenario"))
        test_size = loaded.plan.dataset.test_size
        posthoc.record_serving(run, report_json, report_path=str(out / "scenario" / "report.json"), command=command,
                               eval_inputs=test_size // 2 if test_size else None)
        posthoc.recheck_health(run)
        known = (run.summary.get("audit_commands") or {}).get("run")
        commands = {"run": known} if known and loaded.experiment is None else {"run": run_command}
        sheet = posthoc.write_summary(run, commands=commands, worst_case=worst)
    if report is not None:
        report(run_dir)
    summary = {"name": dep.name, "deployment": str(loaded.path), "finished_at": datetime.now(UTC).isoformat(
        timespec="seconds"), "run_dir": str(run_dir), "scenario_dir": str(out / "scenario"),
        "health": run.summary.get("health"), "steps": steps.items, "security_sheet": sheet}
    (out / "summary.json").write_text(json.dumps(posthoc.json_safe(summary), indent=2, allow_nan=False) + "\n")
    _write_report(out, summary)
    return summary


def _train(loaded: Loaded, run_dir: Path, command: str, steps: Steps, console: Any, *, overwrite: bool,
           verbose: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedsec.runtime.runner import run_experiment

    plan = loaded.plan
    if not overwrite and _same_finished_run(run_dir, plan):
        console.print(f"reusing the finished run in {run_dir} (same config; --overwrite trains it again)",
                      markup=False, highlight=False)
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console)
    task = progress.add_task(f"training {plan.name}".replace("[", "\\["), total=plan.rounds,
                             status="starting Ray and clients...")

    def on_round(row: dict[str, Any]) -> None:
        from fedsec.results.contract import round_status

        progress.update(task, completed=int(row["round"]), status=round_status(row))

    t0 = time.perf_counter()
    with progress:
        result = run_experiment(plan, run_dir, on_round=on_round, overwrite=overwrite, verbose=verbose)
    steps.add("run", command, time.perf_counter() - t0)
    if result.summary.get("stopped_reason") not in ("completed", "privacy_budget"):
        raise AssessError(f"the run stopped ({result.summary.get('stopped_reason')}) before its end; see {run_dir}")


def _same_finished_run(run_dir: Path, plan: RunPlan) -> bool:
    """Whether ``run_dir`` holds a finished run of ``plan``: the same config but for where it ran and where it was
    also exported (:data:`fedsec.results.run_directory.RESUME_MAY_CHANGE`), and its final model."""
    import tomllib

    from fedsec.results.run_directory import identity_changes

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        stored = tomllib.loads((run_dir / "config.toml").read_text())
        same = not identity_changes(stored, tomllib.loads(plan.to_toml()))
    except (OSError, ValueError):
        return False
    return same and summary.get("stopped_reason") in ("completed", "privacy_budget") and (
        run_dir / "final_model.pt").is_file()


def _audits(run: posthoc.FinishedRun, audits: AuditSteps, steps: Steps, console: Any) -> None:
    d = run.path
    if audits.evasion is not None:
        from .evasion_curve import evasion_curve

        ev = audits.evasion
        eps = ",".join(f"{e:g}" for e in ev.epsilons)
        command = (f"fedsec audit evasion {d} --epsilons {eps} --steps {ev.steps} --examples {ev.examples}"
                   + (f" --cw-max-iter {ev.cw_max_iter}" if ev.cw_max_iter else ""))
        _timed(console, steps, "evasion", command, f"evasion (FGSM, PGD at epsilon {eps})", lambda: evasion_curve(
            d, list(ev.epsilons), steps=ev.steps, examples=ev.examples, cw_max_iter=ev.cw_max_iter))
        posthoc.record_evasion(run, command=command)
    if audits.membership is not None:
        m = audits.membership
        command = f"fedsec audit membership {d} --method {m.method} --examples {m.examples}" + (
            f" --shadows {m.shadows} --shadow-epochs {m.shadow_epochs}" if m.method == "lira" else "")
        _timed(console, steps, "membership", command, f"membership inference ({m.method})",
               lambda: posthoc.audit_membership(run, **m.model_dump(), command=command))
    if audits.inversion is not None:
        i = audits.inversion
        command = (f"fedsec audit inversion {d} --client {i.client} --method {i.method} --iterations {i.iterations} "
                   f"--restarts {i.restarts} --max-examples {i.max_examples}")
        _timed(console, steps, "inversion", command, f"gradient inversion of client {i.client}",
               lambda: posthoc.audit_inversion(run, **i.model_dump(), command=command))
    if audits.model_inversion is not None:
        command = f"fedsec audit model-inversion {d} --max-iter {audits.model_inversion.max_iter}"
        _timed(console, steps, "model_inversion", command, "MI-Face", lambda: posthoc.audit_model_inversion(
            run, max_iter=audits.model_inversion.max_iter, command=command))


class AssessError(FedsecError):
    """The assessment could not be carried out (the run stopped early)."""


def _write_report(out: Path, summary: dict[str, Any]) -> None:
    sheet = summary["security_sheet"]
    lines = [f"Deployment `{summary['deployment']}`, assessed {summary['finished_at']}.",
             f"Run directory `{summary['run_dir']}` (its own report: `report.md` there); scenario results "
             f"`{summary['scenario_dir']}` (`report.json`, `queries.jsonl`).",
             "Each number comes from the command in its row; the two DQ_filtered entries are Table 1's variant and "
             "equation (2) as printed."]
    health = summary.get("health") or {}
    if health.get("status") not in (None, "ok"):
        lines.append(f"Warning: {health.get('reason')}: the measurements on the final model are not meaningful.")
    steps = "\n".join(f"| {s['step']} | `{s['command']}` | {s['seconds']:.1f} |" for s in summary["steps"])
    md = (f"# Security sheet: {summary['name']}\n\n" + "\n\n".join(lines) + "\n\n"
          + security_sheet_markdown(sheet) + "\n### Steps\n\n| step | command | seconds |\n|---|---|---|\n"
          + steps + "\n")
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(security_sheet_html(sheet, title=f"Security sheet: {summary['name']}",
                                                         paragraphs=lines))


def print_sheet(console: Any, sheet: dict[str, Any], title: str) -> None:
    """The sheet as a console table (``Text`` cells: nothing from files is read as markup)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), show_header=True)
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("numerator / denominator", justify="right")
    table.add_column("from (or how to measure)")
    for name, value, ratio, _formula, command in sheet_rows(sheet):
        source = command.removeprefix("to measure: ")
        if command.startswith("fedsec "):  # the command's name, without its paths and options
            words = []
            for word in command.split():
                if "/" in word or "." in word or word.startswith("-") or word.isupper():
                    break
                words.append(word)
            source = " ".join(words)
        table.add_row(Text(name), Text(value), Text(ratio), Text(source, style="dim" if value == "not measured"
                                                                   else ""))
    console.print(table)


def register(app: typer.Typer, *, run_scenario: Callable[..., dict[str, Any]], check_scenario: Callable[[Path], Any],
             report: Callable[[Path], None] | None = None) -> None:
    """Add ``fedsec assess DEPLOYMENT.toml`` to ``app``. The CLI passes the scenario runner and checker
    (:func:`fedsec.serving.scenario.run_scenario`, :func:`~fedsec.serving.scenario.load_scenario`) and its report
    writer: the studies layer does not import the serving or report layers."""

    @app.command("assess")
    def assess(
        deployment: Annotated[Path, typer.Argument(help="DEPLOYMENT.toml: an experiment or run_dir, an access "
                                                        "policy, a scenario and post-hoc audits.")],
        out: Annotated[Path | None, typer.Option("--out", help="Assessment directory (default: "
                                                 "runs/<name>-assess-<time>).")] = None,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Train again even if DIR/run holds this "
                                                "run.")] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Flower's and Ray's logs.")] = False,
    ) -> None:
        """Train (or reuse) a run, serve it behind its access policy, run the scenario and the audits, and write
        one security sheet (all six seed metrics and the others) to DIR/summary.json, DIR/report.md and .html."""
        from rich.console import Console
        from rich.text import Text

        from fedsec.runtime.runner import quiet_frameworks

        quiet_frameworks(verbose)
        console, err = Console(), Console(stderr=True)

        def fail(label: str, error: object, code: int) -> typer.Exit:
            err.print(Text.assemble((f"{label}:", "bold red"), " ", str(error)), highlight=False, soft_wrap=True)
            return typer.Exit(code=code)

        try:
            loaded = load_deployment(deployment)
            target = out or Path("runs") / f"{loaded.deployment.name}-assess-{datetime.now():%Y%m%d-%H%M%S}"
            summary = run_assessment(loaded, target, run_scenario=run_scenario, check_scenario=check_scenario,
                                     report=report, overwrite=overwrite, console=console, verbose=verbose)
        except ConfigError as e:
            raise fail("config error", e, 2) from None
        except FedsecInputError as e:  # a locked or incomplete run directory, a bad access policy or scenario
            raise fail("error", e, 2) from None
        except FedsecError as e:
            raise fail("assessment failed", e, 1) from None
        except KeyboardInterrupt:
            raise fail("interrupted", "the run directory keeps what was finished", 130) from None
        print_sheet(console, summary["security_sheet"], f"{loaded.deployment.name}: security sheet")
        health = summary.get("health") or {}
        if health.get("status") not in (None, "ok"):
            console.print(f"warning: {health.get('reason')}: measurements on the final model are not meaningful",
                          markup=False, highlight=False, soft_wrap=True)
        console.print(f"assessment: {target / 'summary.json'}, {target / 'report.md'} and {target / 'report.html'}",
                      markup=False, highlight=False, soft_wrap=True)
