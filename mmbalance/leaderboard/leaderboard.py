"""The leaderboard: pack finished runs into an entry, validate every entry, render the page.

An *entry* is one JSON file in ``results/leaderboard/entries/``: one method with its hyper-parameters
on one dataset configuration, over >= 3 seeds of the same run spec, with the test metrics of every seed
(at its best validation epoch, as ``final.json`` records them) and their mean and std.

Trust model (see shared/notes/leaderboards.md, section 6): an entry is made by ``submit`` from run
records, never typed by hand, and ``check`` refuses anything that the records could not have produced:

- schema: required fields, types, lengths (pydantic, unknown keys refused); a size limit per file;
- the split fingerprint must equal the suite's known one for that dataset configuration
  (``benchmarks/fingerprints.yaml``), so every number on a table was measured on the same data;
- hashes are recomputed: dataset params, spec, and each seed's ``run_id`` (the runner's formula);
- metric names must be the task's, values in range, the same metrics in every seed;
- mean and std are recomputed from the per-seed values. **std is the sample std (ddof=1)**;
- >= 3 distinct seeds; no duplicate of another entry (same spec and seeds, or a shared run).

``leaderboard_page.build`` renders the page (one table per dataset configuration) only when
every entry passes; otherwise it raises with the list of all bad entries.
This module reads run records through ``records.py`` only: it imports no runner, method or adapter.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from mmbalance.common.comparison import seed_draws_data
from mmbalance.common.metric_catalogue import metric_facts
from mmbalance.common.records import RECORD_ONLY, DamagedRecordError, RunDir, atomic_write_text
from mmbalance.common.safe_load import DocumentError, load_yaml_file, parse_json
from mmbalance.common.spec import check_spec_light

__all__ = [
    "Entry",
    "EntryError",
    "LeaderboardError",
    "KnownSplit",
    "submit",
    "check",
    "load_entries",
    "validate_entry",
    "load_fingerprints",
    "params_hash",
    "spec_hash",
    "METRICS",
    "RULES",
]

SCHEMA_VERSION = 1
MIN_SEEDS = 3
MAX_ENTRY_BYTES = 64 * 1024  # a real entry is ~5 KiB; the limit keeps a forged blob off the page
SELECTION = "test metrics at the best validation epoch"  # the runner's final.json protocol
STD_DDOF = 1  # sample std over seeds, as every paper table prints "mean ± std" of a few seeds
FINGERPRINTS = Path(__file__).resolve().parents[2] / "benchmarks" / "fingerprints.yaml"
ENTRIES = Path("leaderboard") / "entries"  # under the results folder

TaskKind = Literal["classification", "regression", "segmentation"]
# Test metrics a task may report (segmentation adds dice_<region> for its own regions), as
# ``mmbalance.training.metrics`` names them; the first is the task's primary (selection) metric.
METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1_macro", "f1_weighted"),
    "regression": ("mae", "corr", "acc7", "acc2_has0", "f1_has0", "acc2_non0", "f1_non0"),
    "segmentation": ("dice_mean",),
}
DICE = re.compile(r"^dice_[a-z0-9_]{1,32}$")

Name = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
]  # as the registries spell names
Hex16 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
SplitFingerprint = Annotated[
    str, StringConstraints(pattern=r"^train:[0-9a-f]{16}\|valid:[0-9a-f]{16}\|test:[0-9a-f]{16}$")
]
# Where the run seed draws the data (synthetic data, mfeat's split: dataset_params data_seed / split_seed
# null), every seed has its own fingerprint: the entry says "per-seed" and each seed carries its own.
PER_SEED = "per-seed"


def _plain(text: str) -> str:
    """Free text shown on the page: printable, no markup. The page escapes it too; entries stay clean."""
    if not text.isprintable():
        raise ValueError("only printable characters are allowed (no control characters, tabs or newlines)")
    if "<" in text or ">" in text:
        raise ValueError("'<' and '>' are not allowed (no markup in leaderboard text)")
    return text


Text = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_plain)]
OptionalText = Annotated[str, StringConstraints(max_length=200), AfterValidator(_plain)]
CodeVersion = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z._-]{1,32}(\+[0-9A-Za-z._-]{1,64})?$")]


class EntryError(ValueError):
    """A rejected entry; ``problems`` holds one ``field: rule`` line each."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source, self.problems = source, list(problems)
        super().__init__(f"{source}: rejected:\n" + "\n".join(f"  {p}" for p in self.problems))


class LeaderboardError(ValueError):
    """Runs that cannot be packed into an entry, or a build with bad entries (all listed)."""


# --- schema ------------------------------------------------------------------------------------------
class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModalityNumbers(Schema):
    """A seed's ``modality_eval`` summary (final.json; definitions in ``modality_eval.py``)."""

    shapley: dict[Annotated[str, StringConstraints(max_length=40)], float] = Field(
        min_length=1, max_length=16
    )
    imbalance_degree: float = Field(ge=0, le=2)  # spread of per-sample Shapley values, each in [-1, 1]
    equity: float | None = Field(ge=0, le=1)  # Pielou evenness; None with one modality contributing
    worst_missing: float | None  # the task's primary metric with the most needed modality absent


class SeedRun(Schema):
    seed: int = Field(ge=0, lt=2**32)  # the runner's seed range
    run_id: Hex16
    best_epoch: int = Field(ge=0)  # the validation-selected epoch the metrics come from
    epochs: int = Field(ge=1)  # epochs trained (a finished run trained spec.epochs)
    code_version: CodeVersion  # <package version>+<commit>[-dirty] of the checkout that ran this seed
    metrics: dict[Annotated[str, StringConstraints(max_length=40)], float] = Field(
        min_length=1, max_length=32
    )
    modality: ModalityNumbers | None = None  # absent in entries of runs recorded before modality_eval
    data_fingerprint: SplitFingerprint | None = None  # the seed's own data, when the seed draws it


class Stat(Schema):
    mean: float
    std: float = Field(ge=0)


class Hardware(Schema):
    device: Text
    device_name: OptionalText = ""
    platform: OptionalText = ""
    python: Annotated[str, StringConstraints(max_length=20), AfterValidator(_plain)] = ""


class Entry(Schema):
    schema_version: Literal[1]
    method: Name
    method_params: dict[str, Any]
    dataset: Name
    dataset_params: dict[str, Any]
    dataset_params_hash: Hex16
    task: TaskKind
    data_fingerprint: SplitFingerprint | Literal["per-seed"]
    spec: dict[str, Any]  # the run spec shared by every seed (seed removed)
    spec_hash: Hex16
    selection: Text  # how each seed's numbers were chosen (final.json "protocol")
    seeds: list[SeedRun] = Field(min_length=1, max_length=100)
    summary: dict[str, Stat]  # per metric: mean and sample std (ddof=1) over seeds
    std_ddof: Literal[1] = STD_DDOF
    code_version: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z._-]{1,32}$")]  # package version
    packages: dict[Annotated[str, StringConstraints(max_length=64)], str | None] = Field(max_length=64)
    hardware: list[Hardware] = Field(min_length=1, max_length=16)
    date: AwareDatetime
    submitter: Text
    url: str | None = Field(None, max_length=500)

    @field_validator("url")
    @classmethod
    def _http_only(cls, url: str | None) -> str | None:
        if url is None:
            return url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"only http(s) URLs with a host are allowed (got scheme {parts.scheme!r})")
        if any(c.isspace() or not c.isprintable() for c in url):  # isprintable: no RLO, NUL, ESC
            raise ValueError("URL contains whitespace, control or bidirectional characters")
        return url

    @field_validator("date")
    @classmethod
    def _not_in_future(cls, date: datetime) -> datetime:
        if date > datetime.now(UTC) + timedelta(days=1):
            raise ValueError(f"date {date.isoformat()} is in the future")
        return date

    @property
    def metric_names(self) -> list[str]:
        return list(self.seeds[0].metrics)

    def primary(self) -> str:
        return METRICS[self.task][0]


class KnownSplit(Schema):
    dataset: Name
    config: Text  # what this configuration is, for people (e.g. "synthetic classification defaults")
    params_hash: Hex16
    task: TaskKind
    fingerprint: SplitFingerprint | None = None
    fingerprints: dict[int, SplitFingerprint] = {}  # per seed, where the seed draws the data

    @model_validator(mode="after")
    def _one_kind(self) -> KnownSplit:
        if (self.fingerprint is None) == (not self.fingerprints):
            raise ValueError("a known split has either `fingerprint` or per-seed `fingerprints`")
        return self

    @property
    def page_key(self) -> str:
        """What the page looks its configuration up by (``page_key`` of an entry)."""
        return self.fingerprint or f"{self.dataset}/{self.params_hash}"


def page_key(e: Entry) -> str:
    return e.data_fingerprint if e.data_fingerprint != PER_SEED else f"{e.dataset}/{e.dataset_params_hash}"


class FingerprintFile(Schema):
    version: Literal[1]
    splits: list[KnownSplit]


# --- hashes (must match the runner's; tests compare them with RunSpec.run_id) -------------------------
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def params_hash(dataset_params: dict[str, Any]) -> str:
    """16-hex hash of a dataset's canonical params: the key of ``benchmarks/fingerprints.yaml``."""
    return hashlib.sha256(_canonical(dataset_params).encode()).hexdigest()[:16]


def spec_hash(spec: dict[str, Any]) -> str:
    """16-hex hash of the run spec shared by an entry's seeds (no ``seed`` in it)."""
    return hashlib.sha256(_canonical(spec).encode()).hexdigest()[:16]


def expected_run_id(spec: dict[str, Any], seed: int, data_fingerprint: str, version: str) -> str:
    # RunSpec.run_id: hash of the canonical spec, the data fingerprint and the package version.
    # Restated here so that checking an entry needs no registry (a test compares the two).
    blob = {"spec": {**spec, "seed": seed}, "data": data_fingerprint, "version": version}
    return hashlib.sha256(_canonical(blob).encode()).hexdigest()[:16]


# --- validation ----------------------------------------------------------------------------------------
def _format(e: ValidationError) -> list[str]:
    out = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "<entry>"
        msg = "required field is missing" if err["type"] == "missing" else err["msg"]
        msg = "unknown field" if err["type"] == "extra_forbidden" else msg
        inp = err.get("input")
        shown = f" (got {inp!r:.60})" if err["type"] not in ("missing", "extra_forbidden") and not isinstance(
            inp, dict | list) else ""  # fmt: skip
        out.append(f"{loc}: {msg}{shown}")
    return out


def load_fingerprints(path: Path | str | None = None) -> dict[tuple[str, str], KnownSplit]:
    """Known split fingerprints by ``(dataset, params_hash)`` (default: ``benchmarks/fingerprints.yaml``)."""
    path = Path(path or FINGERPRINTS)
    if not path.is_file():
        raise LeaderboardError(f"{path}: fingerprint registry not found")
    try:
        doc = FingerprintFile.model_validate(load_yaml_file(path))
    except (DocumentError, ValidationError) as e:
        raise LeaderboardError(f"{path}: invalid fingerprint registry: {e}") from None
    return {(s.dataset, s.params_hash): s for s in doc.splits}


def metric_problems(task: str, name: str, value: float) -> list[str]:
    """Why ``name = value`` cannot be a test metric of ``task`` (empty when it can)."""
    if name not in METRICS[task] and not (task == "segmentation" and DICE.match(name)):
        return [f"unknown metric {name!r} for a {task} task (known: {', '.join(METRICS[task])}"
                + (", dice_<region>)" if task == "segmentation" else ")")]  # fmt: skip
    lo, hi = metric_facts(name).range
    if not lo <= value <= hi:
        return [f"{name} = {value!r} is outside [{lo:g}, {hi:g}]"]
    return []


# The checks a schema cannot express; each returns ``field: rule`` lines (empty when the entry passes).
Known = dict[tuple[str, str], KnownSplit]


def hashes_rule(e: Entry, known: Known) -> list[str]:
    """Hashes recomputed; the spec that ran is the one whose method and dataset the page shows."""
    bad = []
    if params_hash(e.dataset_params) != e.dataset_params_hash:
        bad.append(f"dataset_params_hash: {e.dataset_params_hash} is not the hash of dataset_params "
                   f"({params_hash(e.dataset_params)})")  # fmt: skip
    for field in ("method", "method_params", "dataset", "dataset_params"):
        if e.spec.get(field) != getattr(e, field):
            bad.append(
                f"spec.{field}: {e.spec.get(field)!r:.80} differs from {field} {getattr(e, field)!r:.80}"
            )
    if "seed" in e.spec:
        bad.append("spec.seed: the shared spec must not hold a seed (each seed is in seeds[])")
    if spec_hash(e.spec) != e.spec_hash:
        bad.append(f"spec_hash: {e.spec_hash} is not the hash of spec ({spec_hash(e.spec)})")
    return bad


def data_rule(e: Entry, known: Known) -> list[str]:
    """The split fingerprint is the suite's known one for this dataset configuration."""
    split = known.get((e.dataset, e.dataset_params_hash))
    if split is None:
        return [
            f"data_fingerprint: no known split for dataset {e.dataset!r} with dataset_params_hash "
            f"{e.dataset_params_hash} (the suite's configurations are in benchmarks/fingerprints.yaml)"
        ]
    if split.fingerprints:  # the seed draws the data: each seed's own fingerprint
        if e.data_fingerprint != PER_SEED:
            return [f"data_fingerprint: {split.config} draws its data from the seed; expected {PER_SEED!r} "
                    "and each seed's own fingerprint in seeds[]"]  # fmt: skip
        bad = []
        for i, s in enumerate(e.seeds):
            want = split.fingerprints.get(s.seed)
            if want is None:
                bad.append(f"seeds[{i}].seed: {s.seed} has no registered data draw for {split.config} "
                           f"(seeds {min(split.fingerprints)}-{max(split.fingerprints)})")  # fmt: skip
            elif s.data_fingerprint != want:
                bad.append(f"seeds[{i}].data_fingerprint: {s.data_fingerprint} differs from the known "
                           f"fingerprint {want} of seed {s.seed} for {split.config}")  # fmt: skip
        return bad
    if split.fingerprint != e.data_fingerprint:
        return [
            f"data_fingerprint: {e.data_fingerprint} differs from the suite's known fingerprint "
            f"{split.fingerprint} for {split.config}"
        ]
    if split.task != e.task:
        return [f"task: {e.task!r} but {split.config} is a {split.task} task"]
    return []


def seeds_rule(e: Entry, known: Known) -> list[str]:
    """Enough distinct seeds, each a finished run of this very spec (its run id recomputed)."""
    bad = []
    seeds = [s.seed for s in e.seeds]
    if len(set(seeds)) < MIN_SEEDS:
        bad.append(
            f"seeds: {len(set(seeds))} distinct seed(s) {sorted(set(seeds))}, need at least {MIN_SEEDS}"
        )
    if len(seeds) != len(set(seeds)):
        bad.append(f"seeds: a seed appears more than once ({seeds})")
    for i, s in enumerate(e.seeds):
        if e.spec.get("epochs") is not None and s.epochs != e.spec["epochs"]:
            bad.append(
                f"seeds[{i}].epochs: {s.epochs} but the spec trains {e.spec['epochs']} (unfinished run?)"
            )
        if s.best_epoch >= s.epochs:
            bad.append(f"seeds[{i}].best_epoch: {s.best_epoch} is not below epochs ({s.epochs})")
        if s.code_version.split("+")[0] != e.code_version:
            bad.append(
                f"seeds[{i}].code_version: {s.code_version} is not of package version {e.code_version}"
            )
        data = s.data_fingerprint if e.data_fingerprint == PER_SEED else e.data_fingerprint
        rid = expected_run_id(e.spec, s.seed, data or "", e.code_version)
        if s.run_id != rid:
            bad.append(f"seeds[{i}].run_id: {s.run_id} is not the run id of this spec, seed {s.seed}, "
                       f"data and code version ({rid})")  # fmt: skip
    return bad


def metrics_rule(e: Entry, known: Known) -> list[str]:
    """The task's metric names, in range, the same in every seed, in percent."""
    bad = []
    names = set(e.metric_names)
    if e.primary() not in names:
        bad.append(f"seeds[0].metrics: the task's primary metric {e.primary()!r} is missing")
    for i, s in enumerate(e.seeds):
        if set(s.metrics) != names:
            bad.append(
                f"seeds[{i}].metrics: metric names {sorted(s.metrics)} differ from seeds[0] {sorted(names)}"
            )
        bad += [
            f"seeds[{i}].metrics.{k}: {p}"
            for k, v in s.metrics.items()
            for p in metric_problems(e.task, k, v)
        ]
    percents = [v for s in e.seeds for k, v in s.metrics.items() if metric_facts(k).percent]
    if percents and max(percents) <= 1.0:
        bad.append(
            "seeds[].metrics: every percentage is <= 1; the suite records percent (0-100), not fractions"
        )
    return bad


def summary_rule(e: Entry, known: Known) -> list[str]:
    """Mean and sample std (ddof=1) recomputed from the per-seed values."""
    bad, names = [], set(e.metric_names)
    if set(e.summary) != names:
        bad.append(f"summary: metrics {sorted(e.summary)} differ from the seeds' {sorted(names)}")
    for k in sorted(names & set(e.summary)):
        values = [s.metrics[k] for s in e.seeds if k in s.metrics]
        want = summarize(values)
        for stat in ("mean", "std"):
            got, ref = getattr(e.summary[k], stat), getattr(want, stat)
            if not math.isclose(got, ref, rel_tol=1e-9, abs_tol=1e-9):
                bad.append(f"summary.{k}.{stat}: {got!r} but the seeds give {ref!r}"
                           + (" (sample std, ddof=1)" if stat == "std" else ""))  # fmt: skip
    return bad


def modality_rule(e: Entry, known: Known) -> list[str]:
    """Every seed or none carries modality numbers, over the same modalities, with the primary metric's range."""
    have = [s.modality is not None for s in e.seeds]
    if not any(have):
        return []
    if not all(have):
        return [f"seeds[{have.index(False)}].modality: missing while other seeds have it"]
    bad, names = [], set(e.seeds[0].modality.shapley)
    for i, s in enumerate(e.seeds):
        if set(s.modality.shapley) != names:
            bad.append(
                f"seeds[{i}].modality.shapley: modalities {sorted(s.modality.shapley)} differ from seeds[0]"
            )
        if s.modality.worst_missing is not None:
            bad += [f"seeds[{i}].modality.worst_missing: {p}"
                    for p in metric_problems(e.task, e.primary(), s.modality.worst_missing)]  # fmt: skip
    return bad


def _unprintable(value: Any, where: str) -> list[str]:
    """``where`` of every string (key or value) in ``value`` with a character that is not printable:
    control characters (NUL, ESC, newlines that break a Markdown row) and bidirectional or other
    format characters (RLO reorders what the page shows)."""
    if isinstance(value, str):
        return (
            []
            if value.isprintable()
            else [f"{where}: {value!r:.60} has a control or bidirectional character"]
        )
    if isinstance(value, dict):
        return [
            p
            for k, v in value.items()
            for p in _unprintable(k, f"{where} key") + _unprintable(v, f"{where}.{k}")
        ]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _unprintable(v, f"{where}[{i}]")]
    return []


def text_rule(e: Entry, known: Known) -> list[str]:
    """Parameters and package names are shown on the page: printable characters only."""
    return [
        p
        for f in ("method_params", "dataset_params", "spec", "packages")
        for p in _unprintable(getattr(e, f), f)
    ]


def spec_rule(e: Entry, known: Known) -> list[str]:
    """The spec is one ``run`` accepts and would record as it is (bounds, names, every field present;
    the seeds share it and their range is the schema's). Method and dataset parameter models need their
    code (torch) and are applied by ``verify``; here those params are bounded like every number."""
    return check_spec_light({**e.spec, "seed": e.seeds[0].seed}, "spec")


def protocol_rule(e: Entry, known: Known) -> list[str]:
    """Test numbers at the validation-selected epoch (never the best test or validation score over epochs)."""
    if not e.selection.startswith(SELECTION):
        return [f"selection: {e.selection!r} is not the board's protocol ({SELECTION!r}, from final.json)"]
    return []


RULES = (hashes_rule, data_rule, seeds_rule, metrics_rule, summary_rule, modality_rule, protocol_rule,
         text_rule, spec_rule)  # fmt: skip


def summarize(values: Sequence[float]) -> Stat:
    """Mean and sample std (ddof=1; 0 for a single value) of per-seed values."""
    return Stat(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0)


def validate_entry(data: Any, known: dict[tuple[str, str], KnownSplit], source: str = "<entry>") -> Entry:
    """Schema and rules; raises ``EntryError`` listing every problem."""
    if not isinstance(data, dict):
        raise EntryError(source, [f"<entry>: expected a JSON object, got {type(data).__name__}"])
    try:
        entry = Entry.model_validate(data)
    except ValidationError as err:
        raise EntryError(source, _format(err)) from None
    problems = [p for rule in RULES for p in rule(entry, known)]
    if problems:
        raise EntryError(source, problems)
    return entry


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number in JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"duplicate key(s) {dup}")  # a second "mean" must not silently win
    return dict(pairs)


def read_entry(path: Path | str) -> Any:
    """The JSON of an entry file, after the size limit; ``EntryError`` on anything else."""
    path = Path(path)
    if not path.is_file():
        raise EntryError(str(path), ["<file>: no such file"])
    size = path.stat().st_size
    if size > MAX_ENTRY_BYTES:
        raise EntryError(
            str(path), [f"<file>: {size} bytes exceeds the size limit of {MAX_ENTRY_BYTES} bytes"]
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise EntryError(str(path), [f"<file>: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    try:  # depth bounded: an entry nested 30,000 deep once crashed `leaderboard build`
        return parse_json(text, "<file>", parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except DocumentError as e:
        raise EntryError(str(path), [str(e)]) from None
    except ValueError as e:
        raise EntryError(str(path), [f"<file>: not valid JSON: {e}"]) from None


def duplicate_problems(entry: Entry, others: dict[str, Entry]) -> list[str]:
    """Why ``entry`` repeats one of ``others`` (same spec and seeds on the same data, or a shared run)."""
    bad = []
    key = (entry.spec_hash, entry.data_fingerprint, frozenset(s.seed for s in entry.seeds))
    runs = {s.run_id for s in entry.seeds}
    for name, other in others.items():
        if key == (other.spec_hash, other.data_fingerprint, frozenset(s.seed for s in other.seeds)):
            bad.append(f"<entry>: duplicate of {name} (same spec_hash, data and seeds)")
        elif shared := sorted(runs & {s.run_id for s in other.seeds}):
            bad.append(f"seeds[].run_id: run(s) {', '.join(shared)} already in {name}")
    return bad


def load_entries(
    entries: Path, known: dict[tuple[str, str], KnownSplit]
) -> tuple[dict[str, Entry], list[str]]:
    """Every entry under ``entries`` that validates on its own, and the errors of the others."""
    good: dict[str, Entry] = {}
    errors: list[str] = []
    for path in sorted(entries.glob("*.json")) if entries.is_dir() else []:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.json", path.name):
            errors.append(
                str(EntryError(str(path), ["<file>: name must be letters, digits, '.', '_' or '-'"]))
            )
            continue
        try:
            entry = validate_entry(read_entry(path), known, str(path))
        except EntryError as e:
            errors.append(str(e))
            continue
        if dup := duplicate_problems(entry, good):
            errors.append(str(EntryError(str(path), dup)))
            continue
        good[path.name] = entry
    return good, errors


def check(
    path: Path | str, results: Path | str | None = None, fingerprints: Path | str | None = None
) -> Entry:
    """Validate one entry file (for a pull request): schema, rules, and no duplicate of the
    entries already under ``results/leaderboard/entries`` (the file itself excluded)."""
    path = Path(path)
    known = load_fingerprints(fingerprints)
    entry = validate_entry(read_entry(path), known, str(path))
    if results is not None:
        others, _ = load_entries(Path(results) / ENTRIES, known)
        others = {
            n: e for n, e in others.items() if (Path(results) / ENTRIES / n).resolve() != path.resolve()
        }
        if dup := duplicate_problems(entry, others):
            raise EntryError(str(path), dup)
    return entry


# --- submit --------------------------------------------------------------------------------------------
SHARED_SKIP = ("seed", *RECORD_ONLY)  # spec.yaml keys that are not the shared spec


def _runs_problems(runs: list[RunDir]) -> list[str]:
    bad = []
    for r in runs:
        if not r.file("spec.yaml").is_file():
            bad.append(f"{r.path}: not a run directory (no spec.yaml)")
        elif r.status() != "done":
            bad.append(f"{r.path}: status is {r.status()!r}; only finished runs can be submitted")
        elif not r.file("final.json").is_file() or not r.file("env.json").is_file():
            bad.append(f"{r.path}: final.json or env.json is missing")
        else:
            bad += _record_problems(r)
    return bad


# What make_entry reads of each record, with the type it needs: a damaged or forged record is named.
RECORD_FIELDS = {"spec.yaml": {"seed": int, "run_id": str, "data_fingerprint": str, "method": str,
                               "dataset": str, "method_params": dict, "dataset_params": dict},
                 "env.json": {"code_version": str, "packages": dict}}  # fmt: skip


def _record_problems(r: RunDir) -> list[str]:
    try:
        docs = {"spec.yaml": r.spec(), "env.json": r.env()}
        task = r.final()["task"]  # its shape is checked on reading
    except DamagedRecordError as e:
        return [str(e)]
    if task not in METRICS:
        return [f"{r.file('final.json')}: task {task!r:.40} is not one of {', '.join(METRICS)}"]
    return [f"{r.file(name)}: {key!r} is missing or not of type {kind.__name__}"
            for name, fields in RECORD_FIELDS.items() for key, kind in fields.items()
            if not isinstance(docs[name].get(key), kind) or isinstance(docs[name].get(key), bool)]  # fmt: skip


def _differences(docs: list[dict[str, Any]], runs: list[RunDir], keys: Iterable[str]) -> list[str]:
    bad = []
    for k in keys:
        values = [_canonical(d.get(k)) for d in docs]
        if len(set(values)) > 1:
            groups: dict[str, list[str]] = {}
            for v, r in zip(values, runs, strict=True):
                groups.setdefault(v, []).append(r.run_id)
            listed = "; ".join(f"{v[:60]} in {', '.join(ids)}" for v, ids in groups.items())
            bad.append(f"runs differ in {k}: {listed}")
    return bad


def modality_numbers(final: dict[str, Any]) -> dict[str, Any]:
    """``{"modality": {...}}`` from a run's ``modality_eval`` record, or ``{}`` if it has none."""
    rec = final.get("modality_eval")
    keys = ("shapley", "imbalance_degree", "equity", "worst_missing")
    if not isinstance(rec, dict) or "error" in rec or not all(k in rec for k in keys):
        return {}  # without it, modality_rule names the seed that lacks its numbers
    return {"modality": {k: rec[k] for k in keys}}


def make_entry(run_dirs: Sequence[Path | str], name: str, url: str | None = None,
               date: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    """The entry (as a JSON-ready dict) of finished runs of one spec that differ only in the seed."""
    runs = [RunDir(Path(p)) for p in run_dirs]
    if not runs:
        raise LeaderboardError("submit: no run directories given")
    if bad := _runs_problems(runs):
        raise LeaderboardError("cannot submit:\n" + "\n".join(f"  {b}" for b in bad))
    specs, finals, envs = [r.spec() for r in runs], [r.final() for r in runs], [r.env() for r in runs]
    # Method and dataset first: they are the usual mistake and deserve their own line.
    keys = ["method", "dataset"] + sorted({k for s in specs for k in s} - {"method", "dataset", *SHARED_SKIP})
    per_seed = seed_draws_data(specs[0])  # each seed its own data: no shared fingerprint to check
    bad = _differences(specs, runs, keys + ([] if per_seed else ["data_fingerprint"]))
    bad += _differences(
        [{"version": e["code_version"].split("+")[0], **e} for e in envs], runs, ["version", "packages"]
    )  # the commit may differ between seeds; it is kept per seed
    bad += _differences(finals, runs, ["protocol", "task"])
    seeds = [s["seed"] for s in specs]
    if len(set(seeds)) != len(seeds):
        bad.append(f"two runs share a seed: {seeds}")
    if len(set(seeds)) < MIN_SEEDS:
        bad.append(
            f"{len(set(seeds))} distinct seed(s) {sorted(set(seeds))}; an entry needs at least {MIN_SEEDS}"
        )
    if bad:
        raise LeaderboardError("cannot submit:\n" + "\n".join(f"  {b}" for b in bad))

    shared = {k: v for k, v in specs[0].items() if k not in SHARED_SKIP}
    task = finals[0]["task"]
    seed_runs = []
    for s, f, env in sorted(zip(specs, finals, envs, strict=True), key=lambda t: t[0]["seed"]):
        metrics = {k: float(v) for k, v in f["test"].items()
                   if (k in METRICS[task] or DICE.match(k)) and isinstance(v, int | float)}  # fmt: skip
        seed_runs.append({"seed": s["seed"], "run_id": s["run_id"], "best_epoch": f["best_epoch"],
                          "epochs": f["epochs"], "code_version": env["code_version"],
                          "metrics": metrics, **modality_numbers(f),
                          **({"data_fingerprint": s["data_fingerprint"]} if per_seed else {})})  # fmt: skip
    names = seed_runs[0]["metrics"]
    summary = {k: summarize([sr["metrics"][k] for sr in seed_runs]).model_dump() for k in names}
    hardware = []
    for env in envs:
        hw = {k: str(env.get(k) or "") for k in ("device", "device_name", "platform", "python")}
        if hw not in hardware:
            hardware.append(hw)
    return {
        "schema_version": SCHEMA_VERSION,
        "method": shared["method"],
        "method_params": shared["method_params"],
        "dataset": shared["dataset"],
        "dataset_params": shared["dataset_params"],
        "dataset_params_hash": params_hash(shared["dataset_params"]),
        "task": task,
        "data_fingerprint": PER_SEED if per_seed else specs[0]["data_fingerprint"],
        "spec": shared,
        "spec_hash": spec_hash(shared),
        "selection": finals[0]["protocol"],
        "seeds": seed_runs,
        "summary": summary,
        "std_ddof": STD_DDOF,
        "code_version": envs[0]["code_version"].split("+")[0],
        "packages": envs[0]["packages"],
        "hardware": hardware,
        "date": (date or datetime.now(UTC)).isoformat(timespec="seconds"),
        "submitter": name,
        "url": url,
    }


def submit(run_dirs: Sequence[Path | str], name: str, out: Path | str, url: str | None = None,
           fingerprints: Path | str | None = None, date: datetime | None = None) -> Entry:  # fmt: skip
    """Pack finished runs into an entry, validate it exactly as ``check`` would, and write ``out``."""
    data = make_entry(run_dirs, name, url, date)
    entry = validate_entry(data, load_fingerprints(fingerprints), source=str(out))
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    if len(text.encode()) > MAX_ENTRY_BYTES:
        raise EntryError(str(out), [f"<file>: {len(text.encode())} bytes exceeds the size limit"])
    atomic_write_text(Path(out), text)
    return entry
