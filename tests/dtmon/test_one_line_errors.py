"""One-line errors of the real console scripts: a bad setting names the setting, its value and what is allowed."""

from __future__ import annotations

import os
import subprocess

import pytest



def run(*cmd: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.mark.parametrize(
    "cmd, flag, allowed",
    [
        (["dtmon", "up", "--rate", "-5"], "--rate", "greater than or equal to 0"),
        (["processor", "--trigger-interval-s", "-1"], "--trigger-interval-s", "greater than 0"),
        (["processor", "--trigger-interval", "-1"], "--trigger-interval-s", "greater than 0"),
        (["producer", "--no-progress", "--broker-grace-s", "-3"], "--broker-grace-s", "greater than or equal to 0"),
    ],
)
def test_bad_setting_is_one_line(cmd, flag, allowed):
    result = run(*cmd)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert flag in lines[0] and "-" in lines[0] and allowed in lines[0], lines[0]


def test_bad_setting_from_environment_names_variable():
    result = run("processor", env={"DTMON_TRIGGER_INTERVAL_S": "soon"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid setting --trigger-interval-s (DTMON_TRIGGER_INTERVAL_S) = 'soon': must be a valid number, "
        "unable to parse string as a number"
    ]
