"""Runs that share one Ray connection keep their client actors (fedsec/runtime/warm_actors.py): the next run reuses
them, its rows are those of fresh actors, and a dead actor is replaced."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedsec.plan import load_plan
from fedsec.runtime import warm_actors
from fedsec.runtime.runner import one_ray_for_many_runs, run_experiment

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "digits_smoke.toml"


def _rows(run_dir: Path) -> dict[str, pd.DataFrame]:
    timing_free = r"^(?!.*seconds$)(?!node$)"
    return {t: pd.read_csv(run_dir / t).filter(regex=timing_free) for t in ("rounds.csv", "clients.csv")}


def _actor_ids() -> set[str]:
    return {a._actor_id.hex() for kept in warm_actors._KEPT.values() for a in kept}


@pytest.mark.e2e
def test_runs_in_one_ray_reuse_their_actors_with_the_rows_of_fresh_ones(tmp_path):
    import ray

    fedavg = ["rounds=1", "data.num_clients=3", "train.clients_per_round=3"]
    with one_ray_for_many_runs():
        first = run_experiment(load_plan(SMOKE, fedavg), tmp_path / "a")  # fresh actors
        started = _actor_ids()
        assert started and warm_actors.kept_actor_count() == len(started)
        colluding = ["seed=1", "defense.strategy='median'", "attack.kind='alie'", "attack.client_ids=[0]"]
        boards: list[list[str]] = []

        def seen(row: dict) -> None:
            boards.append([n for n in ray.util.list_named_actors() if n.startswith("fedsec-collusion-")])

        other = run_experiment(load_plan(SMOKE, [*fedavg, *colluding]), tmp_path / "b", on_round=seen)
        assert boards and all(len(b) == 1 for b in boards)  # the colluders' board lived through the run
        assert not [n for n in ray.util.list_named_actors() if n.startswith("fedsec-collusion-")]  # and ended with it
        again = run_experiment(load_plan(SMOKE, fedavg), tmp_path / "c")  # after another config's run
        assert _actor_ids() == started  # no actor started for the second and third runs
        ray.kill(next(a for kept in warm_actors._KEPT.values() for a in kept))  # an actor dies between runs
        replaced = run_experiment(load_plan(SMOKE, fedavg), tmp_path / "d")
        assert _actor_ids().isdisjoint(started)  # the pool was started anew
        wider = run_experiment(load_plan(SMOKE, [*fedavg, "backend.num_cpus=2"]), tmp_path / "e")
        assert len(warm_actors._KEPT) == 1  # the 1-CPU actors made room for the 2-CPU ones
        assert ray.is_initialized()
    assert not ray.is_initialized() and warm_actors.kept_actor_count() == 0  # the block's end stops Ray
    assert other.summary["rounds_completed"] == wider.summary["rounds_completed"] == 1
    for run in (again, replaced):
        for table, frame in _rows(run.run_dir).items():
            pd.testing.assert_frame_equal(frame, _rows(first.run_dir)[table])
