"""``[eval]``: rounds evaluated every N, a stratified subset between, the last round and an early-stopped run's final
model on the whole test set; through fedsec's real round loop (in process)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from fedsec.config import ConfigError
from fedsec.hooks.evaluation import stratified_subset
from fedsec.plan import plan_from_dict
from fedsec.results.contract import round_status
from tests.in_process import run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RAW = {"name": "eval", "seed": 2, "rounds": 5,
       "data": {"dataset": "digits", "partition": "iid", "num_clients": 4}, "model": {"name": "logreg"},
       "train": {"clients_per_round": 4, "local_epochs": 1, "batch_size": 32, "lr": 0.1}}


def test_the_subset_keeps_every_class_share_and_is_seeded():
    labels = torch.arange(10).repeat_interleave(torch.arange(1, 11) * 10)  # class c has 10 (c + 1) examples
    index = stratified_subset(labels, 110, seed=0)
    assert index.numel() == 110 and index.unique().numel() == 110
    assert labels[index].bincount().tolist() == list(range(2, 21, 2))
    assert torch.equal(index, stratified_subset(labels, 110, seed=0))
    assert not torch.equal(index, stratified_subset(labels, 110, seed=1))


def test_every_and_examples_pick_the_rounds_and_the_last_round_is_full(tmp_path, server_identity):
    full = run_in_process(RAW, tmp_path / "full")
    sparse = run_in_process({**RAW, "eval": {"every": 2, "examples": 100}}, tmp_path / "sparse")
    assert sparse["accuracy"].isna().tolist() == [False, True, False, True, False, False]
    assert sparse["eval_examples"].tolist()[2] == 100 and math.isnan(sparse["eval_examples"].iloc[5])
    # the same training (evaluation changes nothing else): the last round's full evaluation equals the full run's
    assert sparse["accuracy"].iloc[5] == full["accuracy"].iloc[5] and sparse["loss"].iloc[0] == full["loss"].iloc[0]
    assert sparse["accuracy"].iloc[2] != full["accuracy"].iloc[2] or sparse["loss"].iloc[2] != full["loss"].iloc[2]
    pd.testing.assert_series_equal(sparse["clients_accepted"], full["clients_accepted"])
    assert round_status(sparse.iloc[1].to_dict()) == "round 1: not evaluated ([eval] every)"
    assert round_status(sparse.iloc[2].to_dict()).endswith("(on 100 test examples)")


def test_an_early_stop_evaluates_the_final_model_in_full(tmp_path, server_identity):
    raw = {**RAW, "eval": {"every": 10}, "privacy": {"mode": "central", "noise_multiplier": 2.0, "epsilon": 3.0,
                                                      "delta": 1e-3, "clip_norm": 5.0}}
    stop = plan_from_dict(raw).privacy.rounds_within_budget
    assert 1 < stop < 5  # the guard stops the run before the last planned round
    rows = run_in_process(raw, tmp_path / "stopped")
    assert rows.attrs["stopped_reason"] == "privacy_budget" and int(rows["round"].iloc[-1]) == stop
    assert rows["accuracy"].iloc[1:].isna().all()  # no round was due an evaluation
    summary = rows.attrs["summary"]
    assert summary["final_evaluation"].endswith(f"after round {stop} ([eval] had not evaluated it in full)")
    every_round = run_in_process({**raw, "eval": {"every": 1}}, tmp_path / "every")
    assert summary["accuracy"] == every_round["accuracy"].iloc[-1]  # the final model's own accuracy
    assert "final_evaluation" not in every_round.attrs["summary"]


def test_eval_keys_are_bounded():
    for bad in ({"every": 0}, {"examples": -1}, {"every": 10**6}):
        with pytest.raises(ConfigError, match=r"eval\."):
            plan_from_dict({**RAW, "eval": bad})
