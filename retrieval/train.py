"""Fine-tune the bi-encoder on engagement logs with sentence-transformers' own trainer.

Recipe (each choice is the simplest one that does the job on 2 CPU cores):
* **Positives** are (query, product) pairs from the train split with at least one click.
* **Engagement-depth weighting by repetition:** a pair appears ``DEPTH_COPIES`` times —
  purchase 3, add-to-cart 2, click 1 — so deeper engagement pulls harder on the embedding
  without a custom loss (MultipleNegativesRankingLoss has no per-sample weights).
* **Negatives:** in-batch negatives (MultipleNegativesRankingLoss, with the NO_DUPLICATES
  sampler so a query's other positives are never its in-batch negatives) plus one mined hard
  negative per pair: a product from the starting model's top results for that query that
  the query never engaged with. Candidates scoring above ``margin`` x the positive's score
  are skipped too, because the closest unengaged products are often unlabelled positives.
* **Model selection:** after every epoch :class:`RetrievalEvaluator` computes Recall@100 and
  nDCG@10 on the valid split; ``load_best_model_at_end`` keeps the best epoch. Checkpoints
  live in a temporary directory; the final model is written atomically in plain
  sentence-transformers format plus a ``manifest.json`` (weights checksum, base model, data).
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.artifacts import (atomic_directory, build_manifest, fingerprint_frame, scratch_directory, sha256_file,
                                     write_manifest, writes_output)
from pipeline.core.errors import DataError
from pipeline.core.runtime import DEFAULT_SEED, configure_training_threads, seed_everything, trainer_progress
from pipeline.core.text import PRODUCT_TEXT_FIELDS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from pipeline.data import Dataset
    from retrieval.encoder import BiEncoder

DEPTH_COPIES = {"purchases": 3, "add_to_carts": 2, "clicks": 1}


def engagement_pairs(engagement: "pd.DataFrame", queries: set[str]) -> "pd.DataFrame":
    """Engaged (query, product_id, copies) rows for ``queries``, deepest event deciding copies."""
    eng = engagement[engagement["query"].isin(queries) & (engagement["clicks"] > 0)]
    copies = np.select([eng["purchases"] > 0, eng["add_to_carts"] > 0],
                       [DEPTH_COPIES["purchases"], DEPTH_COPIES["add_to_carts"]], DEPTH_COPIES["clicks"])
    out = eng[["query", "product_id"]].copy()
    out["product_id"] = out["product_id"].astype(str)
    out["copies"] = copies
    return out.sort_values(["query", "product_id"], kind="stable").reset_index(drop=True)


def mine_hard_negatives(pairs: "pd.DataFrame", engaged: dict[str, set[str]], query_vecs: dict[str, np.ndarray],
                        product_vecs: np.ndarray, product_ids: list[str], *, top_k: int = 30,
                        margin: float = 0.95, seed: int = DEFAULT_SEED) -> list[str | None]:
    """One hard negative per pair from the query's top-``top_k`` products under the current
    model, skipping anything the query engaged with and anything scoring within ``margin``
    of the positive (likely an unlabelled positive). ``None`` when no candidate qualifies."""
    rng = np.random.default_rng(seed)
    pos_index = {pid: i for i, pid in enumerate(product_ids)}
    ids_arr = np.asarray(product_ids)
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    negatives: list[str | None] = []
    for query, pid in zip(pairs["query"], pairs["product_id"]):
        if query not in cache:
            scores = product_vecs @ query_vecs[query]
            top = np.argsort(-scores, kind="stable")[:top_k]
            cache[query] = (top, scores)
        top, scores = cache[query]
        pos_score = scores[pos_index[pid]] if pid in pos_index else np.inf
        ok = [i for i in top if ids_arr[i] not in engaged.get(query, set()) and scores[i] < margin * pos_score]
        negatives.append(str(ids_arr[ok[int(rng.integers(min(len(ok), 10)))]]) if ok else None)
    return negatives


def build_training_rows(dataset: "Dataset", encoder: "BiEncoder", *, hard_negatives: bool = True,
                        max_rows: int | None = None, seed: int = DEFAULT_SEED, show_progress: bool = True,
                        product_vecs: np.ndarray | None = None,
                        text_fields: Sequence[str] = PRODUCT_TEXT_FIELDS) -> dict[str, list[str]]:
    """Columns (anchor, positive[, negative]) for the trainer, depth-weighted and shuffled.

    ``max_rows`` keeps a random subset of the depth-repeated rows, which is the same as
    sampling pairs in proportion to their engagement depth (the CPU budget knob).
    ``product_vecs`` (catalog order) saves re-encoding the catalog for mining."""
    from pipeline.data import product_text

    if dataset.engagement is None or dataset.queries is None:
        raise DataError("train-retriever needs engagement and queries (with a split column)")
    train_q = set(dataset.split_queries("train"))
    if not train_q:
        raise DataError("queries: no rows with split == 'train'")
    pairs = engagement_pairs(dataset.engagement, train_q)
    catalog = dataset.catalog
    texts = dict(zip(catalog["product_id"].astype(str), product_text(catalog, text_fields)))
    unknown = sorted(set(pairs["product_id"]) - set(texts))
    if unknown:
        raise DataError(f"engagement: product_id {unknown[0]!r} not in the catalog ({len(unknown)} unknown)")
    if pairs.empty:
        raise DataError("engagement: no clicked (query, product) pairs in the train split")
    negatives: list[str | None] = [None] * len(pairs)
    if hard_negatives:
        ids = list(texts)
        if product_vecs is None:
            product_vecs = encoder.encode_products([texts[i] for i in ids], show_progress=show_progress)
        uniq = sorted(set(pairs["query"]))
        qv = dict(zip(uniq, encoder.encode_queries(uniq)))
        engaged = pairs.groupby("query")["product_id"].apply(set).to_dict()
        negatives = mine_hard_negatives(pairs, engaged, qv, product_vecs, ids, seed=seed)
    rows = {"anchor": [], "positive": [], "negative": []}
    fallback = np.random.default_rng(seed)
    all_ids = list(texts)
    for (query, pid, copies), neg in zip(pairs[["query", "product_id", "copies"]].itertuples(index=False), negatives):
        for _ in range(int(copies)):
            rows["anchor"].append(str(query))
            rows["positive"].append(texts[pid])
            # A random product stands in where mining found nothing (keeps one column layout).
            rows["negative"].append(texts[neg] if neg else texts[all_ids[int(fallback.integers(len(all_ids)))]])
    order = np.random.default_rng(seed).permutation(len(rows["anchor"]))
    if max_rows is not None:
        order = order[:max_rows]
    out = {k: [v[i] for i in order] for k, v in rows.items()}
    if not hard_negatives:
        del out["negative"]
    return out


@writes_output("out_dir", "model folder")
def train_retriever(dataset: "Dataset", out_dir: str | os.PathLike[str], *, base_model: str | os.PathLike[str] | None = None,
                    epochs: int = 2, batch_size: int = 32, learning_rate: float = 5e-5, max_seq_length: int = 64,
                    hard_negatives: bool = True, max_rows: int | None = 1536, max_steps: int = -1,
                    seed: int = DEFAULT_SEED, show_progress: bool = True,
                    text_fields: Sequence[str] = PRODUCT_TEXT_FIELDS,
                    max_valid_products: int = 5000) -> dict[str, Any]:
    """Fine-tune a bi-encoder on engagement and save it to ``out_dir``; returns a report with
    per-epoch validation metrics. Test-split numbers are ``pipeline evaluate``'s job alone,
    so training never looks at (or reports) the split models are finally judged on.

    ``text_fields``: the catalog columns of the product text; recorded in the manifest, so
    indexes built with this model encode products the way it was trained to read them.
    ``max_valid_products``: per-epoch validation searches a fixed pool of at most this many
    products (:func:`retrieval.evaluation.validation_pool`) instead of re-encoding a larger
    catalog every epoch."""
    from pipeline.data import product_text
    from retrieval.encoder import BiEncoder
    from retrieval.evaluation import RetrievalEvaluator, qrels_for, validation_pool

    if dataset.catalog is None or dataset.engagement is None or dataset.queries is None:
        raise DataError("train-retriever needs a catalog, engagement and queries (pass --data DIR or the three files)")
    seed_everything(seed)
    threads = configure_training_threads()
    started = time.perf_counter()
    base = BiEncoder.load(base_model)
    base.model.max_seq_length = max_seq_length
    catalog = dataset.catalog
    if catalog["product_id"].astype(str).duplicated().any():
        raise DataError("catalog: product_id is not unique")
    valid_q = dataset.split_queries("valid")
    text_fields = tuple(text_fields)
    texts = product_text(catalog, text_fields)
    ids = catalog["product_id"].astype(str).tolist()
    valid_qrels = qrels_for(dataset, valid_q)
    valid_q = [q for q in valid_q if q in valid_qrels]
    if not valid_q:
        raise DataError("queries: no valid-split query has relevance labels; cannot select the best epoch")
    # The catalog is encoded once with the starting model and reused for mining, the
    # validation pool and zero-shot validation (encoding dominates the CPU cost).
    base_vecs = base.encode_products(texts, show_progress=show_progress)
    rows = build_training_rows(dataset, base, hard_negatives=hard_negatives, max_rows=max_rows, seed=seed,
                               show_progress=show_progress, product_vecs=base_vecs, text_fields=text_fields)
    pool = validation_pool(valid_q, valid_qrels, ids, base.encode_queries(valid_q) if len(ids) > max_valid_products
                           else np.empty((0, base.dim), np.float32), base_vecs, max_valid_products, seed)
    evaluator = RetrievalEvaluator(valid_q, [texts[i] for i in pool], [ids[i] for i in pool], valid_qrels, name="valid")
    zero_shot_valid = evaluator.evaluate_model(base.model, product_vecs=base_vecs[pool])

    import torch
    from datasets import Dataset as HFDataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = base.model
    train_ds = HFDataset.from_dict(rows)
    loss = MultipleNegativesRankingLoss(model)
    with scratch_directory(out_dir) as ckpt_dir:
        args = SentenceTransformerTrainingArguments(
            output_dir=str(ckpt_dir), num_train_epochs=epochs, max_steps=max_steps,
            per_device_train_batch_size=batch_size, learning_rate=learning_rate, warmup_steps=0.1,
            batch_sampler=BatchSamplers.NO_DUPLICATES, eval_strategy="epoch", save_strategy="epoch",
            save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="eval_valid_score",
            greater_is_better=True, seed=seed, data_seed=seed, logging_strategy="epoch", report_to="none",
            disable_tqdm=not show_progress, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
            save_only_model=True,
        )
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_ds, loss=loss,
                                             evaluator=evaluator)
        trainer_progress(trainer, show_progress)
        trainer.train()
        best_checkpoint = trainer.state.best_model_checkpoint
    history = [h for h in evaluator.history if h["step"] >= 0]
    best = max(history, key=lambda h: h["score"]) if history else None

    target = Path(out_dir)
    with atomic_directory(target) as tmp:
        model.save(str(tmp), create_model_card=False)
        manifest = build_manifest(
            "retriever",
            config={"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                    "max_seq_length": max_seq_length, "hard_negatives": hard_negatives, "max_rows": max_rows,
                    "max_steps": max_steps, "seed": seed, "loss": "MultipleNegativesRankingLoss",
                    "valid_products": len(pool),
                    "depth_copies": DEPTH_COPIES},
            inputs={"base_model_id": base.model_id, "base_model_path": str(base.path),
                    "catalog_fingerprint": fingerprint_frame(catalog),
                    "engagement_fingerprint": fingerprint_frame(dataset.engagement)},
            name=f"shoprank-retriever ({base.name} fine-tuned)", weights_sha256=sha256_file(tmp / "model.safetensors"),
            dim=base.dim, normalized=True, text_fields=list(text_fields), train_rows=len(rows["anchor"]), valid_history=history,
            best_epoch=best["epoch"] if best else None, zero_shot_valid=zero_shot_valid,
            best_checkpoint=Path(best_checkpoint).name if best_checkpoint else None,
        )
        write_manifest(tmp, manifest)
    report: dict[str, Any] = {
        "out": str(target), "threads": threads, "model_id": manifest["weights_sha256"], "train_rows": len(rows["anchor"]),
        "epochs": epochs, "valid_history": history, "best_epoch": manifest["best_epoch"],
        "zero_shot_valid": zero_shot_valid, "train_seconds": round(time.perf_counter() - started, 1),
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report
