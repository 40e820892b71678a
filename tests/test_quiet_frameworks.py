"""fedsec turns Flower's usage pings off for its runs (fedsec/runtime/runner.py ``quiet_frameworks``), even when
Flower was imported first, and leaves them on when the user's environment asks for them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = """
import sys
from fedsec.runtime.runner import quiet_frameworks  # imports the plan, and with it Flower
assert "flwr.supercore.telemetry" in sys.modules  # Flower has read FLWR_TELEMETRY_ENABLED already
quiet_frameworks(False)
import flwr.supercore.telemetry as telemetry
print(telemetry.FLWR_TELEMETRY_ENABLED)
"""


@pytest.mark.parametrize(("users_setting", "expected"), [(None, "0"), ("1", "1")])
def test_flowers_telemetry_is_off_unless_the_user_turns_it_on(users_setting, expected):
    env = {k: v for k, v in os.environ.items() if k != "FLWR_TELEMETRY_ENABLED"}
    if users_setting is not None:
        env["FLWR_TELEMETRY_ENABLED"] = users_setting
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
