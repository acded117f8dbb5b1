"""The incremental multimodal dialogue DAG (MultiDAG), its checkpoints, and the PyTorch tracker."""
