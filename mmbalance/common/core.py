"""The light core: what the CLI, the spec and the registries need, without torch.

``mmbalance --help``, ``methods``, ``status`` and ``leaderboard check`` import only this, the
registry, the spec and the records, so they start in well under a second; torch, MONAI,
transformers and matplotlib are imported by the modules that use them (``data``, ``method``,
``runner``, ``figures``). ``mmbalance.training.data`` and ``mmbalance.training.method`` re-export these names, so a
method or dataset file imports them from there as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

DATA_ROOT_ENV = "MMBALANCE_DATA"
ALL_TASKS = frozenset({"classification", "regression", "segmentation"})
# Written by every ``mmbalance.fixtures`` writer into the dataset folder: runs on those tiny files record
# ``data_fixture: true`` in spec.yaml, and reports label them and never rank them.
FIXTURE_MARK = "MMBALANCE_FIXTURE"


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown keys (so typos in a spec are errors) and infinite or NaN
    floats (``1.0e+400`` parses as infinity)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# A name that becomes a file name (a suite's tables, a paper table's): one safe path component, so
# `name: ../../x` cannot write outside the output folder.
FileName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class NoParams(StrictModel):
    pass


class DataError(ValueError):
    """Bad or missing data. The message names the file and what was expected."""


class DataMissingError(DataError):
    """The dataset's files are not where the adapter looks."""


class DeviceError(ValueError):
    """A ``--device`` that is not a device, or names a GPU this machine does not have."""


class MethodNotApplicable(ValueError):
    """The method cannot run on this task (kind, number of modalities, model shape); says why."""


def default_data_root() -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV, "data"))
