"""fedsec's clients under Flower's SecAgg+ (``encryption.scheme = "secagg+"``, :mod:`fedsec.crypto.secaggplus`).

Flower's ``secaggplus_mod`` answers the protocol's setup, key-sharing and unmasking stages itself and, in the stage
that collects masked vectors, passes the train message on in Flower's legacy layout (``FitIns``) and masks the legacy
``FitRes`` it gets back. :func:`legacy_bridge` sits between that mod and fedsec's train handler: it turns the
``FitIns`` into fedsec's train message (the array names travel in the config), lets the client train exactly as in
a plaintext run (honest, malicious, local DP), and turns fedsec's reply into a ``FitRes`` whose parameters are the
model arrays and whose ``num_examples`` is the weight the run uses (the client's count under
``defense.weighting = "reported"``, 1 otherwise). The reply's metrics and info travel as one JSON string in the
``FitRes`` metrics, in the clear, as Flower's workflow sends metrics. A client that cannot produce a model (a DP
client out of budget) raises: to the protocol it is a client that dropped after sharing its keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins

from fedsec.crypto.secaggplus import ARRAY_NAMES_KEY, REPLY_KEY
from fedsec.protocol import ARRAYS_RECORD, CONFIG_RECORD, INFO_RECORD, METRICS_RECORD, NUM_EXAMPLES_KEY

FITINS_PARAMETERS = "fitins.parameters"

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


class SecAggRefusal(RuntimeError):
    """The client trained nothing it could mask (e.g. a DP client out of budget)."""


def legacy_bridge(weighted: bool) -> Mod:
    """The mod between ``secaggplus_mod`` and fedsec's train handler (module docstring)."""

    def bridge(message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if message.metadata.message_type != MessageType.TRAIN or FITINS_PARAMETERS not in message.content:
            return call_next(message, context)
        fitins = recorddict_to_fitins(message.content, keep_input=False)
        config = dict(fitins.config)
        names = [str(n) for n in json.loads(str(config.pop(ARRAY_NAMES_KEY)))]
        arrays = parameters_to_ndarrays(fitins.parameters)
        message.content = RecordDict({
            ARRAYS_RECORD: ArrayRecord({name: Array(a) for name, a in zip(names, arrays, strict=True)}),
            CONFIG_RECORD: ConfigRecord(config),  # type: ignore[arg-type]
        })
        reply = call_next(message, context)
        if reply.has_error():
            return reply
        content = reply.content
        if ARRAYS_RECORD not in content:
            info = dict(content[INFO_RECORD]) if INFO_RECORD in content else {}
            raise SecAggRefusal(f"no model to mask: {info.get('reason', 'the client sent none')}")
        metrics = dict(content[METRICS_RECORD])
        weight = int(metrics.get(NUM_EXAMPLES_KEY, 1)) if weighted else 1
        carried = {"metrics": metrics, "info": dict(content[INFO_RECORD]) if INFO_RECORD in content else {}}
        fitres = FitRes(status=Status(Code.OK, ""),
                        parameters=ndarrays_to_parameters([a.numpy() for a in content[ARRAYS_RECORD].values()]),
                        num_examples=weight, metrics={REPLY_KEY: json.dumps(carried)})
        return Message(fitres_to_recorddict(fitres, keep_input=False), reply_to=message)

    return bridge


def secaggplus_mods(weighted: bool) -> list[Any]:
    """The client mods of a SecAgg+ run, outermost first: Flower's protocol, then the legacy bridge."""
    return [secaggplus_mod, legacy_bridge(weighted)]
