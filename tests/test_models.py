"""Model registry: shapes, parameter counts, seeded initialisation, and refusals."""

from __future__ import annotations

import pytest
import torch

from fedsec.models import MODELS, build_model, count_parameters


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("logreg", (1, 8, 8), 64 * 10 + 10),
        ("mlp", (1, 28, 28), 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10),
        # conv1 16*1*25+16, conv2 32*16*25+32, fc 512*64+64, out 64*10+10
        ("cnn", (1, 28, 28), 416 + 12832 + 32832 + 650),
        # McMahan et al. 2017: 1,663,370 parameters
        ("cnn_mcmahan", (1, 28, 28), 1_663_370),
    ],
)
def test_parameter_counts_and_output_shape(name, shape, params):
    model = build_model(name, shape, 10)
    assert count_parameters(model) == params
    assert model(torch.zeros(3, *shape)).shape == (3, 10)


def test_cnn_takes_small_images():
    assert build_model("cnn", (1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_seeded_initialisation_is_reproducible_and_seed_dependent():
    a, b, c = (build_model("cnn", (1, 28, 28), 10, seed=s) for s in (0, 0, 1))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="28x28"):
        build_model("cnn_mcmahan", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="image inputs"):
        build_model("cnn", (60,), 10)


def test_registry_lists_every_model_with_a_description():
    assert set(MODELS) == {"logreg", "mlp", "cnn", "cnn_mcmahan", "cnn_tanh", "cnn_tanh_gn"}
    assert all(desc for desc in MODELS.descriptions().values())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_is_opacus_compatible(name):
    from opacus.validators import ModuleValidator

    shape = (1, 28, 28)
    assert ModuleValidator.validate(build_model(name, shape, 10), strict=False) == []
