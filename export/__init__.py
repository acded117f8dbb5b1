"""ONNX export of the served networks and torch-free serving with ONNX Runtime.

- `build/` (needs torch): `onnx_export.export_bundle` writes and validates a bundle (`merc-export`);
  `ensure_bundle` materialises a model directory's bundle in the cache on first use; `evaluate`
  scores a bundle on a corpus split (`merc-eval --bundle`, itself torch-free).
- `serve/` (no torch, transformers or training code): `bundle.read_manifest`, `runtime.BundleTracker`
  (the `DialogueTracker` API over ONNX Runtime), the experts' runtimes.

This package's __init__ imports nothing, so importing the serving modules stays torch-free.
"""
