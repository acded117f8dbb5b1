"""The tables of a batch run: one row per turn of every recording, and one row of scores per
recording with gold, written as Parquet (pyarrow) or CSV.

Turns are taken in their final state, each `turn.update` folded into the turn it corrects, exactly
as merc-eval --replay scores them (`apply_updates`); `turn.partial` events are not turns.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from merc.stream.batch.store import write_atomic
from merc.stream.recordings.scoring import apply_updates

__all__ = ["FORMATS", "PROB_PREFIX", "SCORES_TABLE", "TURNS_TABLE", "TURN_COLUMNS", "TableFormat", "labels_of",
           "score_row", "turn_rows", "write_table"]

TableFormat = Literal["parquet", "csv"]
FORMATS: tuple[TableFormat, ...] = ("parquet", "csv")
TURNS_TABLE = "turns"
SCORES_TABLE = "scores"
TURN_COLUMNS = ("recording", "turn", "speaker", "t_start", "t_end", "text", "label", "confidence")
PROB_PREFIX = "prob_"
"""One column per label: prob_neutral, prob_joy, ... (the model's labels, in its order)."""


def turn_rows(recording: str, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per final turn of one recording's events: TURN_COLUMNS and each label's probability."""
    rows = []
    for event in apply_updates(list(events)):
        if event.get("type") != "turn":
            continue
        row = {"recording": recording, **{key: event.get(key) for key in TURN_COLUMNS[1:]}}
        for label, prob in (event.get("probs") or {}).items():
            row[PROB_PREFIX + label] = prob
        rows.append(row)
    return rows


def labels_of(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The labels the rows carry probabilities for, in the order they first appear."""
    labels: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key.startswith(PROB_PREFIX):
                labels.setdefault(key[len(PROB_PREFIX):], None)
    return list(labels)


def score_row(recording: str, scores: dict[str, Any]) -> dict[str, Any]:
    """One recording's scores (ReplayScores.as_dict) as a flat row; the speaker mapping as JSON text."""
    return {"recording": recording, **{key: json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
                                       for key, value in scores.items()}}


def _turn_schema(labels: Sequence[str]) -> Any:
    import pyarrow as pa

    return pa.schema([("recording", pa.string()), ("turn", pa.int64()), ("speaker", pa.string()),
                      ("t_start", pa.float64()), ("t_end", pa.float64()), ("text", pa.string()),
                      ("label", pa.string()), ("confidence", pa.float64()),
                      *[(PROB_PREFIX + label, pa.float64()) for label in labels]])


def write_table(rows: Sequence[dict[str, Any]], path: Path, table_format: TableFormat, turns: bool = True) -> Path:
    """Write `rows` to `path` with the format's suffix added, atomically; returns the file. A turns
    table has a fixed schema (its columns even when there are no rows); a scores table takes its
    columns from the rows."""
    import pyarrow as pa

    if turns:
        schema = _turn_schema(labels_of(rows))
        table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    else:
        table = pa.Table.from_pylist(list(rows))
    target = path.with_name(f"{path.name}.{table_format}")
    sink = pa.BufferOutputStream()
    if table_format == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, sink)
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, sink)
    write_atomic(target, sink.getvalue().to_pybytes())
    return target
