"""The fast CLI: the light commands import no torch, and the lazy registries list what the classes say."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmbalance.common.registry import DATASETS, METHODS, Registry, RegistryError
from mmbalance.training.data import DatasetAdapter
from mmbalance.training.method import Method

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "monai", "transformers", "matplotlib", "torchvision", "sklearn")


def _imported_after(commands: list[list[str]], cwd: Path) -> dict[str, list[str]]:
    """Run each CLI command in one fresh interpreter; the heavy packages imported after each."""
    code = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from mmbalance.cli import main
        out = {{}}
        for argv in {commands!r}:
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(argv)
                except SystemExit:
                    pass
            out[" ".join(argv)] = sorted(m for m in {HEAVY!r} if m in sys.modules)
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def test_light_commands_import_neither_torch_nor_monai(tmp_path):
    entry = ROOT / "results" / "leaderboard" / "entries" / "synthetic-classification-joint.json"
    commands = [["--help"], ["run", "--help"], ["methods"], ["status", str(tmp_path)],
                ["leaderboard", "check", str(entry), "--results", str(ROOT / "results")]]  # fmt: skip
    imported = _imported_after(commands, ROOT)
    assert imported == {" ".join(c): [] for c in commands}


def test_datasets_listing_imports_torch_only(tmp_path):
    imported = _imported_after([["datasets", "--data-root", str(tmp_path)]], ROOT)
    assert not {"monai", "transformers", "matplotlib", "sklearn", "torchvision"} & set(imported.popitem()[1])


def test_get_imports_only_the_file_it_needs():
    code = "import sys; from mmbalance.common.registry import METHODS; METHODS.get('pmr'); " \
           "print(sorted(m for m in sys.modules if m.startswith('mmbalance.methods.')))"  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["['mmbalance.methods.pmr']"]


@pytest.mark.parametrize(("registry", "base"), [(METHODS, Method), (DATASETS, DatasetAdapter)])
def test_listing_matches_the_classes(registry, base):
    listing = registry.listing()
    assert len(listing) >= 5
    assert {k: getattr(base, k) for k in registry.listed} == registry.listed  # the base class defaults
    for row in listing:
        cls = registry.get(row["name"])
        assert row == {"name": cls.name, **{k: getattr(cls, k) for k in registry.listed}}, row["name"]
    # Importing every file registers exactly the indexed names: no class the source scan misses.
    folder = Path(importlib.import_module(registry.package).__path__[0])
    for info in pkgutil.iter_modules([str(folder)]):
        if not info.name.startswith("_"):  # helpers and the contributors' template: never listed
            importlib.import_module(f"{registry.package}.{info.name}")
    assert sorted(registry._entries) == sorted(registry._index)


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (tmp_path / "fakereg.py").write_text(
        "from mmbalance.common.registry import Registry\nFAKE = Registry('thing', 'fakepkg', 'FAKE', {'size': 1})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for m in [m for m in sys.modules if m.startswith(("fakepkg", "fakereg"))]:
        del sys.modules[m]


def test_a_new_file_is_a_new_name(fake_package):
    (fake_package / "_base.py").write_text("class Base:\n    size = 3\n")
    (fake_package / "alpha.py").write_text(
        "from fakereg import FAKE\nfrom fakepkg._base import Base\n\n"
        "@FAKE.register\nclass Alpha(Base):\n    name = 'alpha'\n\n"
        "class Helper:\n    name = 'not registered'\n"
    )
    (fake_package / "beta.py").write_text(
        "from fakereg import FAKE\n\n@FAKE.register\nclass Beta:\n    name = 'beta'\n    size = 7\n"
    )
    from fakereg import FAKE

    assert FAKE.names() == ["alpha", "beta"]
    assert FAKE.listing() == [{"name": "alpha", "size": 3}, {"name": "beta", "size": 7}]  # Base's size, own
    assert "fakepkg.alpha" not in sys.modules
    assert FAKE.get("alpha").__name__ == "Alpha" and "fakepkg.beta" not in sys.modules
    with pytest.raises(KeyError, match="unknown thing 'gamma'; valid choices: alpha, beta"):
        FAKE.get("gamma")


def test_a_computed_listed_attribute_is_refused_with_its_line(fake_package):
    (fake_package / "gamma.py").write_text(
        "from fakereg import FAKE\n\n@FAKE.register\nclass Gamma:\n    name = 'gamma'\n    size = 2 * 3\n"
    )
    fake = Registry("thing", "fakepkg", "FAKE", {"size": 1})
    with pytest.raises(RegistryError, match=r"gamma.py:6: Gamma.size must be a literal"):
        fake.names()
