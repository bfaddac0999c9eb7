"""The table of issue 30: each hostile input fed to the real command line, with exit code, stderr lines,
seconds and peak memory (Markdown on stdout).

    python scripts/attack_table.py                      # this checkout
    python scripts/attack_table.py --root /tmp/before   # another copy of the code (e.g. `git archive main`)

Each command runs in its own process under a time limit (a hang shows as ``timeout``) and an 8 GiB
address-space limit (an absurd allocation fails instead of swapping the machine). The tests that assert
each behaviour are ``tests/test_attacks.py`` and the attack tests in ``tests/test_leaderboard.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ENTRY = REPO / "results" / "leaderboard" / "entries" / "synthetic-classification-joint.json"
SMALL = ["--set", "epochs=2", "--set", "batch_size=32", "--set", "dataset_params.n_train=64",
         "--set", "dataset_params.n_valid=16", "--set", "dataset_params.n_test=16"]  # fmt: skip
LIMIT_AS = 8 << 30
# Another checkout (--root, with mmbalance/methods and mmbalance/datasets linked to its folders) is
# imported instead of the editable install, whose finder would win over sys.path otherwise.
BOOT = ("import os, sys\nif os.environ.get('ATTACK_ROOT'):\n    sys.meta_path[:] = [f for f in sys.meta_path "
        "if 'editable' not in getattr(f, '__module__', '')]; sys.path.insert(0, os.environ['ATTACK_ROOT'])\n")  # fmt: skip


def bomb() -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join([*lines, "seed: *a8", "seeds: *a8"]) + "\n"  # fields whose values are validated


def reseal(entry: dict, path: Path) -> str:
    """Write ``entry`` with every hash recomputed (the leaderboard's formulas), as a careful forger would."""
    canon = lambda o: json.dumps(o, sort_keys=True)  # noqa: E731
    entry["spec"] = {**entry["spec"], "method_params": entry["method_params"]}
    entry["spec_hash"] = hashlib.sha256(canon(entry["spec"]).encode()).hexdigest()[:16]
    for s in entry["seeds"]:
        blob = {"spec": {**entry["spec"], "seed": s["seed"]}, "data": entry["data_fingerprint"],
                "version": entry["code_version"]}  # fmt: skip
        s["run_id"] = hashlib.sha256(canon(blob).encode()).hexdigest()[:16]
    path.write_text(json.dumps(entry))
    return str(path)


def attacks(tmp: Path, run_dir: Path, spec_file: Path) -> list[tuple[str, list[str], object]]:
    """(name, argv, setup) per attack; setup (optional) prepares a fresh copy of the finished run."""
    res = str(tmp / "res")
    (tmp / "bomb.yaml").write_text(bomb())
    (tmp / "deep.yaml").write_text("method_params: " + "[" * 900 + "]" * 900 + "\n")
    (tmp / "afile").write_text("x")
    entries = tmp / "lb" / "leaderboard" / "entries"
    entries.mkdir(parents=True)
    (entries / "deep.json").write_text('{"x": ' + "[" * 30_000 + "]" * 30_000 + "}")
    suite = {
        "name": "../../x",
        "seeds": [0],
        "datasets": [{"dataset": "synthetic"}],
        "methods": [{"method": "joint"}],
    }
    (tmp / "escape.yaml").write_text(yaml.safe_dump(suite))
    (tmp / "empty.yaml").write_text(yaml.safe_dump({**suite, "name": "e", "methods": []}))
    entry = json.loads(ENTRY.read_text())
    forged = {
        "lr -1": lambda e: e["spec"]["optim"].update(lr=-1),
        "newline in a param": lambda e: e["method_params"].update(note="a\n| b"),
        "RLO in url": lambda e: e.update(url="https://example.org/\u202egpj.exe"),
    }
    forged_paths = {}
    for name, forge in forged.items():
        e = json.loads(json.dumps(entry))
        forge(e)
        forged_paths[name] = reseal(e, tmp / f"forged-{len(forged_paths)}.json")

    def damage(name: str, content: bytes):
        return lambda rd: (rd / name).write_bytes(content)

    rd = "{run}"  # replaced by the fresh copy's path
    run_again = ["run", "--spec", str(spec_file), "--results", "{results}", "--quiet"]
    return [
        ("alias bomb: run --spec", ["run", "--spec", str(tmp / "bomb.yaml"), "--results", res], None),
        ("alias bomb: run --preset", ["run", "--preset", str(tmp / "bomb.yaml"), "--results", res], None),
        ("alias bomb: sweep", ["sweep", str(tmp / "bomb.yaml"), "--results", res], None),
        ("alias bomb: status --suite", ["status", res, "--suite", str(tmp / "bomb.yaml")], None),
        (
            "YAML nested 900 deep: run --spec",
            ["run", "--spec", str(tmp / "deep.yaml"), "--results", res],
            None,
        ),
        (
            "entry nested 30,000 deep: leaderboard build",
            ["leaderboard", "build", "--results", str(tmp / "lb")],
            None,
        ),
        ("final.json `[]`: status", ["status", "{results}"], damage("final.json", b"[]")),
        ("final.json `[]`: run", run_again, damage("final.json", b"[]")),
        (
            'final.json `{"test": "x"}`: status',
            ["status", "{results}"],
            damage("final.json", b'{"test": "x"}'),
        ),
        ('final.json `{"test": "x"}`: run', run_again, damage("final.json", b'{"test": "x"}')),
        ("non-UTF-8 status: status", ["status", "{results}"], damage("status", b"\xff\xfe")),
        ("non-UTF-8 status: run", run_again, damage("status", b"\xff\xfe")),
        *[
            (
                f"submit, damaged {n}",
                ["submit", rd, rd, rd, "--name", "n", "--out", str(tmp / "e.json")],
                damage(n, c),
            )
            for n, c in (
                ("final.json", b"[]"),
                ("env.json", b"{}"),
                ("spec.yaml", b"- 1\n"),
                ("status", b"\xff"),
            )
        ],  # fmt: skip
        ("evaluate, spec.yaml not YAML", ["evaluate", rd], damage("spec.yaml", b"{seed: [")),
        ("evaluate, spec.yaml a list", ["evaluate", rd], damage("spec.yaml", b"- 1\n")),
        ("evaluate, best.pt of zeros", ["evaluate", rd], damage("best.pt", bytes(4096))),
        ("run folder is a file", run_again, lambda rd: (shutil.rmtree(rd), rd.write_text("x"))),
        ("--results is a file: run", ["run", "--results", str(tmp / "afile"), *SMALL], None),
        (
            "--results is a file: sweep",
            ["sweep", str(REPO / "benchmarks/all.yaml"), "--results", str(tmp / "afile")],
            None,
        ),
        ("status on a file", ["status", str(tmp / "afile")], None),
        ("--results of 300 characters", ["run", "--results", str(tmp / ("x" * 300)), *SMALL], None),
        ("--device foo", ["run", "--device", "foo", "--results", res, *SMALL], None),
        ("--device cuda (no GPU)", ["run", "--device", "cuda", "--results", res, *SMALL], None),
        ("--set optim.lr=1e308", ["run", "--set", "optim.lr=1e308", "--results", res, *SMALL], None),
        (
            "n_train=100000000000",
            ["run", "--set", "dataset_params.n_train=100000000000", "--results", res],
            None,
        ),
        (
            "feature_dim=100000000",
            ["run", "--set", "model_params.feature_dim=100000000", "--results", res, *SMALL],
            None,
        ),
        ("epochs = a 500-digit integer", ["run", "--set", "epochs=" + "9" * 500, "--results", res], None),
        ("--set seed=true", ["run", "--set", "seed=true", "--dry-run"], None),
        (
            "--workers -1 on an interrupted run",
            [*run_again, "--workers", "-1"],
            damage("status", b"running\n"),
        ),
        (
            "suite name ../../x: report --suite",
            ["report", str(tmp), "--suite", str(tmp / "escape.yaml"), "--out", str(tmp / "o" / "p")],
            None,
        ),  # fmt: skip
        ("suite with 0 methods: sweep", ["sweep", str(tmp / "empty.yaml"), "--results", res], None),
        *[
            (f"check, resealed entry: {n}", ["leaderboard", "check", p], None)
            for n, p in forged_paths.items()
        ],
    ]


def env(root: Path) -> dict[str, str]:
    return {**os.environ, "ATTACK_ROOT": "" if root.resolve() == REPO else str(root)}


def measure(python: str, root: Path, argv: list[str], timeout: float) -> tuple[str, int, float, float, str]:
    """exit code (or ``timeout``), stderr lines, seconds, peak RSS in MiB, the error line (or the last)."""
    code = BOOT + "from mmbalance.cli import main; sys.exit(main(sys.argv[1:]))"
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))  # noqa: E731
    with tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen([python, "-c", code, *argv], stdout=subprocess.DEVNULL, stderr=err,
                                env=env(root), preexec_fn=limit)  # fmt: skip
        status = f"timeout ({timeout:g} s)"
        while time.monotonic() - t0 < timeout:
            pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage of this child alone
            if pid:
                status = str(os.waitstatus_to_exitcode(wait_status))
                break
            time.sleep(0.05)
        else:
            proc.kill()
            _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0  # reaped above
        seconds = time.monotonic() - t0
        err.seek(0)
        text = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
    shown = next((line for line in text if line.startswith("error:")), text[-1] if text else "")
    return status, len(text), seconds, usage.ru_maxrss / 1024, shown[:110].replace("|", "\\|")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=REPO, help="checkout whose mmbalance package is run")
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="attacks-") as t:
        tmp = Path(t)
        template = tmp / "template"
        boot = BOOT + "from mmbalance.cli import main; sys.exit(main(sys.argv[1:]))"
        subprocess.run([python, "-c", boot, "run", "--results", str(template), "--quiet", *SMALL],
                       check=True, capture_output=True, env=env(args.root))  # fmt: skip
        (run_dir,) = (template / "runs").iterdir()
        spec = {k: v for k, v in yaml.safe_load((run_dir / "spec.yaml").read_text()).items()
                if k not in ("run_id", "data_fingerprint")}  # fmt: skip
        spec_file = tmp / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(spec))
        print(
            "| attack | exit | stderr lines | s | MiB | run's status after | error line (else the last stderr line) |"
        )
        print("|---|---|---|---|---|---|---|")
        for i, (name, argv, setup) in enumerate(attacks(tmp, run_dir, spec_file)):
            results = tmp / f"copy{i}"
            rd = results / "runs" / run_dir.name
            shutil.copytree(run_dir, rd)
            if setup is not None:
                setup(rd)
            argv = [a.replace("{results}", str(results)).replace("{run}", str(rd)) for a in argv]
            status, lines, seconds, rss, first = measure(python, args.root, argv, args.timeout)
            after = (
                (rd / "status").read_bytes()[:24].decode(errors="replace").strip()
                if (rd / "status").is_file()
                else "-"
            )
            print(
                f"| {name} | {status} | {lines} | {seconds:.1f} | {rss:.0f} | {after} | `{first}` |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
