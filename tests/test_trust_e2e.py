"""End to end: a CKKS run through Ray with signed ciphertexts, the key authority as a Ray actor, and a
count-lying client. Under CKKS the default weighting ("capped") has clients encrypt their update with weight 1
(the server cannot cap a count inside a ciphertext), so the liar's claim of 1e6 examples is recorded but weighs
exactly as much as every other client: 1/k."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fedsec.plan import build_plan
from fedsec.runtime.runner import run_experiment

pytestmark = pytest.mark.e2e


@pytest.mark.usefixtures("shared_ray")
def test_ckks_run_with_a_count_liar_is_signed_verified_and_bounded(tmp_path):
    from fedsec.config import Experiment

    experiment = Experiment.model_validate({
        "name": "trust-e2e", "seed": 0, "rounds": 2,
        "data": {"dataset": "digits", "partition": "iid", "num_clients": 5},
        "model": {"name": "logreg"},
        "train": {"clients_per_round": 4},
        "attack": {"kind": "count_lie", "client_ids": [1], "claimed": 1e6},
        "encryption": {"scheme": "ckks"},
    })
    result = run_experiment(build_plan(experiment), tmp_path / "run")
    assert result.summary["stopped_reason"] == "completed"
    rounds = pd.read_csv(result.run_dir / "rounds.csv").set_index("round")
    assert rounds.loc[[1, 2], "skipped"].eq(0).all()
    assert rounds.loc[[1, 2], "sign_seconds"].gt(0).all()  # clients signed; the server verified before the authority
    clients = pd.read_csv(result.run_dir / "clients.csv")
    assert (clients["status"] == "accepted").all(), clients["status"].tolist()
    for _, round_rows in clients.groupby("round"):
        k = len(round_rows)
        assert all(math.isclose(w, 1 / k) for w in round_rows["accepted"])  # the liar weighs 1/k, not ~1
    liar = clients[clients["client"] == 1]
    assert not liar.empty and (liar["num_examples"] == 1_000_000).all()  # the lie is recorded as made
