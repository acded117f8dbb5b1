"""Building bundles: torch -> ONNX export with parity checks, expert export, bundle evaluation,
and the experts' evidence pools. Needs the training stack (torch)."""
