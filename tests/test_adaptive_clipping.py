"""Adaptive clipping for central DP (Andrew et al. 2021; strategies/dp_fedavg.py): the noise split against Flower's
own computation, the bound's geometric update against Flower's, the bound finding the target quantile, and a run
through fedsec's real round loop (in process): the bound per round in rounds.csv, the accountant's epsilon unchanged,
reproducible and resumable."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping, FedAvg
from flwr.supercore.differential_privacy import compute_adaptive_noise_params

from fedsec.config import ConfigError
from fedsec.plan import plan_from_dict
from fedsec.privacy import PrivacyError, adaptive_update_noise_multiplier
from fedsec.strategies.dp_fedavg import next_clip_norm, noised_unclipped_share
from tests.in_process import run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CENTRAL = {"mode": "central", "noise_multiplier": 1.0, "epsilon": 60.0, "delta": 1e-3, "clip_norm": 0.05}
BASE = {"name": "adaptive", "seed": 1, "rounds": 4,
        "data": {"dataset": "digits", "partition": "iid", "num_clients": 6}, "model": {"name": "logreg"},
        "train": {"clients_per_round": 6, "local_epochs": 1, "batch_size": 32, "lr": 0.1, "sampling": "fixed"}}


def config(**privacy) -> dict:
    return {**BASE, "privacy": {**CENTRAL, **privacy}}


@pytest.mark.parametrize(("z", "k", "std"), [(1.0, 100, None), (0.8, 40, None), (1.5, 10, 2.0), (3.0, 10, 4.0)])
def test_update_noise_equals_flowers_split(z, k, std):
    count_std, flower_z = compute_adaptive_noise_params(z, k, std)
    assert adaptive_update_noise_multiplier(z, count_std) == pytest.approx(flower_z, rel=1e-12)
    assert flower_z > z


def test_too_little_count_noise_is_refused_as_flower_refuses_it():
    with pytest.raises(ValueError, match="clipped_count_stddev"):
        compute_adaptive_noise_params(1.0, 10, None)  # sigma_b = 0.5: 2 sigma_b = z
    with pytest.raises(PrivacyError, match="privacy.clip_count_std"):
        adaptive_update_noise_multiplier(1.0, 0.5)


@pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 0.9, 1.0, 1.3])
def test_the_geometric_update_equals_flowers(share):
    flower = DifferentialPrivacyServerSideAdaptiveClipping(FedAvg(), noise_multiplier=0.0, num_sampled_clients=4,
                                                           initial_clipping_norm=0.7, target_clipped_quantile=0.3,
                                                           clip_norm_lr=0.25)
    flower._geometric_update(share)
    assert next_clip_norm(0.7, share, target_quantile=0.3, lr=0.25) == pytest.approx(flower.clipping_norm, rel=1e-12)


@pytest.mark.parametrize("target", [0.2, 0.5, 0.9])
def test_the_bound_finds_the_target_quantile_of_the_norms(target):
    norms = torch.linspace(1.0, 10.0, 50, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    clip = 0.1
    for _ in range(300):
        share = noised_unclipped_share(norms, clip, count_std=0.5, expected_clients=50, generator=generator)
        clip = next_clip_norm(clip, share, target_quantile=target, lr=0.2)
    quantile = float(torch.quantile(norms, target))
    assert abs(clip - quantile) < 0.1 * quantile + 0.2  # the noise (sigma_b / k = 1%) keeps it wandering a little


def test_a_run_moves_the_bound_each_round_and_spends_what_fixed_clipping_spends(tmp_path, server_identity):
    adaptive = run_in_process(config(clipping="adaptive", clip_count_std=2.0), tmp_path / "adaptive")
    fixed = run_in_process(config(), tmp_path / "fixed")
    rounds = adaptive[adaptive["round"] > 0].reset_index(drop=True)
    assert rounds["clip_norm"].iloc[0] == pytest.approx(0.05)
    for r in range(len(rounds) - 1):  # each round's bound is the geometric update of the one before
        expected = next_clip_norm(rounds["clip_norm"].iloc[r], rounds["unclipped_share"].iloc[r],
                                  target_quantile=0.5, lr=0.2)
        assert rounds["clip_norm"].iloc[r + 1] == pytest.approx(expected, rel=1e-9)
    # the updates' norms of digits' logreg are far above 0.05: nothing fits, so the bound grows every round
    assert (rounds["clip_norm"].diff().dropna() > 0).all()
    # the accountant keeps z: the count's release is paid by the larger update noise, not by more epsilon
    pd.testing.assert_series_equal(adaptive["epsilon"], fixed["epsilon"])
    assert "clip_norm" not in fixed.columns


def test_an_adaptive_run_is_reproducible_and_resumes_with_its_bound(tmp_path, server_identity):
    raw = config(clipping="adaptive", clip_count_std=2.0, target_quantile=0.8)
    whole = run_in_process(raw, tmp_path / "whole")
    again = run_in_process(raw, tmp_path / "again")
    pd.testing.assert_frame_equal(whole, again)
    run_in_process(raw, tmp_path / "killed", stop_after=2)
    resumed = run_in_process(raw, tmp_path / "killed", resume=True)
    pd.testing.assert_frame_equal(resumed, whole)


@pytest.mark.parametrize(("privacy", "extra", "fragment"), [
    ({"clipping": "adaptive"}, {}, "privacy.clip_count_std=0.3"),  # default 6 / 20 = 0.3 < z / 2
    ({"clipping": "adaptive", "clip_count_std": 2.0}, {"encryption": {"scheme": "ckks"}}, "privacy.clipping"),
    ({"clipping": "adaptive", "target_quantile": 1.0}, {}, "target_quantile"),
])
def test_bad_adaptive_configs_name_the_key(privacy, extra, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        plan_from_dict({**config(**privacy), **extra})


def test_the_plan_hands_the_strategy_z_delta_and_the_accountant_z():
    plan = plan_from_dict(config(clipping="adaptive", clip_count_std=2.0))
    assert plan.privacy.noise_multiplier == 1.0
    assert plan.privacy.update_noise_multiplier == pytest.approx(1 / math.sqrt(1 - 1 / 16))
    strategy = plan.server_strategy()
    assert strategy.noise_multiplier == pytest.approx(plan.privacy.update_noise_multiplier)
    assert strategy.adaptive is not None and strategy.adaptive.count_std == 2.0
