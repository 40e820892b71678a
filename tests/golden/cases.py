"""The golden runs: configs whose rounds.csv and clients.csv were recorded on the code before the round hooks
(commit 569ce15) and must come out the same after it (``tests/test_golden_runs.py``).

``record.py`` writes ``<case>/rounds.csv`` and ``<case>/clients.csv`` for every case; rerun it only when a change
is meant to alter a run's numbers, and say so in the commit.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SMOKE = REPO / "experiments" / "digits_smoke.toml"
QUICKSTART = REPO / "experiments" / "quickstart.toml"

#: case -> (config file, overrides, slow): digits cases run in the suite, the slow ones behind the "slow" marker
CASES: dict[str, tuple[Path, list[str], bool]] = {
    "local_dp": (SMOKE, ["rounds=3", "privacy.mode=local", "privacy.noise_multiplier=1.0", "privacy.epsilon=50",
                         "privacy.delta=1e-4", "privacy.max_grad_norm=1.0"], False),
    "ckks": (SMOKE, ["rounds=3", "encryption.scheme=ckks"], False),
    "central_dp": (SMOKE, ["rounds=3", "privacy.mode=central", "privacy.noise_multiplier=1.0", "privacy.epsilon=20",
                           "privacy.delta=1e-3", "privacy.clip_norm=5.0", "data.num_clients=8",
                           "train.clients_per_round=4"], True),
    # resumed: stopped after round 1 and resumed; its rows must equal this uninterrupted recording
    "resumed": (SMOKE, ["rounds=3", "data.num_clients=6", "train.clients_per_round=6", "attack.kind=alie",
                        "attack.client_ids=[1]", "attack.knowledge=omniscient", "defense.strategy=centered_clipping",
                        "audit.membership.method=yeom", "audit.membership.examples=50"], False),
    "sanitize_poison": (SMOKE, ["rounds=2", "data.num_clients=6", "train.clients_per_round=6",
                                "data.poison.kind=label_noise", "data.poison.clients=[0, 1]",
                                "defense.sanitize.method=threshold", "attack.kind=sign_flip", "attack.client_ids=[3]",
                                "defense.strategy=krum", "defense.num_malicious=1"], True),
    "fmnist_audits": (QUICKSTART, ["rounds=2", "data.partition=sampled", "data.samples_per_client=8",
                                   "data.num_clients=6", "train.clients_per_round=3", "audit.evasion.examples=64",
                                   "audit.evasion.steps=3", "audit.evasion.every=1",
                                   "audit.inversion.rounds=[1]", "audit.inversion.clients=[SAMPLED]",
                                   "audit.inversion.iterations=5", "audit.membership.method=lira",
                                   "audit.membership.shadows=2", "audit.membership.examples=20",
                                   "audit.membership.shadow_epochs=1", "audit.model_inversion.enabled=true",
                                   "audit.model_inversion.max_iter=3"], True),
    "quickstart": (QUICKSTART, [], True),
}

#: columns that measure time or where a client ran, not what was computed
VOLATILE = ("seconds", "node")


def volatile(column: str) -> bool:
    return column in VOLATILE or column.endswith("_seconds")
