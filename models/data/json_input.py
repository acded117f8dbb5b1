"""JSON that users hand us (dialogues, manifests, gold, events), parsed so that every way `json`
can refuse a text becomes one `BadJSON` with a short reason: a syntax error, bytes that are not
UTF-8, an integer of over 4,300 digits, nesting deep enough to exhaust the recursion limit. Each
reader turns it into its own error naming the file and line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from merc.models.errors import MercError

__all__ = ["BadJSON", "parse_json", "read_json_file"]


class BadJSON(MercError, ValueError):
    """A text is not JSON we can read; `reason` says why in a few words, `syntax` whether it is a
    syntax error (a line cut short by a killed writer is one)."""

    code = "json_invalid"

    def __init__(self, reason: str, syntax: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.syntax = syntax


def parse_json(text: str | bytes) -> Any:
    """`json.loads(text)`, raising only `BadJSON`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadJSON(f"{err.msg} at column {err.colno}", syntax=True) from None
    except ValueError as err:  # bytes that are not UTF-8, an integer of over 4300 digits
        raise BadJSON(str(err)) from None
    except RecursionError:
        raise BadJSON("nested too deeply") from None


def read_json_file(path: Path) -> Any:
    """The JSON document in `path`: `BadJSON` when it is not one, `OSError` when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BadJSON(f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    return parse_json(text)
