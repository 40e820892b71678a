"""``fedsec --help`` starts without torch, Flower or Ray: the CLI and the subcommand modules it mounts import them
inside the commands that need them (about 1.3 s instead of about 10 s on the 2-core test machine)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "flwr", "ray", "fedsec.plan")

SCRIPT = f"""
import json, sys
import fedsec.cli
sys.argv = ["fedsec", "--help"]
try:
    fedsec.cli.main()
except SystemExit as e:
    code = e.code
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def test_help_imports_no_torch_flower_or_ray():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "120", "FEDSEC_PLUGINS": ""})
    assert done.returncode == 0, done.stderr
    *help_text, last = done.stdout.strip().splitlines()
    result = json.loads(last)
    assert result == {"code": 0, "heavy": []}
    shown = "\n".join(help_text)
    for command in ("run", "validate", "list", "audit", "assess", "serve", "worst-case"):  # every group mounted
        assert f" {command} " in shown, command


def test_serving_names_still_import_on_demand():
    """``fedsec.serving`` loads its names on first use (what keeps ``fedsec.serving.cli`` light)."""
    from fedsec import serving

    assert serving.AccessPolicy.__module__ == "fedsec.serving.access"
    assert serving.load_final_model.__module__ == "fedsec.results.model_file"
    assert set(serving.__all__) <= set(dir(serving))
