"""The adaptive attacks as attack kinds: built and bound by the run plan, crafting against the deployed rule's own
kernel (the DefenseView), refusing what they cannot attack with errors naming the key."""

from __future__ import annotations

import math

import pytest
import torch

from fedsec.clients.attacks import ATTACKS, AttackContext
from fedsec.clients.attacks.agr_tailored import tailored_update
from fedsec.clients.attacks.fang import fang_lambda_bound
from fedsec.clients.attacks.scale_search import crafted_weight, estimated_round
from fedsec.config import ConfigError
from fedsec.plan import plan_from_dict
from fedsec.strategies import coordinate_median

NEW_KINDS = ("fang", "agr_tailored", "alie_search", "ipm_search", "constrained_backdoor", "neurotoxin")
# Five honest updates: a plus sign of arm length 1 around (0.5, 0.5); n = 7 with f = 2 attackers.
PLUS = torch.tensor([[1.5, 0.5], [-0.5, 0.5], [0.5, 1.5], [0.5, -0.5], [0.5, 0.5]], dtype=torch.float64)


def plan(kind: str, strategy: str, *, knowledge: str = "omniscient", defense: dict | None = None, **attack):
    """digits, 10 clients, 7 per round, clients 0 and 1 malicious; the deployed rule assumes f = 2."""
    keys = {"num_malicious": 2} if strategy in ("krum", "multikrum", "bulyan") else {}
    raw = {"name": "t", "seed": 0, "rounds": 2, "data": {"dataset": "digits", "partition": "iid", "num_clients": 10},
           "model": {"name": "logreg"}, "train": {"clients_per_round": 7},
           "attack": {"kind": kind, "client_ids": [0, 1], "knowledge": knowledge, **attack},
           "defense": {"strategy": strategy, **keys, **(defense or {})}}
    return plan_from_dict(raw)


def ctx() -> AttackContext:
    return AttackContext(server_round=1, partition_id=0, attacker_rank=0, num_classes=10, data_max=1.0,
                         generator=torch.Generator().manual_seed(0))


def test_new_kinds_are_registered_with_their_keys():
    for kind in NEW_KINDS:
        assert kind in ATTACKS and ATTACKS.get(kind).kind == kind and ATTACKS.get(kind).description
    assert {"z_range", "tol", "criterion"} <= set(ATTACKS.get("alie_search").Params.model_fields)
    assert {"target", "boost", "bound_estimate"} <= set(ATTACKS.get("constrained_backdoor").Params.model_fields)
    assert ATTACKS.get("fang").crafts_from_benign and not ATTACKS.get("neurotoxin").crafts_from_benign


@pytest.mark.parametrize(("kind", "strategy", "extra", "message"), [
    ("fang", "fedavg", {}, r"defense\.strategy='fedavg': Fang's attacks target \['bulyan', 'krum'"),
    ("fang", "geomed", {}, r"defense\.strategy='geomed'.*agr_tailored"),
    ("agr_tailored", "fltrust", {}, r"defense\.strategy='fltrust'.*root data"),
    # found by experiments/worst_case/all_defenses.toml: these cells crashed in round 1 ("0 known clients")
    ("agr_tailored", "foolsgold", {}, r"defense\.strategy='foolsgold'.*history of updates"),
    ("alie_search", "foolsgold", {}, r"defense\.strategy='foolsgold'.*history of updates"),
    ("ipm_search", "foolsgold", {}, r"defense\.strategy='foolsgold'.*history of updates"),
    ("alie_search", "krum", {"z_range": [4.0, 1.0]}, r"attack\.z_range=\[4\.0, 1\.0\]: empty search range"),
    ("ipm_search", "median", {"epsilon_range": [2, 2]}, r"attack\.epsilon_range=\[2, 2\]: empty search range"),
    ("alie_search", "krum", {"z_range": [1.0]}, r"attack\.z_range"),
    ("constrained_backdoor", "krum", {"bound_estimate": "known"}, r"defense\.strategy='krum'.*clip_norm"),
    ("neurotoxin", "fedavg", {"mask_ratio": 1.0}, r"attack\.mask_ratio=1\.0"),
    ("fang", "krum", {"b": 3.0}, r"attack\.b=3\.0"),
])
def test_bad_config_names_the_key(kind, strategy, extra, message):
    with pytest.raises(ConfigError, match=message):
        plan(kind, strategy, **extra)


def test_fang_through_the_plan_is_selected_by_the_deployed_krum_where_sign_flip_is_not():
    attack = plan("fang", "krum").attack
    assert attack.variant == "krum"
    # Hand-derived in test_adaptive_attacks: lambda0 = 3/(2 sqrt 2) + sqrt(2.5)/sqrt 2; Krum (f=2) selects lambda0/4.
    lam0 = 3 / (2 * math.sqrt(2)) + math.sqrt(2.5) / math.sqrt(2)
    assert fang_lambda_bound(PLUS, n=7, f=2) == pytest.approx(lam0)
    crafted = attack.craft(PLUS, num_clients=7, num_attackers=2)
    torch.testing.assert_close(crafted, torch.full((2,), -lam0 / 4, dtype=torch.float64))
    rule = attack.defense.rule()  # the server's own Krum (num_malicious = 2), built by the plan
    assert crafted_weight(rule, crafted, PLUS, f=2) == 1.0
    assert crafted_weight(rule, -PLUS[0], PLUS, f=2) == 0.0  # the attacker's sign-flipped honest update


def test_fang_against_median_pushes_every_coordinate_past_the_benign_extremes():
    attack = plan("fang", "median").attack
    assert attack.variant == "trim"
    benign = torch.tensor([[1.0, -2.0], [2.0, -1.0], [3.0, -3.0], [4.0, -4.0], [5.0, -5.0]], dtype=torch.float64)
    crafted = attack.craft(benign, num_clients=7, num_attackers=2)
    # s = (+1, -1): coordinate 0 drawn in [w_min / b, w_min] = [0.5, 1]; coordinate 1 in [w_max, w_max / b] = [-1, -0.5]
    assert 0.5 <= crafted[0] <= 1.0 and -1.0 <= crafted[1] <= -0.5
    honest, _ = coordinate_median(benign)
    attacked, _ = coordinate_median(torch.cat([crafted.expand(2, -1), benign]))
    assert attacked[0] < honest[0] and attacked[1] > honest[1]  # against s on both coordinates
    torch.testing.assert_close(attack.craft(benign, num_clients=7, num_attackers=2), crafted)  # colluders agree


def test_alie_search_through_the_plan_returns_krums_boundary():
    # ALIE on PLUS: (0.5 - t, 0.5 - t), t = z * std = z / sqrt 2. With n = 7, f = 2, Krum scores 3 neighbours: the
    # copies score 2 (1 - 2t + 2t^2) for t > 1/2, the centre 3 (its arms) once z >= 1, so Krum keeps the copies
    # while 4t^2 - 4t - 1 <= 0: t <= (1 + sqrt 2) / 2, z <= 1 + 1 / sqrt 2 (ties go to the crafted rows).
    attack = plan("alie_search", "krum", z_range=[0.0, 4.0], tol=1e-4).attack
    assert attack.criterion == "accepted"
    crafted = attack.craft(PLUS, num_clients=7, num_attackers=2)
    boundary = 1 + 1 / math.sqrt(2)
    assert boundary - 1e-4 <= attack.last_scale <= boundary
    assert crafted_weight(attack.defense.rule(), crafted, PLUS, f=2) == 1.0
    over = 0.5 - (boundary + 1e-3) / math.sqrt(2)
    assert crafted_weight(attack.defense.rule(), torch.full((2,), over, dtype=torch.float64), PLUS, f=2) == 0.0


def test_ipm_search_defaults_to_deviation_and_stays_in_range():
    attack = plan("ipm_search", "krum", epsilon_range=[0.0, 3.0]).attack
    assert attack.criterion == "deviation"
    attack.craft(PLUS, num_clients=7, num_attackers=2)
    assert 0.0 <= attack.last_scale <= 3.0


def test_tailored_kind_matches_the_kernel_on_the_deployed_rule():
    attack = plan("agr_tailored", "trimmed_mean", defense={"trim_ratio": 0.3}).attack
    got = attack.craft(PLUS, num_clients=7, num_attackers=2)
    expected = tailored_update(PLUS, attack.defense.rule(), f=2, criterion="deviation")
    torch.testing.assert_close(got, expected)
    krum = plan("agr_tailored", "krum").attack
    assert crafted_weight(krum.defense.rule(), krum.craft(PLUS, num_clients=7, num_attackers=2), PLUS, f=2) == 1.0


def test_colluders_simulate_a_full_round_from_their_own_updates():
    own = PLUS[:2]
    rows = estimated_round(own, num_clients=7, num_attackers=2)
    assert rows.shape == (5, 2) and torch.equal(rows[:2], own)
    torch.testing.assert_close(rows, estimated_round(own, num_clients=7, num_attackers=2))  # same for every colluder
    assert estimated_round(PLUS, num_clients=7, num_attackers=2) is PLUS  # omniscient: nothing added
    # omniscient attackers know all n rows (their own honest ones too): the simulated round keeps n - f of them
    torch.testing.assert_close(estimated_round(PLUS, num_clients=5, num_attackers=2), PLUS[:3])
    # Krum needs 2f+3 = 7 rows: the colluding attacks run on 2 crafted + 5 (own + estimated) rows
    for kind in ("fang", "alie_search", "agr_tailored"):
        attack = plan(kind, "krum", knowledge="colluding").attack
        assert torch.isfinite(attack.craft(own, num_clients=7, num_attackers=2)).all()


def test_constrained_backdoor_reaches_the_estimated_bound():
    attack = plan("constrained_backdoor", "krum").attack
    update = torch.tensor([0.3, 0.4], dtype=torch.float64)  # norm 0.5
    benign = torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.0, 5.0]], dtype=torch.float64)  # norms 3, 4, 5: median 4
    out = attack.poison_with_reference(update, ctx(), benign=benign)
    torch.testing.assert_close(out, update * 8)  # boosted to norm 4
    capped = plan("constrained_backdoor", "krum", boost=2.0).attack.poison_with_reference(update, ctx(), benign=benign)
    torch.testing.assert_close(capped, update * 2)  # boost below the bound: kept
    known = plan("constrained_backdoor", "norm_clipping", bound_estimate="known", defense={"clip_norm": 1.5}).attack
    assert torch.linalg.vector_norm(known.poison_with_reference(update, ctx(), benign=benign)) == pytest.approx(1.5)


def test_neurotoxin_leaves_the_benign_top_coordinates_alone():
    attack = plan("neurotoxin", "fedavg", mask_ratio=0.25).attack
    update = torch.ones(8, dtype=torch.float64)
    benign = torch.tensor([[0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 8.0, 0.0], [0.0, 7.0, 0.0, 0.0, 0.0, 0.0, 6.0, 1.0]],
                          dtype=torch.float64)  # mean |.|: coordinates 1 (8) and 6 (7) are the top 25% of 8
    out = attack.poison_with_reference(update, ctx(), benign=benign)
    assert out.tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    boosted = plan("neurotoxin", "fedavg", mask_ratio=0.25, boost=3.0).attack
    assert boosted.poison_with_reference(update, ctx(), benign=benign).max() == 3.0
