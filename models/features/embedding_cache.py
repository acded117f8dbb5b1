"""On-disk cache of turn embeddings keyed by encoder id and encoder input.

Encoding a corpus is the slow part of training a dialogue model on CPU; the cache makes every
later run (other seeds, other hyper-parameters) start from stored vectors. SQLite gives atomic,
incremental writes without a server.
"""
from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _key(encoder_id: str, item: tuple[str, str]) -> str:
    text, context = item
    return hashlib.sha256(f"{encoder_id}\0{context}\0{text}".encode()).hexdigest()


class EmbeddingCache:
    """Maps (encoder id, text, context) to a float32 vector."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")

    def close(self) -> None:
        self._db.close()

    def get_many(self, encoder_id: str, items: Sequence[tuple[str, str]]) -> list[np.ndarray | None]:
        keys = [_key(encoder_id, item) for item in items]
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, vec FROM emb WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return [found.get(k) for k in keys]

    def put_many(self, encoder_id: str, items: Sequence[tuple[str, str]], vectors: np.ndarray) -> None:
        rows = [(_key(encoder_id, item), np.ascontiguousarray(v, dtype=np.float32).tobytes())
                for item, v in zip(items, vectors, strict=True)]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)", rows)


def encode_cached(encoder, items: Sequence[tuple[str, str]], cache: EmbeddingCache | None,
                  batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Embed `items` with `encoder`, computing only what the cache lacks."""
    if cache is None:
        return encoder.encode(items, batch_size=batch_size, progress=progress)
    stored = cache.get_many(encoder.id, items)
    missing = sorted({i for i, v in enumerate(stored) if v is None}, key=lambda i: items[i])
    unique: dict[tuple[str, str], int] = {}
    for i in missing:
        unique.setdefault(items[i], len(unique))
    if unique:
        todo = list(unique)
        vectors = encoder.encode(todo, batch_size=batch_size, progress=progress)
        cache.put_many(encoder.id, todo, vectors)
        for i in missing:
            stored[i] = vectors[unique[items[i]]]
    filled = [v for v in stored if v is not None]
    if len(filled) != len(stored):  # every gap was encoded above
        raise RuntimeError("embedding cache: some items were neither cached nor encoded")
    return np.stack(filled).astype(np.float32) if filled else np.zeros((0, encoder.dim), np.float32)
