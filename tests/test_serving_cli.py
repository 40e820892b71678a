"""`fedsec serve` refuses bad options before anything starts, and prints user paths as they are."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedsec.cli import app


@pytest.mark.parametrize("port", ["0", "65536", "-1", "999999999999"])
def test_serve_refuses_a_port_outside_the_tcp_range(port, tmp_path):
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--port", port])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--port" in text and "1<=x<=65535" in text.replace(" ", "")


def test_a_missing_model_is_named_with_its_path_verbatim(tmp_path):
    run_dir = tmp_path / "[red]run"
    run_dir.mkdir()
    result = CliRunner().invoke(app, ["serve", str(run_dir), "--port", "8123"])
    assert result.exit_code == 2
    assert "[red]run" in result.output and "Traceback" not in result.output
