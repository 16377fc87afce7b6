"""MultiTaskCrossEncoder: BERT reads ``[CLS] query [SEP] product [SEP]``, heads predict the funnel.

One end-to-end model predicts click, add-to-cart and purchase, so the sparse purchase signal
borrows strength from plentiful clicks through the shared encoder (and the MMoE experts).

Pooling (default ``"pair"``): from the *joint* pass over the pair, the mean of the query
segment's tokens ``u`` and of the product segment's tokens ``v`` (both L2-normalised), fed to
the heads as ``[u, v, u*v, |u-v|]``. Why: the bundled all-MiniLM-L6-v2 was trained so that
mean-pooled vectors of related texts align, so ``sum(u*v)`` is a relevance signal from step
one, and the heads only have to *refine* it with engagement instead of discovering relevance
from a randomly initialised head — on 2 CPU cores that is the difference between learning in
hundreds of steps and not learning at all. The segments still attend to each other (it is a
cross-encoder: every token sees the whole pair). ``"mean"`` (one mean over all tokens) and
``"cls"`` stay available.

Similarity skip (``similarity_skip``, on for every model ``train_reranker`` builds): each task
logit also gets ``scale_t · sum(u*v)``, the pair's own similarity, with a learned per-task
scale that starts at :data:`SIMILARITY_SKIP_INIT`. Why: trained on engagement alone, the heads
and the encoder drift away from the relevance the encoder started with: among the products
the shop's ranker showed (look-alikes included), ``sum(u*v)`` of the retriever-initialised
encoder orders relevant above irrelevant far better before training than after it (measured
in docs/rerank.md). With the skip the similarity is the starting score and every gradient
flows through it, so training refines relevance instead of replacing it.

On disk (one directory, written atomically)::

    encoder/            standard Hugging Face BERT folder + tokenizer (AutoModel.from_pretrained opens it)
    heads.safetensors   head (and learned loss-weight) tensors
    heads_config.json   HeadConfig: tasks, architecture, heads mode, sizes, pooling, max_length
    manifest.json       kind "reranker"; sha256 of every weight file; tasks/architecture/heads;
                        encoder checksum; seed; data fingerprint; training report summary

:meth:`MultiTaskCrossEncoder.load` verifies the checksums and that the manifest agrees with the
heads config, refusing anything else with one-line :class:`ArtifactError`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.core.artifacts import (BUNDLED_SHA256, atomic_directory, build_manifest, bundled_model_path, file_has_sha256,
                                read_manifest, require_compatible, sha256_file, write_manifest)
from pipeline.core.errors import ArtifactError
from pipeline.core.runtime import quiet_transformers
from pipeline.core.text import PRODUCT_TEXT_FIELDS
from rerank import DEFAULT_MAX_LENGTH
from rerank.heads import ARCHITECTURES, HEAD_MODES, TASKS, build_head, log_probs

KIND = "reranker"
HEADS_FILE = "heads.safetensors"
HEADS_CONFIG = "heads_config.json"
ENCODER_DIR = "encoder"
POOLINGS = ("pair", "mean", "cls")
#: Initial scale of the similarity skip: a within-query cosine spread of about 0.1 becomes a
#: logit spread of about 1, as large as what the heads learn.
SIMILARITY_SKIP_INIT = 10.0


@dataclass
class HeadConfig:
    """Everything needed to rebuild the heads around an encoder (saved as heads_config.json)."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    architecture: str = "mmoe"
    heads: str = "funnel"
    n_experts: int = 4
    expert_dim: int = 128
    tower_dim: int = 64
    dropout: float = 0.1
    pooling: str = "pair"
    max_length: int = DEFAULT_MAX_LENGTH
    similarity_skip: bool = False

    def validate(self) -> None:
        """Refuse configurations that cannot mean anything (e.g. a funnel out of order)."""
        if not self.tasks:
            raise ValueError("at least one task is required")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"duplicate tasks in {self.tasks}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.heads not in HEAD_MODES:
            raise ValueError(f"unknown heads mode {self.heads!r}; choose one of {', '.join(HEAD_MODES)}")
        if self.heads == "funnel" and list(self.tasks) != sorted(self.tasks, key=TASKS.index):
            raise ValueError(f"funnel heads need tasks in funnel order {TASKS}, got {self.tasks}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        if self.similarity_skip and self.pooling != "pair":
            raise ValueError("the similarity skip reads the pair pooling's query and product vectors (pooling 'pair')")


def bundled_encoder_path() -> Path:
    """The bundled all-MiniLM-L6-v2 folder, after checking its weights' sha256."""
    path = bundled_model_path()
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ArtifactError(f"{weights}: bundled MiniLM weights are missing")
    if not file_has_sha256(weights, BUNDLED_SHA256):
        raise ArtifactError(f"{weights}: bundled MiniLM weights fail their sha256 check")
    return path


def encoder_checksum(path: str | os.PathLike[str]) -> str:
    """sha256 of an encoder folder's weights (model.safetensors, or pytorch_model.bin)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (Path(path) / name).is_file():
            return sha256_file(Path(path) / name)
    raise ArtifactError(f"{path}: no model.safetensors in encoder folder")


class MultiTaskCrossEncoder(nn.Module):
    """BERT cross-encoder with multi-task heads; ``forward`` returns log-probabilities (B, T)."""

    def __init__(self, encoder: nn.Module, tokenizer: Any, config: HeadConfig,
                 manifest: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        config.validate()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.config = config
        pooled_dim = encoder.config.hidden_size * (4 if config.pooling == "pair" else 1)
        self.head = build_head(config.architecture, pooled_dim, len(config.tasks),
                               n_experts=config.n_experts, expert_dim=config.expert_dim,
                               tower_dim=config.tower_dim, dropout=config.dropout)
        if config.similarity_skip:  # part of the head: saved, loaded and trained with it
            self.head.register_parameter(
                "similarity_scale", nn.Parameter(torch.full((len(config.tasks),), SIMILARITY_SKIP_INIT)))
        self.manifest: dict[str, Any] = dict(manifest or {})
        self.quantized = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_encoder(cls, encoder: str | os.PathLike[str] | None = None, **config: Any) -> MultiTaskCrossEncoder:
        """A fresh model: pretrained encoder (None = bundled MiniLM, checksum-verified) + new heads."""
        from transformers import AutoModel, AutoTokenizer

        path = bundled_encoder_path() if encoder is None else Path(encoder)
        if not (path / "config.json").is_file():
            raise ArtifactError(f"{path}: not a Hugging Face encoder folder (no config.json)")
        with quiet_transformers():
            enc = AutoModel.from_pretrained(str(path), add_pooling_layer=False)
            tok = AutoTokenizer.from_pretrained(str(path))
        model = cls(enc, tok, HeadConfig(**config))
        model.base_encoder = {"path": str(path), "sha256": encoder_checksum(path)}
        return model

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.config.tasks)

    # ------------------------------------------------------------------ compute
    @staticmethod
    def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
             token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Pair features (default), mean over real tokens, or the [CLS] vector."""
        if self.config.pooling == "cls":
            return hidden[:, 0]
        if self.config.pooling == "mean" or token_type_ids is None:
            if self.config.pooling == "pair":
                raise ValueError("pair pooling needs token_type_ids (query = segment 0, product = segment 1)")
            return self._masked_mean(hidden, attention_mask)
        query_mask = attention_mask * (token_type_ids == 0)
        product_mask = attention_mask * (token_type_ids == 1)
        u = nn.functional.normalize(self._masked_mean(hidden, query_mask), dim=-1)
        v = nn.functional.normalize(self._masked_mean(hidden, product_mask), dim=-1)
        return torch.cat([u, v, u * v, (u - v).abs()], dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        pooled = self.pool(hidden, attention_mask, token_type_ids)
        logits = self.head(pooled)
        if self.config.similarity_skip:  # sum(u*v): the third quarter of the pair features
            width = hidden.shape[-1]
            logits = logits + self.head.similarity_scale * pooled[:, 2 * width:3 * width].sum(-1, keepdim=True)
        return log_probs(logits, self.config.heads)

    def tokenize(self, queries: Sequence[str], texts: Sequence[str], max_length: int | None = None) -> dict:
        """Pair encoding with dynamic padding (to the longest pair in this batch, not max_length)."""
        return self.tokenizer(list(queries), list(texts), padding=True, truncation="longest_first",
                              max_length=max_length or self.config.max_length, return_tensors="pt")

    def predict(self, queries: Sequence[str], product_texts: Sequence[str], batch_size: int = 64,
                max_length: int | None = None) -> np.ndarray:
        """Probabilities (n, len(tasks)) float32 for (query, product text) pairs, in input order.

        Pairs are scored in length-sorted batches so dynamic padding wastes little compute.
        """
        if len(queries) != len(product_texts):
            raise ValueError(f"{len(queries)} queries for {len(product_texts)} product texts")
        out = np.zeros((len(queries), len(self.tasks)), dtype=np.float32)
        if not len(queries):
            return out
        order = np.argsort([len(q) + len(t) for q, t in zip(queries, product_texts)], kind="stable")
        was_training = self.training
        device = next(self.parameters()).device
        self.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    idx = order[start:start + batch_size]
                    batch = self.tokenize([queries[i] for i in idx], [product_texts[i] for i in idx], max_length)
                    batch = {k: v.to(device) for k, v in batch.items()}
                    out[idx] = self(**batch).exp().float().cpu().numpy()
        finally:
            self.train(was_training)
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | os.PathLike[str], *, seed: int | None = None,
             data_fingerprint: str | None = None, report: Mapping[str, Any] | None = None,
             extra_state: Mapping[str, torch.Tensor] | None = None,
             text_fields: Sequence[str] = PRODUCT_TEXT_FIELDS,
             teacher: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the model directory atomically; return its manifest. ``text_fields``: the
        product text fields the model was trained on (every scorer must build the same text).
        ``teacher``: for a distilled student, the teacher's manifest id and path (recorded as
        the manifest's ``teacher``, so a student always names the model it imitates)."""
        from safetensors.torch import save_file

        if self.quantized:
            raise ArtifactError("a quantised reranker cannot be saved; save the fp32 model and quantise at load")
        with atomic_directory(out_dir) as tmp, quiet_transformers():
            enc_dir = tmp / ENCODER_DIR
            self.encoder.save_pretrained(str(enc_dir))
            self.tokenizer.save_pretrained(str(enc_dir))
            state = {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
            state.update({k: v.detach().cpu().contiguous() for k, v in (extra_state or {}).items()})
            save_file(state, str(tmp / HEADS_FILE))
            (tmp / HEADS_CONFIG).write_text(json.dumps(asdict(self.config), indent=2) + "\n", encoding="utf-8")
            enc_sha = encoder_checksum(enc_dir)
            manifest = build_manifest(
                KIND,
                config={**asdict(self.config), "seed": seed},
                inputs={"base_encoder": getattr(self, "base_encoder", None), "data_fingerprint": data_fingerprint},
                tasks=list(self.tasks), architecture=self.config.architecture, heads=self.config.heads,
                max_length=self.config.max_length, seed=seed, encoder_checksum=enc_sha,
                text_fields=list(text_fields),
                checksums={f"{ENCODER_DIR}/model.safetensors": enc_sha, HEADS_FILE: sha256_file(tmp / HEADS_FILE)},
                report=dict(report or {}),
                **({"teacher": dict(teacher)} if teacher else {}),
            )
            write_manifest(tmp, manifest)
        self.manifest = manifest
        return manifest

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, quantize: bool = False,
             expected_tasks: Sequence[str] | None = None) -> MultiTaskCrossEncoder:
        """Load a saved reranker, verifying checksums and manifest/config agreement.

        ``quantize=True`` applies int8 dynamic quantisation (see :mod:`rerank.quantize`).
        ``expected_tasks`` lets a caller refuse a model trained for another task set.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        manifest = read_manifest(path, kind=KIND)
        cfg_path = path / HEADS_CONFIG
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            config = HeadConfig(**cfg)
            config.validate()
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{cfg_path}: unreadable heads config ({str(exc).splitlines()[0]})") from None
        require_compatible(f"{path} manifest vs {HEADS_CONFIG}",
                           {"tasks": list(config.tasks), "architecture": config.architecture,
                            "heads": config.heads, "max_length": config.max_length}, manifest)
        if expected_tasks is not None and list(expected_tasks) != list(config.tasks):
            raise ArtifactError(f"{path}: reranker predicts tasks {config.tasks}, expected {list(expected_tasks)}")
        checksums = manifest.get("checksums") or {}
        if set(checksums) != {f"{ENCODER_DIR}/model.safetensors", HEADS_FILE}:
            raise ArtifactError(f"{path}: manifest lists no weight checksums (not written by this version)")
        for rel, expected in checksums.items():
            file = path / rel
            if not file.is_file():
                raise ArtifactError(f"{file}: weight file missing")
            if not file_has_sha256(file, expected):
                raise ArtifactError(f"{file}: checksum mismatch with manifest (corrupt or replaced weights)")
        if manifest.get("encoder_checksum") != checksums[f"{ENCODER_DIR}/model.safetensors"]:
            raise ArtifactError(f"{path}: manifest encoder_checksum disagrees with its weight checksums")
        try:
            with quiet_transformers():
                enc = AutoModel.from_pretrained(str(path / ENCODER_DIR), add_pooling_layer=False)
                tok = AutoTokenizer.from_pretrained(str(path / ENCODER_DIR))
            state = load_file(str(path / HEADS_FILE))
        except (OSError, ValueError, SafetensorError) as exc:
            raise ArtifactError(f"{path}: cannot read weights ({str(exc).splitlines()[0]})") from None
        model = cls(enc, tok, config, manifest=manifest)
        head_state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
        try:
            model.head.load_state_dict(head_state, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(f"{path / HEADS_FILE}: heads do not match {HEADS_CONFIG} "
                                f"({str(exc).splitlines()[0]})") from None
        model.base_encoder = (manifest.get("inputs") or {}).get("base_encoder")
        model.eval()
        if quantize:
            from rerank.quantize import quantize_dynamic_int8

            model = quantize_dynamic_int8(model)
        return model
