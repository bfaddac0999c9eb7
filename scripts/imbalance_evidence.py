"""The benchmark issue's four checks on a results folder, from run records alone.

    python scripts/imbalance_evidence.py results [--dataset synthetic] [--imbalance 1] [--protocol defaults]

On the runs of one block: synthetic classification at imbalance degree 1 (the ``lazy`` scenario) by default,
under the default protocol (the suite's fixed settings; ``--protocol tuned``: what tuning chose).

(a) the unimodal ensemble beats joint training by >= 4 points (test accuracy, mean over seeds);
(b) the weakest modality's probe inside the joint model is >= 10 points below that modality trained alone;
(c) joint's best-validation epoch lies after the first third of training in every seed;
(d) the range of the method means is >= 4x the median seed std, and a Friedman test over the seeds rejects
    "all methods are equal" at p < 0.01 (methods with every seed finished; unimodal rows excluded).
"""

from __future__ import annotations

import argparse
import sys

from scipy.stats import friedmanchisquare

from mmbalance.reporting.results import load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--task", default="classification")
    ap.add_argument("--imbalance", type=float, default=1.0, help="synthetic: the block's imbalance degree")
    ap.add_argument("--protocol", choices=("defaults", "tuned"), default="defaults")
    args = ap.parse_args()
    df = load(args.results)
    df = df[(df["status"] == "done") & (df["dataset"] == args.dataset)]
    if "dataset_params.task" in df:
        df = df[df["dataset_params.task"].fillna(args.task) == args.task]
    if "dataset_params.imbalance" in df:
        df = df[df["dataset_params.imbalance"].fillna(args.imbalance) == args.imbalance]
    df = df[df["spec"].map(lambda s: bool(s.get("tuned"))) == (args.protocol == "tuned")]
    acc = df.groupby("method")["accuracy"].mean()
    joint = df[df["method"] == "joint"]
    alone = df[df["method"] == "unimodal"].groupby("method_params.modality")["accuracy"].mean()
    weak = alone.idxmin()
    gap = acc["unimodal_ensemble"] - acc["joint"]
    probe = joint[f"probe/{weak}"].mean()
    epochs = int(joint["epochs"].iloc[0])
    best = sorted(joint["best_epoch"].astype(int).tolist())
    methods = df[df["method"] != "unimodal"]
    table = methods.pivot_table(index="seed", columns="method", values="accuracy").dropna(axis=1)
    means, stds = table.mean(), table.std(ddof=1)
    stat, p = friedmanchisquare(*[table[c] for c in table.columns])
    ratio = (means.max() - means.min()) / stds.median()
    print(f"n seeds: {len(table)}; methods: {len(table.columns)}; unimodal alone: {alone.round(2).to_dict()}")
    print(f"(a) ensemble {acc['unimodal_ensemble']:.2f} - joint {acc['joint']:.2f} = {gap:+.2f}  [>= 4]")
    print(
        f"(b) {weak}: alone {alone[weak]:.2f}, probe in joint {probe:.2f}, gap {alone[weak] - probe:.2f}  [>= 10]"
    )
    print(f"(c) joint best epochs (1-based, of {epochs}): {[b + 1 for b in best]}  [all > {epochs / 3:.0f}]")
    print(
        f"(d) range of means {means.max() - means.min():.2f} / median std {stds.median():.2f} = {ratio:.1f}x "
        f"[>= 4]; Friedman chi2 = {stat:.1f}, p = {p:.2g}  [< 0.01]"
    )
    ok = gap >= 4 and alone[weak] - probe >= 10 and min(best) + 1 > epochs / 3 and ratio >= 4 and p < 0.01
    print("all four hold" if ok else "NOT all four hold")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
