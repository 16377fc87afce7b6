"""Domain adaptation: continue masked-language-model pre-training of the encoder on catalog text.

Why: product titles and attributes use a vocabulary (brand names, jargon, units) that a
general-purpose encoder has seen little of; a few MLM steps on the catalog move the encoder
towards it before the reranker is fine-tuned (``--encoder models/domain-bert``).

Built on transformers' own pieces: ``BertForMaskedLM`` initialised from the encoder,
``DataCollatorForLanguageModeling`` (15 % masking, 80/10/10) and ``Trainer``. Note the
bundled all-MiniLM-L6-v2 ships without an MLM head, so the head's transform layer starts
from random (the decoder is tied to the word embeddings); a short warm-up keeps its early
noisy gradients from damaging the encoder.

The output is a standard Hugging Face folder (``AutoModel.from_pretrained`` opens it and
takes the ``bert.`` weights) plus tokenizer and a ``manifest.json`` of kind ``domain-bert``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.artifacts import (atomic_directory, build_manifest, fingerprint_frame, scratch_directory, write_manifest,
                                     writes_output)
from pipeline.data import product_text
from pipeline.core.errors import DataError
from pipeline.core.runtime import (DEFAULT_SEED, configure_training_threads, quiet_transformers, seed_everything,
                                   trainer_progress)
from rerank.model import bundled_encoder_path, encoder_checksum

KIND = "domain-bert"


def catalog_corpus(catalog: pd.DataFrame) -> list[str]:
    """MLM training texts: the shared product template, plus the description when present."""
    texts = product_text(catalog)
    if "description" in catalog.columns:
        descs = catalog["description"].fillna("").astype(str).tolist()
        texts = [f"{t} | {d}" if d.strip() else t for t, d in zip(texts, descs)]
    return [t for t in texts if t.strip()]


@writes_output("out_dir", "encoder folder")
def adapt_lm(catalog: pd.DataFrame, out_dir: str | os.PathLike[str], *, base: str | os.PathLike[str] | None = None,
             epochs: float = 1.0, max_steps: int = -1, batch_size: int = 16, max_length: int = 64,
             learning_rate: float = 5e-5, mlm_probability: float = 0.15, seed: int = DEFAULT_SEED,
             progress: bool = True) -> dict[str, Any]:
    """Run MLM on the catalog text and save an encoder folder usable as ``--encoder``; return a report."""
    from transformers import AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    corpus = catalog_corpus(catalog)
    if not corpus:
        raise DataError("catalog: no product text to adapt the language model on")
    base_path = bundled_encoder_path() if base is None else Path(base)
    seed_everything(seed)
    threads = configure_training_threads()
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(base_path))
        model = BertForMaskedLM.from_pretrained(str(base_path))
    encoded = tokenizer(corpus, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    rows = [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(corpus))]
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=True, mlm_probability=mlm_probability,
                                               seed=seed)
    started = time.time()
    with scratch_directory(out_dir) as tmp:
        args = TrainingArguments(
            output_dir=str(tmp), per_device_train_batch_size=batch_size, num_train_epochs=epochs, max_steps=max_steps,
            learning_rate=learning_rate, warmup_steps=0.1, weight_decay=0.01, logging_steps=10,
            save_strategy="no", eval_strategy="no", report_to="none", seed=seed, data_seed=seed, use_cpu=True,
            disable_tqdm=not progress, dataloader_pin_memory=False, remove_unused_columns=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
        trainer_progress(trainer, progress)
        result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    report: dict[str, Any] = {
        "out_dir": str(out_dir), "base": str(base_path), "texts": len(corpus), "steps": trainer.state.global_step,
        "first_loss": round(float(losses[0]), 4) if losses else None,
        "final_loss": round(float(losses[-1]), 4) if losses else None,
        "train_loss": round(float(result.training_loss), 4), "seconds": round(time.time() - started, 1),
        "seed": seed, "threads": threads,
    }
    with atomic_directory(out_dir) as tmp_dir, quiet_transformers():
        model.save_pretrained(str(tmp_dir))
        tokenizer.save_pretrained(str(tmp_dir))
        manifest = build_manifest(
            KIND, config={"epochs": epochs, "max_steps": max_steps, "batch_size": batch_size,
                          "max_length": max_length, "learning_rate": learning_rate,
                          "mlm_probability": mlm_probability, "seed": seed},
            inputs={"base_encoder": {"path": str(base_path), "sha256": encoder_checksum(base_path)},
                    "catalog_fingerprint": fingerprint_frame(catalog, ["product_id"])},
            encoder_checksum=encoder_checksum(tmp_dir), report=report,
        )
        write_manifest(tmp_dir, manifest)
    report["manifest_id"] = manifest["id"]
    return report
