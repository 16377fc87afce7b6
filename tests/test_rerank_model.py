"""MultiTaskCrossEncoder: heads, funnel maths, loss stability, batching, save/load and refusals.

Uses the real bundled MiniLM (fresh heads, seeded): a forward over a few pairs takes < 1 s.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.errors import ArtifactError
from pipeline.core.runtime import seed_everything
from rerank.heads import MMoEHead, build_head, log_probs
from rerank.losses import MultiTaskLoss, log1mexp, weighted_bce
from rerank.model import HeadConfig, MultiTaskCrossEncoder, bundled_encoder_path

QUERIES = ["trail running shoes", "trail running shoes", "espresso machine", "kids jeans", "usb c charger 65w"]
TEXTS = ["Nike Pegasus Trail 4 | Nike | shoes | color: black", "Leather office chair | Ikea | furniture",
         "Breville Barista Express | Breville | kitchen | type: espresso", "Levi's 501 kids | Levi's | jeans",
         "Anker 65W GaN charger | Anker | electronics | port: usb-c"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[MultiTaskCrossEncoder, Path]:
    seed_everything(5)
    torch.manual_seed(5)
    model = MultiTaskCrossEncoder.from_encoder(max_length=32, similarity_skip=True)  # as train_reranker builds it
    out = tmp_path_factory.mktemp("rr") / "reranker"
    model.save(out, seed=5, data_fingerprint="test")
    return model, out


def test_funnel_heads_are_funnel_consistent_and_independent_ones_are_not_forced() -> None:
    logits = torch.tensor([[2.0, 3.0, -1.0], [-4.0, 5.0, 5.0]])
    p = log_probs(logits, "funnel").exp()
    assert torch.all(p[:, 1] <= p[:, 0]) and torch.all(p[:, 2] <= p[:, 1])
    torch.testing.assert_close(p[:, 2], torch.sigmoid(logits).prod(dim=1))
    q = log_probs(logits, "independent").exp()
    assert q[1, 2] > q[1, 0]  # independent heads may predict more purchases than clicks


def test_loss_is_stable_in_log_space_and_matches_bce() -> None:
    logp = torch.tensor([-1e-12, -0.1, -3.0, -80.0])
    assert torch.isfinite(log1mexp(logp)).all()
    target = torch.tensor([1.0, 0.3, 0.0, 0.0])
    w = torch.ones(4)
    ours = weighted_bce(logp[1:3], target[1:3], w[1:3])
    ref = torch.nn.functional.binary_cross_entropy(logp[1:3].exp(), target[1:3])
    torch.testing.assert_close(ours, ref)
    assert torch.isfinite(weighted_bce(logp, target, w))


def test_uncertainty_weighting_learns_log_variances() -> None:
    loss = MultiTaskLoss(("click", "purchase"), uncertainty=True)
    logp = torch.log(torch.tensor([[0.5, 0.1], [0.4, 0.2]], requires_grad=True))
    total, per_task = loss(logp, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.ones(2))
    total.backward()
    assert loss.log_vars.grad is not None and torch.all(loss.log_vars.grad != 0)
    assert per_task.shape == (2,)


def test_heads_shapes_and_gates() -> None:
    pooled = torch.randn(4, 384)
    for arch, n in (("mmoe", 3), ("shared_bottom", 3), ("single", 1)):
        assert build_head(arch, 384, n)(pooled).shape == (4, n)
    gates = MMoEHead(384, 3, n_experts=5).gate_weights(pooled)
    torch.testing.assert_close(gates.sum(-1), torch.ones(4, 3))
    with pytest.raises(ValueError, match="exactly one task"):
        build_head("single", 384, 3)
    with pytest.raises(ValueError, match="funnel order"):
        HeadConfig(tasks=["purchase", "click"], heads="funnel").validate()
    with pytest.raises(ValueError, match="unknown task"):
        HeadConfig(tasks=["refund"]).validate()


def test_predict_is_batch_invariant(saved) -> None:
    model, _ = saved
    probs = model.predict(QUERIES, TEXTS, batch_size=2)
    one_by_one = np.vstack([model.predict([q], [t], batch_size=1) for q, t in zip(QUERIES, TEXTS)])
    assert probs.shape == (5, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, one_by_one, atol=1e-5)
    assert np.all(probs[:, 2] <= probs[:, 1]) and np.all(probs[:, 1] <= probs[:, 0])


def test_similarity_skip_adds_the_pairs_own_similarity_to_each_logit() -> None:
    # The same seeded weights with and without the skip: the click logit (independent heads,
    # so log p = log sigmoid(logit)) differs by exactly scale * sum(u*v) of the pair features.
    def build(skip: bool) -> MultiTaskCrossEncoder:
        torch.manual_seed(3)
        return MultiTaskCrossEncoder.from_encoder(tasks=["click"], heads="independent", max_length=32,
                                                  similarity_skip=skip).eval()

    plain, skip = build(False), build(True)
    batch = plain.tokenize(QUERIES, TEXTS)
    with torch.no_grad():
        hidden = plain.encoder(**batch).last_hidden_state
        pooled = plain.pool(hidden, batch["attention_mask"], batch["token_type_ids"])
        similarity = pooled[:, 2 * 384:3 * 384].sum(-1)
        logit = lambda m: torch.logit(m(**batch)[:, 0].exp().double())  # noqa: E731
        gap = logit(skip) - logit(plain)
    assert float(skip.head.similarity_scale.detach()[0]) == pytest.approx(10.0)
    np.testing.assert_allclose(gap.numpy(), 10.0 * similarity.double().numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="pair pooling"):
        HeadConfig(pooling="mean", similarity_skip=True).validate()


def test_reload_gives_identical_scores_and_standard_encoder(saved) -> None:
    from transformers import AutoModel

    model, path = saved
    again = MultiTaskCrossEncoder.load(path)
    np.testing.assert_array_equal(model.predict(QUERIES, TEXTS), again.predict(QUERIES, TEXTS))
    assert again.tasks == ("click", "add_to_cart", "purchase")
    assert again.manifest["kind"] == "reranker" and again.manifest["architecture"] == "mmoe"
    assert again.config.similarity_skip and torch.equal(again.head.similarity_scale, model.head.similarity_scale)
    assert AutoModel.from_pretrained(str(path / "encoder")).config.hidden_size == 384


def _copy(path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


def test_corrupt_heads_are_refused(saved, tmp_path: Path) -> None:
    bad = _copy(saved[1], tmp_path)
    blob = bytearray((bad / "heads.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (bad / "heads.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="heads.safetensors: checksum mismatch"):
        MultiTaskCrossEncoder.load(bad)


def test_swapped_encoder_is_refused(saved, tmp_path: Path) -> None:
    bad = _copy(saved[1], tmp_path)
    shutil.copy(bundled_encoder_path() / "model.safetensors", bad / "encoder" / "model.safetensors")
    with pytest.raises(ArtifactError, match="encoder/model.safetensors: checksum mismatch"):
        MultiTaskCrossEncoder.load(bad)


def test_task_set_mismatch_is_refused(saved, tmp_path: Path) -> None:
    bad = _copy(saved[1], tmp_path)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["tasks"] = ["click", "purchase"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="tasks mismatch") as info:
        MultiTaskCrossEncoder.load(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ArtifactError, match="expected \\['purchase'\\]"):
        MultiTaskCrossEncoder.load(saved[1], expected_tasks=["purchase"])


def test_int8_path_keeps_scores_close(saved) -> None:
    model, path = saved
    q8 = MultiTaskCrossEncoder.load(path, quantize=True)
    assert q8.quantized
    np.testing.assert_allclose(q8.predict(QUERIES, TEXTS), model.predict(QUERIES, TEXTS), atol=0.02)
    with pytest.raises(ArtifactError, match="quantised"):
        q8.save(path.parent / "nope")
