"""The process that runs a sweep slot's cells (``python -m fedsec.sweep_worker SWEEP_DIR``): each cell is the
``fedsec`` command line the sweep sends, run in this process with its output in the cell's log. The protocol and
why it exists: :mod:`fedsec.studies.cell_worker`, whose :class:`~fedsec.studies.cell_worker.CellWorker` starts and
talks to this process. It sits above the CLI in the import layers (it runs the CLI)."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

__all__ = ["main", "run_cell"]


def _exit_code(error: SystemExit) -> int:
    if error.code is None:
        return 0
    return error.code if isinstance(error.code, int) else 1


def run_cell(argv: list[str], log: Path, *, append: bool, base_fd: int) -> int:
    """``fedsec argv`` in this process with descriptors 1 and 2 on ``log``; back on ``base_fd`` afterwards."""
    from fedsec.cli import app

    sys.stdout.flush()
    sys.stderr.flush()
    with log.open("ab" if append else "wb") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            app(args=argv, prog_name="fedsec")
            code = 0
        except SystemExit as e:
            code = _exit_code(e)
        except BaseException:  # noqa: BLE001 - what a cell process would have printed before dying
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(base_fd, 1)
            os.dup2(base_fd, 2)
    return code


def main() -> None:
    """The worker's loop (see the module docstring)."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's pipe; fd 1 itself follows the cells' logs
    base_fd = os.dup(2)  # the worker's own log, between cells
    os.dup2(base_fd, 1)
    import flwr.simulation  # noqa: F401 - what every cell imports, once: Flower, Ray, torch, fedsec's run path
    import ray  # noqa: F401
    import torch  # noqa: F401

    import fedsec.cli  # noqa: F401
    import fedsec.clients.app  # noqa: F401
    import fedsec.runtime.runner  # noqa: F401
    import fedsec.server.app  # noqa: F401
    from fedsec.plugins import load_plugins

    load_plugins()
    with fedsec.runtime.runner.one_ray_for_many_runs():  # the slot's cells share one Ray connection and its actors
        for line in sys.stdin:
            request = json.loads(line)
            code = run_cell(list(request["argv"]), Path(request["log"]), append=bool(request["append"]),
                            base_fd=base_fd)
            replies.write(json.dumps({"code": code}) + "\n")


if __name__ == "__main__":
    main()
