"""Record the golden runs of :mod:`cases` (``python tests/golden/record.py [CASE ...]``)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import CASES, HERE  # noqa: E402

from fedsec.plan import load_plan  # noqa: E402
from fedsec.runtime.runner import run_experiment  # noqa: E402


def overrides_for(name: str) -> list[str]:
    path, overrides, _ = CASES[name]
    if "[SAMPLED]" not in " ".join(overrides):
        return overrides
    plain = [o for o in overrides if not o.startswith("audit.inversion")]
    first = load_plan(path, plain).schedule.sampled(1)[0]  # a client that trains in round 1
    return [o.replace("[SAMPLED]", f"[{first}]") for o in overrides]


def main(names: list[str]) -> None:
    for name in names or list(CASES):
        path, _, _ = CASES[name]
        with tempfile.TemporaryDirectory() as tmp:
            result = run_experiment(load_plan(path, overrides_for(name)), Path(tmp) / "run")
            out = HERE / name
            out.mkdir(exist_ok=True)
            for file in ("rounds.csv", "clients.csv"):
                shutil.copy(result.run_dir / file, out / file)
        print(name, result.summary["stopped_reason"], result.summary.get("accuracy"))


if __name__ == "__main__":
    main(sys.argv[1:])
