"""Corpus loaders: real MELD / IEMOCAP counts, the release layout on a fixture, and every error path."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from merc.models.data.corpora import (
    CORPORA,
    SPLITS,
    CorpusError,
    Dialogue,
    Utterance,
    corpus_label_set,
    load_corpus,
    load_dialogues_jsonl,
    load_iemocap_jsonl,
    load_iemocap_release,
    load_meld,
    resolve_data_dir,
)
from merc.models.data.labels import IEMOCAP6, MELD7

RELEASE = Path(__file__).resolve().parent / "fixtures" / "iemocap_release"
MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"


def meld_row(n: int, text: str, speaker: str, emotion: str, dia: int, utt: int,
             start: str = "00:00:01,000", end: str = "00:00:02,500") -> str:
    return f'{n},"{text}",{speaker},{emotion},neutral,{dia},{utt},1,1,"{start}","{end}"\n'


def write_meld(root: Path, rows: list[str], header: str = MELD_HEADER, name: str = "train") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}_sent_emo.csv"
    path.write_text(header + "".join(rows), encoding="utf-8")
    return path


def write_jsonl(path: Path, dialogues: list[object]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in dialogues), encoding="utf-8")
    return path


def dialogue(did: str, split: str | None = None, **utt: object) -> dict[str, object]:
    d: dict[str, object] = {"dialogue_id": did, "utterances": [{"speaker": "A", "text": "Hi.", **utt}]}
    if split is not None:
        d["split"] = split
    return d


# ---------------------------------------------------------------- real data


@pytest.mark.parametrize(("split", "n_dialogues", "n_utterances"),
                         [("train", 1038, 9989), ("valid", 114, 1109), ("test", 280, 2610)])
def test_meld_real_counts(data_dir: Path, split: str, n_dialogues: int, n_utterances: int) -> None:
    dialogues = load_corpus("meld", data_dir, split)
    assert len(dialogues) == n_dialogues
    assert sum(len(d.utterances) for d in dialogues) == n_utterances
    assert len({d.id for d in dialogues}) == n_dialogues
    assert all(d.split == split and d.id.startswith(f"{split}_") for d in dialogues)
    labels = {u.label for d in dialogues for u in d.utterances}
    assert labels == set(MELD7.labels)
    for d in dialogues:
        assert d.utterances and 1 <= len(d.speakers) <= 9
        assert [d.speakers[i] for i in d.speaker_indices()] == [u.speaker for u in d.utterances]
        for u in d.utterances:
            assert u.text == u.text.strip() and u.text and u.speaker
            assert u.start is not None and u.end is not None and 0 <= u.start <= u.end


def test_meld_real_first_dialogue_and_times(data_dir: Path) -> None:
    first = load_meld(data_dir / "meld", "train")[0]
    assert first.id == "train_0"
    assert first.speakers == ["Chandler", "The Interviewer"]
    assert first.speaker_indices()[:4] == [0, 1, 0, 1]
    u0 = first.utterances[0]
    assert u0.text.startswith("also I was the point person on my company’s transition")  # typographic quote kept
    assert u0.label == "neutral"
    assert u0.start == pytest.approx(16 * 60 + 16.059) and u0.end == pytest.approx(16 * 60 + 21.731)
    assert u0.source.endswith("train_sent_emo.csv:2")


def test_meld_real_oddities(data_dir: Path) -> None:
    """Utterance_ID gaps are kept in order; a two-digit SRT fraction (",28") is a decimal fraction."""
    by_id = {d.id: d for d in load_meld(data_dir / "meld", "train")}
    joey = by_id["train_437"].utterances[-1]
    assert joey.start == pytest.approx(6 * 60 + 45.489) and joey.end == pytest.approx(6 * 60 + 47.28)
    gappy = by_id["train_1"]  # Utterance_IDs 0..5, 8 in the official file
    assert len(gappy.utterances) == 7
    assert all(a.start <= b.start for a, b in zip(gappy.utterances, gappy.utterances[1:]))  # type: ignore[operator]


@pytest.mark.parametrize(("split", "n_dialogues", "n_utterances"),
                         [("train", 108, 5163), ("valid", 12, 647), ("test", 31, 1623)])
def test_iemocap_jsonl_real_counts(data_dir: Path, split: str, n_dialogues: int, n_utterances: int) -> None:
    dialogues = load_corpus("iemocap", data_dir, split)
    assert len(dialogues) == n_dialogues
    assert sum(len(d.utterances) for d in dialogues) == n_utterances
    assert all(d.split == split for d in dialogues)
    assert {u.label for d in dialogues for u in d.utterances} == set(IEMOCAP6.labels)
    for d in dialogues:
        assert set(d.speakers) <= {"M", "F"} and d.speakers
        assert (d.id.startswith("Ses05")) == (split == "test")


def test_iemocap_jsonl_real_order(data_dir: Path) -> None:
    first = load_iemocap_jsonl(data_dir / "iemocap" / "iemocap_dialogues.jsonl", "train")[0]
    assert first.id == "Ses01F_impro01"
    assert [(u.speaker, u.text, u.label) for u in first.utterances[:2]] == [
        ("F", "Excuse me.", "neu"), ("M", "Do you have your forms?", "fru")]
    assert first.speakers == ["F", "M"] and first.speaker_indices()[:3] == [0, 1, 0]
    assert first.utterances[0].start is None


# ---------------------------------------------------------------- IEMOCAP release layout (fixture)


def test_release_fixture_splits(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="merc.models.data.corpora"):
        valid = load_iemocap_release(RELEASE, "valid")
    assert "excluded 1 utterances" in caplog.text
    assert [d.id for d in valid] == ["Ses01F_impro01"]  # sorted index 0 of sessions 1-4
    d = valid[0]
    assert d.split == "valid"
    # M001 ("xxx") excluded, MXX0 is not a turn; F002 sorted after by start time although listed before M001.
    assert [(u.speaker, u.label) for u in d.utterances] == [("F", "neu"), ("M", "neu"), ("F", "fru"), ("F", "ang")]
    assert d.utterances[0] == Utterance("F", "Good morning, is this the queue for parking permits?", "neu",
                                        1.0, 2.5, d.utterances[0].source)
    assert "Ses01F_impro01.txt:1" in d.utterances[0].source
    assert d.speakers == ["F", "M"] and d.speaker_indices() == [0, 1, 0, 0]

    train = load_iemocap_release(RELEASE, "train")
    assert [d.id for d in train] == ["Ses01M_script01_1"]
    assert [u.label for u in train[0].utterances] == ["hap", "exc", "sad"]  # "sur" excluded
    assert train[0].speakers == ["M", "F"]

    test = load_iemocap_release(RELEASE, "test")
    assert [d.id for d in test] == ["Ses05F_impro01"]
    assert [u.label for u in test[0].utterances] == ["neu", "sad", "fru"]  # "oth" excluded
    starts = [u.start for u in test[0].utterances]
    assert starts == sorted(starts)  # type: ignore[type-var]


def test_release_via_load_corpus(tmp_path: Path) -> None:
    assert [d.id for d in load_corpus("iemocap-release", RELEASE, "test")] == ["Ses05F_impro01"]
    shutil.copytree(RELEASE, tmp_path / "IEMOCAP_full_release")
    assert [d.id for d in load_corpus("iemocap-release", tmp_path, "train")] == ["Ses01M_script01_1"]


def copy_release(tmp_path: Path) -> Path:
    root = tmp_path / "release"
    shutil.copytree(RELEASE, root)
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_release_unknown_label(tmp_path: Path) -> None:
    root = copy_release(tmp_path)
    epath = root / "Session5" / "dialog" / "EmoEvaluation" / "Ses05F_impro01.txt"
    edit(epath, "Ses05F_impro01_M000\tsad", "Ses05F_impro01_M000\tzzz")
    with pytest.raises(CorpusError, match=r"Ses05F_impro01\.txt:8: unknown label 'zzz'.*allowed: neu, fru"):
        load_iemocap_release(root, "test")


def test_release_missing_label(tmp_path: Path) -> None:
    root = copy_release(tmp_path)
    tpath = root / "Session5" / "dialog" / "transcriptions" / "Ses05F_impro01.txt"
    tpath.write_text(tpath.read_text() + "Ses05F_impro01_F002 [009.0000-010.0000]: One more thing.\n")
    with pytest.raises(CorpusError,
                       match=r"transcriptions/Ses05F_impro01\.txt:5: utterance Ses05F_impro01_F002 has no label"):
        load_iemocap_release(root, "test")


def test_release_label_without_utterance(tmp_path: Path) -> None:
    root = copy_release(tmp_path)
    tpath = root / "Session5" / "dialog" / "transcriptions" / "Ses05F_impro01.txt"
    edit(tpath, "Ses05F_impro01_M001 [006.0000-008.0000]: I called them three times and nobody picked up.\n", "")
    with pytest.raises(CorpusError, match=r"EmoEvaluation/Ses05F_impro01\.txt:\d+: label for Ses05F_impro01_M001"):
        load_iemocap_release(root, "test")


def test_release_malformed_lines(tmp_path: Path) -> None:
    root = copy_release(tmp_path)
    tpath = root / "Session5" / "dialog" / "transcriptions" / "Ses05F_impro01.txt"
    edit(tpath, "[006.0000-008.0000]", "[6.0 to 8.0]")
    with pytest.raises(CorpusError, match=r"transcriptions/Ses05F_impro01\.txt:4: malformed utterance line"):
        load_iemocap_release(root, "test")
    root = copy_release(tmp_path / "b")
    epath = root / "Session5" / "dialog" / "EmoEvaluation" / "Ses05F_impro01.txt"
    edit(epath, "[0.9000 - 2.4000]\tSes05F_impro01_F000\tneu", "[0.9000 - 2.4000] Ses05F_impro01_F000")
    with pytest.raises(CorpusError, match=r"EmoEvaluation/Ses05F_impro01\.txt:3: unrecognised line"):
        load_iemocap_release(root, "test")


def test_release_empty_dialogue_after_exclusion(tmp_path: Path) -> None:
    root = copy_release(tmp_path)
    epath = root / "Session5" / "dialog" / "EmoEvaluation" / "Ses05F_impro01.txt"
    epath.write_text(epath.read_text().replace("\tneu\t", "\txxx\t").replace("\tsad\t", "\txxx\t")
                     .replace("\tfru\t", "\txxx\t"))
    with pytest.raises(CorpusError, match=r"Ses05F_impro01\.txt: dialogue Ses05F_impro01 is empty"):
        load_iemocap_release(root, "test")


def test_release_missing_dirs(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="IEMOCAP release directory not found"):
        load_iemocap_release(tmp_path / "nope", "test")
    with pytest.raises(CorpusError, match="no Session<N> directories"):
        load_iemocap_release(tmp_path, "test")
    root = copy_release(tmp_path)
    shutil.rmtree(root / "Session5" / "dialog" / "EmoEvaluation")
    with pytest.raises(CorpusError, match=r"Session5/dialog/EmoEvaluation: IEMOCAP EmoEvaluation directory not found"):
        load_iemocap_release(root, "test")
    shutil.rmtree(root / "Session5")
    with pytest.raises(CorpusError, match="no dialogues for split 'test'"):
        load_iemocap_release(root, "test")


# ---------------------------------------------------------------- MELD errors


def test_meld_minimal_file(tmp_path: Path) -> None:
    write_meld(tmp_path, [meld_row(2, "  Second.  ", "B", "joy", 3, 10, "0:00:03,5", "00:00:04,250"),
                          meld_row(1, "First.", "A", "neutral", 3, 2)])  # ordered by int(Utterance_ID)
    [d] = load_meld(tmp_path, "train")
    assert d == Dialogue("train_3", (Utterance("A", "First.", "neutral", 1.0, 2.5, d.utterances[0].source),
                                     Utterance("B", "Second.", "joy", 3.5, 4.25, d.utterances[1].source)), "train")
    assert d.utterances[0].source.endswith("train_sent_emo.csv:3")


def test_meld_valid_reads_dev(tmp_path: Path) -> None:
    write_meld(tmp_path, [meld_row(1, "Hi.", "A", "neutral", 0, 0)], name="dev")
    assert [d.id for d in load_meld(tmp_path, "valid")] == ["valid_0"]


def test_meld_missing_file_and_dir(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"test_sent_emo\.csv: file not found"):
        load_meld(tmp_path, "test")
    with pytest.raises(CorpusError, match=r"nope: MELD directory not found"):
        load_meld(tmp_path / "nope", "test")


def test_meld_missing_columns(tmp_path: Path) -> None:
    write_meld(tmp_path, [], header="Sr No.,Utterance,Speaker,Sentiment,Dialogue_ID,Utterance_ID,StartTime\n")
    with pytest.raises(CorpusError, match=r"train_sent_emo\.csv:1: missing CSV column\(s\): Emotion, EndTime"):
        load_meld(tmp_path, "train")


def test_meld_unknown_label(tmp_path: Path) -> None:
    write_meld(tmp_path, [meld_row(1, "Hi.", "A", "neutral", 0, 0), meld_row(2, "Yay!", "B", "happy", 0, 1)])
    with pytest.raises(CorpusError, match=r"train_sent_emo\.csv:3: unknown label 'happy' for label set meld-7 "
                                          r"\(allowed: neutral, joy, surprise"):
        load_meld(tmp_path, "train")


def test_meld_bad_encoding(tmp_path: Path) -> None:
    path = write_meld(tmp_path, [meld_row(1, "Hi.", "A", "neutral", 0, 0)])
    path.write_bytes(path.read_bytes()
                     + b'2,"I don\x92t know.",B,neutral,neutral,0,1,1,1,"00:00:03,000","00:00:04,000"\n')
    with pytest.raises(CorpusError, match=r"train_sent_emo\.csv:3: invalid UTF-8"):
        load_meld(tmp_path, "train")


def test_meld_bad_time_duplicate_and_empty(tmp_path: Path) -> None:
    write_meld(tmp_path, [meld_row(1, "Hi.", "A", "neutral", 0, 0, end="soon")])
    with pytest.raises(CorpusError, match=r"train_sent_emo\.csv:2: bad time 'soon'"):
        load_meld(tmp_path, "train")
    write_meld(tmp_path, [meld_row(1, "Hi.", "A", "neutral", 0, 0), meld_row(2, "Yo.", "B", "neutral", 0, 0)])
    with pytest.raises(CorpusError, match=r"train_sent_emo\.csv:3: duplicate Utterance_ID 0 in Dialogue_ID 0"):
        load_meld(tmp_path, "train")
    write_meld(tmp_path, [meld_row(1, " ", "A", "neutral", 0, 0)])
    with pytest.raises(CorpusError, match=r"train_sent_emo\.csv:2: empty Utterance"):
        load_meld(tmp_path, "train")
    write_meld(tmp_path, [])
    with pytest.raises(CorpusError, match=r"train_sent_emo\.csv: no utterances"):
        load_meld(tmp_path, "train")


# ---------------------------------------------------------------- JSONL


def test_jsonl_unlabelled_and_split_filter(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"dialogue_id": "a", "split": "test", "utterances": [
            {"speaker": "Ann", "text": "Hello.", "start": 0, "end": 1.5}, {"speaker": "Bob", "text": "Hi!"},
            {"speaker": "Ann", "text": "Bye.", "emotion": "neutral"}]},
        dialogue("b", "train"),
        dialogue("c"),
    ])
    assert [d.id for d in load_dialogues_jsonl(path, None)] == ["a", "b", "c"]
    test = load_dialogues_jsonl(path, None, "test")
    assert [(d.id, d.split) for d in test] == [("a", "test"), ("c", None)]  # no split key: in every split
    a = test[0]
    assert [u.label for u in a.utterances] == [None, None, "neutral"]
    assert (a.utterances[0].start, a.utterances[0].end) == (0.0, 1.5)
    assert a.speakers == ["Ann", "Bob"] and a.speaker_indices() == [0, 1, 0]
    assert a.utterances[1].source.endswith("d.jsonl:1 utterance 1")
    assert [d.id for d in load_corpus("jsonl", path, "train")] == ["b", "c"]


def test_jsonl_labelled_requires_label(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [dialogue("a", emotion="neu"), dialogue("b")])
    with pytest.raises(CorpusError, match=r"d\.jsonl:2 utterance 0: missing required key\(s\): emotion"):
        load_dialogues_jsonl(path, IEMOCAP6)


def test_jsonl_unknown_label(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [dialogue("a", emotion="neu"), dialogue("b", emotion="joy")])
    with pytest.raises(CorpusError, match=r"d\.jsonl:2 utterance 0: unknown label 'joy' for label set iemocap-6 "
                                          r"\(allowed: hap, sad, neu, ang, exc, fru\)"):
        load_dialogues_jsonl(path, IEMOCAP6)


def test_jsonl_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(dialogue("a")) + "\n\n" + '{"dialogue_id": "b", \n')
    with pytest.raises(CorpusError, match=r"d\.jsonl:3: invalid JSON"):
        load_dialogues_jsonl(path, None)


def test_jsonl_missing_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"dialogue_id": "a"}])
    with pytest.raises(CorpusError, match=r"d\.jsonl:1: missing required key\(s\): utterances"):
        load_dialogues_jsonl(path, None)
    path = write_jsonl(tmp_path / "d.jsonl", [{"dialogue_id": "a", "utterances": [{"text": "Hi."}]}])
    with pytest.raises(CorpusError, match=r"d\.jsonl:1 utterance 0: missing required key\(s\): speaker"):
        load_dialogues_jsonl(path, None)


def test_jsonl_empty_dialogue(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [dialogue("a"), {"dialogue_id": "empty one", "utterances": []}])
    with pytest.raises(CorpusError, match=r"d\.jsonl:2: dialogue 'empty one' is empty"):
        load_dialogues_jsonl(path, None)


@pytest.mark.parametrize(("bad", "message"), [
    ([dialogue("a"), dialogue("a")], r"d\.jsonl:2: duplicate dialogue_id 'a' \(first on line 1\)"),
    ([dialogue("a", "dev")], r"d\.jsonl:1: dialogue 'a' has unknown split 'dev'"),
    ([dialogue("a", start=2.0, end=1.0)], r"d\.jsonl:1 utterance 0: end 1.0 is before start 2.0"),
    ([dialogue("a", start="0:01")], r"d\.jsonl:1 utterance 0: 'start' must be a number"),
    ([{"dialogue_id": "a", "utterances": [{"speaker": "A", "text": "  "}]}], r"d\.jsonl:1 utterance 0: 'text' must be"),
    ([["not", "an", "object"]], r"d\.jsonl:1: expected a JSON object"),
])
def test_jsonl_invalid_values(tmp_path: Path, bad: list[object], message: str) -> None:
    with pytest.raises(CorpusError, match=message):
        load_dialogues_jsonl(write_jsonl(tmp_path / "d.jsonl", bad), None)


def test_jsonl_bad_encoding_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(dialogue("a")).encode() + b"\n" + b'{"dialogue_id": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"d\.jsonl:2: invalid UTF-8"):
        load_dialogues_jsonl(path, None)
    with pytest.raises(CorpusError, match=r"missing\.jsonl: file not found"):
        load_dialogues_jsonl(tmp_path / "missing.jsonl", None)


# ---------------------------------------------------------------- entry points


def test_corpus_label_set() -> None:
    assert corpus_label_set("meld") is MELD7
    assert corpus_label_set("iemocap") is IEMOCAP6 and corpus_label_set("iemocap-release") is IEMOCAP6
    with pytest.raises(CorpusError, match="explicitly"):
        corpus_label_set("jsonl")
    with pytest.raises(CorpusError, match="unknown corpus 'friends'"):
        corpus_label_set("friends")
    assert CORPORA == ("meld", "iemocap", "iemocap-release", "jsonl") and SPLITS == ("train", "valid", "test")


def test_load_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="unknown corpus 'friends'"):
        load_corpus("friends", tmp_path, "train")
    with pytest.raises(CorpusError, match="unknown split 'dev'"):
        load_corpus("meld", tmp_path, "dev")
    with pytest.raises(CorpusError, match=r"iemocap_dialogues\.jsonl: file not found"):
        load_corpus("iemocap", tmp_path, "train")
    with pytest.raises(CorpusError, match="IEMOCAP_full_release: IEMOCAP release directory not found"):
        load_corpus("iemocap-release", tmp_path, "train")
    path = write_jsonl(tmp_path / "d.jsonl", [dialogue("a", "train")])
    with pytest.raises(CorpusError, match=r"d\.jsonl: no dialogues for split 'test'"):
        load_corpus("jsonl", path, "test")


def test_resolve_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MERC_DATA", raising=False)
    assert resolve_data_dir(tmp_path) == tmp_path
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv("MERC_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    monkeypatch.delenv("MERC_DATA")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert resolve_data_dir(None).resolve() == (tmp_path / "shared" / "data").resolve()
    with pytest.raises(CorpusError, match=r"nope: data directory not found \(given on the command line\).*MERC_DATA"):
        resolve_data_dir(tmp_path / "nope")
    monkeypatch.setenv("MERC_DATA", str(tmp_path / "gone"))
    with pytest.raises(CorpusError, match=r"gone: data directory not found \(from \$MERC_DATA\)"):
        resolve_data_dir(None)
