"""CRFL (Xie et al., ICML 2021): the training-time clipping and noise (strategies/crfl.py), the certificate's kernels
(fedsec/audits/certified.py) against a hand computation, and runs through fedsec's real round loop (in process) with
``[audit.certify]``: columns per round, no certificate before the attack round, resumable."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fedsec.audits.certified import CertificateSpec, certified_accuracy, certified_radius, hoeffding_bounds, vote_counts
from fedsec.errors import ConfigError
from fedsec.plan import plan_from_dict
from fedsec.strategies.crfl import clip_and_perturb, crfl_clip_bound
from tests.in_process import run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RAW = {"name": "crfl", "seed": 0, "rounds": 4,
       "data": {"dataset": "digits", "partition": "iid", "num_clients": 6}, "model": {"name": "logreg"},
       "train": {"clients_per_round": 6, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
       "attack": {"kind": "backdoor", "client_ids": [0], "start_round": 2, "poison_ratio": 0.2},
       "defense": {"strategy": "crfl", "param_clip": 2.0, "clip_slope": 0.5, "clip_intercept": 1.0},
       "audit": {"certify": {"samples": 100, "examples": 40}}}


def test_the_radius_matches_a_hand_computed_case():
    # two rounds after the attack (t_adv = 3, T = 5): rho_4 = 0.02 under sigma_train = 0.01, rho_5 = 0.03 under
    # sigma_test = 0.02, so both contraction factors are well below 1
    spec = CertificateSpec(sigma_train=0.01, sigma_test=0.02, lr=0.05, local_iterations=10, attackers=2,
                           attacker_weight=0.1, scale=5.0, poison_ratio=0.05, lipschitz=math.sqrt(17), attack_round=3,
                           clip_bounds=[0.02, 0.03])
    p_a, p_b = 0.8, 0.1
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    contraction = (2 * phi(0.02 / 0.01) - 1) * (2 * phi(0.03 / 0.02) - 1)
    assert 0.6 < contraction < 0.9
    numerator = -math.log(1 - (math.sqrt(p_a) - math.sqrt(p_b)) ** 2) * 0.01 ** 2
    denominator = 2 * 2 * 10 ** 2 * 17 * (2 * 0.1 ** 2) * 5 ** 2 * 0.05 ** 2 * 0.05 ** 2 * contraction
    expected = math.sqrt(numerator / denominator)
    got = certified_radius(np.array([p_a, 0.4, 1.0]), np.array([p_b, 0.45, 0.0]), spec)
    assert got[0] == pytest.approx(expected, rel=1e-12)
    assert got[1] == 0.0  # p_A <= p_B: not certified
    assert math.isinf(got[2])
    assert certified_radius(np.array([p_a]), np.array([p_b]), CertificateSpec(
        **{**spec.__dict__, "clip_bounds": []}))[0] == 0.0  # no round after the attack: nothing certified


def test_hoeffding_bounds_and_certified_accuracy():
    counts = torch.tensor([[70, 20, 10], [34, 33, 33]])
    p_a, p_b, top = hoeffding_bounds(counts, alpha=0.01)
    slack = math.sqrt(math.log(100) / 200)
    assert p_a.tolist() == pytest.approx([0.7 - slack, 0.34 - slack])
    assert p_b.tolist() == pytest.approx([0.2 + slack, 0.33 + slack])
    assert top.tolist() == [0, 0]
    assert certified_accuracy(np.array([0.3, 0.0]), np.array([True, True]), 0.2) == 0.5


def test_clipping_binds_and_the_noise_has_its_std():
    v = torch.full((10_000,), 0.1)  # norm 10
    clipped, norm = clip_and_perturb(v, 2.0, 0.0)
    assert norm == pytest.approx(10.0, rel=1e-6) and float(clipped.double().norm()) == pytest.approx(2.0, rel=1e-5)
    noisy, _ = clip_and_perturb(v, 2.0, 0.05, torch.Generator().manual_seed(1))
    assert float((noisy - clipped).std()) == pytest.approx(0.05, rel=0.05)
    assert crfl_clip_bound(3, param_clip=2.0, clip_slope=0.5, clip_intercept=1.0) == 2.0


def test_votes_of_noise_free_copies_are_the_models_prediction():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    shapes = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    vector = torch.cat([t.flatten() for t in model.state_dict().values()])
    counts = vote_counts(model, vector, shapes, x, samples=10, sigma=1e-12, num_classes=3,
                         generator=torch.Generator().manual_seed(0), chunk=4)
    assert counts.sum(1).tolist() == [10] * 8
    assert counts.argmax(1).tolist() == model(x).argmax(1).tolist()
    noisy = vote_counts(model, vector, shapes, x, samples=50, sigma=5.0, num_classes=3,
                        generator=torch.Generator().manual_seed(0))
    assert (noisy.max(1).values < 50).any()  # large noise splits the vote


def test_a_crfl_run_is_clipped_certified_after_the_attack_round_and_resumes(tmp_path, server_identity):
    rows = run_in_process(RAW, tmp_path / "run")
    # rho_t = min(2, 0.5 t + 1): 1.5 in round 1, then the cap; every model norm before clipping is above it
    assert rows.loc[1:, "crfl_clip_bound"].tolist() == [1.5, 2.0, 2.0, 2.0]
    assert (rows.loc[1:, "crfl_model_norm"] > rows.loc[1:, "crfl_clip_bound"]).all()
    assert rows.loc[1:2, "certified_accuracy"].isna().all()  # t_adv = attack.start_round = 2: no rounds after it yet
    late = rows.loc[3:]
    assert (late["certified_radius_median"] > 0).all()
    assert (late["certified_accuracy"] <= late["smoothed_accuracy"]).all()
    assert late["smoothed_accuracy"].iloc[-1] > 0.5  # digits, logreg: far above chance (0.1)
    block = rows.attrs["summary"]["certified"]
    assert block["threat_model"]["attack_round"] == 2 and block["threat_model"]["attackers"] == 1
    assert block["curve"][0]["certified_accuracy"] >= block["curve"][-1]["certified_accuracy"]

    run_in_process(RAW, tmp_path / "cut", stop_after=2)
    resumed = run_in_process(RAW, tmp_path / "cut", resume=True)
    pd.testing.assert_frame_equal(resumed.reset_index(drop=True), rows.reset_index(drop=True))


def test_the_certificate_needs_crfl_and_crfl_refuses_a_server_optimizer():
    with pytest.raises(ConfigError, match="audit.certify needs defense.strategy='crfl'"):
        plan_from_dict({**RAW, "defense": {"strategy": "fedavg"}})
    with pytest.raises(ConfigError, match="server.optimizer='fedavgm' with defense.strategy='crfl'"):
        plan_from_dict({**RAW, "server": {"optimizer": "fedavgm"}})
