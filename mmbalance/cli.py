"""``mmbalance``: the command line, a thin face over the library.

Each subcommand is a ``cmd_<name>(args) -> int`` plus its parser in ``build_parser``. Expected
errors (bad spec, unknown name, missing or bad data, a method that does not apply, a damaged
checkpoint or record, a results folder that cannot be written, an option out of range or a device that
is not here) print one clear message and exit with code 2 (``error_message`` is the one place that knows
them); nothing is written. ``check_options`` checks counts and folders before any command runs.
Exit codes: 0 all asked runs finished, 1 some failed or are not finished yet (running elsewhere,
interrupted), 2 bad input. This module imports no torch (see ``core.py``):
each command imports what it uses, so ``--help``, ``methods``, ``status`` and ``leaderboard check``
start at once (``tests/test_cli_fast.py``).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from mmbalance.common.core import DataError, DeviceError, MethodNotApplicable, default_data_root
from mmbalance.common.records import DamagedRecordError
from mmbalance.common.registry import DATASETS, METHODS, UnknownNameError
from mmbalance.common.spec import (
    RunSpec,
    SpecError,
    compose,
    default_preset,
    load_yaml,
    parse_set,
    validate_spec,
)

console = Console(soft_wrap=True)  # long paths stay on one line (copy-pasteable)


class UsageError(ValueError):
    """A command-line option with a value the command cannot use; the message names it."""


USER_ERRORS = (SpecError, UnknownNameError, DataError, MethodNotApplicable, FileNotFoundError,
               DamagedRecordError, DeviceError, UsageError)  # fmt: skip
# The machine's answer, not a bug: no permission, read-only or full file system, over quota, a path
# through a file or with a name longer than the file system allows.
DISK_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
               errno.ENAMETOOLONG}  # fmt: skip
NAME_MAX = 255  # bytes in one file name on every file system a results folder lives on
# Options that count something, with their least value; checked before a command reads or writes anything.
COUNTS = {"workers": 0, "jobs": 1, "threads": 1, "cpus": 1, "gpus": 0, "array_parallelism": 1, "time": 1}
# Folder options (submit's --out is a file); the status command's results folder is positional.
FOLDERS = {"results": "--results", "results_dir": "RESULTS_DIR", "out": "--out", "data_root": "--data-root"}


def error_message(e: BaseException) -> str | None:
    """The one-line message of an expected error; None for a bug (its traceback is wanted)."""
    if isinstance(e, USER_ERRORS):
        head, *details = str(e).splitlines()
        if len(details) == 1 and head.endswith(":"):  # one problem: "invalid run spec: seed: ..." on one line
            return f"{head} {details[0].strip()}"
        return str(e)
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
        where = f" {e.filename}" if e.filename else ""
        return f"cannot write{where}: {e.strerror or e}"
    return None


def check_folder(option: str, path: Path) -> None:
    """A folder option must name a folder (or one to create): no file on the way, no name too long."""
    if long := [p for p in path.parts if len(os.fsencode(p)) > NAME_MAX]:
        raise UsageError(f"{option}: the name {long[0][:40]}... is {len(os.fsencode(long[0]))} bytes, "
                         f"more than the {NAME_MAX} a file name may have")  # fmt: skip
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise UsageError(
                    f"{option} {path}: " + ("" if p == path else f"{p} ") + "is a file, not a folder"
                )
            return


def check_options(args: argparse.Namespace) -> None:
    """Counts and folders of any command, before it reads or writes a run (``--workers -1`` once
    reached the runner and marked a real run failed)."""
    for name, least in COUNTS.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {value}: must be {least} or more")
    if getattr(args, "mem_gb", None) is not None and not args.mem_gb > 0:
        raise UsageError(f"--mem-gb {args.mem_gb}: must be more than 0")
    for name, option in FOLDERS.items():
        if isinstance(path := getattr(args, name, None), Path) and (name, args.command) != ("out", "submit"):
            check_folder(option if name != "results" or args.command != "status" else "RESULTS", path)


def _table(title: str, rows: list[dict[str, str]]) -> Table:
    table = Table(title=title)
    for i, col in enumerate(rows[0] if rows else []):  # a narrow terminal wraps long text, never cuts it;
        table.add_column(col, overflow="fold", no_wrap=i == 0)  # the first column (a name) stays whole
    for r in rows:
        table.add_row(*[str(v) for v in r.values()])
    return table


def _scaleout_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = p.add_argument_group("scale-out (defaults from the suite's `executor:` section)")
    g.add_argument(
        "--executor",
        choices=("local", "slurm", "submitit-local"),
        default="local",
        help="local: here (--jobs N: N worker processes); slurm: a job array through submitit; "
        "submitit-local: the slurm path run as local subprocesses (for debugging)",
    )
    g.add_argument("--jobs", type=int, default=None, help="local worker processes (default 1)")
    g.add_argument("--partition", default=None, help="slurm partition")
    g.add_argument("--time", type=int, default=None, metavar="MINUTES", help="slurm time limit per run")
    g.add_argument("--gpus", type=int, default=None, help="GPUs per run (default 1)")
    g.add_argument("--cpus", type=int, default=None, help="CPU cores per run (default 4)")
    g.add_argument("--mem-gb", type=float, default=None, help="memory per run")
    g.add_argument("--array-parallelism", type=int, default=None, help="array tasks at once (default 64)")
    g.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sbatch option, e.g. --sbatch account=mylab --sbatch qos=high",
    )
    g.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    return g


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="folder holding one sub-folder per dataset (default: $MMBALANCE_DATA or ./data)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision: fp16 + loss scaling on CUDA, bf16 on CPU (default: off)",
    )
    p.add_argument("--workers", type=int, default=None,
                   help="data-loader processes per run (default: on CUDA, for data read from files, one per "
                        "torch thread less one, at most 8; else 0)")  # fmt: skip
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="CUDA: deterministic kernels only, cuDNN benchmark mode off (default: off; recorded "
                        "in env.json)")  # fmt: skip


def _wandb_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Weights & Biases (optional; the run records stay the source of truth)")
    g.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                   help="log to W&B (offline unless --wandb-mode or $WANDB_MODE says otherwise)")  # fmt: skip
    g.add_argument("--wandb-project", default=None, help="W&B project (default: mmbalance)")
    g.add_argument("--wandb-mode", choices=("offline", "online", "disabled"), default=None)


def _log_to_wandb(
    args: argparse.Namespace, section: dict | None, paths: list[Path], group: str | None
) -> None:
    """Send finished run records to W&B, if asked; a W&B failure is reported, never fatal."""
    from mmbalance.training.wandb_log import log_run, settings

    cfg = settings(section, args.wandb, project=args.wandb_project, mode=args.wandb_mode)
    if cfg is None:
        return
    for path in paths:
        try:
            where = log_run(path, cfg, args.results, group)
        except Exception as e:  # noqa: BLE001 (W&B is a copy: the run record is written either way)
            console.print(f"[yellow]W&B logging of {path.name} failed[/yellow]: {type(e).__name__}: {e}")
            continue
        if where:
            console.print(f"W&B ({cfg.mode or 'offline'}): {path.name} -> {where}", highlight=False)


# --- run ----------------------------------------------------------------------------------------
def run_spec(args: argparse.Namespace) -> RunSpec:
    """The run's spec: code defaults < preset < --spec file < --dataset/--method/--seed < --set; without a
    preset named, the dataset's default one (``spec.DEFAULT_PRESETS``: synthetic -> the suite's settings)."""
    (spec,) = run_specs(args)
    return spec


def run_specs(args: argparse.Namespace) -> list[RunSpec]:
    """``run_spec``, one per point of the ``-m KEY=a,b`` grid (``grid.py``; one spec without ``-m``)."""
    from mmbalance.scaleout.grid import expand, parse_multirun

    doc = load_yaml(args.spec) if args.spec else {}
    preset = {"preset": args.preset} if args.preset else {}
    cli = {
        k: v
        for k, v in (("dataset", args.dataset), ("method", args.method), ("seed", args.seed))
        if v is not None
    }
    top = parse_set(args.set + parse_multirun(getattr(args, "multirun", [])))
    specs = []
    for names in _name_grid(top):  # -m method=joint,cggm: each method's own parameters make the next grid
        layers = [doc, preset, cli, {**top, **names}]
        composed = compose(default_preset(*layers), *layers)
        specs += [
            validate_spec(point) for point, _ in (expand(composed) if args.multirun else [(composed, {})])
        ]
    return specs


def _name_grid(top: dict[str, Any]) -> list[dict[str, Any]]:
    """``{"method": ["joint", "cggm"]}`` -> ``[{"method": "joint"}, {"method": "cggm"}]`` (method and dataset)."""
    import itertools

    keys = [k for k in ("method", "dataset") if isinstance(top.get(k), list)]
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(top[k] for k in keys))]


def cmd_run(args: argparse.Namespace) -> int:
    specs = run_specs(args)
    if args.dry_run:
        print("---\n".join(yaml.safe_dump(s.canonical(), sort_keys=False) for s in specs), end="")
        return 0
    return max(_run_one(args, spec) for spec in specs)


def _run_one(args: argparse.Namespace, spec: RunSpec) -> int:
    from mmbalance.training.runner import live_train
    from mmbalance.training.wandb_log import settings

    cfg = settings(None, args.wandb, project=args.wandb_project, mode=args.wandb_mode)
    result = live_train(spec, args.results, args.data_root, cfg, None, device=args.device,
                        progress=not args.quiet, amp=bool(args.amp), workers=args.workers,
                        restart=args.restart, deterministic=bool(args.deterministic))  # fmt: skip
    if result.status == "running elsewhere":
        console.print(f"run {result.run_id} is running elsewhere ({result.reason}); nothing done")
        return 1
    if result.status == "failed":
        console.print(f"[red]run {result.run_id} failed[/red]: {result.reason}")
    else:
        key = result.final["selection_metric"]
        verb = "reused finished run" if result.status == "skipped" else "done"
        console.print(
            f"{verb} {result.run_id}: test {key} = {result.final['test'][key]:.4f} "
            f"(best epoch {result.final['best_epoch']}) -> {result.path}"
        )
    return 1 if result.status == "failed" else 0


# --- sweep --------------------------------------------------------------------------------------
def _executor_options(args: argparse.Namespace, section: dict[str, Any]) -> Any:
    from mmbalance.scaleout import executors

    cli = {"jobs": args.jobs, "partition": args.partition, "time_min": args.time, "gpus": args.gpus,
           "cpus": args.cpus, "mem_gb": args.mem_gb, "array_parallelism": args.array_parallelism,
           "sbatch": parse_set(args.sbatch), "amp": getattr(args, "amp", None),
           "workers": getattr(args, "workers", None), "threads": args.threads,
           "deterministic": getattr(args, "deterministic", None)}  # fmt: skip
    return executors.executor_options(section, cli)


def cmd_sweep(args: argparse.Namespace) -> int:
    from mmbalance.scaleout.sweep import load_suite, run_local, summary_rows, wait_for_elsewhere

    suite = load_suite(args.suite)  # before torch is imported: a bad suite is refused at once
    from mmbalance.api import plan_suite
    from mmbalance.scaleout import executors
    from mmbalance.scaleout.sweep import run_ids

    opts = _executor_options(args, suite.executor)
    everything, planned = plan_suite(suite, args.data_root, args.set, args.only)
    if args.dry_run:
        return _dry_run(args, planned)
    if args.executor == "local":  # a device this machine lacks fails once here, not once per run
        from mmbalance.training.runner import resolve_device

        resolve_device(args.device)
    skipped = [p for p in planned if p.spec is None]
    for p in skipped:
        console.print(f"skip {p.label}: {p.skip_reason}")
    from mmbalance.reporting.tables import SWEEPS, write_runs

    # The suite's run ids, for its report: other runs in the folder (a paper table's ablation) stay out.
    write_runs(args.results / SWEEPS, suite.name, list(run_ids(everything, args.data_root)))
    if args.executor == "slurm" and _off_cluster(args, planned):
        return 0
    if args.executor != "local":
        cluster = "slurm" if args.executor == "slurm" else "local"
        jobs = executors.submit(planned, args.results, args.data_root, args.device, opts, suite.name, cluster,
                                restart=args.restart)  # fmt: skip
        if jobs:
            console.print(
                f"submitted {len(jobs)} runs as job array {jobs[0][1].job_id.split('_')[0]} "
                f"(logs in {jobs[0][1].paths.folder.parent}); follow with: "
                f"mmbalance status {args.results} --suite {args.suite}"
            )
        if not args.wait:
            return 0
        outcomes = [(p, job.result()) for p, job in jobs]
    elif opts.jobs > 1:
        outcomes = executors.run_parallel(planned, args.results, args.data_root, args.device, opts,
                                          progress=not args.quiet, restart=args.restart)  # fmt: skip
    else:
        from mmbalance.training.wandb_log import settings

        cfg = settings(suite.wandb, args.wandb, project=args.wandb_project, mode=args.wandb_mode)
        outcomes = run_local(planned, args.results, args.data_root,
                             opts.run_options(args.device, args.restart, progress=not args.quiet),
                             wandb=cfg, group=suite.name)  # fmt: skip
    if args.wait:  # runs another process holds: wait for it, then take over what it left
        outcomes = wait_for_elsewhere(
            outcomes,
            lambda ps: run_local(ps, args.results, args.data_root, opts.run_options(args.device)),
            say=console.print,
        )
    _log_to_wandb(args, suite.wandb, [r.path for _, r in outcomes if r.status in ("done", "skipped", "failed")],
                  suite.name)  # fmt: skip
    rows = summary_rows(outcomes, skipped)
    if rows:
        console.print(_table(f"sweep {suite.name}", rows))
    # A diverged run is a result of the method at its settings (recorded, listed by the report), not a fault.
    statuses = ["diverged" if r.status == "failed" and r.reason.startswith("diverged") else r.status
                for _, r in outcomes]  # fmt: skip
    return _sweep_verdict(statuses, len(skipped), args)


def _dry_run(args: argparse.Namespace, planned: list) -> int:
    """``sweep --dry-run``: the runs the sweep would start, with their ids and whether they are finished
    (run ids from the declared data fingerprints: no dataset is built)."""
    from mmbalance.scaleout.planning import dry_run_rows
    from mmbalance.scaleout.sweep import run_ids

    rows = dry_run_rows(run_ids(planned, args.data_root, declared=True), args.results)
    rows += [
        {"run": p.label, "id": "", "state": f"skipped: {p.skip_reason[:100]}"}
        for p in planned
        if p.spec is None
    ]
    if rows:
        console.print(_table(f"sweep {args.suite} --dry-run (nothing runs)", rows))
    todo = sum(r["state"] != "finished" for r in rows if r["id"])
    console.print(
        f"{len(rows)} runs planned: {todo} to run, {sum(r['state'] == 'finished' for r in rows)} finished"
    )
    return 0


def _off_cluster(args: argparse.Namespace, planned: list) -> bool:
    """``--executor slurm`` where there is no ``sbatch``: True (nothing to do) when every run is finished,
    else the one-line error; False on a cluster."""
    import shutil

    from mmbalance.scaleout.planning import dry_run_rows
    from mmbalance.scaleout.sweep import run_ids

    if shutil.which("sbatch") is not None:
        return False
    rows = dry_run_rows(run_ids(planned, args.data_root), args.results)
    if todo := [r for r in rows if r["state"] != "finished"]:
        raise UsageError(f"--executor slurm: no `sbatch` here (not a SLURM cluster) and {len(todo)} of "
                         f"{len(rows)} runs are not finished; run on the cluster's login node, or here "
                         "with --executor local")  # fmt: skip
    console.print(f"all {len(rows)} runs are finished; nothing to submit")
    return True


def _sweep_verdict(statuses: list[str], n_skipped: int, args: argparse.Namespace) -> int:
    """The sweep's last line and exit code: 0 only when every run it asked for has finished (a run that
    diverged has: its record says so, and the report lists it)."""
    n = {s: statuses.count(s) for s in ("failed", "running elsewhere", "interrupted", "not started")}
    done, diverged = statuses.count("done") + statuses.count("skipped"), statuses.count("diverged")
    others = len(statuses) - done - diverged - sum(n.values())  # not applicable once the model was built
    parts = [f"{done} runs done or reused"] + ([f"{diverged} diverged (recorded; the report lists them)"]
                                               if diverged else [])  # fmt: skip
    parts += [f"{k} {s}" for s, k in n.items() if k or s == "failed"]
    console.print(
        ", ".join(parts) + (f", {others} not applicable" if others else "") + f", {n_skipped} skipped"
    )
    unfinished = n["running elsewhere"] + n["interrupted"] + n["not started"]
    if unfinished:
        again = f"mmbalance sweep {args.suite} --results {args.results}"
        hint = ("another process holds their locks: rerun when it is done, or add --wait"
                if n["running elsewhere"] else "rerun the sweep to resume them")  # fmt: skip
        console.print(f"[yellow]{unfinished} runs are not finished[/yellow] ({hint}: {again}); "
                      "a report now would miss them", highlight=False)  # fmt: skip
    return 1 if n["failed"] or unfinished else 0


# --- tune ---------------------------------------------------------------------------------------
def cmd_tune(args: argparse.Namespace) -> int:
    from mmbalance.scaleout.sweep import load_suite
    from mmbalance.scaleout.tune import submit_workers, tune

    suite = load_suite(args.suite)
    opts = _executor_options(args, suite.executor)
    if args.executor != "local":
        jobs, storage = submit_workers(args.suite, args.results, args.storage, args.data_root, args.prune, opts,
                                       cluster="slurm" if args.executor == "slurm" else "local")  # fmt: skip
        console.print(f"submitted {len(jobs)} tuning workers (job array {jobs[0].job_id.split('_')[0]}) sharing "
                      f"the studies through {storage}; when they are done, write the tuned file with: "
                      f"mmbalance tune {args.suite} --results {args.results} --storage {storage}")  # fmt: skip
        if not args.wait:
            return 0
        for job in jobs:
            job.result()
        args.storage = storage
    path, outcomes = tune(args.suite, args.results, storage=args.storage, jobs=opts.jobs,
                          data_root=args.data_root, prune=args.prune, progress=not args.quiet,
                          say=console.print)  # fmt: skip
    if path is None:
        return 1
    console.print(f"{len(outcomes)} studies, {sum(o.entry.trials for o in outcomes)} trials -> {path}; "
                  f"every trial in {args.results / 'tuning' / (suite.name + '-trials.csv')}")  # fmt: skip
    return 0


# --- status -------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from mmbalance.common.status import sweep_status

    ids = None
    if args.suite is not None:
        from mmbalance.scaleout.sweep import load_suite, plan, run_ids

        ids = run_ids(plan(load_suite(args.suite), args.data_root), args.data_root, declared=True)
    report = sweep_status(args.results, ids)
    counts = report.counts()
    console.print(", ".join(f"{n} {state}" for state, n in counts.items()) + f" ({len(report.runs)} runs)")
    for reason, n in sorted(report.failure_reasons().items(), key=lambda kv: -kv[1]):
        console.print(f"  failed x{n}: {reason}")
    if args.verbose:
        rows = [
            {"run": r.run_id, "label": r.label, "state": r.state, "detail": r.detail[:100]}
            for r in report.runs
        ]
        if rows:
            console.print(_table(f"runs in {args.results}", rows))
    return 1 if counts["failed"] else 0


# --- evaluate -------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score finished runs' selected models (modality contributions, robustness) without retraining."""
    from mmbalance.common.records import RunDir, atomic_write_json
    from mmbalance.common.status import tidy_finished
    from mmbalance.training.modality_eval import same_record
    from mmbalance.training.runner import evaluate_run

    mismatched = 0
    for path in args.run_dirs:
        rd = RunDir(Path(path))
        if not rd.file("spec.yaml").exists():
            raise FileNotFoundError(f"{rd.path}: not a run record (no spec.yaml)")
        try:
            new = evaluate_run(rd.path, args.data_root, device=args.device)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        final = rd.final()
        old = final.get("modality_eval")
        old = None if old is not None and "error" in old else old  # a failed measurement is replaced
        # A record from before the incomplete-data protocol: compared on what it has, and given the protocol.
        added = old is not None and "incomplete" not in old
        same = old is not None and same_record(old, {k: v for k, v in new.items() if k in old or not added})
        if old is not None and not same:
            mismatched += 1
            console.print(f"[red]{rd.run_id}: differs from the record written at the end of training[/red]")
        verdict = "new" if old is None else "matches final.json" if same else "differs"
        verdict += ", incomplete-data protocol added" if added and same else ""
        if old is None or args.write or (added and same):
            atomic_write_json(rd.file("final.json"), {**final, "modality_eval": new})
            verdict += ", written to final.json"
        tidy_finished(rd)
        worst = new["worst_missing"]
        console.print(
            f"{rd.run_id}: {new['metric']} {new['full']:.4g}; shapley "
            + ", ".join(f"{m} {v:.3g}" for m, v in new["shapley"].items())
            + f"; imbalance degree {new['imbalance_degree']:.3f}; equity "
            + ("n/a" if new["equity"] is None else f"{new['equity']:.3f}")
            + ("" if worst is None else f"; worst missing-modality {new['metric']} {worst:.4g}")
            + f" ({verdict})"
        )
    return 1 if mismatched else 0


# --- leaderboard --------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    from mmbalance.leaderboard.leaderboard import EntryError, LeaderboardError, submit

    try:
        entry = submit(args.run_dirs, args.name, args.out, url=args.url)
    except (EntryError, LeaderboardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    key, n = entry.primary(), len(entry.seeds)
    console.print(f"wrote {args.out}: {entry.method} on {entry.dataset}, {n} seeds, test {key} = "
                  f"{entry.summary[key].mean:.4g} ± {entry.summary[key].std:.2g}")  # fmt: skip
    return 0


def _seeds_option(values: list[str] | None) -> list[int] | str | None:
    """``--seeds``: None (one at random), ``all``, or integers."""
    if values is None:
        return None
    if values == ["all"]:
        return "all"
    try:
        return [int(v) for v in values]
    except ValueError:
        raise UsageError(f"--seeds {' '.join(values)[:60]}: expected seed numbers or 'all'") from None


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from mmbalance.leaderboard.leaderboard import EntryError, LeaderboardError, check
    from mmbalance.leaderboard.leaderboard_page import build

    try:
        if args.action in ("check", "verify"):
            if args.file is None:
                print(f"error: leaderboard {args.action} needs the entry FILE", file=sys.stderr)
                return 2
            entry = check(args.file, results=args.results, fingerprints=args.fingerprints)
            console.print(f"{args.file}: valid ({entry.method} on {entry.dataset}, {len(entry.seeds)} seeds)")
            if args.action == "verify":
                from mmbalance.leaderboard.leaderboard_verify import pick_seeds, verify

                seeds = pick_seeds(entry, _seeds_option(args.seeds))
                bad = verify(entry, seeds, args.data_root, device=args.device)
                for m in bad:
                    console.print(f"[red]mismatch[/red] {m}", highlight=False)
                console.print(f"re-run of seed(s) {seeds}: "
                              f"{'numbers reproduced' if not bad else f'{len(bad)} number(s) differ'}")  # fmt: skip
                return 1 if bad else 0
        else:
            built = build(args.results, fingerprints=args.fingerprints)
            console.print(f"{len(built.entries)} entries -> {built.markdown}, {built.html}")
    except (EntryError, LeaderboardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


# --- report, reproduce ----------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    import warnings

    from mmbalance.reporting.paper import render_from_records
    from mmbalance.reporting.report import report
    from mmbalance.reporting.results import RecordWarning

    figures, protocol = not args.no_figures, args.protocol
    if unknown := sorted(set(args.method or ()) - set(METHODS.names())):  # they become file names too
        raise UsageError(
            f"--method {', '.join(unknown)[:80]}: not a method; valid choices: {', '.join(METHODS.names())}"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecordWarning)
        try:
            if args.table:
                paths = render_from_records(args.table, args.results_dir, args.out, protocol, figures=figures)
            else:
                protocol = protocol or "best-valid-test"
                paths = report(
                    args.results_dir, args.suite, args.out, protocol, figures, args.method, args.jobs
                )
        finally:
            for w in caught:  # a damaged record: one line naming the file; other warnings as usual
                if issubclass(w.category, RecordWarning):
                    print(f"warning: {w.message}", file=sys.stderr)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    console.print(f"wrote {len(paths)} files:\n  " + "\n  ".join(str(p) for p in paths))
    if args.wandb:
        from mmbalance.scaleout.sweep import load_suite
        from mmbalance.training.wandb_log import log_report, settings

        cfg = settings(None, True, project=args.wandb_project, mode=args.wandb_mode)
        name = args.table or (load_suite(args.suite).name if args.suite else "all-runs")
        console.print(f"W&B: report artifact -> {log_report(paths, cfg, args.results_dir, name)}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mmbalance.reporting.paper import load_table, missing_data, reproduce, table_suite

    table, path = load_table(args.table)
    if table.suite is not None:
        for problem in missing_data(table_suite(table, path), args.data_root):
            console.print(f"[yellow]data missing[/yellow], those rows stay n/a:\n{problem}", highlight=False)
    paths, missing = reproduce(args.table, args.results, args.data_root, args.out, args.protocol,
                               device=args.device, progress=not args.quiet)  # fmt: skip
    for m in missing:
        console.print(f"not run: {m}", highlight=False)
    md = next((p for p in paths if p.suffix == ".md"), None)
    if md is not None:
        print(md.read_text())  # plain: rich would wrap the Markdown table
    console.print(f"wrote {len(paths)} files:\n  " + "\n  ".join(str(p) for p in paths))
    return 0


# --- listings -----------------------------------------------------------------------------------
def cmd_methods(args: argparse.Namespace) -> int:
    if args.name:
        return _method_detail(args.name)
    rows = [{"method": m["name"], "tasks": ", ".join(sorted(m["tasks"])), "modalities": f">= {m['min_modalities']}",
             "reference": m["reference"]} for m in METHODS.listing()]  # fmt: skip
    console.print(_table("methods", rows))
    return 0


def _method_detail(name: str) -> int:
    """One method: its reference, each parameter's default and what `mmbalance tune` may search for it."""
    from mmbalance.common.search_space import OPTIM_SPACE, describe

    def searched(dim) -> dict[str, str]:
        ranges = {k: v for k, v in describe(dim).items() if k not in ("kind", "source")}
        return {"tune searches": f"{type(dim).__name__} {ranges}", "source": dim.source}

    cls = METHODS.get(name)
    console.print(f"{name}: {cls.reference}", highlight=False)
    console.print(f"tasks: {', '.join(sorted(cls.tasks))}; modalities: {cls.min_modalities} or more",
                  highlight=False)  # fmt: skip
    rows = [{"parameter": field, "type": _type_name(info.annotation), "default": json.dumps(info.default),
             **(searched(cls.search_space[field]) if field in cls.search_space else {"tune searches": "", "source": ""})}
            for field, info in cls.Params.model_fields.items()]  # fmt: skip
    rows += [{"parameter": path, "type": type(dim).__name__.lower(), "default": "(the spec's)", **searched(dim)}
             for path, dim in OPTIM_SPACE.items()]  # fmt: skip
    console.print(_table(f"{name}: parameters and search space (shared optimiser space last)", rows))
    return 0


def _type_name(annotation: Any) -> str:
    """``float``, ``bool``, ``dict[str, float]``, ``Literal['a', 'b']``: a parameter's type as written."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None")


def cmd_datasets(args: argparse.Namespace) -> int:
    root = args.data_root or default_data_root()
    if args.set and not args.dataset:
        raise SpecError("--set needs --dataset NAME (dataset_params belong to one dataset)")
    rows, problems, changed = [], [], False
    for name in [args.dataset] if args.dataset else [n for n, _ in DATASETS.items()]:
        cls = DATASETS.get(name)
        # the run's own spelling (--set dataset_params.audio_dir=...), so renamed folders are looked for
        params = validate_spec({"dataset": name, **parse_set(args.set or [])}).dataset_params
        adapter = cls(cls.Params.model_validate(params), root / name)
        try:
            adapter.verify()
            found = "found" if cls.needs_files else "generated"
        except DataError as e:
            found = "missing"
            problems.append(str(e))
        if args.verify and found == "found":
            changed |= _verify_files(adapter)
        t = adapter.task
        rows.append({"dataset": name, "task": t.kind, "modalities": ", ".join(t.modalities),
                     "looks in": str(adapter.root) if cls.needs_files else "-", "status": found})  # fmt: skip
    console.print(_table(f"datasets (data root: {root}; set --data-root or $MMBALANCE_DATA)", rows))
    print("\nWhere to get each dataset (source, licence or access terms):")
    for row in rows:
        print(f"  {row['dataset']}: {DATASETS.get(row['dataset']).access or '-'}")
    for text in problems:  # in full, so the expected layout is readable
        print(f"\n{text}")
    return 1 if changed else 0


def _verify_files(adapter) -> bool:
    """Print which of the adapter's files changed since the last fingerprint recorded for its root."""
    import datetime

    from mmbalance.training.fingerprint import compare, manifest, recorded_manifests

    now = manifest(adapter.root, adapter.data_files(), record=False)
    recorded = recorded_manifests(adapter.root)
    if not recorded:
        print(f"{adapter.name}: {len(now.files)} file(s); no fingerprint recorded yet for {adapter.root}")
        return False
    when, last = recorded[0]
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    diff = compare(last, now)
    if not any(diff.values()):
        print(f"{adapter.name}: {len(now.files)} file(s) unchanged since the fingerprint of {stamp}")
        return False
    counts = ", ".join(f"{len(v)} {k}" for k, v in diff.items())
    print(f"{adapter.name}: {counts} since the fingerprint of {stamp} (files:{last.digest[:16]} -> "
          f"files:{now.digest[:16]}):")  # fmt: skip
    for kind, files in diff.items():
        for f in files[:50]:
            print(f"  {kind}: {f}")
        if len(files) > 50:
            print(f"  ... and {len(files) - 50} more {kind}")
    return True


RESTART_HELP = ("unfinished runs discard their checkpoint and records and train from epoch 0 (e.g. after "
                "a damaged checkpoint); finished runs are still reused")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmbalance", description="Benchmark suite for multimodal balancing methods"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train one run (skipped if finished, resumed if interrupted)")
    p.add_argument("--dataset", help="dataset name (see `mmbalance datasets`)")
    p.add_argument("--method", help="method name (see `mmbalance methods`)")
    p.add_argument("--seed", type=int)
    p.add_argument("--spec", type=Path, help="YAML run spec; --dataset/--method/--seed/--set override it")
    p.add_argument("--restart", action="store_true", help=RESTART_HELP)
    p.add_argument(
        "--preset",
        help="paper hyper-parameters of a dataset: a name in benchmarks/presets/ (mosi, ...) or a YAML path; "
        "--spec, --dataset/--method/--seed and --set override it",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved spec and exit (nothing runs)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, dotted: --set epochs=5 --set method_params.alpha=0.5",
    )
    p.add_argument("-m", "--multirun", action="append", default=[], metavar="KEY=A,B",
                   help="one run per value (several: their product), e.g. -m optim.lr=0.01,0.05")  # fmt: skip
    _common(p)
    _wandb_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="run every run of a suite YAML (finished runs are reused)")
    p.add_argument("suite", type=Path)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a spec field over every entry; a list is a grid: --set optim.lr=[0.01,0.05]")  # fmt: skip
    p.add_argument("--only", action="append", default=[], metavar="KEY=A,B",
                   help="only the runs with these values (method, dataset, seed, block); repeat to combine: "
                        "--only method=joint,cggm --only seed=0")  # fmt: skip
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs it would start, with their ids and which are finished; builds no data")  # fmt: skip
    _common(p)
    g = _scaleout_options(p)
    g.add_argument("--wait", action="store_true",
                   help="wait for runs another process is training (and, on slurm, for the jobs), then "
                        "finish them here; without it such runs make the exit code 1")  # fmt: skip
    p.add_argument("--restart", action="store_true", help=RESTART_HELP)
    _wandb_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "tune", help="tune every (block, method) of a suite on validation; writes benchmarks/tuned/"
    )
    p.add_argument("suite", type=Path)
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="trial runs go to RESULTS/tuning/runs, the trial table to RESULTS/tuning/ (default: results)")  # fmt: skip
    p.add_argument("--data-root", type=Path, default=None, help="default: $MMBALANCE_DATA or ./data")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL shared by workers (default: sqlite:///RESULTS/tuning/SUITE.db)")  # fmt: skip
    p.add_argument("--prune", action="store_true", help="stop unpromising trials on per-epoch validation")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = _scaleout_options(p)  # --jobs: studies at once here; on slurm, worker jobs that share the studies
    g.add_argument(
        "--wait", action="store_true", help="slurm: wait for the workers, then write the tuned file"
    )
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("status", help="counts of done / running / failed / pending runs, failure reasons")
    p.add_argument("results", type=Path)
    p.add_argument("--suite", type=Path, default=None, help="count the suite's runs (pending ones too)")
    p.add_argument("--data-root", type=Path, default=None, help="default: $MMBALANCE_DATA or ./data")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per run")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("evaluate", help="modality contributions and robustness of finished runs, no training")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="results/runs/<run_id> folders")
    p.add_argument("--data-root", type=Path, default=None, help="default: $MMBALANCE_DATA or ./data")
    p.add_argument("--device", default="cpu", help="cpu (default: the numbers of a CPU run), cuda, ...")
    p.add_argument("--write", action="store_true", help="replace the record in final.json even if present")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("submit", help="pack finished runs (one spec, >= 3 seeds) into a leaderboard entry")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="results/runs/<run_id> folders")
    p.add_argument("--name", required=True, help="submitter name shown on the leaderboard")
    p.add_argument("--out", required=True, type=Path, help="entry JSON (results/leaderboard/entries/X.json)")
    p.add_argument("--url", default=None, help="paper or code URL (http/https)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("leaderboard", help="`build` validates every entry and renders the page; `check FILE`")
    p.add_argument("action", choices=("build", "check", "verify"), help="verify: check, then re-run seeds")
    p.add_argument("file", nargs="?", type=Path, help="check/verify: the entry JSON")
    p.add_argument("--results", type=Path, default=Path("results"), help="has leaderboard/entries/")
    p.add_argument("--fingerprints", type=Path, default=None, help="default: benchmarks/fingerprints.yaml")
    p.add_argument("--seeds", nargs="+", default=None,
                   help="verify: seeds to re-run, or 'all' (default: one drawn at random)")  # fmt: skip
    p.add_argument(
        "--data-root", type=Path, default=None, help="verify: folder with one sub-folder per dataset"
    )
    p.add_argument("--device", default="cpu", help="verify: cpu (default), cuda, ...")
    p.set_defaults(func=cmd_leaderboard)

    protocols = ["best-valid-test", "best-valid"]
    p = sub.add_parser("report", help="tables (Markdown, LaTeX, CSV) and figures of runs, from records")
    p.add_argument("results_dir", type=Path, metavar="RESULTS_DIR")
    p.add_argument("--suite", type=Path, help="only the runs of this suite YAML (outputs named after it)")
    p.add_argument("--table", help="render this paper table spec (name or path) instead, from the records")
    p.add_argument("--out", type=Path, help="folder for tables/ and figures/ (default: RESULTS_DIR)")
    p.add_argument("--protocol", choices=protocols, default=None,
                   help="best-valid-test (default): test at the best validation epoch; best-valid: best "
                        "validation score over epochs, as the CGGM code reports")  # fmt: skip
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument(
        "--method", action="append", help="only these methods (repeat: --method joint --method cggm)"
    )
    p.add_argument("--jobs", type=int, default=1, help="processes drawing the figures (default: 1)")
    _wandb_options(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="run a paper table's missing runs, then write it beside the paper")
    p.add_argument("table", help="a name in benchmarks/paper/ (e.g. synthetic-table) or a table spec path")
    p.add_argument("--out", type=Path, help="folder for tables/ and figures/ (default: --results)")
    p.add_argument("--protocol", choices=protocols, default=None, help="default: the table's own")
    _common(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser(
        "methods", help="list the registered methods; with a name, its parameters and search space"
    )
    p.add_argument("name", nargs="?", help="a method: its parameters, defaults and tuning ranges")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser(
        "datasets", help="list the datasets, where they are looked for and whether they are found"
    )
    p.add_argument("--data-root", type=Path, default=None, help="default: $MMBALANCE_DATA or ./data")
    p.add_argument("--dataset", help="only this dataset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="with --dataset: dataset_params as `run` takes them (dataset_params.audio_dir=spec)")  # fmt: skip
    p.add_argument("--verify", action="store_true",
                   help="list the files changed, added or removed since the last data fingerprint of each "
                        "dataset found (exit 1 if any)")  # fmt: skip
    p.set_defaults(func=cmd_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_options(args)
        return args.func(args)
    except KeyboardInterrupt:  # the run stays "running" with its checkpoint: the same command resumes it
        print(f"interrupted; rerun `mmbalance {args.command} ...` to resume from the last epoch's checkpoint",
              file=sys.stderr)  # fmt: skip
        return 130
    except Exception as e:
        message = error_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
