"""Where a sweep's runs execute: N local worker processes, or SLURM jobs through ``submitit``.

Every path ends in ``run_one`` -> ``runner.train``, so the guarantees are the runner's: a finished
run is skipped, an interrupted one resumes from its checkpoint, and the per-run lock
(``locks.py``) makes sure two workers never train the same run (the loser reports
``running elsewhere``). A sweep can therefore be resubmitted at any time, on any executor.

Options come from the suite file's ``executor:`` section, overridden by the command line::

    executor:
      jobs: 4                  # local: worker processes
      partition: gpu           # slurm: one array job, one task per run
      time_min: 240
      gpus: 1
      cpus: 8
      mem_gb: 32
      array_parallelism: 32
      sbatch: {account: my_lab, qos: normal}   # any other sbatch option, as --key=value
      setup: ["module load cuda/12.4"]          # shell lines run before each job
      amp: true                # mixed precision (see runner.train)
      workers: 4               # data-loader processes per run
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field, ValidationError
from submitit.helpers import Checkpointable

from mmbalance.common.core import StrictModel
from mmbalance.common.spec import SpecError, _format_validation

if TYPE_CHECKING:
    from mmbalance.training.runner import RunOptions

__all__ = ["ExecutorOptions", "executor_options", "run_one", "run_parallel", "submit", "slurm_parameters"]


class ExecutorOptions(StrictModel):
    jobs: int = Field(1, ge=1)  # local worker processes (1: in this process)
    partition: str | None = None  # slurm partition (cluster default if unset)
    time_min: int = Field(240, ge=1)  # slurm time limit per run, minutes
    gpus: int = Field(1, ge=0)  # GPUs per run
    cpus: int = Field(4, ge=1)  # CPU cores per run (also torch's thread count in the job)
    mem_gb: float | None = Field(None, gt=0)  # memory per run
    array_parallelism: int = Field(64, ge=1)  # array tasks running at once
    sbatch: dict[str, Any] = {}  # extra sbatch options, e.g. {account: x, qos: y, constraint: a100}
    setup: list[str] = []  # shell lines before each job (module load, conda activate)
    folder: str | None = None  # submitit logs and pickles (default: <results>/submitit)
    amp: bool = False  # mixed precision
    workers: int | None = Field(None, ge=0)  # data-loader processes per run (None: runner.auto_workers)
    deterministic: bool = False  # deterministic CUDA kernels, cuDNN benchmark off (runner.configure_backends)
    # torch threads per run; default: this machine's cores / jobs locally, $SLURM_CPUS_PER_TASK on SLURM.
    # Pin it (e.g. 1) to compare numbers across machines: float reductions depend on the thread count.
    threads: int | None = Field(None, ge=1)

    def run_options(self, device: str, restart: bool = False, progress: bool = False) -> RunOptions:
        """The options each run of the sweep trains with."""
        from mmbalance.training.runner import RunOptions

        return RunOptions(device, progress, self.amp, self.workers, restart, self.deterministic)


def executor_options(section: dict[str, Any], overrides: dict[str, Any]) -> ExecutorOptions:
    """The suite's ``executor:`` section with the command line's (non-None) values on top."""
    doc = {**section, **{k: v for k, v in overrides.items() if v is not None}}
    if "sbatch" in overrides and overrides["sbatch"]:
        doc["sbatch"] = {**section.get("sbatch", {}), **overrides["sbatch"]}
    try:
        return ExecutorOptions.model_validate(doc)
    except ValidationError as e:
        raise SpecError(f"invalid executor options:\n{_format_validation(e, prefix='executor')}") from None


# --- the unit of work: one run ------------------------------------------------------------------
def run_one(
    spec_doc: dict[str, Any],
    results: str,
    data_root: str | None,
    options: RunOptions,
    threads: int | None = None,
):
    """Train one run in this process (a pool worker or a SLURM task); returns its ``RunResult``.

    The spec travels as its canonical dict and is validated here, so the worker fills its own
    registries. A failure is already recorded on disk by ``train``; it comes back as a result.
    """
    from mmbalance.common.spec import validate_spec
    from mmbalance.training.runner import run_outcome

    threads = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or None
    if threads:
        torch.set_num_threads(threads)
    return run_outcome(validate_spec(spec_doc), results, Path(data_root) if data_root else None, options)


class RunJob(Checkpointable):
    """``run_one`` as a submitit job that requeues itself when SLURM times it out or preempts it:
    submitit signals the job, re-submits this callable with the same arguments, and the next
    attempt resumes from the run's last epoch checkpoint (the lock is released on the way out)."""

    def __call__(self, *args: Any, **kwargs: Any):
        return run_one(*args, **kwargs)


def _runnable(planned: list) -> list:
    return [p for p in planned if p.spec is not None]


def _die_with_parent(parent: int) -> None:
    """Pool worker initializer: exit as soon as the sweep process that started this worker is gone
    (killed with SIGKILL, it cannot stop its pool). The run's lock then goes stale and the next sweep
    resumes the run from its checkpoint."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _interrupted(spec: Any, results: Path, data_root: Path | None, reason: str):
    """The ``RunResult`` of a run whose worker died: ``interrupted`` if it left a record (the next
    sweep resumes it), ``not started`` if not, ``done`` if it finished before its worker died."""
    from mmbalance.common.status import run_state
    from mmbalance.training.runner import RunResult, prepare

    _, _, rd = prepare(spec, results, data_root)
    state = run_state(rd).state
    if state == "done":
        return RunResult(rd.run_id, rd.path, "done", rd.final())
    if state == "failed":
        return RunResult(rd.run_id, rd.path, "failed", reason=rd.failure_reason())
    status = {"pending": "not started", "running": "running elsewhere"}.get(state, "interrupted")
    return RunResult(rd.run_id, rd.path, status, reason=reason)


# --- local: a pool of worker processes ----------------------------------------------------------
def run_parallel(
    planned: list,
    results: Path,
    data_root: Path | None,
    device: str,
    opts: ExecutorOptions,
    progress: bool = True,
    restart: bool = False,
    retries: int = 1,
) -> list[tuple[Any, Any]]:
    """Run the planned specs in ``opts.jobs`` spawned worker processes; outcomes in plan order.

    Each worker gets an equal share of this machine's cores as torch threads (spawn, not fork:
    a forked child of a process that already ran torch may deadlock in its thread pools), and exits
    when this process dies. A worker that dies (killed, out of memory) breaks the pool: its run and
    the runs the pool cut short are read back from disk (done, interrupted, not started) and run
    again in a fresh pool, ``retries`` times; what is still unfinished then is reported as
    ``interrupted`` or ``not started``, never as failed.
    """
    from tqdm.auto import tqdm

    runnable = _runnable(planned)
    outcomes: list[Any] = [None] * len(runnable)
    todo = list(range(len(runnable)))
    with tqdm(total=len(todo), desc="sweep", unit="run", disable=not progress) as bar:
        for attempt in range(retries + 1):
            broken = _run_pool([runnable[i] for i in todo], results, data_root, device, opts, restart)
            for i, outcome in zip(todo, broken, strict=True):
                if outcome is not None:
                    outcomes[i] = outcome
                    bar.update(1)
            died = [i for i, outcome in zip(todo, broken, strict=True) if outcome is None]
            for i in died:
                outcomes[i] = _interrupted(runnable[i].spec, results, data_root,
                                           f"its worker process died (attempt {attempt + 1} of {retries + 1}); "
                                           "the next sweep resumes it")  # fmt: skip
            todo = [i for i in died if outcomes[i].status in ("interrupted", "not started")]
            bar.update(len(died) - len(todo))
            if not todo:
                break
            if attempt < retries:
                bar.write(f"a worker process died: {len(todo)} unfinished run(s) "
                          f"({sum(outcomes[i].status == 'interrupted' for i in todo)} interrupted), "
                          "retrying them in a fresh pool")  # fmt: skip
    return list(zip(runnable, outcomes, strict=True))


def _run_pool(runnable: list, results: Path, data_root: Path | None, device: str, opts: ExecutorOptions,
              restart: bool) -> list[Any]:  # fmt: skip
    """One pool over ``runnable``: each run's ``RunResult``, or None where the pool broke under it."""
    threads = opts.threads or max(1, (os.cpu_count() or 1) // opts.jobs)
    ctx = multiprocessing.get_context("spawn")
    results_out: list[Any] = [None] * len(runnable)
    root = str(data_root) if data_root else None
    with ProcessPoolExecutor(max_workers=opts.jobs, mp_context=ctx, initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as pool:  # fmt: skip
        futures = [
            pool.submit(
                run_one, p.spec.canonical(), str(results), root, opts.run_options(device, restart), threads
            )
            for p in runnable
        ]
        for i, future in enumerate(futures):  # plan order; each waits for its own run
            try:
                results_out[i] = future.result()
            except BrokenProcessPool:
                pass  # read back from disk by the caller
    return results_out


# --- submitit: SLURM (or its local stand-in) -----------------------------------------------------
def slurm_parameters(opts: ExecutorOptions, name: str) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` arguments: generic ones, and ``slurm_`` ones for SLURM only."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": opts.time_min,
        "cpus_per_task": opts.cpus,
        "slurm_array_parallelism": opts.array_parallelism,
    }
    if opts.gpus:
        params["gpus_per_node"] = opts.gpus
    if opts.mem_gb is not None:
        params["mem_gb"] = opts.mem_gb
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.sbatch:
        params["slurm_additional_parameters"] = dict(opts.sbatch)
    if opts.setup:
        params["slurm_setup"] = list(opts.setup)
    return params


def submit(
    planned: list,
    results: Path,
    data_root: Path | None,
    device: str,
    opts: ExecutorOptions,
    name: str = "mmbalance",
    cluster: str = "slurm",
    restart: bool = False,
) -> list[tuple[Any, Any]]:
    """Submit one job per runnable spec, as a single job array; returns ``(planned, submitit.Job)``.

    ``cluster="local"`` runs the same submission through submitit's local executor (one
    subprocess per job), which is how the tests exercise this path without a cluster.
    """
    import submitit

    runnable = _runnable(planned)
    if not runnable:
        return []
    folder = Path(opts.folder) if opts.folder else Path(results) / "submitit"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    executor.update_parameters(**slurm_parameters(opts, name))
    root = str(Path(data_root).resolve()) if data_root else None  # jobs may start in another folder
    with executor.batch():  # one sbatch call: an array of len(runnable) tasks
        jobs = [executor.submit(RunJob(), p.spec.canonical(), str(Path(results).resolve()), root,
                                opts.run_options(device, restart), opts.threads)
                for p in runnable]  # fmt: skip
    return list(zip(runnable, jobs, strict=True))
