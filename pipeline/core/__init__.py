"""The foundation both stages stand on: errors, artefacts (manifests, checksums, atomic
writes), the runtime (import order, seeding, threads), ONNX sessions, caches, metrics, the
product text template and the task table. Imports no other project module, so
``retrieval/`` and ``rerank/`` can use it without depending on the orchestration above them.
"""
