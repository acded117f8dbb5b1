"""ONNX export of the served networks and torch-free serving with ONNX Runtime.

- `onnx_export` (needs torch): `export_bundle` writes and validates a bundle (`merc-export`);
  `ensure_bundle` materialises a model directory's bundle in the cache on first use.
- `bundle`, `runtime`, `turns` (no torch, transformers or merc.models): `read_manifest`,
  `BundleTracker` (the `DialogueTracker` API over ONNX Runtime) and its `TurnResult`.
- `evaluate` (no torch): `evaluate_bundle` scores a bundle on a corpus split (`merc-eval --bundle`).

This package's __init__ imports nothing, so importing the serving modules stays torch-free.
"""
