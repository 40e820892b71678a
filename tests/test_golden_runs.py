"""Runs recorded before the round loop became a list of hooks (``tests/golden/``) come out the same after it:
every column of rounds.csv and clients.csv but the wall-clock ones, for the quickstart, a local-DP run, a CKKS run,
a run stopped after round 1 and resumed, and runs with every audit (the slow ones behind ``-m slow``:
``bash scripts/dev.sh slow``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))

from cases import CASES, HERE, volatile  # noqa: E402
from record import overrides_for  # noqa: E402

from fedsec.plan import load_plan  # noqa: E402
from fedsec.runtime.runner import run_experiment  # noqa: E402

pytestmark = pytest.mark.e2e


def assert_same(golden: Path, run_dir: Path) -> None:
    for file in ("rounds.csv", "clients.csv"):
        want, got = pd.read_csv(golden / file), pd.read_csv(run_dir / file)
        keep = [c for c in want.columns if not volatile(c)]
        assert sorted(c for c in got.columns if not volatile(c)) == sorted(keep), file
        assert len(got) == len(want), file
        # same machine: equal to the last bit in practice; the tolerance only absorbs another CPU's kernels
        pd.testing.assert_frame_equal(got[keep], want[keep], check_exact=False, rtol=1e-5, atol=1e-7,
                                      check_dtype=False, obj=file)


def cases(slow: bool) -> list[str]:
    return [name for name, (_, _, is_slow) in CASES.items() if is_slow == slow and name != "resumed"]


@pytest.mark.usefixtures("shared_ray")
@pytest.mark.parametrize("name", cases(slow=False))
def test_golden_run(name, tmp_path):
    path, _, _ = CASES[name]
    result = run_experiment(load_plan(path, overrides_for(name)), tmp_path / "run")
    assert result.summary["stopped_reason"] == "completed"
    assert_same(HERE / name, result.run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("name", cases(slow=True))
def test_golden_run_slow(name, tmp_path):
    test_golden_run(name, tmp_path)


@pytest.mark.usefixtures("shared_ray")
def test_resumed_run_equals_the_uninterrupted_recording(tmp_path):
    """Stopped after round 1 (centered clipping's momentum, the omniscient attack, the membership audit and the
    checkpoint in between), then resumed: the rows are those of the uninterrupted run recorded on the old code."""
    import threading

    path, _, _ = CASES["resumed"]
    plan = load_plan(path, overrides_for("resumed"))
    stop = threading.Event()
    first = run_experiment(plan, tmp_path / "run", stop=stop, on_round=lambda row: row["round"] == 1 and stop.set())
    assert first.summary["stopped_reason"] == "interrupted" and first.summary["rounds_completed"] == 1
    resumed = run_experiment(plan, tmp_path / "run", resume=True)
    assert resumed.summary["stopped_reason"] == "completed" and resumed.summary["rounds_completed"] == 3
    assert resumed.summary["membership"]["status"] == "done"
    assert_same(HERE / "resumed", resumed.run_dir)
