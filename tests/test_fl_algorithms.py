"""The FL algorithm as a variable: the clients' local algorithm (``train.algorithm``: FedAvg, FedProx, FedSGD) and
the server optimizer applied to any rule's aggregate (``server.optimizer``: FedAvgM, FedAdam, FedYogi,
FedAdagrad).

- kernels: hand-derived values, and equal to Flower's FedAvgM / FedAdam / FedYogi / FedAdagrad on the same
  aggregates over several rounds; the moments survive a checkpoint (torch.save, weights_only) bit for bit;
- clients: FedProx with mu = 0 trains exactly as FedAvg, mu > 0 pulls towards the global model, FedSGD is one
  full-batch step; a label-flipping attacker trains with the run's algorithm;
- runs through fedsec's round loop in this process (the real ServerApp loop, ClientApp and hooks, messages passed
  by a grid without Ray): FedProx(mu = 0) gives FedAvg's rounds.csv (in cohort mode too), mu > 0 and FedSGD
  differ, FedAdam after Median resumed from its round-1 checkpoint gives the uninterrupted rows;
- the config: every bad value refused with its key, ``fedsec validate`` exits 2, config.toml plans the run again;
- through Ray (slow): FedProx(mu = 0) = FedAvg, and FedAdam after Median SIGKILLed after round 1 and resumed with
  ``fedsec run --resume`` gives the uninterrupted rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAdagrad as FlowerFedAdagrad
from flwr.serverapp.strategy import FedAdam as FlowerFedAdam
from flwr.serverapp.strategy import FedAvgM as FlowerFedAvgM
from flwr.serverapp.strategy import FedYogi as FlowerFedYogi
from typer.testing import CliRunner

from fedsec.arrays import model_to_record, record_to_tensors, record_to_vector
from fedsec.cli import app as cli_app
from fedsec.clients.app import make_client_app
from fedsec.clients.spec import ClientSpec
from fedsec.config import ConfigError
from fedsec.models import build_model
from fedsec.plan import plan_from_dict
from fedsec.server.checkpoint import load_checkpoint
from fedsec.strategies import SERVER_OPTIMIZERS
from fedsec.strategies.server_optimizers import FedAdam, FedAvgM, fedopt_step
from fedsec.training import train_local
from tests.flower_messages import arrays_of, reply
from tests.in_process import run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIGITS = {"name": "fl-algorithms", "seed": 1, "rounds": 3,
          "data": {"dataset": "digits", "partition": "iid", "num_clients": 4}, "model": {"name": "logreg"},
          "train": {"clients_per_round": 4, "local_epochs": 2, "batch_size": 16, "lr": 0.1, "momentum": 0.9}}


def digits(*, train: dict | None = None, **sections) -> dict:
    raw = {**DIGITS, **sections}
    raw["train"] = {**DIGITS["train"], **(train or {})}
    return raw


# ---------------------------------------------------------------------------------------------- server kernels
def test_fedavgm_by_hand():
    # w0 = 0; b1 = d1 = (1, -1): w1 = 0.1 b1 = (0.1, -0.1); b2 = 0.9 b1 + d2 = (1.9, 0.1): w2 = w1 + 0.1 b2
    opt = FedAvgM(server_lr=0.1, momentum=0.9)
    w1 = opt.step(1, torch.zeros(2), torch.tensor([1.0, -1.0]))
    w2 = opt.step(2, w1, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(w1, torch.tensor([0.1, -0.1]))
    torch.testing.assert_close(w2, torch.tensor([0.29, -0.09]))


def test_fedadam_by_hand():
    # delta = (0.1, -0.2): m = 0.1 delta = (0.01, -0.02); v = 0.01 delta^2, sqrt(v) = (0.01, 0.02);
    # round 1: lr = 0.1 sqrt(1 - 0.99^2) / (1 - 0.9^2) = 0.0742462; step = lr m / (sqrt(v) + 1e-3)
    lr = 0.1 * (1 - 0.99**2) ** 0.5 / (1 - 0.9**2)
    new = FedAdam().step(1, torch.zeros(2, dtype=torch.float64), torch.tensor([0.1, -0.2], dtype=torch.float64))
    torch.testing.assert_close(new, torch.tensor([lr * 0.01 / 0.011, lr * -0.02 / 0.021], dtype=torch.float64))
    assert abs(new[0].item() - 0.0674965) < 1e-6 and abs(new[1].item() + 0.0707107) < 1e-6


def test_yogi_and_adagrad_second_moments_differ_from_adams_where_they_should():
    # one coordinate grows (0.1 -> 1.0): Adam's v decays towards it, Yogi moves v by (1 - beta_2) d^2 sign(v - d^2),
    # Adagrad adds d^2; all three start from v = 0 and agree on m
    w, d1, d2 = torch.zeros(1, dtype=torch.float64), torch.tensor([0.1], dtype=torch.float64), torch.tensor(
        [1.0], dtype=torch.float64)
    v = {}
    for rule in ("adam", "yogi", "adagrad"):
        _, m, v1 = fedopt_step(w, d1, None, None, second_moment=rule, server_lr=0.1, beta_1=0.9, beta_2=0.99,
                               tau=1e-3, server_round=1)
        _, m, v[rule] = fedopt_step(w, d2, m, v1, second_moment=rule, server_lr=0.1, beta_1=0.9, beta_2=0.99,
                                    tau=1e-3, server_round=2)
        torch.testing.assert_close(m, torch.tensor([0.9 * 0.01 + 0.1 * 1.0], dtype=torch.float64))
    adam_v1 = 0.01 * 0.01  # (1 - beta_2) d1^2 for adam and yogi (sign(0 - d1^2) = -1), d1^2 for adagrad
    torch.testing.assert_close(v["adam"], torch.tensor([0.99 * adam_v1 + 0.01], dtype=torch.float64))
    torch.testing.assert_close(v["yogi"], torch.tensor([adam_v1 + 0.01], dtype=torch.float64))
    torch.testing.assert_close(v["adagrad"], torch.tensor([0.01 + 1.0], dtype=torch.float64))


FLOWER = {  # name -> (Flower's class with the same settings, fedsec's keys)
    "fedavgm": (lambda: FlowerFedAvgM(server_learning_rate=0.5, server_momentum=0.8),
                {"server_lr": 0.5, "momentum": 0.8}),
    "fedadam": (lambda: FlowerFedAdam(eta=0.05, beta_1=0.8, beta_2=0.95, tau=1e-2),
                {"server_lr": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2}),
    "fedyogi": (lambda: FlowerFedYogi(eta=0.02, beta_1=0.85, beta_2=0.9, tau=1e-3),
                {"server_lr": 0.02, "beta_1": 0.85, "beta_2": 0.9, "tau": 1e-3}),
    "fedadagrad": (lambda: FlowerFedAdagrad(eta=0.1, tau=1e-3), {"server_lr": 0.1, "beta_1": 0.0, "tau": 1e-3}),
}


@pytest.mark.parametrize("name", sorted(FLOWER))
def test_each_kernel_equals_flowers_strategy_on_the_same_aggregates(name, server_identity):
    """Four rounds of seeded aggregates: Flower's strategy aggregates one reply whose arrays are the aggregate
    (FedAvg's weighted mean of one reply is that reply), fedsec's optimizer steps on the same aggregate; the new
    global models agree within 5e-7 and the next round starts from Flower's."""
    make_flower, keys = FLOWER[name]
    flower, ours = make_flower(), SERVER_OPTIMIZERS.get(name)(**keys)
    rng = np.random.default_rng(7)
    current = {"w": rng.normal(size=(3, 5)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    moved = 0.0
    for server_round in range(1, 5):
        aggregate = {k: (v + rng.normal(scale=0.3, size=v.shape)).astype(np.float32) for k, v in current.items()}
        if name == "fedavgm":  # what configure_train records: the first round's arrays, then its own results
            flower.current_arrays = flower.current_arrays or arrays_of(current)
        else:  # FedOpt's configure_train records the arrays sent each round
            flower.current_arrays = {k: v.copy() for k, v in current.items()}
        out, _ = flower.aggregate_train(server_round, [reply(1, 0, aggregate)])
        theirs = {k: out[k].numpy() for k in current}
        mine = record_to_tensors(ours.apply(server_round, arrays_of(current), arrays_of(aggregate)))
        for k in current:
            torch.testing.assert_close(mine[k], torch.from_numpy(theirs[k].astype(np.float32)), rtol=0, atol=5e-7)
            moved = max(moved, float(np.abs(theirs[k] - aggregate[k]).max()))
        current = {k: v.astype(np.float32) for k, v in theirs.items()}
    assert moved > 1e-2  # the step is not the aggregate itself: the comparison could fail


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_the_moments_survive_a_checkpoint_bit_for_bit(name, tmp_path):
    g = torch.Generator().manual_seed(3)
    weights = torch.randn(40, generator=g)
    deltas = [torch.randn(40, generator=g) * 0.1 for _ in range(4)]
    whole = SERVER_OPTIMIZERS.get(name)()
    w_whole = weights
    for t, d in enumerate(deltas, 1):
        w_whole = whole.step(t, w_whole, d)
    first = SERVER_OPTIMIZERS.get(name)()
    w = first.step(1, weights, deltas[0])
    torch.save({"server_optimizer": first.state()}, tmp_path / "ckpt.pt")
    resumed = SERVER_OPTIMIZERS.get(name)()
    resumed.restore(torch.load(tmp_path / "ckpt.pt", weights_only=True)["server_optimizer"])
    for t, d in enumerate(deltas[1:], 2):
        w = resumed.step(t, w, d)
    assert torch.equal(w, w_whole)
    forgetful = SERVER_OPTIMIZERS.get(name)()  # resumed without its moments, the run would differ
    w_forgot = SERVER_OPTIMIZERS.get(name)().step(1, weights, deltas[0])
    for t, d in enumerate(deltas[1:], 2):
        w_forgot = forgetful.step(t, w_forgot, d)
    assert not torch.equal(w_forgot, w_whole)


def test_none_keeps_the_rules_arrays_and_a_skipped_round_stays_skipped():
    arrays = model_to_record(build_model("logreg", (64,), 10, seed=0))
    new = model_to_record(build_model("logreg", (64,), 10, seed=1))
    assert SERVER_OPTIMIZERS.get("none")().apply(1, arrays, new) is new
    adam = FedAdam()
    assert adam.apply(1, arrays, None) is None and adam.state() == {}  # no step, no state
    stepped = adam.apply(2, arrays, new)
    assert isinstance(stepped, ArrayRecord) and set(adam.state()) == {"m", "v"}
    assert not torch.equal(record_to_vector(stepped), record_to_vector(new))


# ---------------------------------------------------------------------------------------------- client algorithms
def _trained(algorithm: str, mu: float = 0.0, *, epochs: int = 2, lr: float = 0.1) -> tuple[torch.Tensor, object]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 64, generator=g), torch.randint(0, 10, (50,), generator=g)
    model = build_model("logreg", (64,), 10, seed=0)
    result = train_local(model, x, y, epochs=epochs, batch_size=16, lr=lr, momentum=0.9, weight_decay=1e-3,
                         generator=torch.Generator().manual_seed(5), algorithm=algorithm, proximal_mu=mu)
    return record_to_vector(model_to_record(model)), result


def test_fedprox_with_mu_zero_trains_exactly_as_fedavg_and_mu_pulls_towards_the_global_model():
    start = record_to_vector(model_to_record(build_model("logreg", (64,), 10, seed=0)))
    fedavg, avg_result = _trained("fedavg")
    prox0, prox0_result = _trained("fedprox", 0.0)
    assert torch.equal(prox0, fedavg) and prox0_result == avg_result
    prox, _ = _trained("fedprox", 2.0)
    assert not torch.equal(prox, fedavg)
    assert (prox - start).norm() < 0.8 * (fedavg - start).norm()  # the proximal term keeps w near w_global


def test_fedsgd_is_one_step_on_the_full_batch_gradient():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 64, generator=g), torch.randint(0, 10, (50,), generator=g)
    reference = build_model("logreg", (64,), 10, seed=0)
    loss = torch.nn.functional.cross_entropy(reference(x), y)  # the mean over all 50 examples at once
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    expected = torch.cat([(p - 0.1 * gr).detach().flatten() for p, gr in zip(reference.parameters(), grads,
                                                                              strict=True)])
    model = build_model("logreg", (64,), 10, seed=0)
    result = train_local(model, x, y, epochs=1, batch_size=16, lr=0.1, momentum=0.9,  # 4 chunks: 16+16+16+2
                         generator=torch.Generator().manual_seed(5), algorithm="fedsgd")
    assert result.num_steps == 1 and abs(result.loss - loss.item()) < 1e-5
    torch.testing.assert_close(record_to_vector(model_to_record(model)), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="local_epochs=2"):
        train_local(model, x, y, epochs=2, batch_size=16, lr=0.1, generator=torch.Generator(), algorithm="fedsgd")


def _client_update(raw: dict, partition_id: int) -> torch.Tensor:
    """Partition ``partition_id``'s round-1 update from the seeded initial model, through the ClientApp."""
    plan = plan_from_dict(raw)
    client = make_client_app(ClientSpec.from_plan(plan))
    arrays = model_to_record(build_model("logreg", (64,), 10, seed=0))
    message = Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}),
                      dst_node_id=7, message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": partition_id}, state=RecordDict(),
                      run_config={})
    answer = client(message, context).content
    return record_to_vector(answer["arrays"]) - record_to_vector(arrays)


def test_a_label_flipping_attacker_trains_with_the_runs_algorithm(server_identity):
    attack = {"kind": "label_flip", "client_ids": [0]}
    fedavg = _client_update(digits(attack=attack), 0)
    assert torch.equal(_client_update(digits(attack=attack, train={"algorithm": "fedprox", "proximal_mu": 0.0}), 0),
                       fedavg)
    prox = _client_update(digits(attack=attack, train={"algorithm": "fedprox", "proximal_mu": 5.0}), 0)
    sgd = _client_update(digits(attack=attack, train={"algorithm": "fedsgd", "local_epochs": 1}), 0)
    assert prox.norm() < 0.7 * fedavg.norm()  # pulled back to the global model
    assert sgd.norm() < 0.5 * fedavg.norm()  # one step instead of 2 epochs x 12 mini-batches
    honest = _client_update(digits(attack=attack, train={"algorithm": "fedsgd", "local_epochs": 1}), 1)
    assert not torch.equal(honest, sgd)  # the attacker's step is on its flipped labels


# ---------------------------------------------------------------------------------------------- runs in process
def test_fedprox_mu_zero_gives_fedavgs_rows_and_mu_positive_and_fedsgd_differ(tmp_path, server_identity):
    fedavg = run_in_process(digits(), tmp_path / "fedavg")
    prox0 = run_in_process(digits(train={"algorithm": "fedprox", "proximal_mu": 0.0}), tmp_path / "prox0")
    pd.testing.assert_frame_equal(prox0, fedavg, check_exact=True)
    cohort = run_in_process(digits(train={"algorithm": "fedprox", "proximal_mu": 0.0}), tmp_path / "cohort",
                            cohort_nodes=2)
    pd.testing.assert_frame_equal(cohort, fedavg, check_exact=True)
    prox = run_in_process(digits(train={"algorithm": "fedprox", "proximal_mu": 1.0}), tmp_path / "prox1")
    sgd = run_in_process(digits(train={"algorithm": "fedsgd", "local_epochs": 1}), tmp_path / "fedsgd")
    for other in (prox, sgd):
        assert len(other) == 4 and not np.array_equal(other["loss"].to_numpy()[1:], fedavg["loss"].to_numpy()[1:])
    assert (sgd["accuracy"].iloc[1:] > sgd["accuracy"].iloc[0]).all()  # one full-batch step per round still learns


def test_fedadam_after_median_resumes_from_its_round_one_checkpoint_to_the_same_rows(tmp_path, server_identity):
    raw = digits(defense={"strategy": "median"}, server={"optimizer": "fedadam", "server_lr": 0.05})
    whole = run_in_process(raw, tmp_path / "whole")
    run_in_process(raw, tmp_path / "cut", stop_after=1)
    state = load_checkpoint(tmp_path / "cut")
    assert state["round"] == 1 and set(state["server_optimizer"]) == {"m", "v"}
    resumed = run_in_process(raw, tmp_path / "cut", resume=True)
    pd.testing.assert_frame_equal(resumed, whole, check_exact=True)
    median = run_in_process(digits(defense={"strategy": "median"}), tmp_path / "median")
    assert not np.array_equal(median["loss"].to_numpy()[1:], whole["loss"].to_numpy()[1:])  # FedAdam did something


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(("patch", "key"), [
    ({"server": {"optimizer": "adam"}}, "server.optimizer='adam'"),
    ({"server": {"optimizer": "none", "momentum": 0.9}}, "server.momentum"),
    ({"server": {"optimizer": "fedadagrad", "beta_2": 0.9}}, "server.beta_2"),
    ({"server": {"optimizer": "fedadam", "server_lr": 0.0}}, "server.server_lr=0.0"),
    ({"server": {"optimizer": "fedadam", "server_lr": 1e9}}, "server.server_lr"),
    ({"server": {"optimizer": "fedyogi", "beta_1": 1.0}}, "server.beta_1=1.0"),
    ({"server": {"optimizer": "fedadam", "beta_2": -0.1}}, "server.beta_2"),
    ({"server": {"optimizer": "fedadam", "tau": 0.0}}, "server.tau=0.0"),
    ({"server": {"optimizer": "fedavgm", "momentum": 1.0}}, "server.momentum=1.0"),
    ({"server": {"optimizer": "fedavgm", "momentum": "0.9"}}, "server.momentum"),
    ({"train": {"algorithm": "scaffold"}}, "train.algorithm='scaffold'"),
    ({"train": {"algorithm": "fedprox"}}, "train.proximal_mu"),
    ({"train": {"algorithm": "fedprox", "proximal_mu": -0.1}}, "train.proximal_mu"),
    ({"train": {"algorithm": "fedprox", "proximal_mu": 1e5}}, "train.proximal_mu"),
    ({"train": {"proximal_mu": 0.1}}, "train.proximal_mu=0.1"),
    ({"train": {"algorithm": "fedsgd"}}, "train.local_epochs=2"),
    ({"train": {"algorithm": "fedprox", "proximal_mu": 0.1}, "privacy": {"mode": "local"}},
     "train.algorithm='fedprox'"),
    ({"train": {"algorithm": "fedsgd", "local_epochs": 1}, "privacy": {"mode": "local"}},
     "train.algorithm='fedsgd'"),
])
def test_bad_values_are_refused_naming_the_key(patch, key):
    raw = digits(**{k: v for k, v in patch.items() if k != "train"}, train=patch.get("train"))
    with pytest.raises(ConfigError) as info:
        plan_from_dict(raw)
    message = str(info.value)
    assert key in message and "\n" not in message, message


def test_combinations_that_keep_their_guarantees_are_accepted():
    # a server optimizer post-processes DP-FedAvg's noisy aggregate or the CKKS sum; any client algorithm's update
    # is clipped by central DP's server (or by the clients before encrypting)
    prox = {"algorithm": "fedprox", "proximal_mu": 0.1}
    central = {"mode": "central", "epsilon": 8.0, "delta": 1e-3}
    for raw in (digits(server={"optimizer": "fedadam"}, privacy=central, train=prox),
                digits(server={"optimizer": "fedyogi"}, encryption={"scheme": "ckks"}, train=prox),
                digits(server={"optimizer": "fedavgm"}, encryption={"scheme": "ckks"}, privacy=central,
                       train={"algorithm": "fedsgd", "local_epochs": 1}),
                digits(server={"optimizer": "fedadagrad"}, privacy={"mode": "local", "delta": 1e-4})):
        plan = plan_from_dict(raw)
        assert plan.server_plan().make_optimizer().describe() != "none"


def test_config_toml_plans_the_run_again_with_every_default_written():
    plan = plan_from_dict(digits(server={"optimizer": "fedyogi"}, train={"algorithm": "fedprox", "proximal_mu": 0.01}))
    assert plan.resolved["server"] == {"optimizer": "fedyogi", "aggregation": "sync", "staleness_exponent": 0.5,
                                       "server_lr": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}
    assert plan.resolved["train"]["algorithm"] == "fedprox" and plan.resolved["train"]["proximal_mu"] == 0.01
    again = plan_from_dict(tomllib.loads(plan.to_toml()))
    assert again.resolved == plan.resolved
    assert plan_from_dict(digits()).resolved["server"] == {"optimizer": "none", "aggregation": "sync",
                                                          "staleness_exponent": 0.5}


def test_a_sweep_cell_drops_the_keys_of_another_optimizer_but_keeps_a_typo():
    from fedsec.plan import drop_unused_kind_keys

    raw = digits(server={"optimizer": "fedadagrad", "beta_2": 0.9, "server_lr": 0.2})  # beta_2: FedAdam's, not its
    drop_unused_kind_keys(raw)
    assert raw["server"] == {"optimizer": "fedadagrad", "server_lr": 0.2}
    typo = digits(server={"optimizer": "fedadam", "beta2": 0.9})
    drop_unused_kind_keys(typo)
    with pytest.raises(ConfigError, match="server.beta2"):
        plan_from_dict(typo)


def test_fedsec_validate_exits_2_with_the_key(tmp_path):
    import tomli_w

    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(digits(server={"optimizer": "fedadam", "beta_1": 1.5})))
    result = CliRunner().invoke(cli_app, ["validate", str(path)])
    assert result.exit_code == 2 and "server.beta_1" in result.output, result.output
    path.write_text(tomli_w.dumps(digits(server={"optimizer": "fedadam", "beta_1": 0.5})))
    assert CliRunner().invoke(cli_app, ["validate", str(path)]).exit_code == 0


def test_fedsec_list_shows_the_algorithms_and_the_optimizers_with_their_keys():
    result = CliRunner().invoke(cli_app, ["list"], env={"COLUMNS": "200"})
    flat = " ".join(result.output.split())
    for name in ("fedprox", "fedsgd", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        assert f" {name} " in result.output, name
    assert "[server_lr=0.1, beta_1=0.9, beta_2=0.99, tau=0.001]" in flat


# ---------------------------------------------------------------------------------------------- through Ray (slow)
FEDSEC = [sys.executable, "-m", "fedsec.cli"]


@pytest.mark.e2e
@pytest.mark.slow
def test_ray_run_fedprox_mu_zero_in_cohort_mode_gives_fedavgs_rows(tmp_path):
    from fedsec.runtime.runner import run_experiment

    smoke = digits(rounds=2)
    fedavg = run_experiment(plan_from_dict(smoke), tmp_path / "fedavg")
    prox = run_experiment(plan_from_dict(digits(rounds=2, train={"algorithm": "fedprox", "proximal_mu": 0.0},
                                                backend={"messages": "cohort", "cohort_nodes": 2})),
                          tmp_path / "prox")
    assert prox.summary["client_messages"] == "cohort (2 nodes)"
    ra, rb = (pd.read_csv(r.run_dir / "rounds.csv").filter(regex=r"^(?!.*seconds$)") for r in (fedavg, prox))
    pd.testing.assert_frame_equal(rb, ra, check_exact=True)


@pytest.mark.e2e
@pytest.mark.slow
def test_fedadam_after_median_sigkilled_after_round_one_resumes_to_the_uninterrupted_rows(tmp_path):
    import tomli_w

    from tests.test_e2e_resume import completed_rounds, rows, start, wait_for

    cfg = tmp_path / "fedadam.toml"
    cfg.write_text(tomli_w.dumps(digits(defense={"strategy": "median"},
                                        server={"optimizer": "fedadam", "server_lr": 0.05})))
    done = subprocess.run([*FEDSEC, "run", str(cfg), "--out", str(tmp_path / "full")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "run"
    proc = start(cfg, out)
    wait_for(lambda: completed_rounds(out) >= 1 and (out / "checkpoints" / "latest.pt").exists(), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "summary.json").exists()
    resumed = subprocess.run([*FEDSEC, "run", "--resume", str(out)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("rounds.csv", "clients.csv"):
        pd.testing.assert_frame_equal(rows(out, name), rows(tmp_path / "full", name), check_exact=True)
