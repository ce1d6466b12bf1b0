"""The README stays true to the code: its first two commands, and every setting documented."""

from __future__ import annotations

import re
from pathlib import Path

from dtmon.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_starts_with_two_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["pip install -e . && dtmon up", "bash .ci/run"]
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert '"$PYTHON" -m pytest' in ci


def test_every_setting_is_documented():
    missing = [name for name in Settings.model_fields if f"`DTMON_{name.upper()}`" not in README]
    assert not missing, f"settings missing from the README table: {missing}"
