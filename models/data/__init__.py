"""Data: corpora, label sets and maps, the turn contract shared with serving, audio format, examples."""
