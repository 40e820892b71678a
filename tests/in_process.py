"""fedsec's round loop (:func:`fedsec.server.app.run_rounds`) in the test process, without Ray: the real ServerApp
code, strategies, hooks and ClientApp, answered message by message."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto

from fedsec.clients.app import make_client_app
from fedsec.clients.spec import ClientSpec
from fedsec.data.federated import build_federated_data
from fedsec.plan import plan_from_dict
from fedsec.results import RunDirectory
from fedsec.server.app import ServerOutcome, run_rounds
from fedsec.server.checkpoint import load_checkpoint


class InProcessGrid:
    """A Flower Grid for :func:`fedsec.server.app.run_rounds` without Ray: each message is answered by the ClientApp
    in this process, as node ``1000 + p`` (partition p; cohort node p in cohort mode) with its own state."""

    pull_interval = 0.0
    run = SimpleNamespace(run_id=1)

    def __init__(self, client_app, nodes: int) -> None:
        self.app = client_app
        self.partition_of = {1000 + p: p for p in range(nodes)}
        self.states = {node: RecordDict() for node in self.partition_of}
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.partition_of)

    def push_messages(self, messages) -> list[str]:
        """Answer each message at once (ids as Flower's link state gives them: the message's object id)."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            node = message.metadata.dst_node_id
            context = Context(run_id=1, node_id=node, node_config={"partition-id": self.partition_of[node]},
                              state=self.states[node], run_config={})
            copied = message_from_proto(message_to_proto(message))  # each node its own, as over the wire
            try:  # (SecAgg+'s client mod edits what it receives)
                self._replies[message.metadata.message_id] = self.app(copied, context)
            except Exception as e:  # noqa: BLE001 - as Flower's engine: the node answers with an error
                self._replies[message.metadata.message_id] = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=repr(e)), reply_to=message)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_in_process(raw: dict, out: Path, *, cohort_nodes: int = 0, stop_after: int | None = None,
                   resume: bool = False) -> pd.DataFrame:
    """fedsec's round loop on ``raw`` in this process (under CKKS: keys provisioned to the clients, or the key
    authority in a child process);
    rounds.csv without its timing columns (``attrs``: the hooks'
    ``summary`` blocks and the ``stopped_reason``). ``stop_after``: stop
    as a kill would after that round's checkpoint; ``resume``: go on from the directory's checkpoint."""
    plan = plan_from_dict(raw)
    data = build_federated_data(plan.data_config, plan.seed)
    key_authority = keyring = None
    if plan.crypto is not None and plan.facts.trust in ("clients", "threshold"):  # the clients' keys, as under Ray
        key_authority = plan.start_keys()
        keyring = key_authority.client_ref()
    elif plan.crypto is not None:  # the key authority in a process of its own, each client's material handed over
        from fedsec.clients.encrypted import ClientKeyring
        from fedsec.crypto import KeyAuthorityHandle

        key_authority = KeyAuthorityHandle.start(plan.crypto, backend="process", **plan.key_authority_args())
        keyring = ClientKeyring({p: key_authority.client_material(p) for p in range(plan.facts.num_clients)})
    spec = ClientSpec.from_plan(plan, crypto_ref=keyring)
    grid = InProcessGrid(make_client_app(spec), cohort_nodes or plan.facts.num_clients)
    outcome = ServerOutcome()
    on_round = None
    if stop_after is not None:
        on_round = lambda row: outcome.stop.set() if row["round"] == stop_after else None  # noqa: E731
    with RunDirectory(out, plan, config_toml=plan.to_toml(), resume=resume) as run_dir:
        state = None
        if resume:
            state = load_checkpoint(out)
            run_dir.truncate_after(state["round"])
        try:
            run_rounds(grid, plan.server_plan(), data, run_dir, outcome=outcome, on_round=on_round,
                       resume_state=state, cohort_nodes=cohort_nodes, key_authority=key_authority)
        finally:
            if key_authority is not None:
                key_authority.stop()
    rows = pd.read_csv(out / "rounds.csv").filter(regex=r"^(?!.*seconds$)")
    rows.attrs["summary"] = outcome.summary  # the hooks' summary blocks (what summary.json adds to the last row)
    rows.attrs["stopped_reason"] = outcome.stopped_reason
    return rows
