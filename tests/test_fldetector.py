"""FLDetector (Zhang et al. 2022; strategies/fldetector.py): the L-BFGS product, and runs through fedsec's real round
loop (in process) where Gaussian attackers are found once the window is full and stay removed; resumable."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from fedsec.strategies.fldetector import lbfgs_hessian_product
from tests.in_process import run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RAW = {"name": "fldetector", "seed": 0, "rounds": 6,
       "data": {"dataset": "digits", "partition": "iid", "num_clients": 10}, "model": {"name": "logreg"},
       "train": {"clients_per_round": 10, "local_epochs": 1, "batch_size": 32, "lr": 0.1},
       "attack": {"kind": "gaussian", "fraction": 0.2}, "defense": {"strategy": "fldetector", "window": 3}}


def test_the_lbfgs_product_meets_the_last_secant_condition_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 20, generator=g, dtype=torch.float64)
    hessian = a @ a.T + 20 * torch.eye(20, dtype=torch.float64)  # a convex quadratic's
    s = torch.randn(5, 20, generator=g, dtype=torch.float64)
    y = s @ hessian  # y_k = H s_k
    assert torch.allclose(lbfgs_hessian_product(s, y, s[-1]), y[-1], rtol=1e-8, atol=1e-8)
    u, v = torch.randn(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    assert float(u @ lbfgs_hessian_product(s, y, v)) == pytest.approx(float(v @ lbfgs_hessian_product(s, y, u)))


def test_gaussian_attackers_are_found_after_the_window_and_stay_removed(tmp_path, server_identity):
    rows = run_in_process(RAW, tmp_path / "run")
    clients = pd.read_csv(tmp_path / "run" / "clients.csv")
    malicious = set(clients.loc[clients["malicious"] == 1, "client"])
    assert len(malicious) == 2
    screened = clients[clients["round"] > 3]  # detection starts once 3 pairs are kept
    assert (screened.loc[screened["client"].isin(malicious), "accepted"] == 0).all()
    assert (screened.loc[~screened["client"].isin(malicious), "accepted"] > 0).all()
    early = clients[clients["round"] <= 3]
    assert (early["accepted"] > 0).all()  # no screening before the window is full
    late = rows[rows["round"] > 3]
    assert (late["detection_precision"] == 1.0).all() and (late["detection_recall"] == 1.0).all()


def test_a_killed_fldetector_run_resumes_with_its_history(tmp_path, server_identity):
    whole = run_in_process(RAW, tmp_path / "whole")
    run_in_process(RAW, tmp_path / "killed", stop_after=4)
    resumed = run_in_process(RAW, tmp_path / "killed", resume=True)
    pd.testing.assert_frame_equal(resumed, whole)
