"""A run directory belongs to one run: lock with the holder's PID, refusal to reuse a directory without
resume/overwrite, resume that reads rows back and appends after them in the same column order."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedsec.config import experiment_from_dict
from fedsec.errors import FedsecInputError
from fedsec.results import RunDirectory
from fedsec.results.lock import LOCK_NAME, RunDirectoryLocked, RunLock

EXPERIMENT = experiment_from_dict({"name": "lock-test", "rounds": 4, "data": {"dataset": "digits"}})


def round_row(r: int) -> dict:
    row = {"round": r, "accuracy": 0.5 + r / 10, "loss": 2.0 - r / 10, "seconds": 0.25}
    if r >= 1:  # a column that first appears in round 1 (as train_loss does)
        row["train_loss"] = 1.5 - r / 10
    return row


def client_rows(r: int) -> list[dict]:
    return [{"round": r, "client": c, "malicious": int(c == 1), "num_examples": 10 + c, "update_norm": 0.5 * c,
             "accepted": 1, "node": "n0", "status": "ok"} for c in range(3)]


def write_rounds(run_dir: RunDirectory, rounds: range) -> None:
    for r in rounds:
        if r >= 1:
            run_dir.add_clients(client_rows(r))
        run_dir.add_round(round_row(r))


def test_lock_records_pid_host_and_is_released_by_finish(tmp_path):
    out = tmp_path / "run"
    run_dir = RunDirectory(out, EXPERIMENT)
    record = json.loads((out / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["started_at"]
    assert run_dir.locked and run_dir.stale_lock is None
    write_rounds(run_dir, range(2))
    summary = run_dir.finish(stopped_reason="completed")
    assert summary["rounds_completed"] == 1
    assert not run_dir.locked and not (out / LOCK_NAME).exists()


def test_second_writer_in_this_process_is_refused_with_the_holders_pid(tmp_path):
    first = RunDirectory(tmp_path / "run", EXPERIMENT)
    with pytest.raises(RunDirectoryLocked, match=rf"in use by PID {os.getpid()} on host") as info:
        RunDirectory(tmp_path / "run", EXPERIMENT, overwrite=True)  # not even overwrite gets past a held lock
    assert info.value.holder.pid == os.getpid()
    assert isinstance(info.value, FedsecInputError)
    assert (tmp_path / "run" / "config.toml").is_file()  # the refused writer touched nothing
    first.close()
    RunDirectory(tmp_path / "run", EXPERIMENT, overwrite=True).close()


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fedsec.config import experiment_from_dict
    from fedsec.results import RunDirectory
    exp = experiment_from_dict({"name": "lock-test", "rounds": 4, "data": {"dataset": "digits"}})
    run_dir = RunDirectory(Path(sys.argv[1]), exp)
    for r in range(3):
        if r:
            run_dir.add_clients([{"round": r, "client": 0, "malicious": 0, "num_examples": 1, "update_norm": 0.1,
                                  "accepted": 1, "node": "n0", "status": "ok"}])
        run_dir.add_round({"round": r, "accuracy": 0.1 * r, "loss": 1.0, "seconds": 0.5})
    print("ready", flush=True)
    time.sleep(120)
""")


def test_other_process_holds_the_lock_until_killed_then_the_run_counts_as_interrupted(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RunDirectoryLocked, match=rf"in use by PID {holder.pid} on host") as info:
            RunDirectory(out, EXPERIMENT, resume=True)
        assert info.value.holder.pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the kernel released the lock with the process; the lock file stays as a trace of the interrupted run
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    with pytest.raises(FedsecInputError) as refused:
        RunDirectory(out, EXPERIMENT)
    message = str(refused.value)
    assert repr(str(out)) in message and "interrupted" in message
    assert "resume=True" in message and "overwrite=True" in message and "\n" not in message
    resumed = RunDirectory(out, EXPERIMENT, resume=True)
    assert resumed.stale_lock is not None and resumed.stale_lock.pid == holder.pid
    assert [r["round"] for r in resumed.rounds] == [0, 1, 2]
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    resumed.close()


def test_a_finished_directory_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    first = RunDirectory(out, EXPERIMENT)
    write_rounds(first, range(3))
    first.finish(stopped_reason="completed")
    with pytest.raises(FedsecInputError, match=r"finished \(stopped_reason='completed'\).*resume=True.*overwrite=True"):
        RunDirectory(out, EXPERIMENT)
    with pytest.raises(FedsecInputError, match="resume and overwrite exclude each other"):
        RunDirectory(out, EXPERIMENT, resume=True, overwrite=True)
    assert not (out / LOCK_NAME).exists()  # refusals release the lock they took


def test_overwrite_deletes_the_run_and_keeps_foreign_files(tmp_path):
    out = tmp_path / "run"
    first = RunDirectory(out, EXPERIMENT)
    write_rounds(first, range(4))
    first.finish(stopped_reason="completed")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "round-3.pt").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    second = RunDirectory(out, EXPERIMENT, overwrite=True)
    assert not (out / "rounds.csv").exists() and not (out / "summary.json").exists()
    assert not (out / "checkpoints").exists() and (out / "notes.txt").read_text() == "mine"
    assert second.rounds == [] and (out / "config.toml").is_file() and second.previous.startswith("finished")
    second.close()


def test_resume_appends_after_the_rows_read_back_and_matches_an_uninterrupted_run(tmp_path):
    whole = RunDirectory(tmp_path / "whole", EXPERIMENT)
    write_rounds(whole, range(4))
    whole.close()

    part = RunDirectory(tmp_path / "part", EXPERIMENT)
    write_rounds(part, range(2))
    part.close()  # as a kill would leave it: no summary
    resumed = RunDirectory(tmp_path / "part", EXPERIMENT, resume=True)
    assert resumed.previous == "interrupted (no summary.json)"
    assert resumed.rounds == [round_row(0), round_row(1)]  # values typed back: int round, float metrics
    assert isinstance(resumed.rounds[1]["round"], int) and "train_loss" not in resumed.rounds[0]
    assert resumed.client_rows() == client_rows(1)
    write_rounds(resumed, range(2, 4))
    summary = resumed.finish(stopped_reason="completed")
    for name in ("rounds.csv", "clients.csv"):
        assert (tmp_path / "part" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    header = (tmp_path / "part" / "rounds.csv").read_text().splitlines()[0]
    assert header == "round,accuracy,loss,seconds,train_loss"
    assert summary["rounds_completed"] == 3 and summary["train_loss"] == pytest.approx(1.2)


def test_resume_keeps_a_foreign_column_order_and_drops_a_row_cut_short(tmp_path):
    out = tmp_path / "run"
    RunDirectory(out, EXPERIMENT).close()
    (out / "rounds.csv").write_text("round,loss,accuracy,seconds\n0,2.0,0.1,0.5\n1,1.5,0.2,0.5\n2,1.")
    resumed = RunDirectory(out, EXPERIMENT, resume=True)
    assert [r["round"] for r in resumed.rounds] == [0, 1]
    resumed.add_round({"round": 2, "accuracy": 0.3, "loss": 1.0, "seconds": 0.5})
    resumed.close()
    assert (out / "rounds.csv").read_text().splitlines() == [
        "round,loss,accuracy,seconds", "0,2.0,0.1,0.5", "1,1.5,0.2,0.5", "2,1.0,0.3,0.5"]


def test_resume_refuses_an_edited_csv_a_different_config_and_an_empty_directory(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FedsecInputError, match="resume=True but it holds no run"):
        RunDirectory(out, EXPERIMENT, resume=True)
    RunDirectory(out, EXPERIMENT).close()
    other = experiment_from_dict({"name": "lock-test", "rounds": 9, "data": {"dataset": "digits"}})
    with pytest.raises(FedsecInputError, match=r"different config \(changed: rounds\)"):
        RunDirectory(out, other, resume=True)
    (out / "clients.csv").write_text("round,client\n1,0\n1\n2,0\n")
    with pytest.raises(FedsecInputError, match="1 row.s. do not have the 2 columns"):
        RunDirectory(out, EXPERIMENT, resume=True)
    assert not (out / LOCK_NAME).exists()


def test_truncate_after_drops_rounds_a_checkpoint_does_not_cover(tmp_path):
    run_dir = RunDirectory(tmp_path / "run", EXPERIMENT)
    write_rounds(run_dir, range(4))
    assert run_dir.truncate_after(1) == 2 + 2 * 3
    assert [r["round"] for r in run_dir.rounds] == [0, 1]
    assert (tmp_path / "run" / "clients.csv").read_text().count("\n") == 1 + 3
    run_dir.close()


def test_lock_is_exclusive_between_two_lock_objects_and_release_is_idempotent(tmp_path):
    a, b = RunLock(tmp_path), RunLock(tmp_path)
    a.acquire()
    with pytest.raises(RunDirectoryLocked):
        b.acquire()
    a.release()
    a.release()
    b.acquire()
    assert b.held and b.stale is None  # a clean release leaves no stale record
    b.release()


def test_a_file_in_place_of_the_directory_is_refused(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(FedsecInputError, match="is a file, not a directory"):
        RunDirectory(tmp_path / "run", EXPERIMENT)


def test_directory_path_is_named_in_every_refusal(tmp_path: Path):
    out = tmp_path / "weird dir"
    RunDirectory(out, EXPERIMENT).close()
    with pytest.raises(FedsecInputError) as info:
        RunDirectory(out, EXPERIMENT)
    assert repr(str(out)) in str(info.value)
