"""The audits, poisoning, sanitization and adversarial training as a user configures them: plan-time refusals that
name the key, the server's inversion audit on the replies it really received (plaintext vs CKKS), and the client's
poisoned-then-filtered data against the ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedsec.config import ConfigError
from fedsec.data.federated import build_federated_data
from fedsec.plan import plan_from_dict


def digits(**sections) -> dict:
    raw = {"rounds": 2, "data": {"dataset": "digits", "partition": "iid", "num_clients": 200},
           "model": {"name": "logreg"}, "train": {"clients_per_round": 8, "batch_size": 8}}
    for key, value in sections.items():
        section, _, sub = key.partition("__")
        if sub:
            raw.setdefault(section, {})[sub] = value
        else:
            raw[section] = {**raw.get(section, {}), **value}
    return raw


@pytest.mark.parametrize(
    ("sections", "fragments"),
    [
        ({"audit": {"evasion": {"epsilon": 0.0}}}, ["audit.evasion.epsilon", "greater than 0"]),
        ({"audit": {"evasion": {"epsilon": 1.5}}}, ["audit.evasion.epsilon", "less than or equal to 1"]),
        ({"audit": {"evasion": {"attacks": ["deepfool"]}}}, ["audit.evasion.attacks", "'deepfool'"]),
        ({"audit": {"evasion": {"steps": 0}}}, ["audit.evasion.steps", "greater than or equal to 1"]),
        ({"audit": {"evasion": {"examples": 451}}}, ["audit.evasion.examples=451", "test set", "450"]),
        ({"data": {"dataset": "synthetic", "partition": "natural", "num_clients": 30}, "audit": {"evasion": {}}},
         ["audit.evasion", "vectors"]),
        ({"audit": {"inversion": {"method": "gradinv"}}}, ["audit.inversion.method", "'gradinv'"]),
        ({"audit": {"inversion": {"iterations": 0}}}, ["audit.inversion.iterations", "greater than or equal to 1"]),
        ({"audit": {"inversion": {"rounds": [3]}}}, ["audit.inversion.rounds=[3]", "do not exist", "1..2"]),
        ({"audit": {"inversion": {"clients": [0]}}}, ["audit.inversion.clients=[0]", "do not train in round 1"]),
        ({"audit": {"inversion": {"clients": [200]}}}, ["audit.inversion.clients=[200]", "not clients"]),
        ({"train__adversarial": {"attack": "pgd", "epsilon": 2.0}}, ["train.adversarial.epsilon"]),
        ({"train__adversarial": {"attack": "cw"}}, ["train.adversarial.attack", "'cw'"]),
        ({"data__poison": {"kind": "label_noise", "clients": 0.1, "rate": 1.5}}, ["data.poison.rate", "1.5"]),
        ({"data__poison": {"kind": "smudge", "clients": 0.1}}, ["data.poison.kind", "'smudge'"]),
        ({"data__poison": {"kind": "label_noise", "clients": list(range(201))}}, ["data.poison.clients"]),
        ({"data__poison": {"kind": "targeted_flip", "clients": 0.1}}, ["data.poison.kind='targeted_flip'",
                                                                       "source"]),
        ({"defense__sanitize": {"method": "magic"}}, ["defense.sanitize.method", "'magic'"]),
        ({"defense__sanitize": {"method": "label_issues", "n_folds": 1}}, ["defense.sanitize.n_folds"]),
    ],
)
def test_bad_audit_and_data_defense_configs_name_the_key(sections, fragments):
    with pytest.raises(ConfigError) as info:
        plan_from_dict(digits(**sections))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_poisoned_clients_are_planned_once_and_reproducibly():
    raw = digits(data__poison={"kind": "label_noise", "clients": 0.05, "rate": 0.3})
    a, b = plan_from_dict(raw), plan_from_dict(raw)
    assert len(a.poisoned) == 10 and a.poisoned == b.poisoned
    assert plan_from_dict({**raw, "seed": 1}).poisoned != a.poisoned


def test_client_data_is_poisoned_exactly_as_recorded_then_filtered():
    from fedsec.clients.local_data import honest_client_data
    from fedsec.clients.spec import ClientSpec
    from fedsec.data.poison import poison_client_data

    raw = digits(data={"num_clients": 10}, data__poison={"kind": "label_noise", "clients": [3], "rate": 0.3},
                 defense__sanitize={"method": "label_issues", "n_folds": 3})
    plan = plan_from_dict(raw)
    spec = ClientSpec.from_plan(plan)
    data = build_federated_data(plan.experiment.data, plan.experiment.seed)
    idx = data.partitions[3]
    x, y = torch.from_numpy(data.x_train[idx]), torch.from_numpy(data.y_train[idx])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    local = honest_client_data(spec, 3, x, y, num_classes=10, model=model, server_round=1)
    truth = poison_client_data(x.numpy(), y.numpy(), kind="label_noise", rate=0.3, num_classes=10,
                               seed=np.random.default_rng([plan.experiment.seed, 0xDA7A, 3]))
    np.testing.assert_array_equal(local.poisoned, truth.poisoned)
    m = local.metrics
    assert m["poisoned_points"] == round(0.3 * idx.size) == truth.num_poisoned
    assert m["sanitize_kept"] + m["sanitize_dropped"] == idx.size and local.x.shape[0] == m["sanitize_kept"]
    assert m["poisoned_dropped"] >= 0.6 * m["poisoned_points"], m  # cleanlab finds most flipped labels
    clean = honest_client_data(spec, 4, x, y, num_classes=10, model=model, server_round=1)
    assert clean.metrics["poisoned_points"] == 0 and clean.poisoned.sum() == 0  # an unpoisoned client


@pytest.mark.usefixtures("server_identity")
def test_inversion_audit_attacks_plaintext_updates_and_reports_ciphertexts_as_unavailable(tmp_path):
    from flower_messages import _instruction, arrays_of

    from fedsec.arrays import model_to_record
    from fedsec.hooks import RoundState, ServerContext
    from fedsec.hooks.inversion import InversionAudit
    from fedsec.models import build_model

    raw = digits(model={"name": "mlp"}, audit={"inversion": {"rounds": [1], "clients": [45, 59],
                                                             "iterations": 50, "max_examples": 16}})
    plan = plan_from_dict(raw)
    data = build_federated_data(plan.experiment.data, plan.experiment.seed)
    model = build_model("mlp", data.input_shape, 10, seed=0)
    (audit,) = [h for h in plan.hooks if h.cls is InversionAudit]  # the plan built the hook from [audit.inversion]
    audit = audit.build(ServerContext.build(plan.facts, data, tmp_path, torch.device("cpu")))
    global_arrays = model_to_record(model)
    trained = {k: v.numpy() + 0.01 for k, v in model.state_dict().items()}
    plain = Message(content=RecordDict({"arrays": arrays_of(trained),
                                        "metrics": MetricRecord({"partition-id": 45, "num-examples": 6})}),
                    reply_to=_instruction(1))
    encrypted = Message(content=RecordDict({"ckks": ConfigRecord({"chunks": [b"\x01" * 64]}),
                                            "metrics": MetricRecord({"partition-id": 59, "num-examples": 7})}),
                        reply_to=_instruction(2))
    audit.on_replies(RoundState(1, global_arrays, [plain, encrypted]))
    done, unavailable = audit.records
    assert done["client"] == 45 and done["status"] == "done" and np.isfinite(done["psnr"])
    assert len(done["psnr_per_image"]) == data.partitions[45].size
    assert unavailable["client"] == 59 and unavailable["status"] == "unavailable"
    assert unavailable["reason"].startswith("no plaintext update available") and "CKKS" in unavailable["reason"]
    assert (tmp_path / "inversion_round1_client45.png").is_file()
    audit.on_replies(RoundState(2, global_arrays, [plain]))  # round 2 is not audited
    assert len(audit.records) == 2
