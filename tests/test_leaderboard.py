"""Leaderboard: entries from real runs validate and show on the page; forged or malformed ones are refused."""

from __future__ import annotations

import copy
import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import small_spec

from mmbalance.common.records import RunDir
from mmbalance.leaderboard import leaderboard as lb
from mmbalance.leaderboard.leaderboard_page import SORT_SCRIPT, build, render_html, render_markdown, tracks
from mmbalance.training.runner import data_fingerprint, make_adapter, train

REPO = Path(__file__).resolve().parent.parent


# --- fixtures: three seeds of joint training, one unimodal run, and a fingerprint registry -----------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lb")
    results = root / "results"
    joint = [train(small_spec(method="joint", seed=s), results, progress=False).path for s in (0, 1, 2)]
    uni = train(
        small_spec(method="unimodal", method_params={"modality": "m0"}, seed=3), results, progress=False
    )
    spec = small_spec()
    # The synthetic data is drawn by the run seed: the registry knows each seed's draw.
    split = {"dataset": "synthetic", "config": "synthetic classification (test)", "task": "classification",
             "params_hash": lb.params_hash(spec.dataset_params),
             "fingerprints": {s: data_fingerprint(make_adapter(small_spec(seed=s))) for s in range(5)}}  # fmt: skip
    fingerprints = root / "fingerprints.yaml"
    fingerprints.write_text(yaml.safe_dump({"version": 1, "splits": [split]}))
    return {"joint": joint, "unimodal": uni.path, "fingerprints": fingerprints, "root": root}


@pytest.fixture
def entry(runs) -> dict:
    return lb.make_entry(runs["joint"], "Test Team", url="https://example.org/paper")


def problems(data, runs, tmp_path, name="entry.json", raw: bytes | None = None) -> str:
    """The rejection message of ``data`` written as an entry file (fails the test if it is accepted)."""
    path = tmp_path / name
    path.write_bytes(raw if raw is not None else json.dumps(data).encode())
    with pytest.raises(lb.EntryError) as err:
        lb.check(path, fingerprints=runs["fingerprints"])
    return str(err.value)


def reseal(data: dict) -> dict:
    """Recompute every derived field, as a careful forger would (hashes, run ids, summary)."""
    data["spec"] = {**data["spec"], "method": data["method"], "method_params": data["method_params"]}
    data["spec_hash"] = lb.spec_hash(data["spec"])
    for s in data["seeds"]:
        s["run_id"] = lb.expected_run_id(
            data["spec"],
            s["seed"],
            s.get("data_fingerprint") or data["data_fingerprint"],
            data["code_version"],
        )
    names = data["seeds"][0]["metrics"]
    data["summary"] = {k: lb.summarize([s["metrics"][k] for s in data["seeds"]]).model_dump() for k in names}
    return data


# --- a real entry ---------------------------------------------------------------------------------------
def test_entry_from_runs_validates_and_appears_on_the_page(runs, tmp_path):
    results = tmp_path / "results"
    out = results / "leaderboard" / "entries" / "joint-synthetic.json"
    entry = lb.submit(
        runs["joint"], "Test Team", out, url="https://example.org/paper", fingerprints=runs["fingerprints"]
    )
    assert [s.seed for s in entry.seeds] == [0, 1, 2]
    finals = [RunDir(p).final()["test"]["accuracy"] for p in runs["joint"]]
    assert entry.summary["accuracy"].mean == pytest.approx(statistics.mean(finals))
    assert entry.summary["accuracy"].std == pytest.approx(statistics.stdev(finals))  # ddof=1
    assert lb.check(out, results=results, fingerprints=runs["fingerprints"]).spec_hash == entry.spec_hash

    built = build(results, fingerprints=runs["fingerprints"])
    html, md = built.html.read_text(), built.markdown.read_text()
    cell = f"{entry.summary['accuracy'].mean:.2f} ± {entry.summary['accuracy'].std:.2f}"
    for page in (html, md):
        assert cell in page and "Test Team" in page and "entries/joint-synthetic.json" in page
    assert "<strong>joint</strong>" in html and "synthetic classification (test)" in html
    assert 'href="https://example.org/paper"' in html


def test_run_id_formula_matches_the_runner(runs):
    for path in runs["joint"]:
        doc = RunDir(path).spec()
        spec = {k: v for k, v in doc.items() if k not in ("seed", "run_id", "data_fingerprint")}
        version = RunDir(path).env()["code_version"].split("+")[0]
        assert lb.expected_run_id(spec, doc["seed"], doc["data_fingerprint"], version) == doc["run_id"]


# --- submit refuses what is not one spec over >= 3 seeds ------------------------------------------------
def test_submit_refuses_mixed_methods(runs):
    with pytest.raises(lb.LeaderboardError, match=r"runs differ in method: \"joint\" in .*\"unimodal\""):
        lb.make_entry([*runs["joint"][:2], runs["unimodal"]], "x")


def test_submit_refuses_too_few_seeds_and_repeated_runs(runs):
    with pytest.raises(lb.LeaderboardError, match="2 distinct seed.*needs at least 3"):
        lb.make_entry(runs["joint"][:2], "x")
    with pytest.raises(lb.LeaderboardError, match="two runs share a seed"):
        lb.make_entry([*runs["joint"], runs["joint"][0]], "x")


def test_submit_refuses_unfinished_runs_and_other_folders(runs, tmp_path):
    copy_dir = tmp_path / "runs" / RunDir(runs["joint"][2]).run_id
    shutil.copytree(runs["joint"][2], copy_dir)
    RunDir(copy_dir).set_status("running")
    with pytest.raises(lb.LeaderboardError, match="status is 'running'; only finished runs"):
        lb.make_entry([*runs["joint"][:2], copy_dir], "x")
    with pytest.raises(lb.LeaderboardError, match="not a run directory"):
        lb.make_entry([*runs["joint"][:2], tmp_path], "x")


def test_submit_refuses_runs_whose_specs_differ(runs, tmp_path):
    copy_dir = tmp_path / "other"
    shutil.copytree(runs["joint"][2], copy_dir)
    doc = yaml.safe_load((copy_dir / "spec.yaml").read_text())
    doc["optim"]["lr"] = 0.5
    (copy_dir / "spec.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(lb.LeaderboardError, match="runs differ in optim"):
        lb.make_entry([*runs["joint"][:2], copy_dir], "x")


# --- forged and malformed entries ----------------------------------------------------------------
def test_wrong_mean_and_population_std_are_refused(entry, runs, tmp_path):
    bad = copy.deepcopy(entry)
    bad["summary"]["accuracy"]["mean"] += 1.0
    assert "summary.accuracy.mean" in problems(bad, runs, tmp_path)
    values = [s["metrics"]["f1_macro"] for s in entry["seeds"]]
    bad = copy.deepcopy(entry)
    bad["summary"]["f1_macro"]["std"] = statistics.pstdev(values)  # ddof=0: not what the board reports
    msg = problems(bad, runs, tmp_path)
    assert "summary.f1_macro.std" in msg and "ddof=1" in msg


def test_too_few_seeds_is_refused_even_when_consistent(entry, runs, tmp_path):
    bad = copy.deepcopy(entry)
    bad["seeds"] = bad["seeds"][:2]
    assert "seeds: 2 distinct seed(s) [0, 1], need at least 3" in problems(reseal(bad), runs, tmp_path)
    bad = copy.deepcopy(entry)
    bad["seeds"][2] = {**bad["seeds"][1]}
    assert "a seed appears more than once" in problems(reseal(bad), runs, tmp_path)


@pytest.mark.parametrize(("metric", "value", "rule"), [
    ("accuracy", 120.0, "accuracy = 120.0 is outside [0, 100]"),
    ("f1_macro", -3.0, "f1_macro = -3.0 is outside [0, 100]"),
])  # fmt: skip
def test_out_of_range_values_are_refused(entry, runs, tmp_path, metric, value, rule):
    bad = copy.deepcopy(entry)
    bad["seeds"][1]["metrics"][metric] = value
    assert f"seeds[1].metrics.{metric}: {rule}" in problems(reseal(bad), runs, tmp_path)


def test_metric_ranges_per_kind():
    assert lb.metric_problems("regression", "mae", 0.7) == []
    assert "outside [0, inf]" in lb.metric_problems("regression", "mae", -0.1)[0]
    assert "outside [-1, 1]" in lb.metric_problems("regression", "corr", 1.2)[0]
    assert lb.metric_problems("segmentation", "dice_label1", 80.0) == []
    assert "outside [0, 100]" in lb.metric_problems("segmentation", "dice_mean", 101.0)[0]
    assert (
        "unknown metric 'accuracy' for a regression task"
        in lb.metric_problems("regression", "accuracy", 50)[0]
    )


def test_fractions_instead_of_percent_are_refused(entry, runs, tmp_path):
    bad = copy.deepcopy(entry)
    for s in bad["seeds"]:
        s["metrics"] = {k: v / 100 for k, v in s["metrics"].items()}
    assert "the suite records percent (0-100), not fractions" in problems(reseal(bad), runs, tmp_path)


def test_unknown_metric_is_refused(entry, runs, tmp_path):
    bad = copy.deepcopy(entry)
    for s in bad["seeds"]:
        s["metrics"]["auc"] = 90.0
    msg = problems(reseal(bad), runs, tmp_path)
    assert "seeds[0].metrics.auc: unknown metric 'auc' for a classification task" in msg


def test_wrong_or_unknown_fingerprint_is_refused(entry, runs, tmp_path):
    assert entry["data_fingerprint"] == lb.PER_SEED  # the seed draws the synthetic data
    bad = copy.deepcopy(entry)
    seed = bad["seeds"][1]
    seed["data_fingerprint"] = re.sub(r"test:[0-9a-f]{16}", "test:" + "0" * 16, seed["data_fingerprint"])
    msg = problems(reseal(bad), runs, tmp_path)
    assert f"seeds[1].data_fingerprint: {seed['data_fingerprint']} differs from the known fingerprint" in msg
    bad = copy.deepcopy(entry)  # one seed's data passed off as another's
    bad["seeds"][0]["data_fingerprint"] = bad["seeds"][1]["data_fingerprint"]
    assert "seeds[0].data_fingerprint" in problems(reseal(bad), runs, tmp_path)
    bad = copy.deepcopy(entry)
    bad["data_fingerprint"] = bad["seeds"][0].pop("data_fingerprint")  # a single fingerprint for all seeds
    assert "draws its data from the seed; expected 'per-seed'" in problems(reseal(bad), runs, tmp_path)
    bad = copy.deepcopy(entry)
    bad["seeds"][2]["seed"] = 7  # no registered draw
    assert "seeds[2].seed: 7 has no registered data draw" in problems(reseal(bad), runs, tmp_path)
    bad = copy.deepcopy(entry)
    bad["dataset_params"] = {**bad["dataset_params"], "n_test": 32}
    bad["spec"]["dataset_params"] = bad["dataset_params"]
    bad["dataset_params_hash"] = lb.params_hash(bad["dataset_params"])
    assert "data_fingerprint: no known split for dataset 'synthetic'" in problems(reseal(bad), runs, tmp_path)


def test_tampered_hashes_and_run_ids_are_refused(entry, runs, tmp_path):
    bad = copy.deepcopy(entry)
    bad["spec"]["optim"]["lr"] = 0.5  # hyper-parameter changed after the runs: hash and run ids no longer fit
    msg = problems(bad, runs, tmp_path)
    assert "spec_hash:" in msg and "seeds[0].run_id:" in msg
    bad = copy.deepcopy(entry)
    bad["method_params"] = {"alpha": 1.0}  # shown hyper-parameters differ from the spec that ran
    assert "spec.method_params:" in problems(bad, runs, tmp_path)
    bad = copy.deepcopy(entry)
    bad["seeds"][0]["epochs"] = 1  # an unfinished run passed off as finished
    assert "seeds[0].epochs: 1 but the spec trains 2" in problems(bad, runs, tmp_path)


def test_other_selection_protocol_is_refused(entry, runs, tmp_path):
    bad = copy.deepcopy(entry)
    bad["selection"] = "best validation score over epochs (CGGM code)"
    assert (
        "selection: 'best validation score over epochs (CGGM code)' is not the board's protocol"
        in problems(bad, runs, tmp_path)
    )


def test_missing_field_and_wrong_types_are_refused(entry, runs, tmp_path):
    bad = copy.deepcopy(entry)
    del bad["submitter"]
    assert "submitter: required field is missing" in problems(bad, runs, tmp_path)
    bad = copy.deepcopy(entry)
    bad["seeds"][0]["seed"] = "zero"
    bad["extra"] = 1
    msg = problems(bad, runs, tmp_path)
    assert "seeds.0.seed: Input should be a valid integer" in msg and "extra: unknown field" in msg
    assert "<entry>: expected a JSON object, got list" in problems([entry], runs, tmp_path)


def test_non_json_nan_duplicate_keys_and_oversized_files_are_refused(entry, runs, tmp_path):
    assert "<file>: not valid JSON: Expecting" in problems(None, runs, tmp_path, raw=b"{not json")
    nan = json.dumps(entry).replace('"mean": ', '"mean": NaN, "x": ', 1).encode()
    assert "NaN is not a number in JSON" in problems(None, runs, tmp_path, raw=nan)
    twice = json.dumps(entry)[:-1] + ', "submitter": "someone else"}'
    assert "duplicate key(s) ['submitter']" in problems(None, runs, tmp_path, raw=twice.encode())
    big = copy.deepcopy(entry)
    big["submitter"] = "x" * 20
    big["padding"] = "y" * lb.MAX_ENTRY_BYTES
    assert f"exceeds the size limit of {lb.MAX_ENTRY_BYTES} bytes" in problems(big, runs, tmp_path)


def test_script_in_method_name_and_javascript_url_are_refused(entry, runs, tmp_path):
    bad = copy.deepcopy(entry)
    bad["method"] = "<script>alert(1)</script>"
    assert "method: String should match pattern" in problems(reseal(bad), runs, tmp_path)
    for url in ("javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,<b>x</b>", "//evil.example"):
        bad = copy.deepcopy(entry)
        bad["url"] = url
        assert "url: Value error, only http(s) URLs with a host are allowed" in problems(bad, runs, tmp_path)


@pytest.mark.parametrize("field", ["submitter", "device_name", "device", "platform"])
@pytest.mark.parametrize("text", ["<b>me</b>", "a > b", "tab\there", "line\nbreak", "bell\x07"])
def test_free_text_fields_refuse_markup_and_control_characters(entry, runs, tmp_path, field, text):
    bad = copy.deepcopy(entry)
    if field == "submitter":
        bad["submitter"] = text
    else:
        bad["hardware"][0][field] = text
    msg = problems(bad, runs, tmp_path)
    assert "are not allowed" in msg or "only printable characters" in msg, msg
    ok = copy.deepcopy(entry)
    ok["submitter"] = "Zoë Müller & co. (ETH Zürich), 2026"  # printable text of any script is fine
    assert lb.validate_entry(ok, lb.load_fingerprints(runs["fingerprints"])).submitter == ok["submitter"]


def test_free_text_is_escaped_on_both_pages(entry, runs):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    data = copy.deepcopy(entry)
    data["method_params"] = {"note": evil}  # free-form params: the page escapes them
    data["url"] = 'https://example.org/"><script>alert(1)</script>'
    e = lb.validate_entry(reseal(data), lb.load_fingerprints(runs["fingerprints"]))
    html, md = render_html({"e.json": e}), render_markdown({"e.json": e})
    assert html.count("<script>") == 1  # only the page's own sorting script
    assert "<img" not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert 'href="https://example.org/&quot;&gt;&lt;script&gt;' in html
    assert "<script" not in md and "<img" not in md and "&lt;script&gt;" in md
    assert "%22%3E%3Cscript%3E" in md  # the URL is percent-encoded inside the Markdown link


def test_duplicates_are_refused_and_build_lists_every_bad_entry(entry, runs, tmp_path):
    entries = tmp_path / "results" / "leaderboard" / "entries"
    entries.mkdir(parents=True)
    for name in ("a.json", "b.json"):
        (entries / name).write_text(json.dumps(entry))
    other = reseal({**copy.deepcopy(entry), "submitter": "Other"})
    other["seeds"] = other["seeds"][::-1]  # same runs, other order: still the same entry
    (entries / "c.json").write_text(json.dumps(other))
    (entries / "d.json").write_text("[]")
    with pytest.raises(lb.LeaderboardError) as err:
        build(tmp_path / "results", fingerprints=runs["fingerprints"])
    msg = str(err.value)
    assert msg.startswith("3 bad leaderboard entries")
    assert "b.json: rejected:\n  <entry>: duplicate of a.json" in msg and "c.json" in msg and "d.json" in msg
    assert not (tmp_path / "results" / "leaderboard" / "index.html").exists()
    with pytest.raises(lb.EntryError, match="duplicate of a.json"):
        lb.check(entries / "b.json", results=tmp_path / "results", fingerprints=runs["fingerprints"])
    lb.check(entries / "a.json", results=tmp_path / "results", fingerprints=runs["fingerprints"])


def test_verify_reproduces_real_numbers_and_catches_a_resealed_forgery(entry, runs):
    from mmbalance.leaderboard.leaderboard_verify import verify

    known = lb.load_fingerprints(runs["fingerprints"])
    exact = {"percent": 0.0, "mae": 0.0, "corr": 0.0}
    assert (
        verify(lb.validate_entry(entry, known), seeds=[1], tolerance=exact) == []
    )  # same machine: identical
    forged = copy.deepcopy(entry)
    forged["seeds"][1]["metrics"]["accuracy"] += 5.0
    passes_check = lb.validate_entry(reseal(forged), known)  # self-consistent: only re-running can tell
    (bad,) = verify(passes_check, seeds=[1])
    assert (bad.seed, bad.metric) == (1, "accuracy") and bad.claimed == pytest.approx(bad.rerun + 5.0)
    with pytest.raises(lb.LeaderboardError, match=r"seeds \[7\] are not in the entry"):
        verify(passes_check, seeds=[7])


# --- attacks (issue 30): entries that are deep, specs that cannot run, text that reorders the page ----------
def test_a_deeply_nested_entry_is_named_and_build_fails_with_nothing_written(entry, runs, tmp_path, capsys):
    from mmbalance.cli import main

    results = tmp_path / "results"
    entries = results / "leaderboard" / "entries"
    entries.mkdir(parents=True)
    (entries / "good.json").write_text(json.dumps(entry))
    (entries / "deep.json").write_text('{"x": ' + "[" * 30_000 + "]" * 30_000 + "}")
    fp = ["--fingerprints", str(runs["fingerprints"])]
    assert main(["leaderboard", "build", "--results", str(results), *fp]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 bad leaderboard entry") and "Traceback" not in err
    assert f"{entries / 'deep.json'}: rejected:\n  <file>: nested deeper than 64 levels" in err
    assert not (results / "leaderboard" / "index.html").exists()  # a page never silently drops an entry
    assert main(["leaderboard", "check", str(entries / "deep.json"), *fp]) == 2
    assert "nested deeper than 64 levels" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("forge", "needle"),
    [
        (lambda d: d["spec"]["optim"].update(lr=-1), "spec.optim.lr: Input should be greater than 0"),
        (lambda d: d["spec"].pop("epochs"), "spec: missing field(s) epochs"),
        (lambda d: d["spec"].update(batch_size="many"), "spec.batch_size: Input should be a valid integer"),
        (lambda d: d.update(method="ogm"), "spec: unknown method 'ogm'; valid choices:"),
        (lambda d: d["seeds"][2].update(seed=10**30), "seeds.2.seed: Input should be less than 4294967296"),
    ],
)
def test_check_refuses_a_resealed_spec_that_cannot_run(entry, runs, tmp_path, forge, needle):
    bad = copy.deepcopy(entry)
    forge(bad)
    assert needle in problems(reseal(bad), runs, tmp_path)


@pytest.mark.parametrize("char", ["\n", "\u202e", "\x00", "\x1b", "\u2066"])
def test_control_and_bidirectional_characters_are_refused_anywhere(entry, runs, tmp_path, char):
    for forge in (lambda d: d["method_params"].update(note=f"a{char}b"),
                  lambda d: d["method_params"].update({f"k{char}": 1}),
                  lambda d: d["packages"].update(torch=f"2.0{char}")):  # fmt: skip
        bad = copy.deepcopy(entry)
        forge(bad)
        assert "has a control or bidirectional character" in problems(reseal(bad), runs, tmp_path)
    bad = copy.deepcopy(entry)
    bad["url"] = f"https://example.org/{char}gpj.exe"
    assert "URL contains whitespace, control or bidirectional characters" in problems(bad, runs, tmp_path)


def test_verify_draws_a_random_seed_and_catches_a_forged_later_seed(entry, runs):
    from mmbalance.leaderboard.leaderboard_verify import pick_seeds, verify

    known = lb.load_fingerprints(runs["fingerprints"])
    forged = copy.deepcopy(entry)
    forged["seeds"][2]["metrics"]["accuracy"] += 0.5  # the first seed is genuine: the old default passed it
    e = lb.validate_entry(reseal(forged), known)
    assert {pick_seeds(e)[0] for _ in range(60)} == {0, 1, 2}  # any seed may be the one re-run
    assert [(m.seed, m.metric) for m in verify(e, seeds="all")] == [(2, "accuracy")]


def test_verify_is_exact_on_cpu_and_compares_the_modality_numbers(entry, runs):
    from mmbalance.leaderboard.leaderboard_verify import tolerance_for, verify

    known = lb.load_fingerprints(runs["fingerprints"])
    shifted = copy.deepcopy(entry)
    for s in shifted["seeds"]:
        s["metrics"] = {
            k: v + 0.9 for k, v in s["metrics"].items()
        }  # +0.9 on every metric: passed 1.0 points
        s["modality"]["shapley"] = {m: v + 0.3 for m, v in s["modality"]["shapley"].items()}
        s["modality"]["imbalance_degree"] += 0.01
    e = lb.validate_entry(reseal(shifted), known)
    assert tolerance_for(e, "cpu")["percent"] < 1e-6 and tolerance_for(e, "cuda")["percent"] == 1.0
    bad = {m.metric for m in verify(e, seeds=[1])}
    shapley = {f"shapley {m}" for m in entry["seeds"][1]["modality"]["shapley"]}
    assert bad == {"accuracy", "f1_macro", "f1_weighted", "imbalance degree", *shapley}


def test_cli_submit_check_and_build(runs, tmp_path, capsys):
    from mmbalance.cli import main

    results = tmp_path / "results"
    out = results / "leaderboard" / "entries" / "joint.json"
    fp = ["--fingerprints", str(runs["fingerprints"])]
    assert main(["submit", *map(str, runs["joint"][:2]), "--name", "n", "--out", str(out)]) == 2
    assert "needs at least 3" in capsys.readouterr().err
    argv = ["submit", *map(str, runs["joint"]), "--name", "n", "--out", str(out)]
    # submit validates with the repository's registry: the test's small data set is not in it
    assert main(argv) == 2 and "no known split" in capsys.readouterr().err
    lb.submit(runs["joint"], "n", out, fingerprints=runs["fingerprints"])
    assert main(["leaderboard", "check", str(out), "--results", str(results), *fp]) == 0
    assert main(["leaderboard", "build", "--results", str(results), *fp]) == 0
    assert (results / "leaderboard" / "index.html").is_file()
    assert main(["leaderboard", "verify", str(out), "--results", str(results), *fp, "--seeds", "2"]) == 0
    assert "numbers reproduced" in capsys.readouterr().out


# --- the registry and the metric tables stay in step with the code that produces runs -----------------------
def test_fingerprint_registry_matches_the_adapters():
    from mmbalance.common.registry import DATASETS

    known = lb.load_fingerprints()  # real datasets' entries cannot be checked here: no data in tests
    cls = DATASETS.get("synthetic")
    for task in ("classification", "regression", "segmentation"):
        params = cls.Params(task=task).model_dump(mode="json")
        split = known[("synthetic", lb.params_hash(params))]
        assert sorted(split.fingerprints) == list(range(10))  # the seed draws the data: one per seed
        for seed in (0, 7):
            drawn = cls(cls.Params(task=task, data_seed=seed))
            assert split.fingerprints[seed] == data_fingerprint(drawn), (
                "benchmarks/fingerprints.yaml is out of date: run scripts/fingerprints.py"
            )
        assert split.task == task


def test_fingerprint_registry_lists_every_suite_configuration(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("fingerprints_script", REPO / "scripts" / "fingerprints.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--check"]) == 0, (
        capsys.readouterr().err
    )  # "out of date: run scripts/fingerprints.py"


def test_metric_names_match_the_metric_functions():
    import torch

    from mmbalance.common.metric_catalogue import CATALOGUE
    from mmbalance.training import metrics

    for kind, (primary, higher) in metrics.PRIMARY.items():
        assert lb.METRICS[kind][0] == primary and higher == (primary != "mae")
    assert {m for names in lb.METRICS.values() for m in names} <= set(CATALOGUE)  # every one has its facts
    logits, y = torch.randn(20, 4), torch.randint(0, 4, (20,))
    assert set(metrics.classification_metrics(logits, y)) == set(lb.METRICS["classification"])
    assert set(metrics.mosi_metrics(torch.randn(20), torch.randn(20))) == set(lb.METRICS["regression"])


# --- the page: self-contained, the script allowed by hash, sorting ---------------------------------------
def test_page_is_self_contained_and_its_script_is_pinned(entry, runs):
    import base64
    import hashlib

    e = lb.validate_entry(entry, lb.load_fingerprints(runs["fingerprints"]))
    html = render_html({"e.json": e})
    assert not re.search(r"<link|\bsrc=|@import|url\(", html)
    assert [u for u in re.findall(r'href="([^"]+)"', html)] == ["entries/e.json", "https://example.org/paper"]
    (inline,) = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()  # what the browser hashes
    assert inline == SORT_SCRIPT and f"script-src 'sha256-{digest}'" in html


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_sort_order_function_in_node():
    cases = "\n".join([
        "console.log(JSON.stringify(sortOrder([3, 1, NaN, 2], true)));",
        "console.log(JSON.stringify(sortOrder([3, 1, NaN, 2], false)));",
        "console.log(JSON.stringify(sortOrder([1, 2, 1, 2], false)));",
    ])  # fmt: skip
    out = subprocess.run(
        ["node", "-e", SORT_SCRIPT + cases], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.split() == ["[1,3,0,2]", "[0,3,1,2]", "[1,3,0,2]"]  # NaN last both ways; ties stable


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_page_in_headless_chromium(tmp_path):
    out = subprocess.run([str(REPO / ".venv/bin/python"), str(REPO / "scripts/screenshot_leaderboard.py"),
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "leaderboard.png").stat().st_size > 10_000


def test_entry_carries_each_seeds_modality_numbers(entry, runs, tmp_path):
    for s, path in zip(entry["seeds"], runs["joint"], strict=True):
        rec = RunDir(path).final()["modality_eval"]
        assert s["modality"] == {
            k: rec[k] for k in ("shapley", "imbalance_degree", "equity", "worst_missing")
        }
    bad = copy.deepcopy(entry)
    bad["seeds"][1]["modality"]["imbalance_degree"] = 3.0
    assert "seeds.1.modality.imbalance_degree" in problems(bad, runs, tmp_path)
    bad = copy.deepcopy(entry)
    bad["seeds"][2]["modality"]["worst_missing"] = 130.0
    assert "seeds[2].modality.worst_missing: accuracy = 130.0 is outside [0, 100]" in problems(
        bad, runs, tmp_path
    )
    bad = copy.deepcopy(entry)
    del bad["seeds"][0]["modality"]
    assert "seeds[0].modality: missing while other seeds have it" in problems(bad, runs, tmp_path)
    e = lb.validate_entry(entry, lb.load_fingerprints(runs["fingerprints"]))
    from mmbalance.leaderboard.leaderboard_page import render_html, render_markdown

    imb = [s["modality"]["imbalance_degree"] for s in entry["seeds"]]
    cell = f"{statistics.mean(imb):.3f} ± {statistics.stdev(imb):.3f}"
    for page in (render_markdown({"a.json": e}), render_html({"a.json": e})):
        assert "Imbalance ↓" in page and "Worst missing accuracy" in page and cell in page
    old = copy.deepcopy(entry)  # an entry of runs recorded before modality_eval stays valid
    for s in old["seeds"]:
        del s["modality"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    e = lb.check(path, fingerprints=runs["fingerprints"])
    assert "Imbalance" not in render_markdown({"old.json": e})


# --- tracks, references, Δ vs joint, links, filter, ranks (issue 24) ------------------------------------------
def variant(entry: dict, runs, method: str, gain: float, **spec) -> lb.Entry:
    """The fixture entry as another method (accuracy + ``gain`` on every seed) or at other settings."""
    data = copy.deepcopy(entry)
    data["method"], data["method_params"] = method, {}
    data["spec"] = {**data["spec"], **spec}
    for s in data["seeds"]:
        s["metrics"] = {k: v + gain if k == "accuracy" else v for k, v in s["metrics"].items()}
    return lb.validate_entry(reseal(data), lb.load_fingerprints(runs["fingerprints"]))


def test_tracks_by_comparison_key_references_apart_and_delta_vs_joint(entry, runs):
    entries = {"joint.json": variant(entry, runs, "joint", 0.0), "cggm.json": variant(entry, runs, "cggm", 2.0),
               "ens.json": variant(entry, runs, "unimodal_ensemble", 9.0),
               "fast.json": variant(entry, runs, "pmr", 5.0, optim={**entry["spec"]["optim"], "lr": 0.5})}  # fmt: skip
    known = {k.page_key: k for k in lb.load_fingerprints(runs["fingerprints"]).values()}
    short, fast = tracks(entries, known)
    assert (short.config, fast.config) == (
        "synthetic classification (test); optim.lr=0.01",
        "synthetic classification (test); optim.lr=0.5",
    )  # what differs
    assert fast.title == short.title == "synthetic · classification"
    assert [n for n, _ in short.ranked] == ["cggm.json", "joint.json"]  # the reference is not ranked...
    assert [n for n, _ in short.references] == ["ens.json"]  # ...but shown apart
    assert [n for n, _ in fast.ranked] == ["fast.json"] and fast.joint is None  # never beside lr 0.01
    md = render_markdown(entries)
    assert "References (never ranked):" in md and "| † | unimodal\\_ensemble" in md
    assert "| 1 | cggm ([code](https://github.com/zrguo/CGGM))" in md and "| +2.00 |" in md
    html = render_html(entries)
    assert 'class="entries ranked"' in html and 'class="entries refs"' in html and 'id="filter"' in html
    assert html.count("<h2>") == 2 and 'href="https://github.com/GeWu-Lab' not in html  # only methods shown


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_ranks_follow_the_sort_in_node():
    cases = "\n".join([
        "console.log(JSON.stringify(ranks([3, 1, NaN, 3], false)));",  # best first: ties share rank 1
        "console.log(JSON.stringify(ranks([3, 1, NaN, 3], true)));",
        # means equal but for summation order tie, whichever way the table is sorted
        "console.log(JSON.stringify(ranks([85.8, 85.80000000000001, 85.8, 90], true)));",
        "console.log(JSON.stringify(sortOrder([85.80000000000001, 85.8, 90], false)));",
    ])  # fmt: skip
    out = subprocess.run(
        ["node", "-e", SORT_SCRIPT + cases], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.split() == [
        "[1,3,null,1]",
        "[2,1,null,2]",
        "[1,1,1,4]",
        "[2,0,1]",
    ]  # NaN: no rank (null)
