"""fedsec's ClientApp: one Flower Message-API ClientApp for honest and malicious clients.

Whether a client is malicious is decided by the experiment (:func:`fedsec.threat.malicious_clients`, drawn from
the seed); a malicious client behaves honestly outside ``attack.start_round..attack.end_round``.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsec.clients.attacks.registry import build_attack
from fedsec.clients.encrypted import encrypted_train_reply, worker_context
from fedsec.clients.honest import (
    ClientSpec,
    current_node,
    honest_train,
    local_model,
    partition_of,
    round_of,
    train_reply,
)
from fedsec.clients.malicious import malicious_train
from fedsec.clients.private import dp_train
from fedsec.federated_data import worker_data
from fedsec.records import model_to_record
from fedsec.strategies.base import NODE_KEY, NUM_EXAMPLES_KEY, PARTITION_ID_KEY
from fedsec.threat import attack_active, malicious_clients
from fedsec.training import evaluate


def make_client_app(spec: ClientSpec) -> ClientApp:
    """The ClientApp for ``spec``: honest clients train; malicious ones run the configured attack."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        experiment = spec.experiment
        partition_id = partition_of(context)
        server_round = round_of(message)
        global_arrays = message.content["arrays"]
        attackers = malicious_clients(experiment)
        if partition_id in attackers and attack_active(experiment, server_round):
            arrays, metrics = malicious_train(
                spec,
                global_arrays,
                server_round=server_round,
                partition_id=partition_id,
                attack=build_attack(experiment.attack),
                attacker_rank=attackers.index(partition_id),
            )
        elif experiment.privacy.mode == "local":
            model, metrics = dp_train(spec, global_arrays, server_round=server_round, partition_id=partition_id,
                                      state=context.state)
            arrays = model_to_record(model)
        else:
            model, metrics = honest_train(spec, global_arrays, server_round=server_round, partition_id=partition_id)
            arrays = model_to_record(model)
        if spec.crypto_ref is not None:
            central = experiment.privacy.mode == "central"
            return encrypted_train_reply(
                message, arrays, metrics, context=worker_context(spec.crypto_ref), node=current_node(),
                clip_norm=experiment.privacy.clip_norm if central else None,
            )
        return train_reply(message, arrays, metrics)

    @app.evaluate()
    def evaluate_local(message: Message, context: Context) -> Message:
        data = worker_data(spec.data_ref, spec.experiment)
        partition_id = partition_of(context)
        model = local_model(spec, data, message.content["arrays"])
        x, y = data.client_tensors(partition_id)
        result = evaluate(model, x, y, num_classes=data.data.num_classes)
        metrics = MetricRecord(
            {
                NUM_EXAMPLES_KEY: result.num_examples,
                "eval_loss": result.loss,
                "eval_acc": result.accuracy,
                PARTITION_ID_KEY: partition_id,
            }
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=message)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        worker_data(spec.data_ref, spec.experiment)  # warm the worker: fetch the data once, here
        info = ConfigRecord({NODE_KEY: current_node()})
        metrics = MetricRecord({PARTITION_ID_KEY: partition_of(context)})
        return Message(content=RecordDict({"metrics": metrics, "info": info}), reply_to=message)

    return app
