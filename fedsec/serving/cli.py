"""CLI commands for serving and attacking: ``fedsec serve``, ``fedsec serve-keygen``, ``fedsec attack extract``,
``fedsec attack hyperparameters``, ``fedsec attack scenario``. :func:`register` mounts them on fedsec's typer app."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

log = logging.getLogger(__name__)
console = Console()
err = Console(stderr=True)

attack_app = typer.Typer(help="Attacks against a served model (model extraction, deployment scenarios).",
                         no_args_is_help=True)


def _say(text: str) -> None:
    """Print user-derived text (paths, names, reports) as it is: never read as rich markup."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def serve(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding final_model.pt.")],
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port (1-65535).")] = 8000,
    access: Annotated[Path | None, typer.Option("--access", help="ACCESS.toml (default: open endpoint).")] = None,
    log_path: Annotated[Path | None, typer.Option("--log", help="Query log (JSONL; default RUN_DIR/queries.jsonl).")]
    = None,
    ray: Annotated[bool, typer.Option("--ray", help="Deploy with Ray Serve instead of uvicorn.")] = False,
    address: Annotated[str, typer.Option("--address", help="Ray cluster for --ray (host:port or auto).")] = "",
) -> None:
    """Serve a run's final global model over HTTP (POST /predict, GET /health)."""
    from fedsec.results.model_file import load_final_model

    from .access import AccessPolicy
    from .app import create_app
    from .errors import ModelFileError, ServingError
    from .querylog import QueryLog

    try:
        model = load_final_model(run_dir)
        policy = AccessPolicy.from_toml(access) if access else AccessPolicy.from_dict(
            {"require_key": False, "anonymous_role": "public",
             "roles": {"public": {"permissions": ["predict", "predict_probabilities"], "output": "probabilities"}}})
    except (ServingError, ModelFileError) as e:
        raise _fail(str(e)) from None
    log_file = log_path or run_dir / "queries.jsonl"
    _say(f"serving {model.model_name} ({model.dataset}, round {model.server_round}) on "
         f"http://{host}:{port}  access={'open' if not policy.require_key else access}  "
         f"monitor={policy.monitor.mode}  log={log_file}  backend={'ray serve' if ray else 'uvicorn'}")
    if ray:
        from .ray_serve import serve_with_ray

        serve_with_ray(run_dir.resolve(), policy, log_path=log_file.resolve(), address=address, host=host, port=port)
    else:
        import uvicorn

        from .protocol import uvicorn_config

        try:
            app = create_app(model, policy, query_log=QueryLog(log_file, keep_in_memory=False))
        except ServingError as e:
            raise _fail(str(e)) from None
        uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level="warning")).run()


def keygen(key_id: Annotated[str, typer.Argument(help="Public key id, e.g. alice.")],
           role: Annotated[str, typer.Option("--role")] = "analyst") -> None:
    """Make an API key; prints the key (give it to the user) and the TOML keys table to paste into ACCESS.toml."""
    from .access import make_key
    from .errors import PolicyError

    try:
        key, hashed = make_key(key_id)
    except PolicyError as e:
        raise _fail(str(e)) from None
    _say(f"key (shown once, not stored): {key}")
    console.print(f'[[keys]]\nid = "{key_id}"\nrole = "{role}"\nhash = "{hashed}"', markup=False, highlight=False,
                  soft_wrap=True)


@attack_app.command("extract")
def extract(
    url: Annotated[str, typer.Argument(help="Base URL of the model server, e.g. http://127.0.0.1:8000.")],
    key: Annotated[str | None, typer.Option("--key", help="API key.")] = None,
    budget: Annotated[int, typer.Option("--budget", help="Queries the attacker may spend (equation: all of "
                                        "them, at least d + 1; more buys precision).")] = 1000,
    method: Annotated[str, typer.Option("--method", help="knockoff | jacobian | equation")] = "knockoff",
    out: Annotated[Path | None, typer.Option("--out", help="Result directory.")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Target's run dir, to score agreement "
                                                 "(knockoff/jacobian) or parameter error (equation).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    epochs: Annotated[int, typer.Option("--epochs", help="Surrogate training epochs.")] = 10,
    seeds: Annotated[int, typer.Option("--seeds", help="Jacobian: seed examples.")] = 100,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Run a model-extraction attack against URL and write a result directory."""
    import httpx
    import numpy as np

    from fedsec.extraction import (
        ExtractionResult,
        RemoteModel,
        equation_solving_attack,
        jacobian_extract,
        knockoff_extract,
        logreg_parameters,
        write_result_dir,
    )
    from fedsec.results.model_file import load_final_model

    from .errors import ModelFileError, ServingError
    from .reference import raw_dataset

    if method not in ("knockoff", "jacobian", "equation"):
        raise _fail(f"--method={method!r}: use knockoff, jacobian or equation")
    if budget < 1:
        raise _fail(f"--budget={budget}: must be >= 1")
    remote = RemoteModel(url, key=key, batch_size=batch_size)
    try:
        info = remote.info()
        target = load_final_model(run_dir) if run_dir else None
    except httpx.HTTPError as e:
        raise _fail(f"{url}: cannot reach the model server ({e})") from None
    except (ServingError, ModelFileError) as e:
        raise _fail(str(e)) from None
    out = out or Path("runs") / f"extract-{method}-{datetime.now():%Y%m%d-%H%M%S}"
    shape, k = tuple(info["input_shape"]), int(info["num_classes"])
    if method == "equation":
        truth = logreg_parameters(target.module, target.normalisation) if target is not None else None
        # every query of the budget is one more equation in the least-squares solve (float32 answers: more
        # equations, a more precise solution); fewer than d + 1 cannot determine it and are refused unspent
        eq = equation_solving_attack(remote, input_shape=shape, num_classes=k, num_queries=budget, seed=seed,
                                     true_parameters=truth)
        result = ExtractionResult(method="equation", budget=budget, status=eq.status, reason=eq.reason,
                                  details={"relative_parameter_error": eq.relative_error,
                                           "answers_used": eq.answers_used, "unknowns_per_class": int(np.prod(shape))
                                           + 1})
        result.record_stats(remote.stats)
        Path(out).mkdir(parents=True, exist_ok=True)
        if eq.weights is not None:
            np.savez(out / "recovered_parameters.npz", weights=eq.weights, bias=eq.bias)
    else:
        try:
            x_train, _, x_test, y_test, _ = raw_dataset(info["dataset"])
        except ValueError as e:
            raise _fail(f"the server's dataset {info['dataset']!r} has no attacker data here: {e}") from None
        half = len(x_test) // 2
        eval_x, eval_y = x_test[:half], y_test[:half]
        target_labels = None
        if target is not None:
            import torch

            target_labels = target.probabilities(torch.from_numpy(eval_x)).argmax(1).numpy()
        common = dict(budget=budget, eval_x=eval_x, eval_y=eval_y, target_labels=target_labels, num_classes=k,
                      epochs=epochs, seed=seed)
        if method == "knockoff":
            result = knockoff_extract(remote, x_test[half:] if budget <= len(x_test) - half else x_train, **common)
        else:
            rng = np.random.default_rng(seed)
            result = jacobian_extract(remote, x_train[rng.permutation(len(x_train))[:seeds]], **common)
    write_result_dir(result, out)
    summary = {k_: v for k_, v in result.to_dict().items() if k_ != "curve"}
    _say(json.dumps(summary, default=float))
    _say(f"result directory: {out}")


@attack_app.command("hyperparameters")
def hyperparameters(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding final_model.pt (and config.toml: the "
                                            "true train.weight_decay to compare with).")],
    examples: Annotated[int | None, typer.Option("--examples", min=1, help="Training examples the attacker knows "
                                                 "(a seeded subset; default: all).")] = None,
    regularise_bias: Annotated[bool, typer.Option("--regularise-bias/--no-regularise-bias",
                                                  help="Whether the bias was regularised too (PyTorch's "
                                                  "weight_decay: yes).")] = True,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Write result.json here.")] = None,
) -> None:
    """Steal the L2 regularisation (weight decay) a run's final model was trained with (Wang & Gong, S&P 2018):
    the attacker knows the parameters and the training data and solves the stationarity condition."""
    import tomllib

    import numpy as np
    import torch

    from fedsec.extraction import steal_l2_regularisation
    from fedsec.results.model_file import load_final_model

    from .errors import ModelFileError, ServingError
    from .reference import raw_dataset

    try:
        served = load_final_model(run_dir)
    except (ServingError, ModelFileError) as e:
        raise _fail(str(e)) from None
    try:
        x_train, y_train, *_, norm = raw_dataset(served.dataset)
    except ValueError as e:
        raise _fail(f"{run_dir}: the model's dataset {served.dataset!r} has no training data here: {e}") from None
    if examples and examples < len(x_train):
        keep = np.sort(np.random.default_rng(seed).choice(len(x_train), size=examples, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]
    x = torch.from_numpy(np.ascontiguousarray(x_train))
    if norm is not None:  # the model reads normalised inputs, as in training
        x = (x - norm[0]) / norm[1]
    try:
        estimate = steal_l2_regularisation(served.module, x, torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
                                           regularise_bias=regularise_bias)
    except ValueError as e:
        raise _fail(str(e)) from None
    result = {"method": "stationary_l2", "examples": len(x_train), "regularise_bias": regularise_bias,
              "lambda": estimate.lam, "weight_decay": estimate.weight_decay, "residual": estimate.residual}
    try:
        truth = tomllib.loads((run_dir / "config.toml").read_text()).get("train", {}).get("weight_decay")
    except (OSError, ValueError):
        truth = None
    if truth is not None:
        result["true_weight_decay"] = float(truth)
        result["relative_error"] = (abs(estimate.weight_decay - truth) / truth) if truth else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    _say(json.dumps(result))
    if estimate.residual > 0.1:
        err.print(f"note: residual {estimate.residual:.3g}: the parameters are far from a stationary point of "
                  "loss + lambda ||theta||^2 (not trained to convergence, or not by that objective); the estimate "
                  "is not reliable", markup=False, highlight=False, soft_wrap=True)


@attack_app.command("scenario")
def scenario(
    scenario_file: Annotated[Path, typer.Argument(help="SCENARIO.toml (see experiments/serving/).")],
    out: Annotated[Path | None, typer.Option("--out", help="Output directory.")] = None,
) -> None:
    """Run a deployment scenario (honest, unauthorized and extraction users against a real server)."""
    from .errors import ModelFileError, ServingError
    from .scenario import run_scenario

    out = out or Path("runs") / f"scenario-{scenario_file.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        report = run_scenario(scenario_file, out=out)
    except (ServingError, ModelFileError) as e:
        raise _fail(str(e)) from None
    _say((out / "report.md").read_text())
    _say(f"A/C={report['A/C']['value']}  Q={report['Q']['value']}  report: {out / 'report.json'}")


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``serve-keygen`` and the ``attack`` sub-app (``extract``, ``scenario``) to ``app``."""
    app.command("serve")(serve)
    app.command("serve-keygen")(keygen)
    app.add_typer(attack_app, name="attack")
