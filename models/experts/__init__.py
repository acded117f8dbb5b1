"""Per-modality emotion experts (voice, face) whose probabilities the paired model reads."""
