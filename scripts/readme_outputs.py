"""Run the README's printed commands and check (or rewrite) what they print, as a fresh clone would.

A ```` ```text ```` block right after the line ``<!-- readme-output: fast -->`` (nothing trains) or
``<!-- readme-output: slow -->`` (something trains) holds ``$ command`` lines, each followed by what it
prints. The commands run in README order in one fresh temporary folder (``results/`` starts empty, as on a
fresh clone; ``benchmarks/`` is linked in), with this venv's ``bin`` first on PATH. An expected line may
use ``...`` as doctest's ELLIPSIS (any text), for output too long to show.

    python scripts/readme_outputs.py            # check every block; exit 1 with a diff of what differs
    python scripts/readme_outputs.py --fast     # only the blocks that train nothing (tests/test_readme.py)
    python scripts/readme_outputs.py --write    # rewrite the README's outputs with what the commands print
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = re.compile(r"^<!-- readme-output: (fast|slow) -->$")


@dataclass
class Command:
    line: int  # index of the "$ ..." line in the README
    text: str  # the command, without "$ "
    expected: list[str]


@dataclass
class Block:
    kind: str  # "fast" or "slow"
    commands: list[Command]


def parse(lines: list[str]) -> list[Block]:
    """The marked blocks of the README's lines."""
    blocks = []
    for i, line in enumerate(lines):
        if not (m := MARK.match(line)):
            continue
        if lines[i + 1] != "```text":
            raise SystemExit(f"README.md:{i + 2}: a readme-output mark must be followed by a ```text block")
        commands: list[Command] = []
        j = i + 2
        while lines[j] != "```":
            if lines[j].startswith("$ "):
                commands.append(Command(j, lines[j][2:], []))
            elif commands:
                commands[-1].expected.append(lines[j])
            else:
                raise SystemExit(f"README.md:{j + 1}: output before the first `$ command`")
            j += 1
        blocks.append(Block(m.group(1), commands))
    return blocks


def run(command: str, cwd: Path) -> list[str]:
    """What ``command`` prints (stdout then stderr, as a terminal shows them here), line by line."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "COLUMNS": "200", "NO_COLOR": "1"}  # fmt: skip
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)
    return [line.rstrip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line; ``...`` in an expected line stands for any text."""
    if len(expected) != len(actual):
        return False
    return all(
        re.fullmatch(".*".join(map(re.escape, e.split("..."))), a)
        for e, a in zip(expected, actual, strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="only the blocks that train nothing")
    ap.add_argument("--write", action="store_true", help="rewrite the README's outputs")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    lines = args.readme.read_text().splitlines()
    failures, edits = [], []
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "benchmarks").symlink_to(ROOT / "benchmarks")
        for block in parse(lines):
            if args.fast and block.kind != "fast":
                continue
            for c in block.commands:
                actual = run(c.text.split("  #")[0], cwd)  # a trailing "  # comment" is for readers
                if matches(c.expected, actual):
                    continue
                failures.append("".join(difflib.unified_diff(
                    [f"{e}\n" for e in c.expected], [f"{a}\n" for a in actual],
                    f"README.md:{c.line + 1} $ {c.text}", "what it prints now")))  # fmt: skip
                edits.append((c.line + 1, len(c.expected), actual))
    if args.write:
        for start, length, actual in reversed(edits):  # from the end: earlier line numbers stay valid
            lines[start : start + length] = actual
        args.readme.write_text("\n".join(lines) + "\n")
        print(f"{len(failures)} output(s) rewritten in {args.readme}")
        return 0
    print("".join(failures) or "README outputs match", end="" if failures else "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
