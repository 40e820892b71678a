"""The peers benchmark's workload in pfl-research with its PyTorch backend; prints one JSON line of results.

pfl-research: Granqvist et al., "pfl-research: simulation framework for accelerating research in Private Federated
Learning", 2024 (https://arxiv.org/abs/2404.06430, https://github.com/apple/pfl-research), version 0.6.0 from PyPI
(``pfl``), run in ``.venv-peers`` (``bash scripts/peers_venv.sh``):

    .venv-peers/bin/python benchmarks/peers/pfl_run.py --recipe /tmp/.../recipe.json

The driver (``benchmarks/bench_peers.py``) writes the recipe and its ``.npz``: fedsec's data split, schedule and
initial weights (:mod:`models`). This script builds, the way pfl's examples do:

- a ``FederatedDataset`` whose ``make_dataset_fn`` returns client u's examples (fedsec's index array, permuted by
  a seeded NumPy generator on every draw, since pfl's ``Dataset.iter`` slices mini-batches in stored order and
  fedsec draws a fresh permutation per round), and whose user sampler returns fedsec's scheduled clients of each
  round in turn (so pfl trains the same clients in the same rounds as fedsec; pfl's own samplers would draw
  others);
- a ``PyTorchModel`` around the same architecture (:func:`models.build_model`, fedsec's initial weights), with a
  local optimizer ``torch.optim.SGD(lr, momentum, weight_decay)`` that pfl creates anew for every user (as fedsec
  does: momentum starts at zero on each client), one step per mini-batch of ``batch_size`` for ``local_epochs``
  epochs (``NNTrainHyperParams``), and a central ``SGD(lr=1.0)`` on minus the averaged model difference: FedAvg;
- ``FederatedAveraging`` with ``NNAlgorithmParams(central_num_iterations=rounds, train_cohort_size=clients per
  round, val_cohort_size=0)`` on a ``SimulatedBackend`` with the ``WeightByDatapoints`` postprocessor (each update
  weighted by the client's number of examples, as Flower's and fedsec's FedAvg do; pfl's default is one weight
  per user);
- a ``CentralEvaluationCallback`` on the test set (batches of the recipe's ``eval_batch_size``, fedsec's) and a
  timing callback after it.

Single process, pfl's default: ``world_size`` 1, no Horovod or ``torch.distributed`` workers; the clients of a round
train one after another in this process with PyTorch's default thread count (the machine's cores) or ``--threads``,
where fedsec and Flower run one client actor per core with one thread each. (On the shared 2-core machine, under
``nice -n 10`` at load averages of 2 to 5, two threads were measured 18 to 33 times slower than one on the digits
rows: each small kernel waits for its second thread to get a busy core.)

What is measured (wall clock, ``time.perf_counter``):

- ``startup_s``: from before the federated dataset, model, backend and algorithm are built until the first round
  begins, i.e. after the callbacks' ``on_train_begin`` (the central evaluation of the initial model). The ``.npz``
  is read before that (as the peers' and fedsec's data loading are not compared here).
- ``round_s``: per round, from the end of the previous round (or the start) to the end of this round's
  ``after_central_iteration`` callbacks, central evaluation included. pfl differs in two places, both in round 1:
  pfl's ``CentralEvaluationCallback`` skips iteration 0 (it evaluated before training), and pfl's FedAvg evaluates
  each user's data before and after local training in iterations where ``iteration % evaluation_frequency == 0``,
  which includes iteration 0 (``evaluation_frequency`` is set above the number of rounds, so only there).
- ``accuracy``: test accuracy after each round where pfl evaluates; ``final_accuracy`` after the last round
  (evaluated here if the callback did not).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402


class PflClassifier(nn.Module):
    """The peer model with the ``loss`` and ``metrics`` methods pfl's ``PyTorchModel`` calls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:  # noqa: A002
        self.eval() if eval else self.train()
        return F.cross_entropy(self(x), y.long())  # pfl hands every array over as float32

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = True) -> dict[str, Any]:  # noqa: A002
        from pfl.metrics import Weighted

        self.eval()
        logits = self(x)
        y = y.long()
        return {"loss": Weighted(float(F.cross_entropy(logits, y, reduction="sum")), len(y)),
                "accuracy": Weighted(float((logits.argmax(dim=1) == y).sum()), len(y))}


def run(recipe_path: str, threads: int = 0) -> dict[str, Any]:
    """Run the recipe's rounds in pfl and return the measurements (see the module docstring); ``threads`` > 0 sets
    PyTorch's thread count (0: PyTorch's default, the machine's cores)."""
    if threads > 0:
        torch.set_num_threads(threads)
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.callback.central_evaluation import CentralEvaluationCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.model.pytorch import PyTorchModel

    work = models.load_workload(recipe_path)
    recipe = work.recipe
    rounds, per_round = int(recipe["rounds"]), int(recipe["clients_per_round"])
    marks: list[float] = []
    accuracy: dict[int, float] = {}

    class Timer(TrainingProcessCallback):
        """Marks the start of round 1 and the end of every round; keeps the central evaluation's accuracy."""

        def on_train_begin(self, *, model: Any) -> Any:
            from pfl.metrics import Metrics

            marks.append(time.perf_counter())
            return Metrics()

        def after_central_iteration(self, aggregate_metrics: Any, model: Any, *, central_iteration: int) -> Any:
            from pfl.metrics import Metrics

            marks.append(time.perf_counter())
            for name, value in aggregate_metrics:
                if str(name) == "Central val | accuracy":
                    # iteration 0 carries on_train_begin's evaluation of the initial model (pfl skips the one after
                    # iteration 0); iteration i > 0 evaluates the model after its update: i + 1 rounds
                    accuracy[central_iteration + 1 if central_iteration else 0] = float(value.overall_value)
            return False, Metrics()

    t0 = time.perf_counter()
    schedule = iter(work.sampled.reshape(-1).tolist())
    shuffle = np.random.default_rng(int(recipe["seed"]))

    def make_user(user_id: int) -> Dataset:
        idx = shuffle.permutation(work.client_indices(user_id))
        return Dataset((work.x_train[idx], work.y_train[idx]), user_id=str(user_id))

    train_data = FederatedDataset(make_user, lambda: next(schedule))
    val_data = FederatedDataset(make_user, lambda: 0)  # required by the backend; val_cohort_size=0 never draws
    net = models.build_model(work)
    module = PflClassifier(net)
    momentum, weight_decay = float(recipe["momentum"]), float(recipe["weight_decay"])
    model = PyTorchModel(
        module,
        local_optimizer_create=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=momentum,
                                                                  weight_decay=weight_decay),
        central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
    )
    backend = SimulatedBackend(training_data=train_data, val_data=val_data, postprocessors=[WeightByDatapoints()])
    algorithm_params = NNAlgorithmParams(central_num_iterations=rounds, evaluation_frequency=rounds + 1,
                                         train_cohort_size=per_round, val_cohort_size=0)
    train_params = NNTrainHyperParams(local_num_epochs=int(recipe["local_epochs"]),
                                      local_learning_rate=float(recipe["lr"]),
                                      local_batch_size=int(recipe["batch_size"]))
    eval_params = NNEvalHyperParams(local_batch_size=work.eval_batch_size)
    test = Dataset((work.x_test, work.y_test))
    callbacks = [CentralEvaluationCallback(test, model_eval_params=eval_params, frequency=1), Timer()]
    FederatedAveraging().run(algorithm_params=algorithm_params, backend=backend, model=model,
                             model_train_params=train_params, model_eval_params=eval_params, callbacks=callbacks,
                             send_metrics_to_platform=False)
    t_end = time.perf_counter()
    if rounds not in accuracy:
        accuracy[rounds] = models.accuracy(net, work.x_test, work.y_test, batch_size=work.eval_batch_size)
    threads = torch.get_num_threads()
    return models.run_result(
        "pfl", f"SimulatedBackend, {threads} thread(s)", t0=t0, marks=marks, t_end=t_end, accuracy=accuracy,
        rounds=rounds, torch_threads=threads, notes=f"pfl single process, {threads} torch threads; fedsec's schedule")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True, help="the driver's recipe JSON")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = parser.parse_args()
    print(json.dumps(run(args.recipe, args.threads)), flush=True)


if __name__ == "__main__":
    main()
