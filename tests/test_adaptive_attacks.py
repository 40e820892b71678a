"""Adaptive attacks on small hand-made rounds: Fang (Krum, trimmed mean), AGR-tailored, scale search, Neurotoxin,
norm-constrained model replacement, and the errors that name the key."""

from __future__ import annotations

import math

import pytest
import torch
from tensor_params import DTYPES

from fedsec.clients.attacks.agr_tailored import perturbation_direction, tailored_gamma, tailored_update
from fedsec.clients.attacks.alie import alie_update
from fedsec.clients.attacks.constrained_backdoor import (
    constrain_to_norm,
    constrained_replacement,
    estimate_clip_bound,
)
from fedsec.clients.attacks.fang import (
    fang_krum_lambda,
    fang_krum_update,
    fang_lambda_bound,
    fang_trim_update,
    fang_variant,
)
from fedsec.clients.attacks.minmax import optimised_update
from fedsec.clients.attacks.neurotoxin import neurotoxin_mask, neurotoxin_update
from fedsec.clients.attacks.scale_search import (
    AdaptiveAttackError,
    crafted_weight,
    criterion_for,
    deviation,
    search_alie_z,
    search_ipm_epsilon,
    search_scale,
)
from fedsec.strategies import coordinate_median, multikrum_aggregate, norm_clip, trimmed_mean

# Five honest updates: a plus sign of arm length 1 around (0.5, 0.5); n = 7 with f = 2 attackers.
PLUS = [[1.5, 0.5], [-0.5, 0.5], [0.5, 1.5], [0.5, -0.5], [0.5, 0.5]]


def krum(f: int = 2):
    return lambda u: multikrum_aggregate(u, torch.ones(u.shape[0], dtype=u.dtype), num_malicious=f, num_selected=1)


def trim(k: int = 2):
    return lambda u: trimmed_mean(u, num_trimmed=k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_krum_selects_fang_update_where_sign_flip_is_rejected(dtype):
    benign = torch.tensor(PLUS, dtype=dtype)
    # Bound: each honest update's 3 (= n-f-2) nearest honest distances; the centre's are 1+1+1 = 3 (the minimum),
    # so lambda0 = 3 / ((7-4-1) sqrt 2) + max norm / sqrt 2 = 1.06066 + sqrt(2.5)/sqrt(2) = 2.17869.
    lam0 = 3 / (2 * math.sqrt(2)) + math.sqrt(2.5) / math.sqrt(2)
    assert fang_lambda_bound(benign, n=7, f=2) == pytest.approx(lam0, rel=1e-6)
    # s = sign(mean) = (1, 1). lambda0/2: crafted (-1.09, -1.09), Krum score 0 + 2 * 2.88 = 5.77 > the centre's 3:
    # rejected. lambda0/4: crafted (-0.545, -0.545), score 0 + 2 * 1.094 = 2.19 < 3 (the lowest honest score): selected.
    lam, selected = fang_krum_lambda(benign, krum(), n=7, f=2)
    assert selected and lam == pytest.approx(lam0 / 4, rel=1e-6)
    crafted = fang_krum_update(benign, krum(), n=7, f=2)
    assert crafted.shape == (2, 2)
    torch.testing.assert_close(crafted, torch.full((2, 2), -lam0 / 4, dtype=dtype))
    aggregate, weights = krum()(torch.cat([crafted, benign]))
    assert weights[:2].sum() == 1 and (aggregate < 0).all()  # the global model moves against s
    # The fixed sign-flip of an attacker's own honest update, -(1.5, 0.5), lies outside the plus: Krum rejects it.
    assert crafted_weight(krum(), -benign[0], benign, f=2) == 0.0


def test_fang_krum_needs_2f_plus_3_clients_and_reports_failure():
    benign = torch.tensor(PLUS)
    with pytest.raises(AdaptiveAttackError, match=r"attack\.fraction.*n >= 2f\+3.*n=6, f=2"):
        fang_lambda_bound(benign, n=6, f=2)
    with pytest.raises(AdaptiveAttackError, match=r"attack\.threshold"):
        fang_krum_lambda(benign, krum(), n=7, f=2, threshold=0.0)
    # A rule that never selects the first two rows: the search halves down past the threshold and says so.
    def never(u):
        w = torch.zeros(u.shape[0], dtype=u.dtype)
        w[2:] = 1 / (u.shape[0] - 2)
        return w @ u, w

    lam, selected = fang_krum_lambda(benign, never, n=7, f=2, threshold=0.1)
    assert not selected and lam < 0.1


def test_fang_krum_supporters_stay_within_radius():
    benign = torch.tensor([*PLUS, [0.5, 0.6]], dtype=torch.float64)  # 6 honest + 3 attackers: Krum needs 2f+3 = 9
    generator = torch.Generator().manual_seed(0)
    crafted = fang_krum_update(benign, krum(3), n=9, f=3, support_radius=0.01, generator=generator)
    distances = torch.linalg.vector_norm(crafted[1:] - crafted[0], dim=1)
    torch.testing.assert_close(distances, torch.full((2,), 0.01, dtype=torch.float64))
    assert crafted_weight(krum(3), crafted, benign, f=3) > 0  # the rows returned are the rows Krum selected


def test_fang_trim_full_knowledge_intervals_and_effect():
    # Column 0 rises (mean 3 > 0, s = +1): push down into [w_min / b, w_min] = [0.5, 1] (w_min = 1 > 0).
    # Column 1 falls (s = -1): push up into [w_max, w_max / b] = [-1, -0.5] (w_max = -1 <= 0).
    benign = torch.tensor([[1.0, -1.0], [2.0, -2.0], [3.0, -3.0], [4.0, -4.0], [5.0, -5.0]])
    crafted = fang_trim_update(benign, f=2, generator=torch.Generator().manual_seed(0))
    assert crafted.shape == (2, 2)
    assert ((crafted[:, 0] >= 0.5) & (crafted[:, 0] <= 1.0)).all()
    assert ((crafted[:, 1] >= -1.0) & (crafted[:, 1] <= -0.5)).all()
    # Trimmed mean (k = 2 of n = 7): honest alone would give the middle three; the attack drags both toward 0.
    attacked, _ = trim()(torch.cat([crafted, benign]))
    assert attacked[0] < 3.0 and attacked[1] > -3.0
    # Median too: sorted column 0 is (c, c, 1, 2, 3, 4, 5) -> median 2 instead of 3.
    median, _ = coordinate_median(torch.cat([crafted, benign]))
    torch.testing.assert_close(median, torch.tensor([2.0, -2.0]))


def test_fang_trim_partial_knowledge_uses_mean_plus_3_to_4_std():
    own = torch.tensor([[1.0, -1.0], [3.0, -3.0]])  # mean (2, -2), std (sqrt 2, sqrt 2); s = (1, -1)
    crafted = fang_trim_update(own, f=3, knowledge="colluding", generator=torch.Generator().manual_seed(1))
    r2 = math.sqrt(2)
    assert ((crafted[:, 0] >= 2 - 4 * r2) & (crafted[:, 0] <= 2 - 3 * r2)).all()
    assert ((crafted[:, 1] >= -2 + 3 * r2) & (crafted[:, 1] <= -2 + 4 * r2)).all()


def test_fang_trim_bad_input_names_the_key():
    benign = torch.tensor(PLUS)
    with pytest.raises(AdaptiveAttackError, match=r"attack\.b=2\.5: .*1 < b <= 2"):
        fang_trim_update(benign, f=2, b=2.5)
    with pytest.raises(AdaptiveAttackError, match=r"attack\.knowledge='oracle'"):
        fang_trim_update(benign, f=2, knowledge="oracle")
    with pytest.raises(AdaptiveAttackError, match=r"at least 2"):
        fang_trim_update(benign[:1], f=2, knowledge="partial")


@pytest.mark.parametrize("dtype", DTYPES)
def test_tailored_attack_moves_trimmed_mean_further_than_minmax(dtype):
    benign = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [1.0, 2.0]], dtype=dtype)  # mean (1, 1)
    # Min-max: mean - t (1, 1) with the farthest honest update, (2, 1), at most 2 (the largest honest distance)
    # away: (1 + t)^2 + t^2 = 4 -> t = 0.8229, malicious (0.177, 0.177); each column sorted is
    # (0, .177, .177, 1, 1, 1, 2), trimmed mean of the middle three 0.7257: deviation sqrt(2) * 0.2743 = 0.3879.
    mm = optimised_update(benign, objective="minmax")
    assert deviation(trim(), mm, benign, f=2) == pytest.approx(0.3879, abs=2e-4)
    # Tailored: with gamma large both copies fall below every honest value; the middle three of each column are
    # (0, 1, 1): aggregate (2/3, 2/3), deviation sqrt(2)/3 = 0.4714 > 0.3879.
    tu = tailored_update(benign, trim(), f=2)
    assert deviation(trim(), tu, benign, f=2) == pytest.approx(math.sqrt(2) / 3, rel=1e-5)
    assert tailored_gamma(benign, trim(), f=2) == pytest.approx(10.0)  # the first trial already reaches the plateau


def test_tailored_accepted_criterion_against_krum():
    benign = torch.tensor(PLUS, dtype=torch.float64)
    gamma = tailored_gamma(benign, krum(), f=2, criterion="accepted")
    p = perturbation_direction(benign, "unit_vec")
    mean = benign.mean(dim=0)
    assert crafted_weight(krum(), mean - gamma * p, benign, f=2) > 0
    assert crafted_weight(krum(), mean - (gamma + 1e-3) * p, benign, f=2) == 0  # the largest gamma, within tol


def test_tailored_bad_input_names_the_key():
    benign = torch.tensor(PLUS)
    with pytest.raises(AdaptiveAttackError, match=r"attack\.perturbation='random'"):
        tailored_update(benign, trim(), f=2, perturbation="random")
    with pytest.raises(AdaptiveAttackError, match=r"criterion='best'"):
        tailored_update(benign, trim(), f=2, criterion="best")
    with pytest.raises(AdaptiveAttackError, match=r"weights of shape \(3,\) for 7 updates"):
        crafted_weight(lambda u: (u.mean(0), torch.ones(3)), benign[0], benign, f=2)


def norm_gate(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A selection rule with a known threshold: rows of norm <= 1 are averaged, the others rejected."""
    keep = (torch.linalg.vector_norm(u, dim=1) <= 1.0).to(u.dtype)
    weights = keep / keep.sum().clamp_min(1)
    return weights @ u, weights


def test_scale_search_returns_the_hand_computed_boundary():
    # Column 0: mean 0.3, std 0.2; column 1: std 0. ALIE's update (0.3 - 0.2 z, 0) has norm <= 1 iff z <= 6.5.
    benign = torch.tensor([[0.5, 0.0], [0.3, 0.0], [0.1, 0.0]], dtype=torch.float64)
    z = search_alie_z(benign, norm_gate, f=2, low=0.0, high=10.0, tol=1e-4)
    assert 6.5 - 1e-4 <= z <= 6.5
    assert search_alie_z(benign, norm_gate, f=2, low=0.0, high=5.0) == 5.0  # all accepted: the top of the range
    assert search_alie_z(benign, norm_gate, f=2, low=7.0, high=9.0) == 7.0  # none accepted: the bottom
    # IPM: -eps * (0.3, 0) has norm <= 1 iff eps <= 10/3.
    eps = search_ipm_epsilon(benign, norm_gate, f=2, low=0.0, high=10.0, tol=1e-4)
    assert 10 / 3 - 1e-4 <= eps <= 10 / 3


def test_scale_search_deviation_finds_the_median_plateau():
    # 1-D honest values 1..5 (mean 3, std sqrt(2.5)); two ALIE copies at 3 - z std. The median of 7 is the 4th
    # value: 3 - z std while that is >= 2, then 2: the deviation grows to 1 at z = 1/sqrt(2.5) = 0.632 and stays.
    benign = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=torch.float64)
    z = search_scale(lambda s: alie_update(benign, s), coordinate_median, benign, f=2, low=0.0, high=2.0,
                     criterion="deviation", tol=1e-4)
    assert z >= 1 / math.sqrt(2.5) - 1e-3
    assert deviation(coordinate_median, alie_update(benign, z), benign, f=2) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("low", "high", "text"),
    [
        (2, 1, r"attack\.z_range=\[2, 1\]: empty search range; give low < high"),
        (1.5, 1.5, r"attack\.z_range=\[1\.5, 1\.5\]: empty search range"),
        (0, math.inf, r"attack\.z_range=\[0, inf\]: .*finite"),
    ],
)
def test_scale_search_empty_range_names_the_key(low, high, text):
    benign = torch.tensor(PLUS)
    with pytest.raises(AdaptiveAttackError, match=text):
        search_alie_z(benign, norm_gate, f=2, low=low, high=high)


def test_scale_search_other_bad_input():
    benign = torch.tensor(PLUS)
    with pytest.raises(AdaptiveAttackError, match=r"attack\.epsilon_range=\[3, 1\]"):
        search_ipm_epsilon(benign, norm_gate, f=2, low=3, high=1)
    with pytest.raises(AdaptiveAttackError, match=r"criterion='widest'"):
        search_alie_z(benign, norm_gate, f=2, criterion="widest")
    with pytest.raises(AdaptiveAttackError, match=r"tol=0"):
        search_alie_z(benign, norm_gate, f=2, tol=0)


def test_neurotoxin_zero_on_the_top_coordinates():
    reference = torch.tensor([0.1, -3.0, 0.2, 2.0, 0.05, -0.4])
    # mask_ratio 0.34 of d = 6 masks int(2.04) = 2 coordinates: the largest |reference|, indices 1 and 3.
    allowed = neurotoxin_mask(reference, mask_ratio=0.34)
    assert allowed.tolist() == [True, False, True, False, True, True]
    update = torch.arange(1.0, 7.0)
    projected = neurotoxin_update(update, reference, mask_ratio=0.34)
    assert projected.tolist() == [1.0, 0.0, 3.0, 0.0, 5.0, 6.0]
    rows = neurotoxin_update(torch.ones(2, 6), torch.stack([reference, reference]), mask_ratio=0.34)
    assert (rows[:, [1, 3]] == 0).all() and (rows[:, [0, 2, 4, 5]] == 1).all()
    # Ties at the boundary: the lower index is masked first; mask_ratio 0 keeps everything.
    assert neurotoxin_mask(torch.tensor([1.0, -1.0, 1.0, 0.5]), mask_ratio=0.5).tolist() == [False, False, True, True]
    assert neurotoxin_mask(reference, mask_ratio=0.0).all()


@pytest.mark.parametrize("ratio", [1.0, -0.1, True])
def test_neurotoxin_bad_ratio_names_the_key(ratio):
    with pytest.raises(AdaptiveAttackError, match=r"attack\.mask_ratio="):
        neurotoxin_mask(torch.ones(4), mask_ratio=ratio)


def test_constrained_update_norm_equals_the_bound():
    update = torch.tensor([3.0, 4.0])  # norm 5
    torch.testing.assert_close(constrain_to_norm(update, 2.0), torch.tensor([1.2, 1.6]))
    torch.testing.assert_close(constrain_to_norm(torch.tensor([0.3, 0.4]), 2.0), torch.tensor([1.2, 1.6]))  # boosted
    torch.testing.assert_close(constrain_to_norm(torch.tensor([0.3, 0.4]), 2.0, exact=False), torch.tensor([0.3, 0.4]))
    assert constrain_to_norm(torch.zeros(2), 2.0).tolist() == [0.0, 0.0]
    # Bound estimated from honest norms 1, 2, 3, 10: median 2.5, max 10, mean 4.
    norms = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert estimate_clip_bound(norms) == 2.5
    assert estimate_clip_bound(norms, how="max") == 10.0 and estimate_clip_bound(norms, how="mean") == 4.0
    boosted = constrained_replacement(update, bound=2.5)
    assert torch.linalg.vector_norm(boosted).item() == pytest.approx(2.5)
    assert constrained_replacement(update, bound=2.5, boost=0.2).tolist() == pytest.approx([0.6, 0.8])  # under it
    torch.testing.assert_close(constrained_replacement(update, bound=2.5, boost=10.0), boosted)
    # A server clipping at the estimated bound leaves the constrained update (almost) whole: weight ~ its share.
    rows = torch.stack([boosted, torch.tensor([1.0, 0.0])])
    _, weights = norm_clip(rows, torch.ones(2), clip_norm=2.5)
    assert weights[0].item() == pytest.approx(0.5, rel=1e-6)


def test_constrained_backdoor_bad_input_names_the_key():
    with pytest.raises(AdaptiveAttackError, match=r"attack\.bound_estimate='p90'"):
        estimate_clip_bound(torch.ones(3), how="p90")
    with pytest.raises(AdaptiveAttackError, match=r"attack\.bound_estimate: needs at least one"):
        estimate_clip_bound(torch.ones(0))
    with pytest.raises(AdaptiveAttackError, match=r"attack\.boost=0"):
        constrained_replacement(torch.ones(2), bound=1.0, boost=0)
    with pytest.raises(AdaptiveAttackError, match=r"attack\.clip_bound=-1"):
        constrain_to_norm(torch.ones(2), -1.0)


def test_unsupported_rule_names_the_key():
    assert [fang_variant(s) for s in ("krum", "multikrum", "bulyan", "median", "trimmed_mean")] == [
        "krum", "krum", "krum", "trim", "trim"]
    with pytest.raises(AdaptiveAttackError, match=r"defense\.strategy='fltrust': Fang's attacks target"):
        fang_variant("fltrust")
    assert criterion_for("krum") == "accepted" and criterion_for("trimmed_mean") == "deviation"
