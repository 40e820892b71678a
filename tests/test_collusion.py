"""A curious server with colluding clients (attack.kind = "collude_with_server", fedsec/hooks/collusion.py) through
fedsec's real round loop (in process): in plaintext it reads the victim's update alone; under the CKKS key
authority, and with the key held by the clients, one colluder sending Enc(0) and the withheld honest replies give it
the victim's exact update (both release sums of two signed members); central DP
noise on the released sum leaves it the update plus the noise. The recovery is checked against the victim's update
computed here, outside the run."""

from __future__ import annotations

import pandas as pd
import pytest

from fedsec.crypto.openfhe_side import missing_reason
from fedsec.errors import ConfigError
from fedsec.plan import plan_from_dict
from tests.in_process import run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RAW = {"name": "collusion", "seed": 0, "rounds": 2,
       "data": {"dataset": "digits", "partition": "iid", "num_clients": 4}, "model": {"name": "logreg"},
       "train": {"clients_per_round": 4, "local_epochs": 1, "batch_size": 32, "lr": 0.1},
       "attack": {"kind": "collude_with_server", "client_ids": [3], "victim": 1},
       "defense": {"strategy": "fedavg"}}


def test_plaintext_gives_the_victims_update_without_withholding(tmp_path, server_identity):
    rows = run_in_process(RAW, tmp_path / "plain")
    assert (rows.loc[1:, "collusion_error"] < 1e-6).all()
    assert (rows.loc[1:, "collusion_withheld"] == 0).all()
    assert rows.attrs["summary"]["collusion"]["trust_model"].startswith("plaintext")


@pytest.mark.parametrize(("trust", "named", "tolerance"), [
    ("authority", "key authority", 1e-6), ("clients", "clients hold the key", 1e-6),
    pytest.param("threshold", "committee of clients decrypts together", 1e-5,  # OpenFHE's noisier partials
                 marks=pytest.mark.skipif(bool(missing_reason()), reason=missing_reason() or "OpenFHE reachable"))])
def test_a_sum_of_two_released_gives_the_victims_update_to_one_colluder(tmp_path, server_identity, trust, named,
                                                                       tolerance):
    rows = run_in_process({**RAW, "encryption": {"scheme": "ckks", "trust": trust}}, tmp_path / "ckks")
    assert (rows.loc[1:, "collusion_error"] < tolerance).all()  # CKKS's own error only
    assert (rows.loc[1:, "collusion_psnr"] > 100).all()
    assert (rows.loc[1:, "collusion_withheld"] == 2).all()  # clients 0 and 2
    clients = pd.read_csv(tmp_path / "ckks" / "clients.csv")
    assert set(clients.loc[clients["client"].isin([0, 2]), "status"].str[:8]) == {"withheld"}
    block = rows.attrs["summary"]["collusion"]
    assert block["victim"] == 1 and block["colluders"] == [3] and block["colluders_needed_per_round"] == 1
    assert block["rounds_recovered"] == 2 and named in block["trust_model"]


@pytest.mark.parametrize("trust", ["authority", "clients"])
def test_central_dp_noise_is_what_the_server_is_left_with(tmp_path, server_identity, trust):
    raw = {**RAW, "encryption": {"scheme": "ckks", "trust": trust}, "train": {**RAW["train"], "sampling": "poisson"},
           "privacy": {"mode": "central", "epsilon": 50.0, "delta": 1e-5, "clip_norm": 1.0}}
    rows = run_in_process(raw, tmp_path / "dp")
    recovered = rows["collusion_error"].dropna()
    assert len(recovered) >= 1 and (recovered > 0.5).all()  # the noise std per coordinate dwarfs a 1-norm update


def test_the_victim_must_be_honest():
    with pytest.raises(ConfigError, match="attack.victim=3: the victim must be an honest client"):
        plan_from_dict({**RAW, "attack": {**RAW["attack"], "victim": 3}})


def test_an_unknown_trust_model_is_refused_naming_the_models():
    with pytest.raises(ConfigError, match=r"encryption\.trust: 'keyholder': unknown trust model; the models are "
                                          r"'clients', 'threshold' and 'authority'"):
        plan_from_dict({**RAW, "encryption": {"scheme": "ckks", "trust": "keyholder"}})
