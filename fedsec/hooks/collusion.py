"""The curious server's side of ``attack.kind = "collude_with_server"`` (``clients/attacks/collude_with_server.py``
cites the attack), and what it recovers of the victim's update, per trust model.

In a round where the victim and enough colluders replied (under the CKKS key authority: ``min_clients - 1``, the
authority releasing no smaller sum), the server withholds every other reply (recorded in ``clients.csv`` as withheld,
as a lost reply would be), the strategy aggregates the victim's and the colluders' zero updates, and the server
reads the victim's update back from the model it released: (new - old) / the victim's weight. In plaintext it reads
the victim's reply directly and withholds nothing. The recovery is compared with the victim's true update, which
the experimenter (not the server) recomputes from the victim's data and seed (the run plan hands the hook that
function; clients train deterministically): ``collusion_error`` = ||recovered - true|| / ||true|| and
``collusion_psnr`` = 20 log10(max |true| / RMSE) per round, and a ``collusion`` summary block. Under central DP the
true update is the clipped one the victim encrypts, and what is left between them is the authority's noise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fedsec.arrays import record_to_vector
from fedsec.errors import ConfigError
from fedsec.protocol import ARRAYS_RECORD, CHUNKS_KEY, CKKS_RECORD, CKKS_WEIGHT_KEY, METRICS_RECORD
from fedsec.results.contract import Metric

from .base import RoundHook, RoundState, RunFacts, ServerContext
from .key_routes import try_routes

WITHHELD = "withheld: the curious server kept only the victim's and the colluders' replies (collude_with_server)"


def recovery_error(recovered: torch.Tensor, true: torch.Tensor) -> tuple[float, float]:
    """(relative L2 error, PSNR in dB with the true update's largest |value| as the peak) of a recovered update.

    >>> recovery_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))
    (0.0, inf)
    >>> err, psnr = recovery_error(torch.tensor([1.1, 2.0]), torch.tensor([1.0, 2.0]))
    >>> round(err, 4), round(psnr, 2)
    (0.0447, 29.03)
    """
    diff = (recovered.double() - true.double())
    norm = float(torch.linalg.vector_norm(true.double()))
    rmse = float(diff.pow(2).mean().sqrt())
    error = float(torch.linalg.vector_norm(diff)) / norm if norm > 0 else math.inf
    peak = float(true.double().abs().max())
    return error, (math.inf if rmse == 0 else 20 * math.log10(peak / rmse))


class CuriousServer(RoundHook):
    """Withholds the other honest replies in the rounds the victim and its colluders share, recovers the victim's
    update from the released model, and measures the recovery."""

    name = "collusion"
    description = ("attack.kind='collude_with_server': the curious server withholds the other honest replies and "
                   "reads the victim's update back; error and PSNR of what it recovers")
    metrics = (
        Metric("collusion_error", "collusion: relative L2 error of the victim's update as the curious server "
               "recovered it (NaN: not recovered this round)", better="higher"),
        Metric("collusion_psnr", "collusion: PSNR (dB) of the recovered victim update", better="lower"),
        Metric("collusion_withheld", "collusion: honest replies the curious server withheld this round",
               final=False, integer=True),
    )

    @classmethod
    def applies(cls, facts: RunFacts) -> bool:
        return facts.attack.kind == "collude_with_server"

    @classmethod
    def check(cls, params: Any, facts: RunFacts) -> None:
        victim = cls.victim_of(facts)
        if victim is None:
            raise ConfigError("attack.kind='collude_with_server': every client colludes; leave at least one honest "
                              "client to be the victim (lower attack.fraction)")
        if victim >= facts.num_clients or victim in facts.schedule.malicious:
            raise ConfigError(f"attack.victim={victim}: the victim must be an honest client, a partition id below "
                              f"data.num_clients={facts.num_clients} that is not a colluder "
                              f"{sorted(facts.schedule.malicious)}")
        if not facts.schedule.malicious:
            raise ConfigError("attack.kind='collude_with_server' needs colluders: set attack.fraction or "
                              "attack.client_ids")

    @staticmethod
    def victim_of(facts: RunFacts) -> int | None:
        chosen = getattr(facts.attack.params, "victim", None)
        if chosen is not None:
            return int(chosen)
        honest = [p for p in range(facts.num_clients) if p not in set(facts.schedule.malicious)]
        return honest[0] if honest else None

    def __init__(self, params: Any, ctx: ServerContext) -> None:
        super().__init__(params, ctx)
        facts = ctx.facts
        self.victim = self.victim_of(facts)
        self.colluders = set(facts.schedule.malicious)
        self.needed = max(0, facts.authority_min_clients - 1) if facts.encrypted else 0
        self.pending: torch.Tensor | bool | None = None
        self.withheld = 0
        self.results: list[dict[str, float]] = []
        self.routes: dict[str, dict[str, Any]] | None = None  # what the server's process reached (key_routes)
        self.probe: tuple[list[bytes], float] | None = None  # the victim's ciphertext and weight, to try them on

    def state(self) -> dict[str, Any]:
        return {"results": list(self.results), "routes": self.routes}

    def restore(self, state: dict[str, Any]) -> None:
        self.results, self.routes = list(state["results"]), state.get("routes")

    def on_replies(self, rnd: RoundState) -> None:
        self.pending, self.withheld = None, 0
        pid_of = {id(m): rnd.partition_of_node.get(m.metadata.src_node_id) for m in rnd.replies}
        victim = next((m for m in rnd.replies if pid_of[id(m)] == self.victim), None)
        if victim is None:
            return
        if not self.ctx.facts.encrypted:  # plaintext: the server reads the victim's reply, no help needed
            arrays = victim.content.array_records.get(ARRAYS_RECORD)
            if arrays is not None:
                self.pending = record_to_vector(arrays).double() - record_to_vector(rnd.sent).double()
            return
        if self.routes is None and self.ctx.facts.trust:  # CKKS: try the key routes on this ciphertext, once
            record = victim.content.config_records.get(CKKS_RECORD, {})
            chunks, weight = record.get(CHUNKS_KEY), victim.content.metric_records.get(METRICS_RECORD, {})
            if isinstance(chunks, list) and chunks:
                self.probe = ([bytes(c) for c in chunks], float(weight.get(CKKS_WEIGHT_KEY, 1.0)))
        colluders = [m for m in rnd.replies if pid_of[id(m)] in self.colluders]
        if len(colluders) < self.needed:
            return
        kept = []
        for m in rnd.replies:
            pid = pid_of[id(m)]
            if pid is None or pid == self.victim or pid in self.colluders:
                kept.append(m)
            else:
                rnd.absent[pid] = WITHHELD
                self.withheld += 1
        rnd.replies = kept
        self.pending = True

    def _try_routes(self, true: torch.Tensor) -> None:
        """The key routes of the server's process (:mod:`.key_routes`) on the victim's ciphertext: what each found,
        and the error of the victim's update (``true``) when it decrypted it alone."""
        chunks, weight = self.probe
        self.probe = None
        self.routes = {}
        for name, (found, candidates) in try_routes(chunks, true.numel()).items():
            best: tuple[float, str] | None = None  # the key that decrypts the victim's update best
            for what, vector in candidates if weight else []:
                error = recovery_error(torch.as_tensor(np.asarray(vector)).double() / weight, true)[0]
                if best is None or error < best[0]:
                    best = (error, what)
            self.routes[name] = {"found": found, "victim_update_error": best[0] if best else None,
                                 "best_key": best[1] if best else None}

    def after_aggregate(self, rnd: RoundState) -> None:
        true = self._true_update(rnd) if self.probe is not None else None  # the victim's training, replayed once
        if true is not None:
            self._try_routes(true)
        rnd.row["collusion_withheld"] = self.withheld
        recovered = self._recovered(rnd)
        if recovered is None:
            rnd.row.update(collusion_error=math.nan, collusion_psnr=math.nan)
            return
        true = true if true is not None else self._true_update(rnd)
        error, psnr = recovery_error(recovered, true)
        rnd.row.update(collusion_error=error, collusion_psnr=psnr)
        self.results.append({"round": rnd.server_round, "error": error, "psnr": psnr, "withheld": self.withheld})

    def _recovered(self, rnd: RoundState) -> torch.Tensor | None:
        if isinstance(self.pending, torch.Tensor):
            return self.pending
        if self.pending is None or rnd.skipped_reason:
            return None
        weight = next((d.weight for d in rnd.decisions if d.partition_id == self.victim and d.status == "accepted"),
                      0.0)
        if not weight > 0:
            return None
        return (record_to_vector(rnd.arrays).double() - record_to_vector(rnd.sent).double()) / weight

    def _true_update(self, rnd: RoundState) -> torch.Tensor:
        facts = self.ctx.facts
        true = facts.victim_update(rnd.sent, rnd.server_round, self.victim).double()
        plan = facts.privacy_plan
        if plan is not None and facts.encrypted:  # the victim clips what it encrypts
            true = true * min(1.0, plan.clip_norm / max(float(torch.linalg.vector_norm(true)), 1e-12))
        return true

    def on_stop(self, summary: dict[str, Any]) -> None:
        facts = self.ctx.facts
        model = ("plaintext (the server reads every reply)" if not facts.encrypted else
                 "CKKS, clients hold the key (the round's decryptor client releases sums of >= min_clients signed "
                 "members, once per round)" if facts.trust == "clients" else
                 "CKKS, threshold: a committee of clients decrypts together (each member's partial decryption of a "
                 "sum of >= min_clients signed members, once per round)" if facts.trust == "threshold" else
                 "CKKS, key authority (trusted third party; sums of >= min_clients signed members, once per round)")
        if facts.encrypted and facts.privacy_plan is not None:
            model += ", central DP noise on the released sum"
        errors = [r["error"] for r in self.results]
        summary["collusion"] = {
            "attack": "collude_with_server: colluders send zero updates, the curious server withholds the other "
                      "honest replies and reads the victim's update back from the released model",
            "trust_model": model, "victim": self.victim, "colluders": sorted(self.colluders),
            "colluders_needed_per_round": self.needed, "rounds_recovered": len(self.results),
            "best_error": min(errors) if errors else None,
            "mean_error": sum(errors) / len(errors) if errors else None,
            "best_psnr": max((r["psnr"] for r in self.results), default=None),
            "rounds": list(self.results),
            "routes": self.routes,  # CKKS: what code in the server's process reached of the key (key_routes)
        }
