"""The ClientApp Flower pickles for every message stays small: data travels through Ray's object store."""

from __future__ import annotations

import cloudpickle

from fedsec.clients.app import make_client_app
from fedsec.clients.spec import ClientSpec
from fedsec.plan import plan_from_dict
from fedsec.schedule import client_seed


def test_pickled_client_app_carries_no_data():
    plan = plan_from_dict({"data": {"dataset": "fashion-mnist", "num_clients": 20}})
    size = len(cloudpickle.dumps(make_client_app(ClientSpec.from_plan(plan))))
    # Fashion-MNIST's training images alone are 188 MB as float32; the app must hold only the config
    assert size < 200_000, size


def test_client_seeds_differ_by_seed_round_and_partition():
    seeds = {client_seed(s, r, p) for s in (0, 1) for r in (1, 2) for p in (0, 1, 2)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    assert client_seed(0, 1, 2) == client_seed(0, 1, 2)
