"""fedsec's ClientApp: one Flower Message-API ClientApp for honest and malicious clients.

Whether a client is malicious, and when it attacks, comes from the run plan's schedule (drawn from the seed); a
malicious client behaves honestly outside ``attack.start_round..attack.end_round``. A DP client whose next round
would overspend its budget answers with a ``refused`` reply (:mod:`fedsec.protocol`) instead of training.

A train message is for one client (the node's ``partition-id``, Flower's usual way) or, in cohort mode
(:mod:`fedsec.server.cohorts`), for a cohort of logical clients: the handler trains them in turn, each exactly as
if it had its own message and node (its own ``partition-id`` and its own ``context.state``, kept in the node's
state under the ``"<partition id>|"`` prefix), and answers with one reply that holds every client's reply. A
client that raises becomes an error entry for that client alone. Users who put this ClientApp in their own Flower
app send it ordinary per-client messages and see no difference.
"""

from __future__ import annotations

import logging
import traceback

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedsec.arrays import model_to_record
from fedsec.crypto.client_keys import DECRYPT_RECORD
from fedsec.protocol import (
    ARRAYS_RECORD,
    COHORT_SEP,
    NODE_KEY,
    NUM_EXAMPLES_KEY,
    PARTITION_ID_KEY,
    cohort_ids,
    cohort_reply,
    refusal_reply,
    server_round_of,
    train_reply,
)
from fedsec.training import evaluate

from .dp import PrivacyBudgetExhausted, dp_from_stacked, dp_train
from .encrypted import decrypt_reply, encrypted_train_reply, worker_context
from .honest import client_data, honest_train, local_model
from .malicious import malicious_train
from .secaggplus import secaggplus_mods
from .spec import ClientSpec, current_node, partition_of
from .vectorized import Trained, train_cohort_stacked

logger = logging.getLogger(__name__)


def make_client_app(spec: ClientSpec) -> ClientApp:
    """The ClientApp for ``spec``: honest clients train; malicious ones run the configured attack (under SecAgg+,
    behind Flower's ``secaggplus_mod``, :mod:`.secaggplus`)."""
    app = ClientApp() if spec.secagg_weighted is None else ClientApp(mods=secaggplus_mods(spec.secagg_weighted))

    def train_one(message: Message, context: Context, stacked: Trained | None = None) -> Message:
        partition_id = partition_of(context)
        server_round = server_round_of(message)
        global_arrays = message.content[ARRAYS_RECORD]
        dp_history = None
        if spec.schedule.is_malicious(partition_id) and spec.schedule.attack_active(server_round):
            arrays, metrics = malicious_train(spec, global_arrays, server_round=server_round,
                                              partition_id=partition_id)
        elif spec.privacy.mode == "local":
            try:
                if stacked and partition_id in stacked:  # trained with its cohort (train.vectorize)
                    arrays, metrics, dp_history = dp_from_stacked(spec, stacked[partition_id],
                                                                  server_round=server_round,
                                                                  partition_id=partition_id, state=context.state)
                else:
                    model, metrics, dp_history = dp_train(spec, global_arrays, server_round=server_round,
                                                          partition_id=partition_id, state=context.state)
                    arrays = model_to_record(model)
            except PrivacyBudgetExhausted as e:
                return refusal_reply(message, partition_id=partition_id, reason=str(e), node=current_node())
        elif stacked and partition_id in stacked:  # trained with its cohort (train.vectorize)
            arrays, metrics = stacked[partition_id].arrays, stacked[partition_id].metrics
        else:
            model, metrics = honest_train(spec, global_arrays, server_round=server_round, partition_id=partition_id)
            arrays = model_to_record(model)
        if spec.train.vectorize and "vectorized" not in metrics:  # the per-client path (clients.csv says which)
            metrics["vectorized"] = 0.0
        if spec.crypto_ref is not None:
            return encrypted_train_reply(message, arrays, metrics, context=worker_context(spec.crypto_ref),
                                         node=current_node(), clip_norm=spec.central_clip_norm,
                                         weighted=spec.ckks_weighted, member_bound=spec.ckks_member_bound)
        return train_reply(message, arrays, metrics, node=current_node(), dp_history=dp_history)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        partition_ids = cohort_ids(message)
        if partition_ids is None:
            return train_one(message, context)
        stacked: Trained = {}
        if spec.train.vectorize:
            try:
                stacked = train_cohort_stacked(spec, message, partition_ids)
            except Exception:  # noqa: BLE001 - the per-client path still trains every client
                logger.error("vectorized cohort failed, training client by client: %s", traceback.format_exc())
        return train_cohort(lambda m, c: train_one(m, c, stacked), message, context, partition_ids)

    @app.evaluate()
    def evaluate_local(message: Message, context: Context) -> Message:
        data = client_data(spec)
        partition_id = partition_of(context)
        model = local_model(spec, data, message.content[ARRAYS_RECORD])
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

    def decrypt_one(message: Message, context: Context) -> Message:
        return decrypt_reply(message, spec.crypto_ref, partition_id=partition_of(context))

    @app.query()
    def query(message: Message, context: Context) -> Message:
        if message.has_content() and DECRYPT_RECORD in message.content:  # trust = "clients": the round's decryptor
            partition_ids = cohort_ids(message)
            if partition_ids is None:
                return decrypt_one(message, context)
            return train_cohort(decrypt_one, message, context, partition_ids)
        client_data(spec)  # warm the worker: fetch the data once, here
        info = ConfigRecord({NODE_KEY: current_node()})
        metrics = MetricRecord({PARTITION_ID_KEY: partition_of(context)})
        return Message(content=RecordDict({"metrics": metrics, "info": info}), reply_to=message)

    return app


def train_cohort(train_one, message: Message, context: Context, partition_ids: list[int]) -> Message:
    """Train each client of a cohort message in turn (``train_one(message, client_context)``); one reply for all."""
    states: dict[int, dict] = {}
    for name, record in context.state.items():  # one pass: each client's own state, by its prefix
        pid, sep, key = name.partition(COHORT_SEP)
        if sep and pid.isdigit():
            states.setdefault(int(pid), {})[key] = record
    replies: list[Message | tuple[int, str]] = []
    for partition_id in partition_ids:
        own = Context(run_id=context.run_id, node_id=context.node_id,
                      node_config={**context.node_config, "partition-id": partition_id},
                      state=RecordDict(states.get(partition_id, {})), run_config=context.run_config)
        try:
            replies.append(train_one(message, own))
        except Exception as e:  # noqa: BLE001 - one client's failure is its own, as with one message per client
            logger.error("client %d failed: %s", partition_id, traceback.format_exc())
            replies.append((int(ErrorCode.CLIENT_APP_RAISED_EXCEPTION), f"{type(e).__name__}: {e}"))
        for key, record in own.state.items():
            context.state[f"{partition_id}{COHORT_SEP}{key}"] = record
    return cohort_reply(message, replies)
