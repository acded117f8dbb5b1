"""Hostile input files: every parser answers with its own MercError naming the file, never a traceback.

1. Named cases (each a traceback, a silent success or a read outside the directory before): a cut or
   malformed WAV, a recording manifest of the wrong shape, gold and events files with bad fields, a
   dialogue file nested 100,000 deep or empty, manifest file names leading out of their directory.
2. `WavFileSource` streams the file in blocks (same samples as converting it whole; flat memory).
3. Properties (hypothesis, 2,000 examples each) over arbitrary and mutated files for every parser:
   a valid result or the module's MercError naming the file, nothing else.
4. The commands on some of these files: status 2, one `PROG: error:` line naming the file, no
   traceback; merc-replay refuses a header-only WAV before any model loads.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from merc.export.serve.bundle import DAG_FILE, ENCODER_FILES, TOKENIZER_FILE, BundleError, read_manifest
from merc.models.data.audio import to_mono_16k
from merc.models.data.corpora import CorpusError, load_dialogues_jsonl
from merc.stream.capture.audio import (
    BLOCK,
    MAX_RATE,
    MIN_RATE,
    AudioSourceError,
    WavFileSource,
    wav_data_frames,
)
from merc.stream.recordings.recording import (
    Recording,
    RecordingError,
    example_recording,
    open_recording,
    read_gold,
    read_jsonl,
)

BIN = Path(sys.executable).parent
DEEP = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on it
HUGE = "1" * 5000  # json.loads raises ValueError (over 4300 digits)
PROPERTY = settings(max_examples=2000, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------- builders

def wav_bytes(frames: int = 64, rate: int = 16000, channels: int = 1, bits: int = 16, tag: int = 1,
              fmt_size: int = 16, data_size: int | None = None, extra: bytes = b"") -> bytes:
    """A WAV file byte by byte, every field ours to choose (soundfile would refuse to write bad ones)."""
    align = channels * ((bits + 7) // 8) & 0xFFFF
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align & 0xFFFFFFFF, align, bits)
    if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: cbSize, valid bits, channel mask, sub-format GUID
        fmt += struct.pack("<HHIH", 22, bits, 0, 3 if bits == 32 else 1) + bytes.fromhex("000000001000800000aa00389b71")
    fmt = (fmt + bytes(max(0, fmt_size - len(fmt))))[:fmt_size]
    size = min(frames * align, 1 << 16)  # (hypothesis draws absurd frame sizes)
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    size = len(data) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", fmt_size) + fmt + (b"\0" if fmt_size & 1 else b"") + extra
    body += b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def recording_dir(directory: Path, manifest: object = None, audio: bytes | None = None) -> Path:
    """A recording: the bundled example's manifest (or `manifest`), a short WAV (or `audio`)."""
    directory.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        manifest = {"format": "merc-recording", "format_version": 1, "sample_rate": 16000, "channels": 1,
                    "audio": "audio.wav", "complete": True}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "audio.wav").write_bytes(wav_bytes(1600) if audio is None else audio)
    return directory


GOLD = [{"turn": 0, "speaker": "A", "text": "hello there", "emotion": "joy", "t_start": 0.1, "t_end": 1.0},
        {"turn": 1, "speaker": "B", "text": "hi", "emotion": "neutral", "t_start": 1.5, "t_end": 2.0}]
TURN = {"v": 1, "seq": 3, "type": "turn", "turn": 0, "speaker": "S1", "t_start": 0.2, "t_end": 0.9,
        "text": "hello there", "label": "joy", "confidence": 0.8}


def jsonl(rows: list) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# ---------------------------------------------------------------- 1. named cases: WAV headers

@pytest.mark.parametrize("data, words", [
    (wav_bytes()[:30], "'fmt ' declares 16 bytes but only 10 follow"),  # cut to 30 bytes (struct.error before)
    (wav_bytes(fmt_size=4), "fmt chunk is 4 bytes"),  # a 4-byte fmt chunk (struct.error before)
    (wav_bytes().replace(struct.pack("<HH", 2, 16), struct.pack("<HH", 0, 16), 1), "frame size"),  # block_align 0
    (wav_bytes(tag=0x55), "unsupported WAV encoding (format tag 0x0055)"),  # MP3 in a WAV: soundfile cannot
    (wav_bytes(channels=0), "0 channels"),
    (wav_bytes(rate=0), "sample rate of 0 Hz"),
    (wav_bytes(extra=b"LIST" + struct.pack("<I", 1 << 30)), "chunk 'LIST' declares 1073741824 bytes"),
    (wav_bytes(tag=0xFFFE, fmt_size=18), "extensible fmt chunk is 18 bytes"),
], ids=["cut-30", "fmt-4", "align-0", "mp3", "channels-0", "rate-0", "chunk-past-end", "extensible-18"])
def test_a_broken_wav_header_is_one_error_naming_the_file(tmp_path, data, words):
    path = tmp_path / "broken.wav"
    path.write_bytes(data)
    for parse in (wav_data_frames, WavFileSource):
        with pytest.raises(AudioSourceError) as err:
            parse(path)
        assert str(path) in str(err.value) and words in str(err.value), str(err.value)


def test_a_zero_frame_wav_is_an_error_not_a_silent_empty_replay(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(wav_bytes(0))
    assert wav_data_frames(path) == (0, 0, 2)
    with pytest.raises(AudioSourceError, match="holds no audio"):
        WavFileSource(path)
    with pytest.raises(RecordingError, match=r"audio\.wav: the recording holds no audio"):
        open_recording(recording_dir(tmp_path / "rec", audio=wav_bytes(0)))


def test_a_cut_data_chunk_is_still_truncation_not_an_error(tmp_path):
    path = tmp_path / "cut.wav"
    path.write_bytes(wav_bytes(1000)[:-500])
    assert wav_data_frames(path) == (1000, 750, 2)
    source = WavFileSource(path)
    assert source.frames == 750 and source.truncated and "truncated" in source.truncated


# ---------------------------------------------------------------- 1. named cases: recording manifests

@pytest.mark.parametrize("manifest, words", [
    ([1, 2], "expected a JSON object, not a list"),
    ({"format": "merc-recording", "format_version": "abc"}, "format_version must be a positive integer, not 'abc'"),
    ({"format": "merc-recording", "format_version": None}, "format_version must be a positive integer, not None"),
    ({"format": "merc-recording", "format_version": 1, "audio": 123}, "audio must be the name of the WAV file"),
    ({"format": "merc-recording", "audio": "../../../../etc/hostname"}, "not a file inside the recording directory"),
    ({"format": "merc-recording", "audio": "/etc/hostname"}, "not a file inside the recording directory"),
    ({"format": "merc-recording", "sample_rate": "16k"}, "sample_rate must be a positive integer"),
    ({"format": "merc-recording", "complete": "yes"}, "complete must be true or false"),
])
def test_a_bad_manifest_is_one_error_naming_it(tmp_path, manifest, words):
    rec = recording_dir(tmp_path / "rec", manifest)
    with pytest.raises(RecordingError) as err:
        open_recording(rec)
    assert str(rec / "manifest.json") in str(err.value) and words in str(err.value), str(err.value)


def test_audio_may_not_leave_the_recording_even_by_a_symbolic_link(tmp_path):
    (tmp_path / "outside.wav").write_bytes(wav_bytes(1600))
    rec = recording_dir(tmp_path / "rec", {"format": "merc-recording", "audio": "link.wav"})
    (rec / "link.wav").symlink_to(tmp_path / "outside.wav")
    with pytest.raises(RecordingError, match="not a file inside the recording directory"):
        open_recording(rec)
    (rec / "sub").mkdir()
    (rec / "sub" / "a.wav").write_bytes(wav_bytes(1600))
    (rec / "manifest.json").write_text(json.dumps({"format": "merc-recording", "audio": "sub/a.wav"}))
    assert open_recording(rec).audio == rec / "sub" / "a.wav"  # inside: fine


def test_a_manifest_sample_rate_that_contradicts_the_wav_is_a_problem_and_the_wav_wins(tmp_path):
    rec = recording_dir(tmp_path / "rec", {"format": "merc-recording", "format_version": 1, "sample_rate": 44100,
                                           "channels": 1}, wav_bytes(4410, rate=22050))
    recording = open_recording(rec)
    assert recording.problems == ("manifest.json: sample_rate 44100 Hz contradicts audio.wav, which has 22050 Hz; "
                                  "using the WAV's",)
    assert WavFileSource(recording.audio).sample_rate == 22050


def test_a_cut_wav_in_a_recording_reports_seconds_at_its_own_rate(tmp_path):
    rec = recording_dir(tmp_path / "rec", audio=wav_bytes(8000, rate=8000)[:-8000])  # 1 s declared, 0.5 s held
    (rec / "manifest.json").write_text(json.dumps({"format": "merc-recording", "sample_rate": 8000}))
    assert open_recording(rec).problems == ("audio.wav: truncated: the header declares 1.00 s but the file holds "
                                            "0.50 s; replaying what is there",)


# ---------------------------------------------------------------- 1. named cases: gold, events, dialogues

def test_gold_with_string_times_names_file_and_line(tmp_path):
    rec = recording_dir(tmp_path / "rec")
    rows = [dict(GOLD[0]), {**GOLD[1], "t_start": "1.5", "t_end": "2.0"}]
    (rec / "gold.jsonl").write_text(jsonl(rows))
    with pytest.raises(RecordingError, match=rf"{rec / 'gold.jsonl'}:2: t_start must be a number of seconds"):
        read_gold(open_recording(rec))


def test_an_empty_gold_file_says_so(tmp_path):
    rec = recording_dir(tmp_path / "rec")
    (rec / "gold.jsonl").write_text("\n")
    with pytest.raises(RecordingError, match=r"gold\.jsonl: no gold turns"):
        read_gold(open_recording(rec))


def test_an_event_turn_without_t_end_names_file_and_line(tmp_path):
    from merc.stream.recordings.scoring import read_events

    path = tmp_path / "events.jsonl"
    path.write_text(jsonl([{"type": "hello"}, {k: v for k, v in TURN.items() if k != "t_end"}]))
    with pytest.raises(RecordingError, match=rf"{path}:2: missing t_end"):
        read_events(path)


def test_a_line_separator_inside_a_json_string_does_not_cut_the_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({**TURN, "text": "one\u2028two\x1cthree"}, ensure_ascii=False) + "\n" + jsonl([TURN]))
    assert [e["text"] for e in read_jsonl(path)] == ["one\u2028two\x1cthree", "hello there"]


def test_deeply_nested_json_lines_are_errors_naming_file_and_line(tmp_path):
    from merc.stream.recordings.scoring import read_events

    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "dialogues.jsonl"
    path.write_text(jsonl([{"dialogue_id": "d", "utterances": [{"speaker": "A", "text": "hi"}]}]) + deep + "\n")
    with pytest.raises(CorpusError, match=rf"{path}:2: invalid JSON \(nested too deeply\)"):
        load_dialogues_jsonl(path, None)
    events = tmp_path / "events.jsonl"
    events.write_text(jsonl([TURN]) + deep + "\n" + jsonl([TURN]))
    with pytest.raises(RecordingError, match=rf"{events}:2: not valid JSON: nested too deeply"):
        read_events(events)
    rec = recording_dir(tmp_path / "rec")
    (rec / "manifest.json").write_text(deep)
    with pytest.raises(RecordingError, match="nested too deeply"):
        open_recording(rec)


def test_an_empty_dialogue_file_is_an_error(tmp_path):
    path = tmp_path / "dialogues.jsonl"
    path.write_text("\n\n")
    with pytest.raises(CorpusError, match=rf"{path}: no dialogues"):
        load_dialogues_jsonl(path, None)


def test_dialogue_times_must_be_finite(tmp_path):
    path = tmp_path / "dialogues.jsonl"
    path.write_text('{"dialogue_id": "d", "utterances": [{"speaker": "A", "text": "hi", "start": NaN}]}\n')
    with pytest.raises(CorpusError, match=rf"{path}:1 utterance 0: 'start' must be a finite number"):
        load_dialogues_jsonl(path, None)


# ---------------------------------------------------------------- 1. named cases: bundle manifests

def write_bundle(directory: Path, change=None) -> Path:
    """A bundle directory whose manifest checks (tiny stand-in files with their real sha256s)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [DAG_FILE, TOKENIZER_FILE, ENCODER_FILES["fp32"], "face_cnn.onnx"]
    files = {}
    for name in names:
        if not (directory / name).is_file():
            (directory / name).write_bytes(name.encode())
        files[name] = hashlib.sha256(name.encode()).hexdigest()
    manifest = {
        "format": "merc-bundle", "format_version": 1, "label_set": "meld-7", "labels": ["joy", "sadness", "anger"],
        "source": {"corpus": "meld", "modalities": ["text", "face"],
                   "experts": {"face": {"file": "face_cnn.onnx"}}},
        "encoder": {"dim": 8, "context_turns": 2, "max_length": 64, "tokenizer": TOKENIZER_FILE,
                    "files": {"fp32": ENCODER_FILES["fp32"]}},
        "dag": {"dims": {"text": 8, "audio": 0, "face": 4}, "hidden": 16, "layers": 2, "omega": 2,
                "max_predecessors": 4},
        "files": files,
    }
    if change is not None:
        change(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.mark.parametrize("change, words", [
    (lambda m: m["files"].update({"../../../../etc/hostname": "0" * 64}), "'../../../../etc/hostname' is not a file"),
    (lambda m: m["files"].update({"/etc/hostname": "0" * 64}), "'/etc/hostname' is not a file inside"),
    (lambda m: m["encoder"]["files"].update(fp16="../x.onnx"), "'../x.onnx' is not a file inside"),
    (lambda m: m["source"]["experts"]["face"].update(file="../../face.onnx"), "'../../face.onnx' is not a file"),
    (lambda m: m["encoder"].update(tokenizer=["tokenizer.json"]), "bad field 'tokenizer'"),
    (lambda m: m["encoder"]["files"].update(fp32=[1]), "bad field 'encoder files'"),
    (lambda m: m.update(labels="abc"), "bad field 'labels'"),
    (lambda m: m["dag"].update(hidden=1e400), "bad field 'hidden'"),
    (lambda m: m.update(source=[]), "bad field 'source'"),
])
def test_bundle_file_names_stay_in_the_bundle_and_fields_are_typed(tmp_path, change, words):
    bundle = write_bundle(tmp_path / "bundle", change)
    with pytest.raises(BundleError) as err:
        read_manifest(bundle)
    assert str(bundle / "manifest.json") in str(err.value) and words in str(err.value), str(err.value)


def test_a_good_bundle_manifest_reads_and_its_files_are_inside(tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    manifest = read_manifest(bundle)
    assert manifest.file(manifest.experts["face"]["file"]) == bundle / "face_cnn.onnx"
    assert manifest.encoder_file("fp32") == bundle / ENCODER_FILES["fp32"]
    with pytest.raises(BundleError, match="not a file inside the bundle directory"):
        manifest.file("../manifest.json")


# ---------------------------------------------------------------- 2. streaming a WAV in blocks

def _whole_file(path: Path) -> np.ndarray:
    """What WavFileSource replayed before it streamed: the whole file read, then converted."""
    with sf.SoundFile(str(path)) as f:
        audio = f.read(dtype="float32", always_2d=True)
        rate = f.samplerate
    return to_mono_16k(audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0], rate)


def _replayed(path: Path) -> np.ndarray:
    source = WavFileSource(path, speed=None)
    source.start()
    chunks = list(source)
    assert all(len(c.samples) == BLOCK for c in chunks[:-1]) and 0 < len(chunks[-1].samples) <= BLOCK
    assert [c.t for c in chunks] == [i * BLOCK / 16000 for i in range(len(chunks))]
    assert all(c.samples.dtype == np.float32 for c in chunks)
    return np.concatenate([c.samples for c in chunks])


@pytest.mark.parametrize("rate, channels, subtype", [(44100, 2, "PCM_16"), (48000, 1, "FLOAT"),
                                                     (22050, 2, "PCM_24"), (8000, 1, "PCM_16"), (44101, 1, "PCM_16")])
def test_streamed_blocks_equal_the_whole_file_conversion(tmp_path, rate, channels, subtype):
    rng = np.random.default_rng(rate)
    path = tmp_path / f"{rate}.wav"
    sf.write(path, np.clip(rng.standard_normal((int(rate * 2.7), channels)) * 0.3, -1, 1), rate, subtype=subtype)
    expected = _whole_file(path)
    assert np.concatenate(list(WavFileSource(path).blocks())).shape == expected.shape
    np.testing.assert_allclose(_replayed(path), expected, rtol=0, atol=1e-6)


def test_the_bundled_example_streams_exactly_as_before():
    path = example_recording() / "audio.wav"
    np.testing.assert_array_equal(_replayed(path), _whole_file(path))


def test_a_ten_minute_wav_replays_in_flat_memory(tmp_path):
    rate, seconds = 44100, 600
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", rate, 2, "PCM_16") as f:
        for _ in range(seconds // 10):
            f.write((rng.standard_normal((rate * 10, 2)) * 0.1).astype(np.float32))
    decoded = rate * seconds * 2 * 4  # float32 stereo: 212 MB, as the whole-file read allocated
    source = WavFileSource(path, speed=None)
    import scipy.signal  # noqa: F401  (imported by the first block otherwise: modules, not audio, 40 MB traced)

    tracemalloc.start()
    try:
        source.start()
        samples = sum(len(chunk.samples) for chunk in source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert samples == 16000 * seconds
    assert peak < 16 * 2**20 < decoded / 10, f"peak {peak / 2**20:.1f} MiB"


# ---------------------------------------------------------------- 3. properties

@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One directory reused by every example of a property (files are rewritten each time)."""
    return tmp_path_factory.mktemp("hostile")


FIELDS = ["type", "speaker", "text", "label", "emotion", "t_start", "t_end", "dialogue_id", "utterances", "file",
          "format", "format_version", "audio", "start", "end", "split", "experts", "dims"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner, max_size=3),
    max_leaves=5)


def mutated(valid: dict, keys: list[str]) -> st.SearchStrategy[dict]:
    """`valid` with some of `keys` removed or replaced by arbitrary JSON values."""
    return st.lists(st.tuples(st.sampled_from(keys), st.none() | json_values), max_size=3).map(
        lambda edits: _apply(valid, edits))


def _apply(valid: dict, edits: list) -> dict:
    row = json.loads(json.dumps(valid))
    for key, value in edits:
        if value is None and key in row:
            del row[key]
        else:
            row[key] = value
    return row


INTERESTING = st.sampled_from([0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 18, 40, 255, 1000, 8000, 16000, 44100, 65535,
                               2**31 - 1, 2**31, 2**32 - 1])


@st.composite
def wav_files(draw) -> bytes:
    """Arbitrary bytes, WAVs built from arbitrary fields and chunks, and valid WAVs with bytes changed."""
    kind = draw(st.sampled_from(["bytes", "fields", "fields", "mutated", "mutated", "mutated"]))
    if kind == "bytes":
        return draw(st.sampled_from([b"", b"RIFF\0\0\0\0WAVE"])) + draw(st.binary(max_size=120))
    if kind == "fields":  # each field usually sensible, sometimes anything
        def field(sensible, anything):
            return draw(sensible if draw(st.booleans()) else anything)

        extra = draw(st.lists(st.tuples(st.sampled_from([b"LIST", b"fmt ", b"junk", b"data", b"fact"]),
                                        INTERESTING, st.binary(max_size=20)), max_size=2))
        return wav_bytes(
            frames=draw(st.integers(0, 40)),
            rate=field(st.sampled_from([8000, 16000, 44100]), INTERESTING | st.integers(0, 2**32 - 1)),
            channels=field(st.integers(1, 2), st.integers(0, 65535)),
            bits=field(st.sampled_from([8, 16, 24, 32]), INTERESTING.filter(lambda b: b < 65536)),
            tag=draw(st.sampled_from([1, 3, 6, 7, 2, 0x55, 0xFFFE, 0])),
            fmt_size=field(st.sampled_from([16, 18, 40]), st.integers(0, 44)),
            data_size=draw(st.none() | INTERESTING),
            extra=b"".join(cid + struct.pack("<I", size) + body for cid, size, body in extra))
    tag = draw(st.sampled_from([1, 3, 0xFFFE]))
    bits = 32 if tag == 3 else draw(st.sampled_from([8, 16, 24, 32]))
    data = bytearray(wav_bytes(frames=draw(st.integers(0, 40)), rate=draw(st.sampled_from([8000, 16000, 44100])),
                               channels=draw(st.integers(1, 2)), tag=tag, bits=bits,
                               fmt_size=40 if tag == 0xFFFE else draw(st.sampled_from([16, 18]))))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["byte", "u32", "u16", "cut", "insert"]))
        at = min(draw(st.integers(0, max(0, len(data) - 1)) | st.integers(0, 44)), len(data))
        if op == "byte" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op in ("u32", "u16"):
            width = 4 if op == "u32" else 2
            value = draw(INTERESTING) % (1 << (8 * width))
            data[at:at + width] = value.to_bytes(width, "little")
        elif op == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@PROPERTY
@given(data=wav_files())
@example(data=wav_bytes()[:30])
@example(data=wav_bytes(fmt_size=4))
@example(data=wav_bytes(0))
def test_property_wav_headers(scratch, data):
    path = scratch / "any.wav"
    path.write_bytes(data)
    try:
        declared, available, align = wav_data_frames(path)
    except AudioSourceError as err:
        assert str(path) in str(err)
        return
    assert declared >= 0 and available >= 0 and align > 0
    try:
        source = WavFileSource(path, speed=None)
    except AudioSourceError as err:
        assert str(path) in str(err)
        return
    assert 0 < source.frames <= min(declared, available) and MIN_RATE <= source.sample_rate <= MAX_RATE
    if source.sample_rate in (8000, 16000, 44100):  # cheap to resample: read it all
        got = sum(len(block) for block in source.blocks())
        assert got <= math.ceil(source.frames * 16000 / source.sample_rate)


@PROPERTY
@given(manifest=st.one_of(json_values, mutated(
           {"format": "merc-recording", "format_version": 1, "sample_rate": 16000, "channels": 1,
            "audio": "audio.wav", "complete": True},
           ["format", "format_version", "sample_rate", "channels", "audio", "complete", "video"]),
           st.binary(max_size=40).map(lambda b: b.decode("latin-1"))),
       audio=st.sampled_from(["audio.wav", "../../../../etc/hostname", "/etc/hostname", "sub/../audio.wav", ".",
                              "", "nope.wav", "a\0b"]) | st.text(max_size=10),
       wav=st.sampled_from([wav_bytes(160), wav_bytes(0), wav_bytes(160, rate=8000), wav_bytes(160)[:30],
                            b"junk", wav_bytes(160)[:-100]]))
@example(manifest=DEEP, audio="audio.wav", wav=wav_bytes(160))
@example(manifest=f'{{"format": "merc-recording", "format_version": {HUGE}}}', audio="audio.wav", wav=wav_bytes(160))
def test_property_recording_manifests(scratch, manifest, audio, wav):
    directory = scratch / "rec"
    directory.mkdir(exist_ok=True)
    if isinstance(manifest, dict) and manifest.get("audio") == "audio.wav":
        manifest["audio"] = audio
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (directory / "manifest.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    (directory / "audio.wav").write_bytes(wav)
    try:
        recording = open_recording(directory)
    except RecordingError as err:
        assert str(directory) in str(err)
        return
    audio_path = recording.audio.resolve()
    assert audio_path.is_relative_to(directory.resolve()) and audio_path.is_file()
    assert all(isinstance(p, str) and "\n" not in p for p in recording.problems)


def _line(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


gold_lines = st.lists(st.one_of(json_values, mutated(GOLD[0], ["speaker", "text", "emotion", "t_start", "t_end"]),
                                st.just(GOLD[1]), st.text(max_size=20)), max_size=4)


@PROPERTY
@given(lines=gold_lines, end=st.sampled_from(["\n", "", "\r\n"]))
@example(lines=[GOLD[0], DEEP, GOLD[1]], end="\n")
@example(lines=[GOLD[0], f'{{"speaker": "A", "text": "x", "t_start": {HUGE}, "t_end": 1}}', GOLD[1]], end="\n")
def test_property_gold_files(scratch, lines, end):
    recording = Recording(scratch, {}, ())
    recording.gold_path.write_text("\n".join(_line(v).replace("\n", " ") for v in lines) + end, encoding="utf-8",
                                   errors="surrogatepass")
    try:
        gold = read_gold(recording)
    except RecordingError as err:
        assert str(recording.gold_path) in str(err)
        return
    assert gold and [g["t_start"] for g in gold] == sorted(g["t_start"] for g in gold)
    for g in gold:
        assert isinstance(g["speaker"], str) and isinstance(g["text"], str) and g["t_start"] <= g["t_end"]


event_lines = st.lists(st.one_of(json_values, mutated(TURN, ["type", "speaker", "t_start", "t_end", "text", "label"]),
                                 st.just(TURN), st.just({"type": "status"}), st.text(max_size=20)), max_size=4)


@PROPERTY
@given(lines=event_lines, end=st.sampled_from(["\n", ""]))
@example(lines=[TURN, DEEP, TURN], end="\n")
@example(lines=[{k: v for k, v in TURN.items() if k != "t_end"}], end="\n")
def test_property_event_files_and_scoring(scratch, lines, end):
    from merc.stream.recordings.scoring import read_events, score_replay

    path = scratch / "events.jsonl"
    path.write_text("\n".join(_line(v).replace("\n", " ") for v in lines) + end, encoding="utf-8",
                    errors="surrogatepass")
    try:
        rows = read_jsonl(path, ("type",))
    except RecordingError as err:
        assert str(path) in str(err)
    else:
        assert all(isinstance(r, dict) and "type" in r for r in rows)
    try:
        events = read_events(path)
    except RecordingError as err:
        assert str(path) in str(err)
        return
    scores = score_replay(GOLD, events)  # whatever the events, scoring them cannot fail
    assert 0 <= scores.paired_turns <= len(GOLD)


dialogue = {"dialogue_id": "d1", "split": "test",
            "utterances": [{"speaker": "A", "text": "Hi.", "emotion": "neutral", "start": 0.0, "end": 0.8},
                           {"speaker": "B", "text": "Hello!"}]}
utterance_values = st.one_of(json_values, mutated(dialogue["utterances"][0], ["speaker", "text", "emotion", "start",
                                                                              "end"]))
dialogue_lines = st.lists(st.one_of(
    json_values, st.text(max_size=20), st.just(dialogue),
    mutated(dialogue, ["dialogue_id", "split", "utterances"]),
    st.lists(utterance_values, max_size=3).map(lambda utts: {"dialogue_id": "d2", "utterances": utts})), max_size=4)


@PROPERTY
@given(lines=dialogue_lines, labelled=st.booleans())
@example(lines=[dialogue, DEEP], labelled=False)
@example(lines=[f'{{"dialogue_id": "d", "utterances": [{{"speaker": "A", "text": "x", "start": {HUGE}}}]}}'],
         labelled=False)
@example(lines=[], labelled=False)
def test_property_dialogue_files(scratch, lines, labelled):
    from merc.models.data.labels import MELD7

    path = scratch / "dialogues.jsonl"
    path.write_text("\n".join(_line(v).replace("\n", " ") for v in lines), encoding="utf-8", errors="surrogatepass")
    try:
        dialogues = load_dialogues_jsonl(path, MELD7 if labelled else None)
    except CorpusError as err:
        assert str(path) in str(err)
        return
    assert dialogues or any(isinstance(v, dict) for v in lines)  # an empty file is an error
    for d in dialogues:
        assert d.id and d.utterances and all(u.speaker and u.text for u in d.utterances)
        for u in d.utterances:
            assert all(t is None or math.isfinite(t) for t in (u.start, u.end))


bundle_keys = ["format", "format_version", "label_set", "labels", "source", "encoder", "dag", "files"]


def _set(path: tuple[str, ...], key: str, value):
    """A change setting manifest[path...][key] = value, where the objects on the path are still objects."""
    def change(manifest: dict) -> None:
        table = manifest
        for step in path:
            table = table.get(step) if isinstance(table, dict) else None
        if isinstance(table, dict):
            if value is _DELETE:
                table.pop(key, None)
            else:
                table[key] = value
    return change


_DELETE = object()


@st.composite
def bundle_changes(draw):
    """A change to a good bundle manifest: a top-level field, a nested field, or a file name."""
    kind = draw(st.sampled_from(["top", "encoder", "dag", "dims", "files", "experts"]))
    value = draw(json_values | st.just(_DELETE))
    if kind == "top":
        return _set((), draw(st.sampled_from(bundle_keys)), value)
    if kind in ("encoder", "dag"):
        key = draw(st.sampled_from(["dim", "context_turns", "max_length", "tokenizer", "files", "hidden", "layers",
                                    "omega", "max_predecessors", "dims"]))
        return _set((kind,), key, value)
    if kind == "dims":
        return _set(("dag", "dims"), draw(st.sampled_from(["text", "audio", "face"])), value)
    name = draw(st.sampled_from(["../x", "/etc/hostname", "a/../../x", ".", "", "a\0b", DAG_FILE, "face_cnn.onnx"])
                | st.text(max_size=8))
    if kind == "files":
        return _set(("files",), name, draw(st.sampled_from(["0" * 64, 5, _DELETE])))
    return _set(("source", "experts", "face"), "file", name)


@PROPERTY
@given(changes=st.lists(bundle_changes(), max_size=3), raw=st.none() | st.binary(max_size=40))
@example(changes=[], raw=DEEP.encode())
@example(changes=[], raw=f'{{"format": "merc-bundle", "format_version": {HUGE}}}'.encode())
def test_property_bundle_manifests(scratch, changes, raw):
    bundle = scratch / "bundle"

    def change(manifest):
        for edit in changes:
            edit(manifest)

    write_bundle(bundle, change)
    if raw is not None:
        (bundle / "manifest.json").write_bytes(raw)
    try:
        manifest = read_manifest(bundle)
    except BundleError as err:
        assert str(bundle) in str(err)
        return
    root = bundle.resolve()
    for name in manifest.files:
        assert manifest.file(name).resolve().is_relative_to(root)
    assert isinstance(manifest.experts, dict) and all(isinstance(m, str) for m in manifest.trained_modalities)
    for spec in manifest.experts.values():
        assert manifest.file(spec["file"]).resolve().is_relative_to(root)
    try:
        manifest.encoder_file("fp32")
    except BundleError as err:
        assert str(bundle) in str(err)


# ---------------------------------------------------------------- 4. the commands

def _run(argv: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "MERC_CACHE": str(tmp_path / "cache"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    started = time.monotonic()
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, env=env, timeout=120)
    return proc, time.monotonic() - started


def _one_error_line(proc: subprocess.CompletedProcess, prog: str, names: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and names in lines[0], proc.stderr


def test_merc_replay_refuses_a_header_only_wav_before_loading_models(tmp_path):
    rec = recording_dir(tmp_path / "rec", audio=wav_bytes(0))
    proc, seconds = _run(["merc-replay", str(rec)], tmp_path)
    _one_error_line(proc, "merc-replay", str(rec / "audio.wav"))
    assert seconds < 5, f"{seconds:.1f} s: the models loaded first"


@pytest.mark.parametrize("case", ["manifest-list", "wav-30-bytes", "audio-outside"])
def test_merc_replay_on_a_hostile_recording_is_one_line_and_status_2(tmp_path, case):
    manifest, audio, names = None, None, "manifest.json"
    if case == "manifest-list":
        manifest = [1, 2, 3]
    elif case == "wav-30-bytes":
        audio, names = wav_bytes()[:30], "audio.wav"
    else:
        manifest = {"format": "merc-recording", "audio": "../../../../etc/hostname"}
    rec = recording_dir(tmp_path / "rec", manifest, audio)
    proc, seconds = _run(["merc-replay", str(rec)], tmp_path)
    _one_error_line(proc, "merc-replay", str(rec / names))
    assert seconds < 5


def test_merc_track_on_deep_and_empty_dialogue_files(tmp_path):
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    proc, _ = _run(["merc-track", "--dialogue", str(deep)], tmp_path)
    _one_error_line(proc, "merc-track", f"{deep}:1")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc, seconds = _run(["merc-track", "--dialogue", str(empty)], tmp_path)
    _one_error_line(proc, "merc-track", f"{empty}: no dialogues")
    assert seconds < 5


def test_merc_eval_on_bad_gold_and_events(tmp_path):
    rec = recording_dir(tmp_path / "rec")
    (rec / "gold.jsonl").write_text(jsonl([{**GOLD[0], "t_start": "0.1"}]))
    events = tmp_path / "events.jsonl"
    events.write_text(jsonl([{k: v for k, v in TURN.items() if k != "t_end"}]))
    proc, _ = _run(["merc-eval", "--replay", str(rec), "--events", str(events)], tmp_path)
    _one_error_line(proc, "merc-eval", f"{rec / 'gold.jsonl'}:1")
    (rec / "gold.jsonl").write_text(jsonl(GOLD))
    proc, _ = _run(["merc-eval", "--replay", str(rec), "--events", str(events)], tmp_path)
    _one_error_line(proc, "merc-eval", f"{events}:1: missing t_end")


def test_merc_replay_refuses_an_events_file_it_cannot_write_before_loading_models(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the events folder should be")
    out = blocker / "replay.events.jsonl"
    proc, seconds = _run(["merc-replay", "--out", str(out)], tmp_path)
    _one_error_line(proc, "merc-replay", str(blocker))
    assert seconds < 5, f"{seconds:.1f} s: the models loaded first"
