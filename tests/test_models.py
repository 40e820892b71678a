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
        # McMahan et al.'s CIFAR model on whole 32x32 images: conv 3*64*25+64 = 4,864, conv 64*64*25+64 = 102,464,
        # FC 8*8*64*384+384 = 1,573,248, FC 384*192+192 = 73,920, out 192*10+10 = 1,930
        ("cnn_cifar", (3, 32, 32), 4_864 + 102_464 + 1_573_248 + 73_920 + 1_930),
        # ResNet-20, option-A shortcuts: stem 3*16*9 + GN 32; stage 1: 6 convs 16*16*9 + 6 GN 32; stage 2: 16*32*9 +
        # 5 convs 32*32*9 + 6 GN 64; stage 3: 32*64*9 + 5 convs 64*64*9 + 6 GN 128; FC 64*10+10 = 269,722 (He et al.)
        ("resnet20_gn", (3, 32, 32), 432 + 32 + 6 * 2304 + 6 * 32 + 4608 + 5 * 9216 + 6 * 64 + 18432 + 5 * 36864
         + 6 * 128 + 650),
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
    # the grey-image CNNs refuse colour images and the CIFAR CNN grey ones, naming the channels and what to use
    for name in ("cnn_mcmahan", "cnn_tanh"):
        with pytest.raises(ValueError, match=rf"model.name='{name}': takes 1-channel \(grey\) images, the dataset "
                                             r"gives 3-channel images of shape \(3, 32, 32\); use cnn_cifar"):
            build_model(name, (3, 32, 32), 10)
    with pytest.raises(ValueError, match=r"takes 3-channel \(colour\) images.*1-channel"):
        build_model("cnn_cifar", (1, 28, 28), 62)
    with pytest.raises(ValueError, match=r"defined for 32x32 images"):
        build_model("cnn_cifar", (3, 28, 28), 10)
    with pytest.raises(ValueError, match=r"at least 8x8"):
        build_model("resnet20_gn", (3, 4, 4), 10)


def test_generic_models_take_grey_and_colour_images():
    for name in ("cnn", "cnn_tanh_gn", "resnet20_gn"):
        for shape in ((1, 28, 28), (3, 32, 32)):
            assert build_model(name, shape, 62)(torch.zeros(2, *shape)).shape == (2, 62), (name, shape)


def test_registry_lists_every_model_with_a_description():
    assert set(MODELS) == {"logreg", "mlp", "cnn", "cnn_mcmahan", "cnn_tanh", "cnn_tanh_gn", "cnn_cifar",
                           "resnet20_gn"}
    assert all(desc for desc in MODELS.descriptions().values())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_is_opacus_compatible(name):
    from opacus.validators import ModuleValidator

    shape = (3, 32, 32) if name == "cnn_cifar" else (1, 28, 28)
    assert ModuleValidator.validate(build_model(name, shape, 10), strict=False) == []


def test_resnet20_gn_takes_a_dp_sgd_step():
    """Opacus computes per-sample gradients through the GroupNorm ResNet (BatchNorm would be refused)."""
    from opacus import PrivacyEngine

    model = build_model("resnet20_gn", (3, 32, 32), 10, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    model, optimizer, loader = PrivacyEngine().make_private(
        module=model, optimizer=optimizer, data_loader=torch.utils.data.DataLoader(data, batch_size=4),
        noise_multiplier=1.0, max_grad_norm=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = next(iter(loader))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad_sample is not None for p in model.parameters())
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_channels_last_changes_the_layout_not_the_values():
    from fedsec.arrays import model_to_record
    from fedsec.models import channels_last_on_cpu

    plain = build_model("cnn", (1, 28, 28), 10, seed=0)
    fast = channels_last_on_cpu(build_model("cnn", (1, 28, 28), 10, seed=0))
    assert fast[3].weight.is_contiguous(memory_format=torch.channels_last)  # the 16 -> 32 convolution
    assert not plain[3].weight.is_contiguous(memory_format=torch.channels_last)
    for key, array in model_to_record(plain).items():  # records read out in logical order: the same bytes
        assert model_to_record(fast)[key].numpy().tobytes() == array.numpy().tobytes(), key
    x, y = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.arange(64) % 10
    for model in (plain, fast):  # one epoch of SGD with momentum, batches of 16
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for i in range(0, 64, 16):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16]).backward()
            opt.step()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)  # float rounding apart
    assert not torch.equal(plain[0].weight, build_model("cnn", (1, 28, 28), 10, seed=0)[0].weight)  # it trained


def test_models_without_convolutions_are_left_as_they_are():
    from fedsec.models import channels_last_on_cpu

    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    before = {k: (v.data_ptr(), v.stride()) for k, v in model.state_dict().items()}
    assert channels_last_on_cpu(model) is model
    assert {k: (v.data_ptr(), v.stride()) for k, v in model.state_dict().items()} == before


def test_clients_train_and_the_server_evaluates_channels_last_on_a_cpu(tmp_path):
    from fedsec.arrays import model_to_record
    from fedsec.clients.honest import local_model
    from fedsec.clients.spec import ClientSpec
    from fedsec.data.federated import build_federated_data, worker_data
    from fedsec.hooks.base import ServerContext
    from fedsec.plan import plan_from_dict

    plan = plan_from_dict({"rounds": 1, "data": {"dataset": "digits", "partition": "iid", "num_clients": 4},
                           "model": {"name": "cnn"}, "train": {"clients_per_round": 4}})
    spec = ClientSpec.from_plan(plan)
    data = worker_data(None, spec.data, spec.seed)
    initial = model_to_record(build_model("cnn", data.data.input_shape, 10, seed=0))
    client = local_model(spec, data, initial, reuse=True)
    assert client[3].weight.is_contiguous(memory_format=torch.channels_last)
    ctx = ServerContext.build(plan.server_plan().facts, build_federated_data(plan.experiment.data, 0), tmp_path,
                              torch.device("cpu"))
    assert ctx.model[3].weight.is_contiguous(memory_format=torch.channels_last)
