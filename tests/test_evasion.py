"""Evasion attacks, R and the adversarial-training kernels (fedsec.audits.evasion)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedsec.audits.evasion import (
    EvasionAudit,
    EvasionConfigError,
    adversarial_batch,
    art_classifier,
    evaluate_at_epsilons,
    fgsm,
    fgsm_random_start,
    num_adversarial,
    pgd,
    select_examples,
)
from fedsec.audits.evasion_plots import plot_adversarial_grid, plot_robustness_curve
from fedsec.audits.input_space import InputSpace, InputSpaceError
from fedsec.data import load_digits
from fedsec.models import build_model
from fedsec.training import train_local

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FMNIST = InputSpace.from_normalisation(0.2860, 0.3530)
SPACES = [InputSpace.unit(), FMNIST, InputSpace.from_bounds(-1.0, 1.0)]


def to_space(x_pixels: torch.Tensor, space: InputSpace) -> torch.Tensor:
    return x_pixels * space.scale + space.low


@pytest.fixture(scope="module")
def digits():
    ds = load_digits()
    return tuple(torch.from_numpy(a) for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))


@pytest.fixture(scope="module")
def trained_cnn(digits):
    x, y, _, _ = digits
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    train_local(model, x, y, epochs=8, batch_size=32, lr=0.05, momentum=0.9, generator=torch.Generator().manual_seed(0))
    return model


# ---- R on a hand-checked linear case -----------------------------------------------------------------------
# logits = (x1 + x2/2 - 3/4, -(x1 + x2/2 - 3/4)); margin m = logit0 - logit1 = 2 x1 + x2 - 1.5; class 0 iff m > 0.
# d CE / dx = p_other * (W_other - W_y): sign (-1, -1) for y = 0 and (+1, +1) for y = 1, so FGSM at eps 0.1 moves
# both coordinates by 0.1 against the label, i.e. m by -0.3 (y = 0) or +0.3 (y = 1), unless the box [0, 1] clips.
POINTS = torch.tensor([[0.8, 0.5], [0.55, 0.5], [0.2, 0.3], [0.5, 0.3], [0.05, 1.0], [0.12, 0.98]])
LABELS = torch.tensor([0, 0, 1, 1, 0, 1])
EXPECTED_ADV = torch.tensor([[0.7, 0.4], [0.45, 0.4], [0.3, 0.4], [0.6, 0.4], [0.0, 0.9], [0.22, 1.0]])
# A: m 0.6 -> 0.3 kept. B: 0.1 -> -0.2 flips. C: -0.8 -> -0.5 kept. D: -0.2 -> 0.1 flips. E: clean wrong (m = -0.4)
# and stays wrong. F: -0.28 -> -0.06 kept only because x2 clips at 1 (unclipped: +0.02). R = {A, C, F} = 3 / 6.


def linear_model() -> nn.Module:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.5], [-1.0, -0.5]]))
        model.bias.copy_(torch.tensor([-0.75, 0.75]))
    return model


def test_fgsm_on_linear_model_matches_hand_derivation():
    adv = fgsm(linear_model(), POINTS, LABELS, epsilon=0.1, space=InputSpace.unit())
    torch.testing.assert_close(adv, EXPECTED_ADV)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_robust_accuracy_exact_on_linear_model(attack):
    # on a linear model the L-inf optimum is FGSM's corner; 10 PGD steps of 0.025 reach it from any start in the ball
    result = EvasionAudit(linear_model(), space=InputSpace.unit(), attacks=(attack,), epsilon=0.1, examples=6).evaluate(
        POINTS, LABELS
    )
    record = result.records[attack]
    assert (record.correct, record.total, record.robust_accuracy) == (3, 6, 0.5)
    assert result.clean_correct == 5
    assert result.as_row() == {f"robust_accuracy_{attack}": 0.5}
    assert result.as_summary()[f"robust_accuracy_{attack}"]["counts"] == "3 / 6"


def test_linear_case_in_a_normalised_space():
    # the same pixels fed as (p - 0.286) / 0.353 to a model composed with the inverse map: same adversarial pixels
    space = FMNIST
    inner = linear_model()
    model = nn.Sequential(_ToPixels(space), inner)
    adv = fgsm(model, to_space(POINTS, space), LABELS, epsilon=0.1, space=space)
    torch.testing.assert_close(space.to_pixels(adv), EXPECTED_ADV, atol=1e-6, rtol=0)


class _ToPixels(nn.Module):
    def __init__(self, space: InputSpace):
        super().__init__()
        self.space = space

    def forward(self, x):
        return self.space.to_pixels(x, clamp=False)  # a clamp would cut the gradient at the box


# ---- budgets: never leave the ball or the box -----------------------------------------------------------------


_MLP = build_model("mlp", (1, 8, 8), 10, seed=0)


@settings(max_examples=25, deadline=None)
@given(
    space_index=st.integers(0, len(SPACES) - 1),
    epsilon=st.floats(0.001, 1.0),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_pgd_and_fgsm_rs_stay_in_ball_and_box(space_index, epsilon, steps, seed):
    space = SPACES[space_index]
    gen = torch.Generator().manual_seed(seed)
    model = _MLP
    x = to_space(torch.rand((16, 1, 8, 8), generator=gen), space)
    y = torch.randint(0, 10, (16,), generator=gen)
    for adv in (
        pgd(model, x, y, epsilon=epsilon, steps=steps, space=space, generator=gen, step_size=epsilon),
        fgsm_random_start(model, x, y, epsilon=epsilon, space=space, generator=gen),
        fgsm(model, x, y, epsilon=epsilon, space=space),
    ):
        radius = epsilon * space.scale  # (x + r) - x may exceed r by one float32 ulp of x: atol 1e-6
        assert float((adv - x).abs().max()) <= radius + 1e-6
        low, high = torch.tensor([space.low, space.high], dtype=adv.dtype)  # the box as float32 holds it
        assert bool(adv.min() >= low) and bool(adv.max() <= high)


# ---- agreement with ART -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES[:2], ids=["unit", "fmnist"])
def test_fgsm_and_pgd_equal_art(trained_cnn, digits, space):
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    x = to_space(digits[2][:200], space)
    y = digits[3][:200]
    onehot = np.eye(10, dtype=np.float32)[y.numpy()]
    classifier = art_classifier(trained_cnn, space=space, input_shape=(1, 8, 8), num_classes=10)
    eps = 0.1 * space.scale
    # an example the model is sure of has a float32 loss gradient that underflowed (|g| ~1e-37: 11 of these 200):
    # its signs are rounding noise that two backends may round differently (one element of 12,800 did on one CPU);
    # those examples are compared for staying in the ball only
    inputs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(trained_cnn(inputs), y, reduction="sum"), inputs)
    live = grad.flatten(1).abs().amax(1) >= 1e-30
    assert int(live.sum()) >= 180
    theirs = FastGradientMethod(classifier, eps=eps, norm=np.inf).generate(x.numpy(), y=onehot)
    mine = fgsm(trained_cnn, x, y, epsilon=0.1, space=space)
    torch.testing.assert_close(mine[live], torch.from_numpy(theirs)[live], atol=1e-6, rtol=0)
    assert float((torch.from_numpy(theirs) - x).abs().max()) <= eps + 1e-6
    pgd_art = ProjectedGradientDescent(
        classifier, norm=np.inf, eps=eps, eps_step=eps / 4, max_iter=7, num_random_init=0, verbose=False
    )
    theirs = pgd_art.generate(x.numpy(), y=onehot)
    mine = pgd(trained_cnn, x, y, epsilon=0.1, steps=7, step_size=0.025, space=space, random_start=False)
    # ART projects through float64 eps and back; the rest is the same float32 arithmetic
    torch.testing.assert_close(mine[live], torch.from_numpy(theirs)[live], atol=1e-6, rtol=0)
    assert float((mine - x).abs().max()) > 0.09 * space.scale  # the attack did move


def test_fgsm_r_is_at_least_pgd_r_on_trained_model(trained_cnn, digits):
    _, _, xt, yt = digits
    result = EvasionAudit(trained_cnn, space=InputSpace.unit(), attacks=("fgsm", "pgd"), epsilon=0.1, examples=300)
    records = result.evaluate(xt, yt).records
    assert records["pgd"].correct <= records["fgsm"].correct
    assert records["pgd"].robust_accuracy < 0.8 * result.evaluate(xt, yt).clean_correct / 300


def test_cw_succeeds_and_leaves_model_alone(trained_cnn, digits):
    _, _, xt, yt = digits
    before = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    trained_cnn.train()
    result = EvasionAudit(trained_cnn, space=InputSpace.unit(), attacks=("cw",), examples=40, seed=1).evaluate(xt, yt)
    record = result.records["cw"]
    assert record.success_rate >= 0.9
    assert 0.0 < record.median_l2 < 2.0  # pixel L2 on 8x8 images; a full-image flip would be ~ 5
    assert record.correct <= result.clean_correct - round(0.9 * result.clean_correct)
    assert set(result.as_row()) == {"robust_accuracy_cw", "cw_success_rate", "cw_median_l2"}
    assert trained_cnn.training and all(p.requires_grad for p in trained_cnn.parameters())
    for key, value in trained_cnn.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)


def test_evaluate_at_epsilons_is_monotone_and_drops_cw(trained_cnn, digits):
    _, _, xt, yt = digits
    results = evaluate_at_epsilons(
        trained_cnn, xt, yt, [0.05, 0.2], space=InputSpace.unit(), attacks=("fgsm", "cw"), examples=150
    )
    assert list(results) == [0.05, 0.2]
    assert set(results[0.05].records) == {"fgsm"}
    assert results[0.2].records["fgsm"].correct < results[0.05].records["fgsm"].correct


# ---- adversarial training kernel ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "ratio", "mode"), [("pgd", 0.25, True), ("fgsm", 0.5, False), ("pgd", 1.0, True)])
def test_adversarial_batch_replaces_exactly_round_ratio_n_rows(trained_cnn, digits, method, ratio, mode):
    x, y = digits[0][:32], digits[1][:32]
    trained_cnn.train(mode)
    for p in trained_cnn.parameters():
        p.grad = torch.full_like(p, 3.0)
    before = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    mixed, labels = adversarial_batch(
        trained_cnn, x, y, method=method, epsilon=0.1, steps=3, ratio=ratio, space=InputSpace.unit(), generator=gen
    )
    changed = (mixed != x).flatten(1).any(dim=1)
    assert int(changed.sum()) == num_adversarial(32, ratio) == round(ratio * 32)
    assert torch.equal(labels, y)
    assert float((mixed - x).abs().max()) <= 0.1 + 1e-6
    assert all(m.training == mode for m in trained_cnn.modules())
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in trained_cnn.parameters())
    for key, value in trained_cnn.state_dict().items():
        assert torch.equal(value, before[key])
    again, _ = adversarial_batch(
        trained_cnn, x, y, method=method, epsilon=0.1, steps=3, ratio=ratio, space=InputSpace.unit(),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert torch.equal(again, mixed)  # seeded
    for p in trained_cnn.parameters():
        p.grad = None


def test_adversarial_batch_inside_opacus_dp_sgd():
    # Opacus' per-sample hooks fail on a backward whose forward they did not record; the attack must pause them
    import warnings

    from opacus import GradSampleModule

    model = GradSampleModule(build_model("cnn", (1, 8, 8), 10, seed=0))
    x, y = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixed, labels = adversarial_batch(
            model, x, y, method="pgd", epsilon=0.1, steps=2, ratio=0.5, space=InputSpace.unit(),
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        assert model.hooks_enabled and model.training
        assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())
        nn.functional.cross_entropy(model(mixed), labels).backward()
    assert all(p.grad_sample.shape[0] == 16 for p in model.parameters())


def test_adversarial_training_raises_pgd_r_on_digits(digits):
    x, y, xt, yt = digits
    space = InputSpace.unit()

    def train(adversarial: bool) -> nn.Module:
        model = build_model("mlp", (1, 8, 8), 10, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(0)
        for _ in range(8):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 32):
                xb, yb = x[order[i : i + 32]], y[order[i : i + 32]]
                if adversarial:
                    xb, yb = adversarial_batch(
                        model, xb, yb, method="pgd", epsilon=0.1, steps=3, ratio=1.0, space=space, generator=gen
                    )
                opt.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
        return model

    audit = dict(space=space, attacks=("pgd",), epsilon=0.1, steps=10, examples=300)
    r_clean = EvasionAudit(train(False), **audit).evaluate(xt, yt).records["pgd"].robust_accuracy
    r_adv = EvasionAudit(train(True), **audit).evaluate(xt, yt).records["pgd"].robust_accuracy
    assert r_adv > r_clean + 0.2, (r_clean, r_adv)


# ---- bad parameters ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": 0.0}, "audit.evasion.epsilon=0.0: must be in (0, 1]"),
        ({"epsilon": 1.5}, "audit.evasion.epsilon=1.5"),
        ({"attacks": ("fgsm", "deepfool")}, "audit.evasion.attacks=['fgsm', 'deepfool']"),
        ({"attacks": ()}, "audit.evasion.attacks=[]"),
        ({"steps": 0}, "audit.evasion.steps=0: must be an integer >= 1"),
        ({"examples": 0}, "audit.evasion.examples=0"),
        ({"cw_max_iter": 0}, "audit.evasion.cw_max_iter=0"),
        ({"cw_learning_rate": -1.0}, "audit.evasion.cw_learning_rate=-1.0"),
        ({"cw_confidence": -0.5}, "audit.evasion.cw_confidence=-0.5"),
    ],
)
def test_bad_audit_parameters_name_the_key(kwargs, message):
    with pytest.raises(EvasionConfigError) as info:
        EvasionAudit(linear_model(), space=InputSpace.unit(), **kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_examples_larger_than_test_set():
    audit = EvasionAudit(linear_model(), space=InputSpace.unit(), examples=7)
    with pytest.raises(EvasionConfigError, match=r"audit\.evasion\.examples=7: must be in \[1, 6\].*examples <= 6"):
        audit.evaluate(POINTS, LABELS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.5}, "train.adversarial.ratio=1.5: must be in [0, 1]"),
        ({"method": "free"}, "train.adversarial.attack='free': unknown"),
        ({"epsilon": 0.0}, "train.adversarial.epsilon=0.0"),
        ({"steps": 0}, "train.adversarial.steps=0"),
    ],
)
def test_bad_training_parameters_name_the_key(kwargs, message):
    args = {"method": "pgd", "epsilon": 0.1, "steps": 3, "ratio": 0.5, **kwargs}
    with pytest.raises(EvasionConfigError) as info:
        adversarial_batch(linear_model(), POINTS, LABELS, space=InputSpace.unit(), generator=torch.Generator(), **args)
    assert message in str(info.value)


def test_input_space_helpers():
    assert FMNIST.low == pytest.approx(-0.2860 / 0.3530) and FMNIST.high == pytest.approx(0.7140 / 0.3530)
    assert FMNIST.scale == pytest.approx(1 / 0.3530)
    torch.testing.assert_close(FMNIST.to_pixels(torch.tensor([FMNIST.low, FMNIST.high])), torch.tensor([0.0, 1.0]))
    assert InputSpace.from_bounds(-1.0, 1.0).scale == 2.0 and InputSpace.unit() == InputSpace(0.0, 1.0)
    with pytest.raises(InputSpaceError, match="low < high"):
        InputSpace.from_bounds(1.0, 0.0)
    with pytest.raises(InputSpaceError, match="std"):
        InputSpace.from_normalisation(0.5, 0.0)


def test_select_examples_is_seeded_and_distinct():
    a = select_examples(100, 30, seed=3)
    assert np.array_equal(a, select_examples(100, 30, seed=3)) and not np.array_equal(a, select_examples(100, 30, 4))
    assert len(np.unique(a)) == 30 and np.all(np.diff(a) > 0) and a.max() < 100


# ---- plots ---------------------------------------------------------------------------------------------------------


def test_plots_write_pngs(tmp_path, digits):
    x = digits[2][:4]
    adv = torch.clamp(x + 0.1 * torch.sign(torch.randn_like(x)), 0, 1)
    grid = plot_adversarial_grid(x, adv, [0, 1, 2, 3], [1, 1, 2, 7], tmp_path / "grid.png", space=InputSpace.unit())
    curve = plot_robustness_curve([0.05, 0.1], {"fgsm": [0.6, 0.4], "pgd": [0.5, 0.1]}, tmp_path / "r.png")
    for path in (grid, curve):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(EvasionConfigError, match="not a batch of 1- or 3-channel images"):
        plot_adversarial_grid(POINTS, POINTS, [0] * 6, [0] * 6, tmp_path / "v.png", space=InputSpace.unit())
    with pytest.raises(EvasionConfigError, match="pgd has 1 accuracies for 2 epsilons"):
        plot_robustness_curve([0.05, 0.1], {"pgd": [0.5]}, tmp_path / "bad.png")
