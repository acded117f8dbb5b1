"""Serving bundles with ONNX Runtime only: the bundle format, BundleTracker, the experts' runtimes.
Never imports torch or the training stack (checked by import-linter)."""
