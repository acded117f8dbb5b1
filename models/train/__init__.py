"""Offline training: the training loop, encoder fine-tuning, curriculum, configs, evaluation, reports."""
