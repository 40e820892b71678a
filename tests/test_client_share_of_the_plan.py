"""What every client unpickles (the ClientApp, with its ClientSpec) holds the clients' share of the plan: a
defense-aware attacker gets the defense's recipe (fedsec.plan.StrategyRecipe), never the run plan or the whole
experiment config."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import cloudpickle
import pytest

from fedsec.clients.app import make_client_app
from fedsec.clients.spec import ClientSpec
from fedsec.plan import load_plan

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "digits_smoke.toml"


def _classes_in(blob: bytes) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module: str, name: str):  # noqa: ANN202 - pickle's hook
            found.add((module, name))
            return super().find_class(module, name)

    Recording(io.BytesIO(blob)).load()
    return found


@pytest.mark.parametrize("attack", [[], ["attack.kind=alie", "attack.client_ids=[0]", "attack.knowledge=omniscient",
                                         "defense.strategy=median", "defense.pre=['nnm']"]])
def test_clients_get_the_defense_recipe_not_the_run_plan(attack):
    plan = load_plan(SMOKE, ["rounds=1", *attack])
    classes = _classes_in(cloudpickle.dumps(make_client_app(ClientSpec.from_plan(plan, data_ref=None))))
    names = {name.split(".")[0] for _, name in classes}
    assert "RunPlan" not in names and "Experiment" not in names
    assert ("fedsec.plan", "StrategyRecipe") in classes
    recipe = plan.strategy_recipe()
    assert type(recipe.build(device="cpu")) is plan.strategy_cls  # the attacker's copy is the server's rule
