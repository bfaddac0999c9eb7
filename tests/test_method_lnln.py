"""LNLN through the ordinary loop: one epoch on the MOSI (MMSA word ids, a local tiny BERT fine-tuned) and
CH-SIMS fixtures, reproducible, with its loss terms logged and its records like every run's; refusals; the MSA
model's canonical spec unchanged by the new model choice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from mmbalance.common.spec import validate_spec
from mmbalance.fixtures import mosi, sims
from mmbalance.training.method import MethodNotApplicable
from mmbalance.training.runner import Trainer, train

TINY = {"arch": "lnln", "lnln": {"dim": 16, "mlp_dim": 16, "heads": 2, "dim_head": 8, "tokens": 2, "depth": 1,
        "proxy_depth": 1, "check_depth": 1, "reconstructor_depth": 1, "language_depth": 1, "fusion_depth": 1,
        "discriminator_hidden": 8}}  # fmt: skip
RUN = {"epochs": 1, "batch_size": 8, "probe_every": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    mosi.write(root)
    sims.write(root)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)  # fmt: skip
    BertModel(config).save_pretrained(root / "tiny-bert")  # a local pretrained folder, as a real run's
    return root


def run(data: Path, results: Path, **spec):
    return train(
        validate_spec({**RUN, **spec}), results=results, data_root=data, device="cpu", progress=False
    )


def test_one_epoch_on_mosi_word_ids_with_bert(data, tmp_path):
    spec = {"dataset": "mosi", "method": "lnln", "dataset_params": {"source": "mmsa", "aligned": False,
            "text": "text_bert"}, "model_params": {**TINY, "bert": str(data / "tiny-bert"), "finetune": True}}  # fmt: skip
    first = run(data, tmp_path / "a", **spec)
    assert first.status == "done" and set(first.final["test"]) >= {"mae", "corr", "acc7", "acc2_non0"}
    assert "shapley" in first.final["modality_eval"], first.final["modality_eval"]
    curves = (first.path / "curves.csv").read_text().splitlines()
    assert all(f"diag/{k}" in curves[0] for k in ("l_sp", "l_cc", "l_adv", "l_rec"))
    again = run(data, tmp_path / "b", **spec)
    assert again.final["test"] == first.final["test"]  # same spec and seed: the same numbers


def test_one_epoch_on_sims_with_own_labels(data, tmp_path):
    result = run(data, tmp_path, dataset="sims", method="lnln", model_params=TINY)
    assert result.status == "done"
    final = json.loads((result.path / "final.json").read_text())
    assert set(final["test"]) >= {"acc2", "acc3", "acc5", "f1", "mae", "corr"}
    own = final["modality_eval"]["own_labels"]
    assert set(own) == {"text", "audio", "vision"} and all("mae" in v for v in own.values())


def test_joint_trains_the_lnln_network_with_its_head_alone(data, tmp_path):
    assert run(data, tmp_path, dataset="sims", method="joint", model_params=TINY).status == "done"


def test_interrupted_run_resumes_exactly(data, tmp_path, monkeypatch):
    """Its random incomplete inputs come from the run's RNG, which the checkpoint holds: an interrupted run
    ends with the uninterrupted one's numbers and curves."""
    spec = {"dataset": "sims", "method": "lnln", "model_params": TINY, "epochs": 3}
    reference = run(data, tmp_path / "ref", **spec)
    save = Trainer.save_checkpoint

    def save_then_stop(self, epoch: int) -> None:
        save(self, epoch)
        if epoch == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Trainer, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run(data, tmp_path / "res", **spec)
    resumed = run(data, tmp_path / "res", **spec)
    assert resumed.final == reference.final
    assert (resumed.path / "curves.csv").read_text() == (reference.path / "curves.csv").read_text()


def test_refusals(data, tmp_path):
    with pytest.raises(MethodNotApplicable, match="model_params.arch: lnln"):
        run(data, tmp_path, dataset="sims", method="lnln")  # the MSA transformer
    with pytest.raises(MethodNotApplicable, match="regression"):
        run(
            data,
            tmp_path,
            dataset="synthetic",
            method="lnln",
            dataset_params={"n_train": 16, "n_valid": 8, "n_test": 8},
        )


def test_msa_specs_keep_their_canonical_form():
    params = validate_spec({"dataset": "mosi"}).canonical()["model_params"]
    assert "arch" not in params and "lnln" not in params
    lnln = validate_spec({"dataset": "mosi", "model_params": {"arch": "lnln"}}).canonical()["model_params"]
    assert lnln["arch"] == "lnln" and lnln["lnln"]["tokens"] == 8


def test_loss_by_hand():
    """L = 0.9 MSE(w, 1 - r_l) + 0.8 CE + 0.1 MSE(rec, complete) + 1.0 MSE(pred, y), the code's defaults."""
    from mmbalance.methods.lnln import LNLNParams, lnln_loss
    from mmbalance.models.base import Output

    aux = {"w": torch.tensor([[0.5]]), "effectiveness": torch.zeros(2, 2), "reconstructed": torch.zeros(1, 2, 3),
           "complete": torch.ones(1, 2, 3)}  # fmt: skip
    out = Output(torch.tensor([[1.0]]), {}, torch.zeros(1, 1), aux)
    terms = lnln_loss(out, torch.tensor([[0.0]]), torch.tensor([1.0]), LNLNParams())
    # (0.5 - 1)^2 = 0.25; CE of equal logits = ln 2; (0 - 1)^2 = 1; (1 - 0)^2 = 1
    assert terms["l_cc"].item() == pytest.approx(0.25) and terms["l_adv"].item() == pytest.approx(math.log(2))
    assert terms["loss"].item() == pytest.approx(0.9 * 0.25 + 0.8 * math.log(2) + 0.1 * 1 + 1.0 * 1)
