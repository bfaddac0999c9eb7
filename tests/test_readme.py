"""The README's printed outputs are what the commands print (``scripts/readme_outputs.py``), like a doctest:
the blocks that train nothing in the fast tier, the rest in the slow tier."""

from __future__ import annotations

import os
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


def readme_python_blocks(readme: Path = ROOT / "README.md") -> list[str]:
    """The ```` ```python ```` blocks right after ``<!-- readme-python -->`` (the notebook examples)."""
    lines, blocks = readme.read_text().splitlines(), []
    for i, line in enumerate(lines):
        if line == "<!-- readme-python -->":
            assert lines[i + 1] == "```python", (
                f"README.md:{i + 2}: a readme-python mark needs a python block"
            )
            end = lines.index("```", i + 2)
            blocks.append("\n".join(lines[i + 2 : end]))
    return blocks


def test_the_readme_notebook_example_runs(tmp_path):
    """Run, sweep a 2x2 grid, report, load and plot, as the README shows it, in a fresh folder."""
    (block,) = readme_python_blocks()
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    (tmp_path / "example.py").write_text(block)
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("done ") and out.count("not started") == 4
    for label in (
        "joint(optim.lr=0.01)",
        "joint(optim.lr=0.05)",
        "ogm_ge(optim.lr=0.01)",
        "ogm_ge(optim.lr=0.05)",
    ):
        assert label in out
    assert (tmp_path / "results" / "tables" / "lr-grid.md").is_file() and (
        tmp_path / "lr-grid.png"
    ).stat().st_size
    assert len(list((tmp_path / "results" / "runs").iterdir())) == 5
    # mmbalance.run gives the run the CLI gives for the same spec (the README's `mmbalance run ... cggm` block)
    assert (tmp_path / "results" / "runs" / "a003522aa68e2617").is_dir() and out.startswith("done 54.8")
