"""Privacy attacks: image metrics, epsilon bounds, gradient inversion, LiRA, model inversion (digits, tiny models)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fedsec.audits.empirical_privacy import (
    EmpiricalPrivacyError,
    best_epsilon_lower_bound,
    check_against_accountant,
    clopper_pearson,
    epsilon_lower_bound,
    epsilon_lower_bound_ci,
)
from fedsec.audits.image_metrics import psnr, ssim
from fedsec.audits.input_space import FASHION_MNIST, UNIT, InputSpace
from fedsec.audits.inversion import (
    GradientInversion,
    InversionConfigError,
    InversionUnavailable,
    recover_labels,
    simulate_pseudo_gradient,
)
from fedsec.audits.inversion_plots import plot_class_representatives, plot_reconstructions, plot_roc
from fedsec.audits.lira import (
    LiRA,
    MembershipConfigError,
    lira_offline_scores,
    logit_confidence,
    loss_threshold_attack,
)
from fedsec.audits.model_inversion import ModelInversion, ModelInversionConfigError, class_means
from fedsec.data import load_digits
from fedsec.models import build_model
from fedsec.training import train_local

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    ds = load_digits()
    return torch.tensor(ds.x_train), torch.tensor(ds.y_train)


def _one_step_update(model, x, y, lr):
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return [p.detach().clone() for p in model.parameters()], [-lr * g for g in grads]


# ------------------------------------------------------------------------------------------------ image metrics


def test_identical_images_have_infinite_psnr_and_unit_ssim():
    a = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.isinf(psnr(a, a)).all()
    torch.testing.assert_close(ssim(a, a), torch.ones(3, dtype=torch.float64))


def test_psnr_of_known_pairs():
    a = torch.zeros(2, 1, 8, 8)
    b = torch.zeros(2, 1, 8, 8)
    b[0] += 0.1  # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    b[1, :, :4] = 0.2  # half the pixels off by 0.2: MSE 0.02 -> 10 log10(50) = 16.9897 dB
    torch.testing.assert_close(psnr(a, b), torch.tensor([20.0, 10 * math.log10(50)], dtype=torch.float64))
    assert ssim(a + 0.5, b + 0.5)[1] < 1.0


def test_input_space_maps_fashion_mnist_pixels():
    space = InputSpace.from_bounds(FASHION_MNIST.low, FASHION_MNIST.high)
    assert space.mean == pytest.approx(0.2860) and space.std == pytest.approx(0.3530)
    p = torch.tensor([0.0, 0.2860, 1.0])
    torch.testing.assert_close(FASHION_MNIST.from_pixels(p), torch.tensor([-0.2860 / 0.3530, 0.0, 0.714 / 0.3530]))
    torch.testing.assert_close(FASHION_MNIST.to_pixels(FASHION_MNIST.from_pixels(p)), p)
    with pytest.raises(ValueError, match="input_space.std"):
        InputSpace(mean=0.0, std=0.0)


# ---------------------------------------------------------------------------------------------- epsilon bounds


@pytest.mark.parametrize(
    ("tpr", "fpr", "delta", "expected"),
    [
        (0.5, 0.05, 0.0, math.log(10)),  # (0.5 / 0.05) = 10 beats 0.95 / 0.5
        (0.9, 0.1, 0.0, math.log(9)),  # both terms: 0.9 / 0.1 = 9
        (0.5, 0.05, 0.1, math.log(8)),  # (0.5 - 0.1) / 0.05 = 8 beats 0.85 / 0.5
        (0.3, 0.3, 0.0, 0.0),  # chance: no evidence
        (0.2, 0.6, 0.0, 0.0),  # worse than chance: floored at 0
        (0.6, 0.0, 1e-5, math.inf),  # no false positive at all
    ],
)
def test_epsilon_lower_bound_hand_values(tpr, fpr, delta, expected):
    assert epsilon_lower_bound(tpr, fpr, delta) == pytest.approx(expected)


def test_epsilon_lower_bound_ci_hand_value():
    # perfect attack on 100 + 100: one-sided 97.5% CP bounds are TPR >= 0.025^(1/100), FPR <= 1 - 0.025^(1/100)
    lo = 0.025 ** (1 / 100)
    assert clopper_pearson(100, 100, alpha=0.025)[0] == pytest.approx(lo)
    assert clopper_pearson(0, 100, alpha=0.025)[1] == pytest.approx(1 - lo)
    expected = math.log(lo / (1 - lo))  # = 3.2814...
    assert epsilon_lower_bound_ci(100, 0, 0, 100, 0.0, confidence=0.95) == pytest.approx(expected)
    # an interval bound never exceeds the point bound of the same counts
    assert epsilon_lower_bound_ci(80, 20, 10, 90, 1e-5) < epsilon_lower_bound(0.8, 0.1, 1e-5)


def test_best_bound_over_roc_and_accountant_check():
    fpr = np.array([0.0, 0.01, 0.1, 1.0])
    tpr = np.array([0.0, 0.5, 0.9, 1.0])
    best = best_epsilon_lower_bound(fpr, tpr, num_members=1000, num_nonmembers=1000, delta=1e-5)
    singles = [epsilon_lower_bound_ci(round(t * 1000), 1000 - round(t * 1000), round(f * 1000),
                                      1000 - round(f * 1000), 1e-5) for f, t in zip(fpr, tpr, strict=True)]  # fmt: skip
    assert best.epsilon == pytest.approx(max(singles)) and (best.fpr, best.tpr) == (0.01, 0.5)
    assert best.epsilon_point == pytest.approx(math.log((0.5 - 1e-5) / 0.01))
    message = check_against_accountant(best, accountant_epsilon=1.0)
    assert message is not None and "bug in fedsec's DP" in message and "1.000" in message
    assert check_against_accountant(best, accountant_epsilon=8.0) is None


def test_epsilon_bad_input_names_the_argument():
    with pytest.raises(EmpiricalPrivacyError, match=r"tpr=1\.5"):
        epsilon_lower_bound(1.5, 0.1, 0.0)
    with pytest.raises(EmpiricalPrivacyError, match="delta=1"):
        epsilon_lower_bound(0.5, 0.1, 1.0)
    with pytest.raises(EmpiricalPrivacyError, match="fn=-1"):
        epsilon_lower_bound_ci(1, -1, 0, 3, 0.0)


# ------------------------------------------------------------------------------------------ gradient inversion


def test_idlg_label_recovery_exact_for_single_examples(digits):
    x, y = digits
    model = build_model("mlp", SHAPE, 10, seed=0)
    for i in range(20):
        _, update = _one_step_update(model, x[i : i + 1], y[i : i + 1], lr=0.1)
        target = [-u / 0.1 for u in update]
        assert recover_labels(target[-2], target[-1], 1).item() == y[i].item()


def test_batch_label_recovery_from_the_bias_gradient(digits):
    x, y = digits
    idx = torch.tensor([int((y == c).nonzero()[0]) for c in (2, 5, 9)])  # three distinct labels
    model = build_model("mlp", SHAPE, 10, seed=0)
    _, update = _one_step_update(model, x[idx], y[idx], lr=0.1)
    assert sorted(recover_labels(-update[-2], -update[-1], 3).tolist()) == [2, 5, 9]


def test_update_formats_agree_and_inputs_stay_untouched(digits):
    x, y = digits[0][:1], digits[1][:1]
    model = build_model("mlp", SHAPE, 10, seed=0)
    params, update = _one_step_update(model, x, y, lr=0.1)
    names = [n for n, _ in model.named_parameters()]
    attack = _attack("mlp", "idlg", 2)
    kw = {"num_examples": 1, "input_shape": SHAPE, "lr": 0.1}
    as_list = attack.reconstruct(params, update, **kw)
    as_flat = attack.reconstruct(
        torch.cat([p.flatten() for p in params]), torch.cat([u.flatten() for u in update]), **kw
    )
    as_dict = attack.reconstruct(dict(zip(names, params, strict=True)), dict(zip(names, update, strict=True)), **kw)
    torch.testing.assert_close(as_list.reconstructions, as_flat.reconstructions)
    torch.testing.assert_close(as_list.reconstructions, as_dict.reconstructions)
    assert not any(p.requires_grad for p in params)


def test_pseudo_gradient_matches_fedsec_local_training(digits):
    x, y = digits[0][:1], digits[1][:1]
    model = build_model("mlp", SHAPE, 10, seed=1)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    train_local(model, x, y, epochs=3, batch_size=1, lr=0.05, momentum=0.9, generator=torch.Generator())
    update = [p.detach() - start[k] for k, p in model.named_parameters()]
    params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    pseudo = simulate_pseudo_gradient(model, params, x, y, local_steps=3, lr=0.05, batch_size=1, momentum=0.9)
    for p, u in zip(pseudo, update, strict=True):
        torch.testing.assert_close(-0.05 * p.detach(), u, atol=1e-6, rtol=1e-4)


def _attack(model_name, method, iterations, **kw):
    return GradientInversion(
        lambda: build_model(model_name, SHAPE, 10, seed=9), method=method, iterations=iterations, **kw
    )


@pytest.mark.parametrize(("model_name", "method", "iterations"), [("cnn", "ig", 100), ("mlp", "dlg", 30)])
def test_one_step_inversion_recovers_a_digit(digits, model_name, method, iterations):
    x, y = digits[0][3:4], digits[1][3:4]
    model = build_model(model_name, SHAPE, 10, seed=0)
    params, update = _one_step_update(model, x, y, lr=0.1)
    result = _attack(model_name, method, iterations).reconstruct(
        params, update, num_examples=1, input_shape=SHAPE, lr=0.1
    )
    score = result.score(x, y)
    random_baseline = psnr(x, torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(0))).item()
    assert score.mean_psnr > 30 and score.mean_psnr > random_baseline + 20
    assert score.label_accuracy == 1.0 and result.available and result.reconstructions.max() <= 1.0


def test_dp_scale_noise_drives_psnr_down(digits):
    x, y = digits[0][3:4], digits[1][3:4]
    model = build_model("cnn", SHAPE, 10, seed=0)
    params, update = _one_step_update(model, x, y, lr=0.1)
    gen = torch.Generator().manual_seed(0)
    # DP-SGD with clip norm 1, noise multiplier 1, batch of 1: noise std lr * 1 per coordinate
    noisy = [u + 0.1 * torch.randn(u.shape, generator=gen) for u in update]
    attack = _attack("cnn", "ig", 100)
    clean = attack.reconstruct(params, update, num_examples=1, input_shape=SHAPE, lr=0.1).score(x, y)
    dp = attack.reconstruct(params, noisy, num_examples=1, input_shape=SHAPE, lr=0.1, true_labels=y).score(x, y)
    assert dp.mean_psnr < 15 < clean.mean_psnr - 10


def test_batch_scoring_uses_the_best_matching(digits):
    x = digits[0][:2]
    from fedsec.audits.inversion import InversionResult

    result = InversionResult(x.flip(0), torch.tensor([1, 0]), 0.0, "ig")
    score = result.score(x, torch.tensor([0, 1]))
    assert score.assignment.tolist() == [1, 0] and torch.isinf(score.psnr).all() and score.label_accuracy == 1.0


def test_encrypted_update_gives_no_plaintext(digits):
    tenseal = pytest.importorskip("tenseal")
    model = build_model("logreg", SHAPE, 10, seed=0)
    params, update = _one_step_update(model, digits[0][:1], digits[1][:1], lr=0.1)
    ctx = tenseal.context(tenseal.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    ctx.global_scale = 2**40
    ciphertext = tenseal.ckks_vector(ctx, torch.cat([u.flatten() for u in update]).tolist())
    attack = _attack("logreg", "idlg", 5)
    for hidden in (ciphertext, [ciphertext], None):
        result = attack.reconstruct(params, hidden, num_examples=1, input_shape=SHAPE, lr=0.1)
        assert not result.available and result.reconstructions is None
        assert result.reason.startswith("no plaintext update available")
    with pytest.raises(InversionUnavailable, match="no plaintext update"):
        result.score(digits[0][:1])


def test_inversion_bad_parameters_name_the_key(digits):
    with pytest.raises(InversionConfigError, match=r"audit\.inversion\.method='foo': unknown; use dlg \| idlg \| ig"):
        _attack("mlp", "foo", 10)
    with pytest.raises(InversionConfigError, match=r"audit\.inversion\.iterations=0"):
        _attack("mlp", "ig", 0)
    with pytest.raises(InversionConfigError, match=r"audit\.inversion\.restarts=0"):
        _attack("mlp", "ig", 10, restarts=0)
    model = build_model("mlp", SHAPE, 10, seed=0)
    params, update = _one_step_update(model, digits[0][:1], digits[1][:1], lr=0.1)
    attack = _attack("mlp", "ig", 1)
    with pytest.raises(InversionConfigError, match="update: flat vector of 5 values"):
        attack.reconstruct(params, torch.zeros(5), num_examples=1, input_shape=SHAPE, lr=0.1)
    with pytest.raises(InversionConfigError, match=r"audit\.inversion\.local_steps=0"):
        attack.reconstruct(params, update, num_examples=1, input_shape=SHAPE, lr=0.1, local_steps=0)
    with pytest.raises(InversionConfigError, match="train.lr=0"):
        attack.reconstruct(params, update, num_examples=1, input_shape=SHAPE, lr=0)


# ------------------------------------------------------------------------------------------ membership (LiRA)


def test_logit_confidence_and_offline_score_hand_values():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # p = 1/2 -> log(1) = 0;  p = 3/4 -> log(3)
    torch.testing.assert_close(logit_confidence(logits, torch.tensor([0, 0])), torch.tensor([0.0, math.log(3.0)]))
    shadows = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # mu = (1, 2), sd = (sqrt 2, 2 sqrt 2); pooled sd = sqrt(5/2)
    scores = lira_offline_scores(torch.tensor([1.0, 2.0]), shadows, fixed_variance=False)
    torch.testing.assert_close(scores, torch.full((2,), math.log(2.0)))  # phi at the mean: Pr[Z > phi] = 1/2
    pooled = lira_offline_scores(torch.tensor([1.0 + math.sqrt(2.5), 2.0]), shadows, fixed_variance=True)
    torch.testing.assert_close(pooled[0], -torch.special.log_ndtr(torch.tensor(-1.0)))


@pytest.fixture(scope="module")
def lira_setting(digits):
    x, y = digits

    def train_fn(xs, ys, seed):
        m = build_model("mlp", SHAPE, 10, seed=seed)
        train_local(m, xs, ys, epochs=60, batch_size=16, lr=0.1, generator=torch.Generator().manual_seed(seed))
        return m

    cand_x, cand_y = x[:200], y[:200]
    member = torch.arange(200) < 100
    pop_x, pop_y = x[200:600], y[200:600]
    lira = LiRA(train_fn, num_shadows=8, shadow_fraction=0.25, seed=0)
    phi = lira.shadow_phis(cand_x, cand_y, x_population=pop_x, y_population=pop_y)
    return train_fn, lira, phi, cand_x, cand_y, member, pop_x, pop_y


def test_lira_detects_members_of_an_overfit_model_only(lira_setting):
    train_fn, lira, phi, cx, cy, member, px, py = lira_setting
    kw = {"is_member": member, "x_population": px, "y_population": py, "shadow_phi": phi}
    overfit = lira.infer(train_fn(cx[member], cy[member], 123), cx, cy, **kw)
    never = lira.infer(train_fn(px[:100], py[:100], 7), cx, cy, **kw)
    assert overfit.auc > 0.65 and overfit.tpr_at_1_fpr > 0.01
    assert abs(never.auc - 0.5) < 0.15
    assert 0.5 <= overfit.balanced_accuracy <= 1 and overfit.fpr[0] == 0 and overfit.tpr[-1] == 1
    yeom = loss_threshold_attack(train_fn(cx[member], cy[member], 123), cx, cy, is_member=member)
    assert yeom.auc > 0.55 and yeom.attack == "loss_threshold"
    assert yeom.point.advantage > 0.1  # Yeom's own threshold (members' mean loss) separates them too


def test_lira_bad_parameters_name_the_key():
    with pytest.raises(MembershipConfigError, match=r"audit\.membership\.num_shadows=1"):
        LiRA(lambda x, y, s: None, num_shadows=1)
    with pytest.raises(MembershipConfigError, match=r"audit\.membership\.shadow_fraction=0"):
        LiRA(lambda x, y, s: None, shadow_fraction=0)


# ------------------------------------------------------------------------------------- model inversion, plots


def test_model_inversion_reaches_each_class_and_scores_class_means(digits, tmp_path):
    x, y = digits
    model = build_model("logreg", SHAPE, 10, seed=0)
    train_local(model, x, y, epochs=5, batch_size=32, lr=0.5, generator=torch.Generator().manual_seed(0))
    result = ModelInversion(model, input_shape=SHAPE, num_classes=10, max_iter=200).infer(x, y)
    with torch.no_grad():
        predicted = model(result.representatives.float()).argmax(1)
    assert (predicted == result.classes).float().mean() >= 0.9
    assert result.similarity["ssim"].shape == (10, 10) and 0 <= result.representatives.min()
    summary = result.summary()
    assert summary["cosine_true_class"] > summary["cosine_other_classes"] + 0.2
    assert result.top1("cosine") >= 0.7  # chance is 0.1: the representatives look like their own class
    means = class_means(x, y, 10)
    torch.testing.assert_close(means[0], x[y == 0].double().mean(0))
    assert plot_class_representatives(result.representatives, tmp_path / "mi.png", classes=list(range(10)),
                                      class_means=means).stat().st_size > 1000  # fmt: skip
    with pytest.raises(ModelInversionConfigError, match=r"audit\.model_inversion\.max_iter=0"):
        ModelInversion(model, input_shape=SHAPE, num_classes=10, max_iter=0)


def test_plots_write_pngs(digits, lira_setting, tmp_path):
    x = digits[0][:3]
    path = plot_reconstructions(x, x.flip(0), tmp_path / "rec.png", psnr=[20.0, 30.0, 40.0], input_space=UNIT)
    assert path.stat().st_size > 1000
    train_fn, lira, phi, cx, cy, member, px, py = lira_setting
    r = loss_threshold_attack(train_fn(px[:50], py[:50], 1), cx, cy, is_member=member)
    assert plot_roc([r], tmp_path / "roc.png").stat().st_size > 1000
