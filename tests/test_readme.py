"""The README's printed outputs are what the commands print (``scripts/readme_outputs.py``), like a doctest:
the blocks that train nothing in the fast tier, the rest in the slow tier."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "readme_outputs.py"


def check(*args: str, readme: Path = ROOT / "README.md") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--readme", str(readme), *args], capture_output=True,
                          text=True, timeout=1200)  # fmt: skip


def test_readme_outputs_of_commands_that_train_nothing():
    done = check("--fast")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_wrong_readme_output_is_caught_and_rewritten(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "<!-- readme-output: fast -->\n```text\n$ mmbalance run --method ogm\nerror: all fine\n```\n"
    )
    done = check("--fast", readme=readme)
    assert (
        done.returncode == 1
        and "-error: all fine" in done.stdout
        and "+error: invalid run spec" in done.stdout
    )
    assert check("--fast", "--write", readme=readme).returncode == 0
    assert "unknown method 'ogm'" in readme.read_text() and check("--fast", readme=readme).returncode == 0


@pytest.mark.slow
def test_readme_outputs_of_every_marked_block():
    done = check()
    assert done.returncode == 0, done.stdout + done.stderr
