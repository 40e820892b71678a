"""The ``fedsec`` command line: run, validate, list.

Start-up stays light: this module and the subcommand modules it mounts import typer, rich and fedsec's own light
modules only; torch, Flower, Ray and the plan load inside the command that needs them (``fedsec --help`` imports
none of them; ``tests/test_cli_startup.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fedsec.errors import ConfigError

if TYPE_CHECKING:
    from fedsec.plan import RunPlan

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="fedsec: federated-learning security simulator (Flower + Ray).",
)
console = Console()
err_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        import fedsec

        print(f"fedsec {fedsec.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print fedsec's version and exit.")] = False,
) -> None:
    pass

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set attack.fraction=0.3 (repeatable)."),
]
# what `fedsec run` and `fedsec deploy` share
RunConfigArgument = Annotated[Path | None, typer.Argument(help="Experiment TOML file (with --resume: the run's own).")]
RunOutOption = Annotated[Path | None, typer.Option("--out", help="Run directory (default: runs/<name>-<time>).")]
ResumeOption = Annotated[Path | None, typer.Option(
    "--resume", help="Go on with the run in this directory from its last checkpoint.")]


def _resumed(command: str, config: Path | None, out: Path | None, resume: Path | None) -> tuple[Path, Path | None]:
    """(config, out) of `fedsec run/deploy`: with ``--resume`` the run's own config and directory; a clear error
    (exit 2) for an ``--out`` elsewhere or no config at all."""
    if resume is not None:
        if out is not None and out.resolve() != resume.resolve():
            _fail_input(f"--resume {resume} and --out {out}: a resumed run writes into its own directory")
        config, out = config or resume / "config.toml", resume
    if config is None:
        _fail_input(f"give an experiment config (fedsec {command} CONFIG) or --resume RUN_DIR")
    return config, out


def _print_metrics(title: str, summary: dict) -> None:
    """The final-metrics table of a run's summary (what the config measures, from the declarations)."""
    from fedsec.runtime.runner import console_metrics

    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in console_metrics(summary):
        table.add_row(key, _fmt(value))
    console.print(table)


def _print_error(label: str, message: object) -> None:
    """``label: message`` on stderr as one line; the message is plain text: a value from a config or a path (``[/]``,
    ``[bold]``, ``:x:``) is printed as it is, never read as rich markup or an emoji code."""
    err_console.print(Text.assemble((f"{label}:", "bold red"), " ", str(message)), highlight=False, soft_wrap=True)


def _print_config_error(error: ConfigError) -> None:
    """``config error: ...``, one line per problem (every section error of a config at once)."""
    for problem in getattr(error, "problems", None) or (str(error),):
        _print_error("config error", problem)


@contextmanager
def _status_from(source: logging.Logger, show: Callable[[str], None]) -> Iterator[None]:
    """While active, each record ``source`` logs is shown with ``show`` (the progress bar's status)."""

    class Status(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            show(record.getMessage())

    handler, level = Status(), source.level
    source.addHandler(handler)
    source.setLevel(logging.INFO)
    try:
        yield
    finally:
        source.removeHandler(handler)
        source.setLevel(level)


def _load(config: Path, overrides: list[str] | None) -> RunPlan:
    from fedsec.plan import load_plan

    try:
        return load_plan(config, overrides or [])
    except ConfigError as e:
        _print_config_error(e)
        raise typer.Exit(code=2) from None


def named_after_overrides(name: str, overrides: list[str] | None) -> str:
    """The run's name when ``--set`` changed its config: the config's name, then ``+key-value`` per override
    (``fmnist-labelflip-krum+defense.strategy-median``), so run directories, summaries and reports say what ran;
    ``name`` itself when nothing but ``name`` or ``backend.*`` was set. Characters a name cannot hold become ``_``;
    a name over 100 characters is cut and ends with a hash of the overrides.

    >>> named_after_overrides("quickstart", ["defense.strategy=krum", "attack.fraction = 0.3"])
    'quickstart+defense.strategy-krum+attack.fraction-0.3'
    >>> named_after_overrides("quickstart", ["backend.num_cpus=2"])
    'quickstart'
    """
    import hashlib
    import re

    pairs = [(key.strip(), value.strip().strip("\"'")) for key, _, value in
             (text.partition("=") for text in overrides or [])]
    if any(key == "name" for key, _ in pairs):
        return name  # an explicit --set name wins
    parts = [re.sub(r"[^A-Za-z0-9._+-]", "_", f"{key}-{value}") for key, value in pairs
             if not key.startswith("backend.")]  # where it runs, not what it computes
    if not parts:
        return name
    named = "+".join([name, *parts])
    if len(named) > 100:
        digest = hashlib.sha1("\n".join(overrides or []).encode()).hexdigest()[:8]
        named = f"{named[:91]}+{digest}"
    return named


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


@app.command()
def run(
    config: RunConfigArgument = None,
    set_: SetOption = None,
    out: RunOutOption = None,
    resume: ResumeOption = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Delete the run that --out already holds and start again.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Run an experiment and write its run directory (Ctrl-C stops it cleanly: exit 130; SIGTERM: 143)."""
    import threading

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedsec.errors import FedsecInputError
    from fedsec.results.contract import round_status
    from fedsec.runtime.runner import RunError, health_line, quiet_frameworks, run_experiment

    progress_log = logging.getLogger("fedsec.progress")  # fedsec.hooks.PROGRESS; named here: imports stay lazy
    quiet_frameworks(verbose)  # before the run: Flower's logs and usage pings off
    if resume is not None and overwrite:
        _fail_input("--resume and --overwrite exclude each other; choose one")
    config, out = _resumed("run", config, out, resume)
    plan = _load(config, set_)
    if resume is None and (name := named_after_overrides(plan.name, set_)) != plan.name:
        plan = _load(config, [*(set_ or []), f'name="{name}"'])  # the name follows what --set changed
    experiment = plan.experiment
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task(experiment.name, total=experiment.rounds, status="starting Ray and clients...")

    def on_round(row: dict) -> None:
        progress.update(task, completed=int(row["round"]), status=round_status(row))

    stop = threading.Event()
    signals = _SigtermAsInterrupt()
    try:
        with signals, progress, _status_from(progress_log, lambda text: progress.update(task, status=text)):
            result = run_experiment(plan, out, on_round=on_round, verbose=verbose, resume=resume is not None,
                                    overwrite=overwrite, stop=stop)
    except RunError as e:
        _print_error("run failed", e)
        raise typer.Exit(code=1) from None
    except FedsecInputError as e:  # the run directory is locked, holds another run, cannot be resumed, ...
        _fail_input(str(e))
    summary = result.summary
    _print_metrics(f"{experiment.name}: final metrics", summary)
    if line := health_line(summary):
        err_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"run directory: [bold]{escape(str(result.run_dir))}[/]")
    if summary.get("stopped_reason") == "interrupted":
        err_console.print(f"interrupted after round {summary.get('rounds_completed')}; go on with "
                          f"`fedsec run --resume {result.run_dir}`", markup=False, highlight=False, soft_wrap=True)
        _hard_exit(signals.exit_code)
    if summary.get("stopped_reason") not in ("completed", "privacy_budget"):
        raise typer.Exit(code=1)


@app.command()
def deploy(
    config: RunConfigArgument = None,
    set_: SetOption = None,
    out: RunOutOption = None,
    resume: ResumeOption = None,
    timeout: Annotated[float, typer.Option("--timeout", min=10, max=86_400,
                                           help="Seconds the run may take before it is stopped.")] = 3600.0,
    server_user: Annotated[str, typer.Option(
        "--server-user", help="The account the server runs as, apart from the clients' ('auto': nobody when run as "
        "root; '': the same account, which can then read the clients' keys).")] = "auto",
) -> None:
    """Run an experiment on Flower's deployment engine on this machine: a SuperLink, one SuperNode process per
    client, the server in a process of its own, no Ray (slow: every message starts a client process).
    docs/runs.md, "Server and clients in separate processes"."""
    import json

    from fedsec.errors import ConfigError
    from fedsec.runtime.deployment import DeploymentError, run_deployment
    from fedsec.runtime.runner import default_run_dir

    if resume is not None and not (resume / "checkpoints").is_dir():
        _fail_input(f"--resume {resume}: no checkpoint there to go on from")
    config, out = _resumed("deploy", config, out, resume)
    plan = _load(config, set_)
    run_dir = out or Path(default_run_dir(plan.name))
    if resume is None and run_dir.exists() and any(run_dir.iterdir()):
        _fail_input(f"--out {run_dir}: the directory is not empty; choose another (or --resume it)")
    err_console.print(f"{plan.name}: a SuperLink and {plan.facts.num_clients} SuperNodes on this machine; every "
                      "message starts a client process, so rounds take seconds to minutes", markup=False,
                      highlight=False, soft_wrap=True)
    def on_round(row: dict) -> None:
        accuracy = row.get("accuracy") or "-"
        err_console.print(f"round {row.get('round')}: accuracy {accuracy[:6]}, {float(row.get('seconds') or 0):.1f} s",
                          markup=False, highlight=False)

    try:
        result = run_deployment(plan, run_dir, timeout=timeout, server_user=server_user, resume=resume is not None,
                                on_round=on_round)
    except ConfigError as e:  # what the deployment engine cannot run (the key authority, colluding attackers)
        _fail_input(str(e))
    except DeploymentError as e:
        _print_error("deploy failed", e)
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:  # every process it started is stopped by then
        _print_error("interrupted", f"the deployment is stopped; {run_dir} holds the rounds so far; go on with "
                     f"`fedsec deploy --resume {run_dir}`")
        raise typer.Exit(code=130) from None
    summary_file = result.run_dir / "summary.json"
    if not summary_file.is_file():
        _print_error("deploy failed", f"the run ended with status {result.status!r} and wrote no summary; logs in "
                     f"{result.log_dir}")
        raise typer.Exit(code=1)
    summary = json.loads(summary_file.read_text())
    _print_metrics(f"{plan.name}: final metrics (Flower deployment engine)", summary)
    if not result.server_user:
        err_console.print(f"note: the server ran as this account, which can read the clients' key files and memory "
                          f"({result.why_shared}; docs/runs.md)", markup=False, highlight=False, soft_wrap=True)
    server = f"the server ran as {escape(result.server_user)}; " if result.server_user else ""
    console.print(f"run directory: [bold]{escape(str(result.run_dir))}[/] ({result.wall_seconds:.0f} s; {server}"
                  f"Flower's logs: {escape(str(result.log_dir))})", markup=True, highlight=False,
                  soft_wrap=True)  # paths stay whole, to copy
    if summary.get("stopped_reason") not in ("completed", "privacy_budget"):
        raise typer.Exit(code=1)


def _fail_input(message: str) -> None:
    _print_error("error", message)
    raise typer.Exit(code=2)


class _SigtermAsInterrupt:
    """While active, SIGTERM stops the command as Ctrl-C does (raises KeyboardInterrupt); `exit_code` is then the
    shell's convention for the signal that stopped it: 143 for SIGTERM, 130 for Ctrl-C."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: Any = None

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.received = signum
        raise KeyboardInterrupt

    def __enter__(self) -> _SigtermAsInterrupt:
        import signal

        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        signal.signal(signal.SIGTERM, self._previous)

    @property
    def exit_code(self) -> int:
        import signal

        return 143 if self.received == signal.SIGTERM else 130


def _hard_exit(code: int) -> None:
    """Exit now: Flower's server thread may still be blocked waiting for replies that will never come (it records
    nothing more); the run directory, summary and Ray are already done."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="Experiment TOML file.")],
    set_: SetOption = None,
) -> None:
    """Check a config without running it (exit 0 if valid, 2 otherwise)."""
    plan = _load(config, set_)
    experiment = plan.experiment
    console.print(Text.assemble(
        ("valid", "green"),
        f": {experiment.name}: {experiment.data.dataset} ({experiment.data.partition}, "
        f"{experiment.data.num_clients} clients), model {experiment.model.name}, strategy "
        f"{experiment.defense.strategy}, attack {experiment.attack.kind}, {experiment.rounds} rounds x "
        f"{experiment.train.clients_per_round} clients",
    ), highlight=False, soft_wrap=True)
    privacy = plan.privacy
    if privacy is not None:
        scheme = ("Poisson sampling, add-or-remove-one" if privacy.scheme == "poisson"
                  else "fixed-size sampling, replace-one")
        line = (f"privacy: {experiment.privacy.mode} DP, noise multiplier {privacy.noise_multiplier:.4g}, sample "
                f"rate {privacy.sample_rate:.3g} ({scheme}): the {experiment.rounds} planned rounds spend epsilon "
                f"{privacy.planned_epsilon:.3f} of {experiment.privacy.epsilon} at delta {experiment.privacy.delta:g}")
        if privacy.rounds_within_budget < experiment.rounds:
            line += f"; the budget guard will stop the run after round {privacy.rounds_within_budget}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
        if privacy.clipping == "adaptive":
            console.print(
                f"adaptive clipping: the bound starts at {privacy.clip_norm:g} and follows the "
                f"{privacy.target_quantile:g}-quantile of the update norms (clip_lr {privacy.clip_lr:g}); the count "
                f"gets noise std {privacy.clip_count_std:g}, the updates noise multiplier "
                f"{privacy.update_noise_multiplier:.4g} (z = {privacy.noise_multiplier:.4g} is what the accountant "
                "sees)", markup=False, highlight=False, soft_wrap=True)


@app.command("privacy-study")
def privacy_study(
    config: Annotated[Path, typer.Argument(help="Experiment TOML file with privacy.mode = local or central.")],
    epsilons: Annotated[str, typer.Option("--epsilons", help="Budgets, e.g. 0.5,1,2,4,8,inf (inf = no DP).")] = (
        "1,4,8,inf"
    ),
    seeds: Annotated[str | None, typer.Option("--seeds", help="Seeds to repeat each budget with, e.g. 0,1,2 "
                                              "(default: the config's seed).")] = None,
    set_: SetOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Study directory (default: runs/<name>-study-<time>).")
                   ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Run the scenario at each privacy budget (and seed); write study.csv, study_summary.csv and
    plots/privacy_study.png."""
    import threading
    from datetime import datetime

    from fedsec.runtime.runner import RunError, quiet_frameworks
    from fedsec.studies.privacy_study import (
        StudyInterrupted,
        parse_epsilons,
        parse_seeds,
        run_study,
        study_experiments,
    )

    quiet_frameworks(verbose)
    plan = _load(config, set_)
    if (name := named_after_overrides(plan.name, set_)) != plan.name:
        plan = _load(config, [*(set_ or []), f'name="{name}"'])  # the name follows what --set changed
    experiment = plan.experiment
    try:
        budgets = parse_epsilons(epsilons)
        seed_list = parse_seeds(seeds)
        study_experiments(plan, budgets, seed_list)  # validate every cell before running any
    except ConfigError as e:
        _print_config_error(e)
        raise typer.Exit(code=2) from None
    out = out or Path("runs") / f"{experiment.name}-study-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    table = Table(title=f"{experiment.name}: privacy study ({experiment.privacy.mode} DP)")
    # what the scenario measures, from the declarations: the attack's own metrics and its success when attacked
    columns = {"epsilon_budget": "epsilon budget", "epsilon": "epsilon spent", "accuracy": "accuracy"}
    if plan.attack.success is not None:
        columns.update({m.name: m.name for m in plan.attack.metrics if m.final})
        columns["attack_success"] = f"attack success ({plan.attack.success.label})"
    columns.update({"mia_advantage": "membership advantage", "mia_bound": "bound", "seed": "seed"})
    for title in columns.values():
        table.add_column(title, justify="right")

    def on_cell(eps: float, row: dict) -> None:
        console.print(f"epsilon {eps:g}, seed {row['seed']}: accuracy {row['accuracy']:.4f}", highlight=False)
        table.add_row(*[f"{eps:g}" if key == "epsilon_budget" else _fmt(row.get(key, math.nan)) for key in columns])

    stop = threading.Event()
    signals = _SigtermAsInterrupt()
    try:
        with signals:
            run_study(plan, budgets, out, on_cell=on_cell, seeds=seed_list, stop=stop)
    except RunError as e:
        _print_error("run failed", e)
        raise typer.Exit(code=1) from None
    except StudyInterrupted as e:
        err_console.print(f"{e}; the same command goes on from there (finished cells are read back)",
                          markup=False, highlight=False, soft_wrap=True)
        _hard_exit(signals.exit_code)
    except KeyboardInterrupt:  # between cells: nothing was running
        err_console.print("interrupted; the same command goes on from there (finished cells are read back)",
                          highlight=False, soft_wrap=True)
        _hard_exit(signals.exit_code)
    console.print(table)
    console.print(f"study directory: [bold]{escape(str(out))}[/] (study.csv, study_summary.csv, "
                  "plots/privacy_study.png)")


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep TOML: base = CONFIG and a [grid] of dotted keys.")],
    out: Annotated[Path | None, typer.Option("--out", help="Sweep directory (default: runs/<sweep name>).")] = None,
    parallel: Annotated[int, typer.Option("--parallel", "-j", help="Cells run at once (local Ray only).")] = 1,
    address: Annotated[str, typer.Option("--address", help="Join this Ray cluster (host:port or auto).")] = "",
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report when done.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Flower's and Ray's logs in cells.")] = False,
) -> None:
    """Run every cell of a grid (resumable: finished cells are skipped) and write sweep.csv."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from fedsec.studies.sweep import SweepRunner, cell_headline, load_sweep

    try:
        spec = load_sweep(sweep_file)
        runner = SweepRunner(spec, out or Path("runs") / spec.name, parallel=parallel, address=address,
                             verbose=verbose)
    except ConfigError as e:
        _print_config_error(e)
        raise typer.Exit(code=2) from None
    total = len(spec.cells)
    done_before = total - len(runner.pending())
    axes = ", ".join(f"{k} ({len(v)})" for k, v in spec.axes.items())
    details = f"{total} cells over {axes}; {done_before} already done; directory {runner.out}"
    console.print(f"sweep [bold]{escape(spec.name)}[/]: {escape(details)}", highlight=False)
    progress = Progress(TextColumn("[bold]cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("left"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                        console=console)
    task = progress.add_task("cells", total=total, completed=done_before, status="starting Ray...")
    failed: list[str] = []

    def on_start(cell) -> None:  # noqa: ANN001
        progress.update(task, status=f"running {cell.id}")

    def on_done(result) -> None:  # noqa: ANN001
        progress.advance(task)
        if result.status == "failed":
            failed.append(result.cell.id)
            progress.console.print(f"[red]cell {escape(result.cell.id)} failed[/]: {escape(str(result.error))}",
                                   highlight=False)
        else:
            headline = cell_headline(runner.out, result.cell)
            progress.console.print(f"cell {result.cell.id}: done in {result.seconds:.0f} s"
                                   + (f": {headline}" if headline else ""), markup=False, highlight=False)

    try:
        with progress:
            runner.run(on_start=on_start, on_done=on_done)
    except KeyboardInterrupt:
        err_console.print(f"interrupted; rerun `fedsec sweep {sweep_file}` to finish the remaining cells",
                          markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=130) from None
    except RuntimeError as e:
        _print_error("sweep failed", e)
        raise typer.Exit(code=1) from None
    console.print(f"sweep table: [bold]{escape(str(runner.out / 'sweep.csv'))}[/]")
    if report:
        _write_report(runner.out)
    if failed:
        err_console.print(f"{len(failed)} cell(s) failed (logs in cells/<cell>/log.txt); a rerun retries them")
        raise typer.Exit(code=1)


@app.command("report")
def report_command(
    directory: Annotated[Path, typer.Argument(help="A run directory or a sweep directory.")],
) -> None:
    """Write report.md and report.html (with plots) for a run or a sweep."""
    _write_report(directory)


def _write_report(directory: Path) -> None:
    from fedsec.report import ReportError, write_report

    try:
        path = write_report(directory)
    except ReportError as e:
        _print_error("report error", e)
        raise typer.Exit(code=2) from None
    console.print(f"report: [bold]{escape(str(path))}[/] and {escape(str(path.with_suffix('.html')))}")


@app.command("list")
def list_components() -> None:
    """List every kind a config can name, from the registries, each with its own keys and their defaults."""
    from fedsec.clients.attacks import ATTACKS
    from fedsec.config import (
        ENCRYPTION_SCHEMES,
        PRIVACY_MODES,
        TRAIN_ALGORITHMS,
        ClientsConfig,
        EncryptionConfig,
        PrivacyConfig,
        TrainConfig,
    )
    from fedsec.data import DATASETS, PARTITIONS
    from fedsec.hooks import HOOKS
    from fedsec.models import MODELS
    from fedsec.sanitize import SANITIZERS
    from fedsec.strategies import PRE_AGGREGATORS, SERVER_OPTIMIZERS, STRATEGIES

    audits = {name: cls for name, cls in HOOKS.items() if cls.section}
    built_in = {name: cls.description for name, cls in HOOKS.items() if not cls.section}
    sections: list[tuple[str, dict[str, str]]] = [
        ("datasets (data.dataset; their own [data] keys in brackets)", _with_keys(DATASETS)),
        ("partitions (data.partition)", dict(PARTITIONS)),
        ("models (model.name)", MODELS.descriptions()),
        ("strategies (defense.strategy; their keys in brackets)", _with_keys(STRATEGIES)),
        ("pre-aggregators (defense.pre, applied in order before the rule; their keys in brackets)",
         _with_keys(PRE_AGGREGATORS)),
        ("attacks (attack.kind; every kind also takes fraction or client_ids, start_round, end_round, knowledge)",
         _with_keys(ATTACKS)),
        ("data filters (defense.sanitize.method)", _with_keys(SANITIZERS)),
        ("audits ([audit.<name>] tables)", _with_keys(audits)),
        ("round hooks built in (run when the config needs them)", built_in),
        ("privacy (privacy.mode)", _section_keys(PRIVACY_MODES, PrivacyConfig)),
        ("encryption (encryption.scheme)", _section_keys(ENCRYPTION_SCHEMES, EncryptionConfig)),
        ("client algorithms (train.algorithm)", _section_keys(TRAIN_ALGORITHMS, TrainConfig)),
        ("server optimizers (server.optimizer; their keys in brackets)", _with_keys(SERVER_OPTIMIZERS)),
        ("simulated devices ([clients] keys, and train.deadline)",
         {f"clients.{k}": f"{f.description} [default {f.default!r}]" for k, f in ClientsConfig.model_fields.items()}
         | {"train.deadline": f"{TrainConfig.model_fields['deadline'].description} [default None]"}),
    ]
    for title, items in sections:
        table = Table(title=Text(title), show_header=False, title_justify="left", box=None, padding=(0, 2))
        table.add_column("name", style="bold")
        table.add_column("description")
        for name, description in items.items():
            table.add_row(Text(name), Text(description))  # Text: brackets are shown, never read as markup
        console.print(table)
        console.print()


def _keys_text(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k}={f.default!r}" for k, f in fields.items())


def _with_keys(registry: Any) -> dict[str, str]:
    """Each kind's description followed by its keys and defaults, from its ``Params``."""
    items = registry.items() if hasattr(registry, "items") else registry
    out = {}
    for name, cls in items:
        keys = _keys_text(cls.Params.model_fields)
        out[name] = f"{cls.description} [{keys}]" if keys else cls.description
    return out


def _section_keys(registry: Any, section: Any) -> dict[str, str]:
    """Each mode's description followed by the section's keys it reads, with their defaults."""
    out = {}
    for name, kind in registry.items():
        keys = _keys_text({k: section.model_fields[k] for k in kind.keys})
        out[name] = f"{kind.description} [{keys}]" if keys else kind.description
    return out


audit_app = typer.Typer(no_args_is_help=True, help="Audits of a finished run's final model: evasion, membership, "
                        "inversion, model-inversion.")
app.add_typer(audit_app, name="audit")


@audit_app.command("evasion")
def audit_evasion(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with final_model.pt.")],
    epsilons: Annotated[str, typer.Option("--epsilons", help="L-inf budgets on [0, 1] pixels.")] = "0.05,0.1,0.2,0.3",
    steps: Annotated[int, typer.Option("--steps", min=1, max=1000, help="PGD steps.")] = 10,
    examples: Annotated[int, typer.Option("--examples", min=1, help="Seeded test subset.")] = 1000,
    cw_max_iter: Annotated[int, typer.Option("--cw-max-iter", min=0, max=1000,
                                             help="Also run C&W L2 with this many iterations per binary-search "
                                                  "step (0: no C&W).")] = 0,
    cw_binary_search_steps: Annotated[int, typer.Option("--cw-binary-search-steps", min=1, max=50,
                                                        help="C&W binary-search steps.")] = 5,
    cw_learning_rate: Annotated[float, typer.Option("--cw-learning-rate", min=1e-6, max=10.0,
                                                    help="C&W learning rate.")] = 0.01,
    cw_initial_const: Annotated[float, typer.Option("--cw-initial-const", min=1e-6, max=1e6,
                                                    help="C&W initial trade-off constant c (a larger c finds "
                                                         "adversarial examples in fewer iterations).")] = 1.0,
) -> None:
    """Re-evaluate a run's final model under FGSM and PGD at several budgets, and optionally C&W (no retraining);
    a finished run's summary.json (R on its security sheet) and report are updated."""
    import json

    from fedsec.errors import FedsecInputError
    from fedsec.results.model_file import ModelFileError
    from fedsec.studies.evasion_curve import evasion_curve, parse_budgets
    from fedsec.studies.posthoc import step, update_after_evasion

    try:
        budgets = parse_budgets(epsilons)
        command = (f"fedsec audit evasion {run_dir} --epsilons {','.join(f'{e:g}' for e in budgets)} --steps {steps} "
                   f"--examples {examples}")
        if cw_max_iter > 0:
            command += (f" --cw-max-iter {cw_max_iter} --cw-binary-search-steps {cw_binary_search_steps} "
                        f"--cw-learning-rate {cw_learning_rate:g} --cw-initial-const {cw_initial_const:g}")
        attacks = "FGSM, PGD" + (", C&W L2" if cw_max_iter > 0 else "")
        with step(console, f"evasion ({attacks}) on {run_dir}"):
            path = evasion_curve(run_dir, budgets, steps=steps, examples=examples,
                                 cw_max_iter=cw_max_iter, cw_binary_search_steps=cw_binary_search_steps,
                                 cw_learning_rate=cw_learning_rate, cw_initial_const=cw_initial_const)
    except (ConfigError, ModelFileError) as e:
        _print_error("audit error", e)
        raise typer.Exit(code=2) from None
    console.print(f"robust accuracy per budget: [bold]{escape(str(path))}[/] and "
                  f"{escape(str(path.parent / 'robustness_curve.png'))}")
    if cw_max_iter > 0:
        cw = json.loads((path.parent / "cw.json").read_text())
        console.print(f"C&W L2: success {cw['success_rate']:.3f}, median L2 {cw['median_l2']:.3f} "
                      f"(R {cw['counts']}): [bold]{escape(str(path.parent / 'cw.json'))}[/]", highlight=False)
    try:  # R on the run's sheet, its summary.json and report, as the other post-hoc audits do
        update_after_evasion(run_dir, command=command, report=_write_report)
    except FedsecInputError as e:  # a run still writing the directory, an unreadable config or summary
        _print_error("audit error", e)
        raise typer.Exit(code=2) from None


def _run_scenario(path: Path, *, out: Path) -> dict[str, Any]:
    from fedsec.serving.scenario import run_scenario

    return run_scenario(path, out=out)


def _check_scenario(path: Path) -> Any:
    from fedsec.serving.scenario import load_scenario

    return load_scenario(path)


def _mount_subcommands() -> None:
    from fedsec.serving.cli import register as register_serving
    from fedsec.studies.assess import register as register_assess
    from fedsec.studies.posthoc import register as register_posthoc
    from fedsec.studies.worst_case import register as register_worst_case

    register_posthoc(audit_app, report=_write_report)  # audit membership, inversion, model-inversion
    register_assess(app, report=_write_report, run_scenario=_run_scenario, check_scenario=_check_scenario)

    register_serving(app)  # serve, serve-keygen, attack extract, attack scenario
    register_worst_case(app, report=_write_report)  # worst-case


_mount_subcommands()


def main() -> None:
    """Entry point of the ``fedsec`` script: plugins first (:mod:`fedsec.plugins`), then the command."""
    from fedsec.plugins import load_plugins

    try:
        load_plugins()
    except ConfigError as e:
        _print_config_error(e)
        raise SystemExit(2) from None
    app()


if __name__ == "__main__":
    main()
