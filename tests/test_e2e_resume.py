"""End to end: a run SIGKILLed mid-round or between rounds resumes to exactly the rows of an uninterrupted
run (digits, local DP-SGD, FoolsGold, whose histories are strategy state), per-client epsilons included; Ctrl-C
(SIGINT) exits 130 with a consistent run directory that --resume completes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def _no_idle_ray_beside_the_signal_tests():
    """The Ray that earlier tests kept (the ``shared_ray`` fixture) is stopped first: a process-group SIGTERM races
    the run's Ray processes against its driver (docs/runs.md), and no idle Ray of the test process should load the
    machine meanwhile."""
    from fedsec.runtime.runner import shutdown_ray

    shutdown_ray()

FEDSEC = [sys.executable, "-m", "fedsec.cli"]
CONFIG = """name = "resume"
seed = 3
rounds = 5

[data]
dataset = "digits"
partition = "iid"
num_clients = 4

[model]
name = "logreg"

[train]
clients_per_round = 3
local_epochs = 2
batch_size = 16
lr = 0.1

[privacy]
mode = "local"
epsilon = 50.0
delta = 1e-4
max_grad_norm = 1.0
noise_multiplier = 0.8

[defense]
strategy = "foolsgold"
"""


def rows(run_dir: Path, name: str) -> pd.DataFrame:
    frame = pd.read_csv(run_dir / name).filter(regex=r"^(?!.*seconds$)")
    return frame.drop(columns=[c for c in ("node",) if c in frame.columns])


def client_epsilons(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "summary.json").read_text())["privacy"]["client_epsilon"]


def completed_rounds(run_dir: Path) -> int:
    path = run_dir / "rounds.csv"
    if not path.exists():
        return -1
    return len(path.read_text().strip().splitlines()) - 2  # header and round 0


def start(cfg: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([*FEDSEC, "run", str(cfg), "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended early: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("resume")
    cfg = base / "resume.toml"
    cfg.write_text(CONFIG)
    done = subprocess.run([*FEDSEC, "run", str(cfg), "--out", str(base / "full")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return base / "full"


@pytest.mark.parametrize("where", ["mid_round", "between_rounds"])
def test_sigkilled_run_resumes_to_the_uninterrupted_rows(reference, tmp_path, where):
    cfg = reference.parent / "resume.toml"
    out = tmp_path / "run"
    proc = start(cfg, out)
    checkpoint = out / "checkpoints" / "latest.pt"
    if where == "mid_round":  # round 2's checkpoint is written, round 3 is running
        wait_for(lambda: completed_rounds(out) >= 2 and checkpoint.exists(), proc)
        time.sleep(0.3)
    else:  # round 2's row has just appeared: its checkpoint may or may not be on disk yet
        wait_for(lambda: completed_rounds(out) >= 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "summary.json").exists()
    refused = subprocess.run([*FEDSEC, "run", str(cfg), "--out", str(out)], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "--resume" in refused.stderr  # the directory holds a run: never overwritten
    resumed = subprocess.run([*FEDSEC, "run", "--resume", str(out)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("rounds.csv", "clients.csv"):
        pd.testing.assert_frame_equal(rows(out, name), rows(reference, name), check_exact=True)
    assert client_epsilons(out) == client_epsilons(reference)  # the privacy spent was restored, never reset
    assert json.loads((out / "summary.json").read_text())["stopped_reason"] == "completed"


def interrupt_after_round_one(cfg: Path, out: Path, sig: signal.Signals, exit_code: int) -> None:
    """Start a run, send ``sig`` to its process group once round 1 is written; it must exit with ``exit_code`` and
    leave an "interrupted" summary that agrees with rounds.csv."""
    proc = start(cfg, out)
    wait_for(lambda: completed_rounds(out) >= 1, proc)
    os.killpg(proc.pid, sig)
    code = proc.wait(timeout=60)  # a guard against a hang (the old behaviour waited round_timeout), not a timing
    assert code == exit_code, proc.stderr.read()[-3000:] if proc.stderr else code
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_reason"] == "interrupted"
    assert completed_rounds(out) == summary["rounds_completed"]  # no row appended after the summary


def test_ctrl_c_exits_130_with_a_consistent_directory_that_resumes(reference, tmp_path):
    cfg = reference.parent / "resume.toml"
    out = tmp_path / "run"
    interrupt_after_round_one(cfg, out, signal.SIGINT, 130)
    resumed = subprocess.run([*FEDSEC, "run", "--resume", str(out)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    pd.testing.assert_frame_equal(rows(out, "rounds.csv"), rows(reference, "rounds.csv"), check_exact=True)


def test_sigterm_exits_143_with_an_interrupted_summary(reference, tmp_path):
    interrupt_after_round_one(reference.parent / "resume.toml", tmp_path / "run", signal.SIGTERM, 143)


def processes_naming(text: str) -> list[int]:
    """Processes whose command line names ``text`` or that hold a file under it open (Ray's agents rename their
    command line to e.g. ``ray::DashboardAgent`` but keep their session's logs open)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            named = text.encode() in (entry / "cmdline").read_bytes()
            opened = any(os.readlink(fd).startswith(text) for fd in (entry / "fd").iterdir())
        except OSError:
            continue
        if (named or opened) and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def test_the_next_run_ends_the_ray_processes_a_sigkilled_run_left_behind(reference, tmp_path):
    """SIGKILL of the driver alone (as the OOM killer or `kill -9 PID` does) leaves its Ray session's processes
    running; the next fedsec run ends exactly those (found by the session directory the killed run recorded)."""
    cfg = reference.parent / "resume.toml"
    out = tmp_path / "run"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    records = tmp_path / "cache" / "fedsec" / "ray-sessions"
    proc = subprocess.Popen([*FEDSEC, "run", str(cfg), "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        wait_for(lambda: completed_rounds(out) >= 1 and any(records.glob("*.json")), proc)
        session = json.loads(next(records.glob("*.json")).read_text())["session_dir"]
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, not its process group
        proc.wait(timeout=30)
        left = processes_naming(session)
        assert left, "expected Ray processes of the killed run to outlive it"
        resumed = subprocess.run([*FEDSEC, "run", "--resume", str(out)], capture_output=True, text=True, timeout=600,
                                 env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert processes_naming(session) == []  # every process of the old session ended
        assert not any(records.glob("*.json"))  # and the resumed run, which shut down cleanly, left no record
    finally:
        for pid in processes_naming(session) if "session" in locals() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_local_dp_run_in_which_every_client_refuses_stops_with_the_privacy_reason_and_no_traceback(tmp_path):
    """Every client's budget is spent after 2 rounds (noise 1.0 spends about 2.4, 3.1, 3.6 here): round 3 is refused
    by all; the run stops with stopped_reason privacy_budget (it said "completed" and printed 32 Ray tracebacks)."""
    cfg = tmp_path / "dp.toml"
    cfg.write_text(CONFIG.replace("epsilon = 50.0", "epsilon = 3.3").replace("noise_multiplier = 0.8",
                                                                              "noise_multiplier = 1.0")
                   .replace("clients_per_round = 3", "clients_per_round = 4").replace('"foolsgold"', '"fedavg"'))
    done = subprocess.run([*FEDSEC, "run", str(cfg), "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_reason"] == "privacy_budget" and summary["rounds_completed"] == 3
    clients = pd.read_csv(tmp_path / "run" / "clients.csv")
    refused = clients[clients["round"] == 3]
    assert len(refused) == 4 and refused["status"].str.contains("privacy budget exhausted").all()
    assert set(refused["client"]) == {0, 1, 2, 3}


@pytest.mark.slow  # a privacy study killed and resumed (~1.5 min): bash scripts/dev.sh slow
def test_privacy_study_stops_on_ctrl_c_then_resumes_and_reads_back_finished_cells(tmp_path):
    """Ctrl-C in a study's cell exits 130 with that cell's summary `interrupted`; the same command goes on with the
    cell from its checkpoint; run again, the finished cell is read back, not rerun."""
    cfg = tmp_path / "study.toml"
    cfg.write_text(CONFIG.replace("rounds = 5", "rounds = 3").replace('strategy = "foolsgold"', 'strategy = "fedavg"'))
    out = tmp_path / "study"
    cell = out / "eps-50"
    cmd = [*FEDSEC, "privacy-study", str(cfg), "--epsilons", "50", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: completed_rounds(cell) >= 1, proc)
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=60)  # a hang guard, not a timing
    assert code == 130, proc.stderr.read()[-3000:] if proc.stderr else code
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["stopped_reason"] == "interrupted"
    assert not (out / "study.csv").exists()  # the interrupted cell is not a result
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert completed_rounds(cell) == 3
    assert json.loads((cell / "summary.json").read_text())["stopped_reason"] == "completed"
    study = pd.read_csv(out / "study.csv")
    assert len(study) == 1 and study.loc[0, "rounds_completed"] == 3
    mtime = (cell / "rounds.csv").stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (cell / "rounds.csv").stat().st_mtime_ns == mtime  # read back, not rerun
    pd.testing.assert_frame_equal(pd.read_csv(out / "study.csv"), study)
