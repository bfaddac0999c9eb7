"""Run readers in a child process whose address space is capped a little above what it has mapped after
its imports, so a reader that allocates for a hostile header's claim fails there instead of taking the
machine: for each case the child reports the reader's one-line ``DataError``, a ``MemoryError``, or ok."""

from __future__ import annotations

import json
import subprocess
import sys

HEADROOM_MB = 512  # more than any reader needs for the small files of the tests

_PRELUDE = """
import json, resource
from mmbalance.common.core import DataError
{imports}
vm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize:')) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + {headroom} * 2**20,) * 2)
results = {{}}
for label, call in {cases}.items():
    try:
        eval(call)
        results[label] = {{"outcome": "ok"}}
    except DataError as e:
        results[label] = {{"outcome": "DataError", "message": str(e)}}
    except MemoryError as e:
        results[label] = {{"outcome": "MemoryError", "message": repr(e)}}
print(json.dumps(results))
"""


def run_bounded(imports: str, cases: dict[str, str], headroom_mb: int = HEADROOM_MB) -> dict[str, dict]:
    """``{label: {"outcome": "ok" | "DataError" | "MemoryError", "message": ...}}``: each case is a Python
    expression evaluated after ``imports`` with the address space capped at what is mapped + headroom."""
    code = _PRELUDE.format(imports=imports, headroom=headroom_mb, cases=repr(cases))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
