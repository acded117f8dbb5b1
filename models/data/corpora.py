"""Corpus loaders: every corpus becomes a list of `Dialogue`s of labelled `Utterance`s.

Loaders are strict on purpose: a bad file raises `CorpusError` naming the file (and line) instead
of silently shrinking the training or test set, which would skew every reported number.

Supported corpora (`CORPORA`) and splits (`SPLITS` = train, valid, test):

* ``meld`` -- the official MELD CSVs ``{train,dev,test}_sent_emo.csv`` (split ``valid`` reads
  ``dev``), label set MELD7. Dialogue ids are ``f"{split}_{Dialogue_ID}"``; utterances are
  ordered by ``Utterance_ID`` (MELD has gaps in these ids, which are kept as they are).
  SRT times ``HH:MM:SS,mmm`` become seconds; a shorter fraction is read as a decimal fraction
  (``00:06:47,28`` = 407.28 s: three such rows exist in the official files).
* ``iemocap`` -- ``iemocap/iemocap_dialogues.jsonl``: the user JSONL format below, label set IEMOCAP6.
* ``iemocap-release`` -- the official IEMOCAP release (``Session1``..``Session5``), see
  `load_iemocap_release`.
* ``jsonl`` -- the user JSONL format; the label set must be chosen explicitly.

User JSONL format (UTF-8, one dialogue per line, blank lines allowed)::

    {"dialogue_id": "d1", "split": "test",
     "utterances": [{"speaker": "A", "text": "Hi.", "emotion": "neutral", "start": 0.0, "end": 0.8},
                    {"speaker": "B", "text": "Hello!"}]}

``dialogue_id`` (unique, non-empty string) and ``utterances`` (non-empty list) are required;
``split`` is optional and must be one of ``SPLITS``. Each utterance needs ``speaker`` (non-empty
string) and ``text`` (non-empty string); ``emotion`` is required and must belong to the label set
when one is given, and optional otherwise (label None); ``start``/``end`` are optional seconds.
When loading one split, dialogues whose ``split`` matches are returned, and so are dialogues
without a ``split`` key: a file without split keys is one pool that can be used as any split
(e.g. to evaluate a model on one's own conversations); their `Dialogue.split` stays None.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merc.models.data.json_input import BadJSON, parse_json
from merc.models.data.labels import IEMOCAP6, MELD7, LabelSet
from merc.models.errors import MercError

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CORPORA = ("meld", "iemocap", "iemocap-release", "jsonl")


class CorpusError(MercError, ValueError):
    """Bad corpus input; message always names the file (and line when known)."""

    code = "corpus_invalid"


@dataclass(frozen=True)
class Utterance:
    """One turn of a dialogue; `source` lets later errors point back to the corpus file."""

    speaker: str
    text: str
    label: str | None  # None when a user dialogue has no labels
    start: float | None = None  # seconds, when the corpus gives times
    end: float | None = None
    source: str = ""  # "path:line" (or path + utterance id) for error messages


@dataclass(frozen=True)
class Dialogue:
    """A conversation in spoken order; speakers are indexed per dialogue, as ERC models need."""

    id: str
    utterances: tuple[Utterance, ...]
    split: str | None = None

    @property
    def speakers(self) -> list[str]:
        """Distinct speakers in order of first appearance."""
        return list(dict.fromkeys(u.speaker for u in self.utterances))

    def speaker_indices(self) -> list[int]:
        """Per utterance, the index of its speaker in `speakers`."""
        index = {s: i for i, s in enumerate(self.speakers)}
        return [index[u.speaker] for u in self.utterances]


# ---------------------------------------------------------------- shared helpers


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r} (expected one of: {', '.join(SPLITS)})")


def _read_text(path: Path) -> str:
    """Whole file as str; invalid UTF-8 is reported with its line number rather than mangled."""
    if not path.is_file():
        raise CorpusError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"{path}: cannot read: {e.strerror or e}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise CorpusError(f"{path}:{line}: invalid UTF-8 ({e.reason} at byte {raw[e.start:e.start + 1]!r}); "
                          "the file must be UTF-8 encoded") from None


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line without its newline) pairs; only LF and CRLF end a line, as editors count."""
    return [(i, line.rstrip("\r")) for i, line in enumerate(_read_text(path).split("\n"), start=1)]


def _check_label(label: str | None, label_set: LabelSet, where: str) -> None:
    if label not in label_set:
        raise CorpusError(f"{where}: unknown label {label!r} for label set {label_set.name} "
                          f"(allowed: {', '.join(label_set.labels)})")


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise CorpusError(f"{path}: {what} directory not found")


# ---------------------------------------------------------------- MELD

_MELD_FILES = {"train": "train", "valid": "dev", "test": "test"}
_MELD_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID", "StartTime", "EndTime")
_SRT_TIME = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})$")


def _srt_seconds(value: str, where: str) -> float:
    m = _SRT_TIME.match(value.strip())
    if not m:
        raise CorpusError(f"{where}: bad time {value!r} (expected HH:MM:SS,mmm)")
    h, mi, s, frac = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + float("0." + frac)


def _int_field(value: str, column: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise CorpusError(f"{where}: {column} must be an integer, got {value!r}") from None


def load_meld(root: Path, split: str) -> list[Dialogue]:
    """Load one MELD split from the directory holding ``{train,dev,test}_sent_emo.csv``."""
    _check_split(split)
    root = Path(root)
    _require_dir(root, "MELD")
    path = root / f"{_MELD_FILES[split]}_sent_emo.csv"
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    header = next(reader, None)
    if header is None:
        raise CorpusError(f"{path}: empty file (expected a CSV header)")
    header = [h.strip() for h in header]
    missing = [c for c in _MELD_COLUMNS if c not in header]
    if missing:
        raise CorpusError(f"{path}:1: missing CSV column(s): {', '.join(missing)} (found: {', '.join(header)})")
    col = {c: header.index(c) for c in _MELD_COLUMNS}

    groups: dict[int, dict[int, Utterance]] = {}
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue  # a blank line is not a record
        if len(row) != len(header):
            raise CorpusError(f"{where}: {len(row)} fields, header has {len(header)}")
        f = {c: row[i].strip() for c, i in col.items()}
        _check_label(f["Emotion"], MELD7, where)
        if not f["Utterance"] or not f["Speaker"]:
            raise CorpusError(f"{where}: empty Utterance or Speaker")
        dia = _int_field(f["Dialogue_ID"], "Dialogue_ID", where)
        utt = _int_field(f["Utterance_ID"], "Utterance_ID", where)
        start, end = _srt_seconds(f["StartTime"], where), _srt_seconds(f["EndTime"], where)
        turns = groups.setdefault(dia, {})
        if utt in turns:
            raise CorpusError(f"{where}: duplicate Utterance_ID {utt} in Dialogue_ID {dia} "
                              f"(first at {turns[utt].source})")
        turns[utt] = Utterance(f["Speaker"], f["Utterance"], f["Emotion"], start, end, where)
    if not groups:
        raise CorpusError(f"{path}: no utterances")
    return [Dialogue(f"{split}_{dia}", tuple(turns[k] for k in sorted(turns)), split)
            for dia, turns in sorted(groups.items())]


# ---------------------------------------------------------------- JSONL


def _optional_seconds(u: dict[str, Any], key: str, where: str) -> float | None:
    value = u.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CorpusError(f"{where}: {key!r} must be a number of seconds, got {value!r}"[:300])
    try:
        seconds = float(value)
    except OverflowError:  # an integer beyond any float
        seconds = math.inf
    if not math.isfinite(seconds):
        raise CorpusError(f"{where}: {key!r} must be a finite number of seconds")
    return seconds


def _json_utterance(u: Any, label_set: LabelSet | None, where: str) -> Utterance:
    if not isinstance(u, dict):
        raise CorpusError(f"{where}: utterance must be a JSON object")
    required = ("speaker", "text") + (("emotion",) if label_set is not None else ())
    missing = [k for k in required if k not in u]
    if missing:
        raise CorpusError(f"{where}: missing required key(s): {', '.join(missing)}")
    for key in ("speaker", "text"):
        if not isinstance(u[key], str) or not u[key].strip():
            raise CorpusError(f"{where}: {key!r} must be a non-empty string")
    label = u.get("emotion")
    if label is not None and not isinstance(label, str):
        raise CorpusError(f"{where}: 'emotion' must be a string, got {label!r}")
    if label_set is not None:
        _check_label(label, label_set, where)
    start, end = _optional_seconds(u, "start", where), _optional_seconds(u, "end", where)
    if start is not None and end is not None and end < start:
        raise CorpusError(f"{where}: end {end} is before start {start}")
    return Utterance(u["speaker"].strip(), u["text"].strip(), label, start, end, where)


def load_dialogues_jsonl(path: Path, label_set: LabelSet | None, split: str | None = None) -> list[Dialogue]:
    """Load dialogues in the user JSONL format (module docstring); `split` None returns them all."""
    if split is not None:
        _check_split(split)
    path = Path(path)
    dialogues: list[Dialogue] = []
    seen: dict[str, int] = {}
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = parse_json(line)
        except BadJSON as e:
            raise CorpusError(f"{where}: invalid JSON ({e.reason})") from None
        if not isinstance(obj, dict):
            raise CorpusError(f"{where}: expected a JSON object (one dialogue per line)")
        missing = [k for k in ("dialogue_id", "utterances") if k not in obj]
        if missing:
            raise CorpusError(f"{where}: missing required key(s): {', '.join(missing)}")
        did = obj["dialogue_id"]
        if not isinstance(did, str) or not did:
            raise CorpusError(f"{where}: 'dialogue_id' must be a non-empty string")
        if did in seen:
            raise CorpusError(f"{where}: duplicate dialogue_id {did!r} (first on line {seen[did]})")
        seen[did] = lineno
        d_split = obj.get("split")
        if d_split is not None and d_split not in SPLITS:
            raise CorpusError(f"{where}: dialogue {did!r} has unknown split {d_split!r} "
                              f"(expected one of: {', '.join(SPLITS)})")
        utts = obj["utterances"]
        if not isinstance(utts, list):
            raise CorpusError(f"{where}: 'utterances' of dialogue {did!r} must be a list")
        if not utts:
            raise CorpusError(f"{where}: dialogue {did!r} is empty (no utterances)")
        parsed = tuple(_json_utterance(u, label_set, f"{where} utterance {i}") for i, u in enumerate(utts))
        if split is None or d_split in (None, split):
            dialogues.append(Dialogue(did, parsed, d_split))
    if not seen:
        raise CorpusError(f"{path}: no dialogues (the file is empty); expected one JSON object per line")
    return dialogues


def load_iemocap_jsonl(path: Path, split: str) -> list[Dialogue]:
    """Load one split of the distributed IEMOCAP JSONL (label set IEMOCAP6)."""
    _check_split(split)
    return load_dialogues_jsonl(path, IEMOCAP6, split)


# ---------------------------------------------------------------- IEMOCAP official release

#: IEMOCAP's full categorical vocabulary; labels outside IEMOCAP6 are excluded (standard ERC protocol).
IEMOCAP_ALL_LABELS = ("neu", "fru", "ang", "sad", "hap", "exc", "sur", "fea", "dis", "oth", "xxx")
_TRANSCRIPT_LINE = re.compile(r"^(Ses\S+)\s+\[(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\]:\s?(.*)$")
_EVAL_HEADER = re.compile(r"^\[(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\]\s+(\S+)\s+(\S+)\s+\[.*\]$")
_EVAL_DETAIL = re.compile(r"^[A-Z]+-[A-Za-z0-9]*:")  # annotator lines: C-E1:, A-F1:, C-M: ...


def _release_sessions(root: Path) -> dict[int, Path]:
    _require_dir(root, "IEMOCAP release")
    sessions = {int(p.name[7:]): p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"Session\d+", p.name)}
    if not sessions:
        raise CorpusError(f"{root}: no Session<N> directories (expected the IEMOCAP_full_release layout)")
    return sessions


def _dialogue_names(session: Path) -> list[str]:
    tdir = session / "dialog" / "transcriptions"
    _require_dir(tdir, "IEMOCAP transcriptions")
    names = sorted(p.stem for p in tdir.glob("Ses*.txt"))  # skips hidden files such as macOS "._*"
    edir = session / "dialog" / "EmoEvaluation"
    _require_dir(edir, "IEMOCAP EmoEvaluation")
    orphans = sorted({p.stem for p in edir.glob("Ses*.txt")} - set(names))
    if orphans:
        raise CorpusError(f"{edir / (orphans[0] + '.txt')}: evaluation without a transcription file "
                          f"({len(orphans)} such file(s))")
    return names


def _read_transcription(path: Path, counts: Counter[str]) -> dict[str, tuple[float, float, str, str]]:
    """utterance id -> (start, end, text, "path:line"); "XX" ids and lines without an id are not turns."""
    turns: dict[str, tuple[float, float, str, str]] = {}
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        m = _TRANSCRIPT_LINE.match(line.strip())
        if m is None:
            if line.lstrip().startswith("Ses"):
                raise CorpusError(f"{where}: malformed utterance line {line.strip()!r} "
                                  "(expected '<utterance id> [start-end]: text')")
            counts["non-utterance lines"] += 1
            continue
        uid, start, end, text = m.groups()
        if "XX" in uid.rsplit("_", 1)[-1]:
            counts["XX (unannotated) lines"] += 1
            continue
        if uid in turns:
            raise CorpusError(f"{where}: duplicate utterance id {uid} (first at {turns[uid][3]})")
        if not text.strip():
            raise CorpusError(f"{where}: utterance {uid} has no text")
        turns[uid] = (float(start), float(end), text.strip(), where)
    return turns


def _read_evaluation(path: Path) -> dict[str, tuple[str, str]]:
    """utterance id -> (label, "path:line") from the '[start - end]\\tid\\tlabel\\t[v, a, d]' lines."""
    labels: dict[str, tuple[str, str]] = {}
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        s = line.strip()
        if not s or s.startswith("%") or _EVAL_DETAIL.match(s):
            continue  # blank, file header comment, or per-annotator detail
        m = _EVAL_HEADER.match(s)
        if m is None:
            raise CorpusError(f"{where}: unrecognised line {s!r} "
                              "(expected '[start - end]<TAB>id<TAB>label<TAB>[v, a, d]' "
                              "or an annotator line such as 'C-E1:')")
        _, _, uid, label = m.groups()
        if label not in IEMOCAP_ALL_LABELS:
            raise CorpusError(f"{where}: unknown label {label!r} for {uid} (allowed: {', '.join(IEMOCAP_ALL_LABELS)})")
        if uid in labels:
            raise CorpusError(f"{where}: duplicate evaluation of {uid} (first at {labels[uid][1]})")
        labels[uid] = (label, where)
    return labels


def _load_release_dialogue(session: Path, name: str, split: str, counts: Counter[str]) -> Dialogue:
    tpath = session / "dialog" / "transcriptions" / f"{name}.txt"
    epath = session / "dialog" / "EmoEvaluation" / f"{name}.txt"
    turns = _read_transcription(tpath, counts)
    labels = _read_evaluation(epath)
    for uid in turns:
        if uid not in labels:
            raise CorpusError(f"{turns[uid][3]}: utterance {uid} has no label in {epath}")
    for uid in labels:
        if uid not in turns:
            raise CorpusError(f"{labels[uid][1]}: label for {uid}, which is not an utterance of {tpath}")
    utterances: list[Utterance] = []
    for uid, (start, end, text, where) in sorted(turns.items(), key=lambda kv: (kv[1][0], kv[0])):
        label = labels[uid][0]
        if label not in IEMOCAP6:
            counts[f"excluded {label}"] += 1
            continue
        speaker = uid.rsplit("_", 1)[-1][:1]
        if speaker not in ("M", "F"):
            raise CorpusError(f"{where}: cannot read speaker M/F from utterance id {uid}")
        utterances.append(Utterance(speaker, text, label, start, end, f"{where} {uid}"))
    if not utterances:
        raise CorpusError(f"{tpath}: dialogue {name} is empty once labels outside {IEMOCAP6.name} are excluded")
    return Dialogue(name, tuple(utterances), split)


def load_iemocap_release(root: Path, split: str) -> list[Dialogue]:
    """Load one split from the official IEMOCAP release (``Session{1..5}/dialog/...``), label set IEMOCAP6.

    Standard ERC protocol: Session 5 is test. Sessions 1-4 (any other session number too) are
    pooled and their dialogues sorted by name; every one whose index in that order is a multiple
    of 10 is valid (a deterministic ~10%), the rest train. The valid dialogues therefore differ
    from those of ``iemocap_dialogues.jsonl``.

    Each ``transcriptions/<dialog>.txt`` line ``<id> [start-end]: text`` is a turn, except ids whose
    last part contains "XX" (unannotated noises/fragments) and lines that do not start with an id;
    both are counted and logged. A line starting with "Ses" that does not parse is an error.
    ``EmoEvaluation/<dialog>.txt`` gives one label per turn (annotator lines are ignored); turns
    labelled xxx, oth, sur, fea or dis are excluded and counted in the log. Turns are ordered by
    start time; the speaker is the M/F letter opening the last part of the utterance id.
    """
    _check_split(split)
    root = Path(root)
    sessions = _release_sessions(root)
    if split == "test":
        chosen = [(sessions[n], name) for n in sorted(sessions) if n == 5 for name in _dialogue_names(sessions[n])]
    else:
        pool = sorted((name, sessions[n]) for n in sorted(sessions) if n != 5 for name in _dialogue_names(sessions[n]))
        chosen = [(s, name) for i, (name, s) in enumerate(pool) if (i % 10 == 0) == (split == "valid")]
    if not chosen:
        raise CorpusError(f"{root}: no dialogues for split {split!r} "
                          "(Session5 is test, the other sessions train/valid)")
    counts: Counter[str] = Counter()
    dialogues = [_load_release_dialogue(s, name, split, counts) for s, name in chosen]
    excluded = sum(v for k, v in counts.items() if k.startswith("excluded"))
    logger.info("IEMOCAP release %s (%s): %d dialogues, %d utterances; excluded %d utterances outside %s (%s)",
                split, root, len(dialogues), sum(len(d.utterances) for d in dialogues), excluded, IEMOCAP6.name,
                ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none")
    return dialogues


# ---------------------------------------------------------------- entry points


def corpus_label_set(name: str) -> LabelSet:
    """Label set a corpus is trained/evaluated with; user JSONL has none implied."""
    if name == "meld":
        return MELD7
    if name in ("iemocap", "iemocap-release"):
        return IEMOCAP6
    if name == "jsonl":
        raise CorpusError("corpus 'jsonl' has no implied label set: choose one explicitly (e.g. meld-7 or iemocap-6)")
    raise CorpusError(f"unknown corpus {name!r} (known: {', '.join(CORPORA)})")


def load_corpus(name: str, data_dir: Path, split: str) -> list[Dialogue]:
    """Load `split` of corpus `name`; for "jsonl", `data_dir` is the JSONL file itself.

    Raises CorpusError when the split comes out empty, so a wrong path or split never
    silently trains or evaluates on nothing.
    """
    _check_split(split)
    data_dir = Path(data_dir)
    if name == "meld":
        dialogues = load_meld(data_dir / "meld", split)
        where = data_dir / "meld"
    elif name == "iemocap":
        where = data_dir / "iemocap" / "iemocap_dialogues.jsonl"
        dialogues = load_iemocap_jsonl(where, split)
    elif name == "iemocap-release":
        has_sessions = data_dir.is_dir() and any(data_dir.glob("Session[0-9]*"))
        where = data_dir if has_sessions else data_dir / "IEMOCAP_full_release"
        dialogues = load_iemocap_release(where, split)
    elif name == "jsonl":
        where = data_dir
        dialogues = load_dialogues_jsonl(data_dir, None, split)
    else:
        raise CorpusError(f"unknown corpus {name!r} (known: {', '.join(CORPORA)})")
    if not dialogues:
        raise CorpusError(f"{where}: no dialogues for split {split!r}")
    return dialogues


def resolve_data_dir(flag: str | Path | None) -> Path:
    """Data location: the CLI flag, else $MERC_DATA, else ../shared/data from the working directory.

    The path may also be a file (the "jsonl" corpus takes the JSONL file as its data path).
    """
    if flag:
        path, origin = Path(flag), "given on the command line"
    elif os.environ.get("MERC_DATA"):
        path, origin = Path(os.environ["MERC_DATA"]), "from $MERC_DATA"
    else:
        path, origin = Path.cwd().parent / "shared" / "data", "default ../shared/data relative to the working directory"
    path = path.expanduser()
    if not path.exists():
        raise CorpusError(f"{path}: data directory not found ({origin}); pass the data directory explicitly "
                          "(command-line flag) or set MERC_DATA to the folder holding meld/ and iemocap/")
    return path
