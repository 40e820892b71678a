"""Attack kernels on small tensors, the choice of malicious clients, and bad attack configs."""

from __future__ import annotations

import pytest
import torch

from fedsec.clients.attacks.backdoor import poison_examples, stamp, trigger_mask
from fedsec.clients.attacks.base import AttackContext
from fedsec.clients.attacks.gaussian import gaussian_update
from fedsec.clients.attacks.label_flip import flip_labels
from fedsec.clients.attacks.registry import ATTACKS, Attack
from fedsec.clients.attacks.scaling import scale_update
from fedsec.clients.attacks.sign_flip import sign_flip
from fedsec.config import ConfigError
from fedsec.plan import plan_from_dict


def build_attack(kind: str = "none", **keys) -> Attack:
    cls = ATTACKS.get(kind)
    return cls(cls.Params(**keys))


def malicious_clients(plan) -> list[int]:
    return list(plan.schedule.malicious)

U = torch.tensor([0.5, -2.0, 3.0])


def ctx(rank: int = 0, seed: int = 0) -> AttackContext:
    return AttackContext(server_round=1, partition_id=3, attacker_rank=rank, num_classes=10, data_max=2.0,
                         generator=torch.Generator().manual_seed(seed))


def test_model_poisoning_arithmetic():
    torch.testing.assert_close(sign_flip(U), torch.tensor([-0.5, 2.0, -3.0]))
    torch.testing.assert_close(scale_update(U, 10.0), torch.tensor([5.0, -20.0, 30.0]))
    noisy = gaussian_update(U, 0.1, torch.Generator().manual_seed(0))
    expected_noise = torch.randn(3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(noisy, U + 0.1 * expected_noise)


def test_label_flip_variants():
    y = torch.tensor([6, 0, 6, 3, 9])
    assert flip_labels(y, num_classes=10, source=6, target=0).tolist() == [0, 0, 0, 3, 9]
    assert flip_labels(y, num_classes=10, target=2).tolist() == [2, 2, 2, 2, 2]
    rand = flip_labels(y, num_classes=10, generator=torch.Generator().manual_seed(1))
    assert (rand != y).all() and ((rand >= 0) & (rand < 10)).all()
    assert y.tolist() == [6, 0, 6, 3, 9]  # input untouched


def test_square_trigger_stamps_a_3x3_corner():
    mask = trigger_mask((1, 8, 8))
    assert mask.sum() == 9 and mask[0, 4:7, 4:7].all() and not mask[0, 7, :].any()
    x = torch.zeros(2, 1, 8, 8)
    stamped = stamp(x, mask, 2.0)
    assert stamped.sum() == 2 * 9 * 2.0 and x.sum() == 0


def test_dba_parts_partition_the_global_trigger():
    parts = [trigger_mask((1, 28, 28), trigger="dba", part=i) for i in range(4)]
    union = trigger_mask((1, 28, 28), trigger="dba")
    assert all(p.sum() == 4 for p in parts)
    assert torch.equal(parts[0] | parts[1] | parts[2] | parts[3], union) and union.sum() == 16
    assert torch.equal(trigger_mask((1, 28, 28), trigger="dba", part=5), parts[1])  # rank 5 -> part 1


def test_poison_examples_relabels_exactly_the_stamped_share():
    x, y = torch.zeros(10, 1, 8, 8), torch.arange(10) % 3 + 1
    xp, yp = poison_examples(x, y, mask=trigger_mask((1, 8, 8)), value=1.0, target=0, ratio=0.3,
                             generator=torch.Generator().manual_seed(0))
    stamped = xp.flatten(1).sum(1) > 0
    assert stamped.sum() == 3 and (yp[stamped] == 0).all() and torch.equal(yp[~stamped], y[~stamped])


def test_attack_objects_leave_the_other_side_alone():
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([6, 1, 6, 2])
    flip = build_attack("label_flip", source=6, target=0)
    assert torch.equal(flip.poison_update(U, ctx()), U)
    assert flip.poison_data(x, y, ctx())[1].tolist() == [0, 1, 0, 2]
    assert torch.equal(build_attack("sign_flip").poison_data(x, y, ctx())[0], x)
    boost = build_attack("backdoor", boost=5.0)
    torch.testing.assert_close(boost.poison_update(U, ctx()), 5 * U)
    honest = build_attack()
    assert type(honest) is Attack and torch.equal(honest.poison_update(U, ctx()), U)


def digits(**attack) -> dict:
    return {"data": {"dataset": "digits", "num_clients": 10}, "train": {"clients_per_round": 5}, "attack": attack}


def test_malicious_clients_are_seeded_and_sized():
    a = plan_from_dict(digits(kind="sign_flip", fraction=0.3))
    ids = malicious_clients(a)
    assert len(ids) == 3 and ids == sorted(set(ids)) and malicious_clients(a) == ids
    other_seed = plan_from_dict({**digits(kind="sign_flip", fraction=0.3), "seed": 1})
    seeds = {tuple(malicious_clients(other_seed)), tuple(ids)}
    assert len(seeds) == 2
    explicit = plan_from_dict(digits(kind="sign_flip", client_ids=[7, 2]))
    assert malicious_clients(explicit) == [2, 7]
    assert malicious_clients(plan_from_dict(digits())) == []


def test_attack_schedule():
    e = plan_from_dict({**digits(kind="scaling", fraction=0.2, start_round=2, end_round=3), "rounds": 5})
    assert [e.schedule.attack_active(r) for r in range(1, 6)] == [False, True, True, False, False]


@pytest.mark.parametrize(
    ("attack", "fragments"),
    [
        ({"kind": "label_flip", "fraction": 1.5}, ["attack.fraction", "less than or equal to 1"]),
        ({"kind": "label_flip", "fraction": 0.3, "source": 6, "target": 6}, ["attack.target=6", "differ"]),
        ({"kind": "label_flip", "fraction": 0.3, "source": 6}, ["attack.source=6", "attack.target"]),
        ({"kind": "teleport", "fraction": 0.3}, ["attack.kind", "'teleport'"]),
        ({"kind": "backdoor", "fraction": 0.3, "target": 12}, ["attack.target=12", "label set", "0..9"]),
        ({"kind": "sign_flip", "fraction": 0.3, "scale": 3.0}, ["attack.scale", "not used", "sign_flip"]),
        ({"kind": "sign_flip", "fraction": 0.01}, ["attack.fraction=0.01", "at least one malicious"]),
        ({"kind": "sign_flip", "client_ids": [3, 10]}, ["attack.client_ids", "num_clients=10"]),
    ],
)
def test_bad_attack_configs(attack, fragments):
    with pytest.raises(ConfigError) as info:
        plan_from_dict(digits(**attack))
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_backdoor_refuses_vector_data():
    with pytest.raises(ConfigError, match="needs image data"):
        plan_from_dict({"data": {"dataset": "synthetic", "partition": "natural", "num_clients": 10},
                              "model": {"name": "logreg"}, "train": {"clients_per_round": 5},
                              "attack": {"kind": "backdoor", "fraction": 0.2}})


def test_alie_z_and_update():
    from fedsec.clients.attacks.alie import alie_update, alie_z

    # n=50, f=24: s = 26 - 24 = 2, z = Phi^-1(48/50) = 1.7507
    assert alie_z(50, 24) == pytest.approx(1.7506860712521695)
    # n=10, f=5: s = 1, z = Phi^-1(0.9) = 1.2816
    assert alie_z(10, 5) == pytest.approx(1.2815515655446004)
    benign = torch.tensor([[1.0, 4.0], [3.0, 4.0], [2.0, 7.0]])
    # mean (2, 5), unbiased std (1, sqrt(3)) -> mean - 2 std = (0, 5 - 2 sqrt 3)
    torch.testing.assert_close(alie_update(benign, 2.0), torch.tensor([0.0, 5 - 2 * 3**0.5]))


def test_ipm_negates_the_scaled_mean():
    from fedsec.clients.attacks.ipm import ipm_update

    benign = torch.tensor([[1.0, 4.0], [3.0, -2.0]])
    torch.testing.assert_close(ipm_update(benign, 0.5), torch.tensor([-1.0, -0.5]))


def test_minmax_and_minsum_hit_their_bounds():
    from fedsec.clients.attacks.minmax import optimised_update

    benign = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # mean (2/3, 2/3), p = (1, 1)/sqrt 2. min-max: max benign sq. distance is 2 ((1,0)-(0,1)); m = (t, t) must keep
    # |(1,1) - m|^2 = 2 (1-t)^2 <= 2 -> t >= 0.
    torch.testing.assert_close(optimised_update(benign, objective="minmax"), torch.zeros(2), atol=1e-4, rtol=0)
    # min-sum: bound = max_i sum_j |b_i - b_j|^2 = 3; sum_j |b_j - m|^2 = 6t^2 - 8t + 4 <= 3 -> t >= (8 - sqrt 40)/12
    t = (8 - 40**0.5) / 12
    torch.testing.assert_close(optimised_update(benign, objective="minsum"), torch.full((2,), t), atol=1e-4, rtol=0)


@pytest.mark.usefixtures("server_identity")
def test_omniscient_swaps_only_the_attackers_arrays():
    import numpy as np
    from flower_messages import arrays_of, reply

    from fedsec.clients.attacks.omniscient import apply_omniscient

    global_arrays = arrays_of({"w": np.array([1.0, 1.0])})
    replies = [reply(100 + pid, pid, {"w": np.array(v)}) for pid, v in enumerate([[2.0, 1.0], [1.0, 3.0], [3.0, 5.0]])]
    replaced = apply_omniscient(build_attack("ipm", epsilon=1.0), replies, global_arrays, malicious={2})
    assert replaced == 1
    # updates (1,0), (0,2), (2,4): mean (1, 2); IPM eps=1 -> (-1, -2); arrays = global + that = (0, -1)
    np.testing.assert_allclose(replies[2].content["arrays"]["w"].numpy(), [0.0, -1.0])
    np.testing.assert_allclose(replies[0].content["arrays"]["w"].numpy(), [2.0, 1.0])
    np.testing.assert_allclose(replies[1].content["arrays"]["w"].numpy(), [1.0, 3.0])
