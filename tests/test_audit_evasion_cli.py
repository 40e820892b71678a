"""``fedsec audit evasion RUN_DIR``: a finished run's final model re-evaluated at several budgets, and under C&W with
``--cw-max-iter`` (a small digits CNN written as a run directory; no Ray)."""

from __future__ import annotations

import json

import art.attacks.evasion  # noqa: F401  (see below)
import pandas as pd
import pytest
from test_serving_support import write_digits_run
from typer.testing import CliRunner

from fedsec.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ART configures logging when first imported (logging.config.dictConfig closes every existing handler). Imported
# inside CliRunner.invoke, that closed a handler another library had bound to pytest's capture stream (absl's,
# from an earlier test file), and pytest died at teardown; importing ART here, at collection, avoids it.


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = write_digits_run(tmp_path_factory.mktemp("run") / "digits-run", epochs=6)
    (path / "config.toml").write_text('name = "digits-run"\nseed = 0\n\n[data]\ndataset = "digits"\n')
    return path


def test_curve_and_cw_block(run_dir):
    result = CliRunner().invoke(app, ["audit", "evasion", str(run_dir), "--epsilons", "0.05,0.3", "--steps", "5",
                                      "--examples", "60", "--cw-max-iter", "30", "--cw-binary-search-steps", "3",
                                      "--cw-learning-rate", "0.1", "--cw-initial-const", "10"])
    assert result.exit_code == 0, result.output
    curve = pd.read_csv(run_dir / "evasion" / "curve.csv")
    assert sorted(curve["attack"].unique()) == ["fgsm", "pgd"] and (curve["total"] == 60).all()
    pgd = curve[curve["attack"] == "pgd"].set_index("epsilon")["robust_accuracy"]
    assert pgd[0.3] < pgd[0.05]  # a larger budget never helps the model here
    cw = json.loads((run_dir / "evasion" / "cw.json").read_text())
    assert cw["max_iter"] == 30 and cw["binary_search_steps"] == 3
    assert cw["learning_rate"] == 0.1 and cw["initial_const"] == 10
    clean = int(cw["clean"].split(" / ")[0])
    assert clean > 45  # the model is trained: most of the 60 inputs are classified correctly
    assert cw["success_rate"] > 0.8 and 0 < cw["median_l2"] < 8  # digits pixels in [0, 1], 64 of them
    correct = int(cw["counts"].split(" / ")[0])
    assert cw["robust_accuracy"] == pytest.approx(correct / 60)
    assert "C&W L2: success" in result.output
    assert (run_dir / "evasion" / "robustness_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_without_cw_writes_no_cw_block(tmp_path):
    run = write_digits_run(tmp_path / "r", epochs=1)
    (run / "config.toml").write_text('seed = 0\n[data]\ndataset = "digits"\n')
    result = CliRunner().invoke(app, ["audit", "evasion", str(run), "--epsilons", "0.1", "--examples", "20",
                                      "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert not (run / "evasion" / "cw.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--epsilons", "1.5"], "--epsilons: 1.5 must be in (0, 1]"),
     (["--epsilons", "a"], "is not a number")],
)
def test_bad_budgets_exit_2_with_one_line(run_dir, args, message):
    result = CliRunner().invoke(app, ["audit", "evasion", str(run_dir), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_missing_model_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["audit", "evasion", str(tmp_path), "--epsilons", "0.1"])
    assert result.exit_code == 2
    assert "final_model.pt" in " ".join(result.output.split())
