"""Config validation: every kind of bad input gives one line naming the key and the reason (exit 2 in the CLI)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsec.cli import app
from fedsec.config import ConfigError, Experiment, apply_overrides, experiment_from_dict, load_experiment
from fedsec.plan import load_plan, plan_from_dict

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    return path


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        plan_from_dict(raw)
    return str(info.value)


def test_defaults_fill_in_and_round_trip():
    exp = experiment_from_dict({"name": "x", "data": {"dataset": "digits"}})
    assert exp.train.batch_size == 32 and exp.defense.strategy == "fedavg" and exp.backend.address == ""
    again = Experiment.model_validate(tomllib.loads(exp.to_toml()))
    assert again == exp


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ({"train": {"lrr": 0.1}}, ["train.lrr", "unknown key"]),
        ({"bogus": 1}, ["bogus", "unknown key"]),
        ({"train": {"lr": -0.5}}, ["train.lr", "greater than 0", "-0.5"]),
        ({"rounds": "many"}, ["rounds", "valid integer", "'many'"]),
        ({"data": {"dataset": "cifar"}}, ["data.dataset", "'cifar'", "fashion-mnist"]),
        ({"data": {"dataset": "digits", "num_clients": 4}, "train": {"clients_per_round": 5}},
         ["train.clients_per_round=5", "data.num_clients=4"]),
        ({"data": {"dataset": "digits"}, "model": {"name": "cnn_mcmahan"}}, ["model.name='cnn_mcmahan'", "28x28"]),
        ({"data": {"dataset": "synthetic"}, "model": {"name": "cnn"}}, ["model.name='cnn'", "image inputs"]),
        ({"data": {"dataset": "digits", "partition": "natural"}}, ["data.partition='natural'", "synthetic"]),
        ({"model": {"name": "resnet"}}, ["model.name='resnet'", "unknown", "logreg"]),
        ({"defense": {"strategy": "krumm"}}, ["defense.strategy='krumm'", "unknown", "fedavg"]),
        ({"privacy": {"delta": 1.5}}, ["privacy.delta", "less than 1"]),
        ({"data": {"dataset": "fashion-mnist", "root": "/nonexistent/fm"}},
         ["data.root", "/nonexistent/fm", "dataset-fashion-mnist"]),
        ({"attack": {"start_round": 3, "end_round": 2}}, ["attack.end_round=2", "start_round=3"]),
    ],
)
def test_bad_configs_name_the_key_and_reason(raw, fragments):
    message = error_of(raw)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_overrides_parse_toml_values_and_bare_strings():
    raw = apply_overrides({"train": {"lr": 0.1}}, ["train.lr=0.5", "defense.strategy=fedavg", "data.num_clients=7"])
    assert raw == {"train": {"lr": 0.5}, "defense": {"strategy": "fedavg"}, "data": {"num_clients": 7}}
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.lr"])


def test_load_errors_for_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_experiment(write(tmp_path, "rounds = = 3"))


def test_cli_validate_exit_codes_without_traceback(tmp_path):
    ok = runner.invoke(app, ["validate", str(REPO / "experiments" / "digits_smoke.toml")])
    assert ok.exit_code == 0, ok.output
    assert "valid" in ok.output
    bad = runner.invoke(app, ["validate", str(write(tmp_path, "[train]\nbatch_size = 0\n"))])
    assert bad.exit_code == 2
    assert "train.batch_size" in bad.output and "Traceback" not in bad.output
    override = runner.invoke(
        app, ["validate", str(REPO / "experiments" / "digits_smoke.toml"), "--set", "train.momentum=1.5"]
    )
    assert override.exit_code == 2 and "train.momentum" in override.output
    missing = runner.invoke(app, ["validate", str(tmp_path / "missing.toml")])
    assert missing.exit_code == 2 and "not found" in missing.output


def _experiment_files() -> list[Path]:
    """Every experiment config under experiments/ (sweep files, which name a base, are tested in test_sweep;
    assessments, which name an experiment, and access policies are not experiment configs)."""
    out = []
    for path in sorted((REPO / "experiments").rglob("*.toml")):
        raw = tomllib.loads(path.read_text())
        if not {"base", "experiment"} & set(raw) and not {"papers", "serving", "policies"} & set(path.parts):
            out.append(path)
    return out


@pytest.mark.parametrize("path", _experiment_files(), ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_shipped_experiments_are_valid(path):
    load_plan(path)


@pytest.mark.parametrize(
    ("defense", "fragments"),
    [
        ({"strategy": "bulyan", "num_malicious": 2},
         ["defense.num_malicious=2", "n >= 4f+3 = 11", "clients_per_round=10"]),
        ({"strategy": "krum", "num_malicious": 4}, ["defense.num_malicious=4", "at least 11", "clients_per_round=10"]),
        ({"strategy": "median", "trim_ratio": 0.1}, ["defense.trim_ratio", "not used", "'median'"]),
        ({"strategy": "trimmed_mean", "trim_ratio": 0.5}, ["defense.trim_ratio", "less than 0.5"]),
        ({"strategy": "norm_clipping", "clip_norm": 0}, ["defense.clip_norm", "greater than 0"]),
    ],
)
def test_bad_defense_configs(defense, fragments):
    message = error_of({"data": {"dataset": "digits", "num_clients": 20}, "train": {"clients_per_round": 10},
                        "defense": defense})
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_num_malicious_defaults_to_the_expected_attackers_per_round():
    plan = plan_from_dict({"data": {"dataset": "digits", "num_clients": 20}, "train": {"clients_per_round": 10},
                           "attack": {"kind": "alie", "fraction": 0.3}, "defense": {"strategy": "multikrum"}})
    assert plan.strategy_cls.config_kwargs(plan.strategy_params, plan.strategy_context()) == {
        "num_malicious": 3, "num_selected": 7}
    plan = plan_from_dict({"data": {"dataset": "digits", "num_clients": 20}, "train": {"clients_per_round": 10},
                           "defense": {"strategy": "krum"}})
    assert plan.strategy_cls.config_kwargs(plan.strategy_params, plan.strategy_context()) == {"num_malicious": 0}


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ({"encryption": {"scheme": "ckks", "coeff_mod_bit_sizes": [60, 40, 40, 60]}},
         ["encryption.poly_modulus_degree=4096", "200 bits", "128-bit-security limit of 109"]),
        ({"encryption": {"scheme": "ckks"}, "defense": {"strategy": "median"}},
         ["encryption.scheme='ckks'", "'median'", "plaintext"]),
        ({"encryption": {"scheme": "ckks"}, "attack": {"kind": "alie", "fraction": 0.5, "knowledge": "omniscient"}},
         ["attack.knowledge='omniscient'", "cannot read encrypted updates"]),
    ],
)
def test_bad_encryption_configs(raw, fragments):
    message = error_of({"data": {"dataset": "digits", "num_clients": 4}, "train": {"clients_per_round": 4}, **raw})
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_list_shows_every_component():
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    from fedsec.clients.attacks import ATTACKS
    from fedsec.config import ENCRYPTION_SCHEMES, PRIVACY_MODES
    from fedsec.data import DATASETS, PARTITIONS
    from fedsec.models import MODELS
    from fedsec.strategies import STRATEGIES

    for names in (DATASETS, PARTITIONS, MODELS, STRATEGIES, ATTACKS, PRIVACY_MODES, ENCRYPTION_SCHEMES):
        for name in names:
            assert f" {name} " in result.output, name
    assert "scale x the update (scale)" in result.output  # a kind-specific key is named
    flat = " ".join(result.output.split())
    for shown in ("[k=3.5, variant='mean_ratio']", "[n_folds=5]", "[scale=", "[synthetic_alpha=1.0",
                  "[attacks=['fgsm', 'pgd'], epsilon=0.1", "[epsilon=8.0, delta=1e-05, clip_norm=1.0",
                  "their own [data] keys"):  # keys in brackets, never eaten as markup
        assert shown in flat, shown


def test_client_slots_count_per_node_as_flowers_actor_pool():
    from fedsec.runtime.runner import client_slots

    nodes = [{"NodeID": "a", "Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
             {"NodeID": "b", "Alive": True, "Resources": {"CPU": 3.0}},
             {"NodeID": "c", "Alive": False, "Resources": {"CPU": 8.0}},
             {"NodeID": "d", "Alive": True, "Resources": {}}]
    assert client_slots(nodes, 1.0, 0.0) == {"a": 4, "b": 3}
    assert client_slots(nodes, 1.5, 0.0) == {"a": 2, "b": 2}
    assert client_slots(nodes, 1.0, 0.25) == {"a": 4, "b": 0}
    assert client_slots(nodes, 1.0, 0.5) == {"a": 2, "b": 0}
    assert client_slots(nodes, 5.0, 0.0) == {"a": 0, "b": 0}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ('name="a\\u0000b"', "name"),
        ("name=" + "x" * 5000, "name"),
        ('name="../../x"', "name"),
        ("seed=99999999999999999999", "seed"),
        ("backend.num_cpus=1e-300", "backend.num_cpus"),
        ("train.lr=inf", "train.lr"),
    ],
)
def test_fedsec_run_refuses_what_validate_refuses_before_touching_anything(tmp_path, override, key):
    """`fedsec run` (not only `validate`) of the issue's bad inputs: exit 2, one line naming the key, no traceback,
    no run directory made."""
    out = tmp_path / "run"
    smoke = REPO / "experiments" / "digits_smoke.toml"
    result = runner.invoke(app, ["run", str(smoke), "--set", override, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"{key}:" in result.output and "Traceback" not in result.output
    assert not out.exists()


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SHIPPED = sorted(p for p in EXPERIMENTS.rglob("*.toml")
                 if not {"serving", "policies"} & set(p.relative_to(EXPERIMENTS).parts)
                 and not {"base", "grid", "experiment"} & set(tomllib.loads(p.read_text())))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_resolved_config_runs_the_same_experiment(path):
    """config.toml is what sweep cells, resumed runs and study read-backs run from: planning it again must give the
    same experiment (it once dropped defense.sanitize and defense.weighting, so sweeps over filters ran none)."""
    plan = load_plan(path)
    again = plan_from_dict(tomllib.loads(plan.to_toml()))
    assert again.schedule == plan.schedule  # train.sampling is written resolved ("auto" -> "poisson" or "fixed")
    assert again.resolved == plan.resolved  # every key, kind keys and audit tables with their defaults
    assert [(h.cls, h.params) for h in again.hooks] == [(h.cls, h.params) for h in plan.hooks]


def test_resolved_config_keeps_sanitize_and_weighting():
    plan = plan_from_dict({"data": {"dataset": "digits", "num_clients": 4}, "train": {"clients_per_round": 4},
                           "defense": {"strategy": "median", "weighting": "reported",
                                       "sanitize": {"method": "threshold", "k": 2.5}}})
    again = plan_from_dict(tomllib.loads(plan.to_toml())).experiment.defense
    assert (again.weighting, again.sanitize.method, again.sanitize.k) == ("reported", "threshold", 2.5)


def test_resolved_config_with_client_ids_validates_again():
    """A config naming its attackers by id resolves to a TOML without attack.fraction (giving both is refused), so
    sweep cells and resumed runs can plan it again."""
    plan = plan_from_dict({"data": {"dataset": "digits", "num_clients": 4}, "model": {"name": "logreg"},
                           "train": {"clients_per_round": 4}, "attack": {"kind": "sign_flip", "client_ids": [1]}})
    again = plan_from_dict(tomllib.loads(plan.to_toml()))
    assert "fraction" not in plan.resolved["attack"] and again.schedule.malicious == (1,)


# ------------------------------------------------------------------------------------ echo, problems, feasibility
DIGITS = {"name": "x", "rounds": 2, "data": {"dataset": "digits", "num_clients": 10}, "model": {"name": "logreg"},
          "train": {"clients_per_round": 5}}


@pytest.mark.parametrize("value", ["[/]", "[bold red]x[/]", ":smile:", "[link=file:///etc]x"])
def test_validate_echoes_a_value_as_given_never_as_markup(tmp_path, value):
    path = write(tmp_path, "")
    result = runner.invoke(app, ["validate", str(path), "--set", f"name={value}"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit | None), repr(result.exception)
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: ") and f"(got {value!r})" in lines[0], lines


def test_validate_lists_every_section_error_on_a_line_of_its_own(tmp_path):
    path = write(tmp_path, 'rounds = "x"\n[train]\nlr = -1\nbatch_size = 0\n[data]\nalpha = 0\nroot = "a\\u0000"\n')
    result = runner.invoke(app, ["validate", str(path)])
    lines = result.output.splitlines()
    assert result.exit_code == 2 and len(lines) == 5, result.output
    keys = ["rounds", "data.alpha", "data.root", "train.lr", "train.batch_size"]
    assert sorted(line.split(": ")[2] for line in lines) == sorted(keys)
    assert all(line.startswith(f"config error: {path}: ") for line in lines)


@pytest.mark.parametrize(("data", "accepted"), [
    ({"partition": "iid", "num_clients": 1347}, True),
    ({"partition": "iid", "num_clients": 1348}, False),
    ({"partition": "sampled", "num_clients": 20, "samples_per_client": 1347}, True),
    ({"partition": "sampled", "num_clients": 20, "samples_per_client": 1348}, False),
    ({"partition": "shards", "num_clients": 673, "shards_per_client": 2}, True),
    ({"partition": "shards", "num_clients": 674, "shards_per_client": 2}, False),
    ({"partition": "linear", "num_clients": 51}, True),  # 51 x 52 / 2 = 1,326 units of 1,347 examples
    ({"partition": "linear", "num_clients": 52}, False),  # 1,378 units: the first client gets 0.98 -> 0
    ({"partition": "exponential", "num_clients": 7}, True),
    ({"partition": "exponential", "num_clients": 8}, False),
    ({"partition": "dirichlet", "num_clients": 20, "alpha": 0.5}, True),
    ({"partition": "dirichlet", "num_clients": 20, "alpha": 0.05}, False),  # estimated 0.994 per draw, 11 draws
    ({"partition": "dirichlet", "num_clients": 100, "alpha": 0.5}, False),
])
def test_validate_accepts_exactly_the_splits_the_partitioner_can_make(data, accepted):
    """The wrong result feared: validate accepts a split that fails at start (or refuses one that works)."""
    from fedsec.data import PartitionError
    from fedsec.data.federated import build_federated_data

    raw = {**DIGITS, "data": {"dataset": "digits", **data}}
    try:
        plan_from_dict(raw)
        validated = True
    except ConfigError as e:
        validated = False
        assert "data." in str(e)
    assert validated == accepted
    experiment = experiment_from_dict(raw)  # the sections alone: what a run would partition
    for seed in (0, 1):
        try:
            build_federated_data(experiment.data, seed)
            built = True
        except PartitionError:
            built = False
        assert built == accepted, f"seed {seed}: the partitioner {'failed' if accepted else 'succeeded'}"


def test_the_run_strategy_gets_backend_aggregate_timeout():
    plan = plan_from_dict({**DIGITS, "backend": {"aggregate_timeout": 5.0}})
    assert plan.server_strategy().aggregate_timeout == 5.0


def test_every_section_with_a_bad_kind_key_is_reported_at_once():
    from fedsec.config import ConfigProblems
    from fedsec.plan import plan_from_dict

    raw = {"rounds": 2, "data": {"dataset": "digits", "partition": "iid", "num_clients": 4},
           "model": {"name": "logreg"}, "train": {"clients_per_round": 4},
           "attack": {"kind": "alie", "fraction": 0.25, "zz": 1}, "defense": {"strategy": "krum", "trim": 0.1},
           "server": {"optimizer": "fedadam", "lrr": 1.0}}
    with pytest.raises(ConfigProblems) as info:
        plan_from_dict(raw, source="x.toml")
    assert [p.split(":")[1].strip() for p in info.value.problems] == ["attack.zz", "defense.trim", "server.lrr"]
    assert all(p.startswith("x.toml: ") for p in info.value.problems)
