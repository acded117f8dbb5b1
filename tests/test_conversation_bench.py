"""The conversation benchmark's scores (stream/recordings/diarization.py, bench/conversation.py) on hand-made
references and hypotheses whose right answers are known, and on the committed conversation fixtures."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyannote.metrics", reason="pyannote.metrics is in the bench extra: pip install -e '.[bench]'")

from merc.stream.recordings.diarization import (  # noqa: E402
    boundary_scores,
    cp_wer,
    diarization_error,
    matched_wer,
    pooled_boundaries,
    purity_coverage,
    transcript_wer,
    turn_partition,
    weighted_f1,
)
from merc.stream.recordings.recording import open_recording, read_gold  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONVERSATIONS = ROOT / "tests" / "fixtures" / "conversations"


def turn(start: float, end: float, speaker: str = "A", text: str = "") -> dict:
    return {"t_start": start, "t_end": end, "speaker": speaker, "text": text}


GOLD = [turn(0.0, 2.0, "A", "did you see the game"), turn(2.2, 4.0, "B", "yes it was great"),
        turn(4.3, 6.0, "A", "we won again")]


def bench():
    spec = importlib.util.spec_from_file_location("conversation_bench", ROOT / "bench" / "conversation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["conversation_bench"] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- turn boundaries


def test_merged_turns_halve_boundary_recall() -> None:
    merged = [turn(0.05, 4.0, "S1"), turn(4.3, 6.0, "S2")]
    scores = boundary_scores(GOLD, merged)
    assert scores["recall"] == 0.5 and scores["precision"] == 1.0
    assert scores["f1"] == pytest.approx(2 / 3)
    assert (scores["reference_boundaries"], scores["hypothesis_boundaries"], scores["matched"]) == (2, 1, 1)


def test_split_turns_halve_boundary_precision() -> None:
    split = [turn(0.0, 1.0), turn(1.1, 2.0), turn(2.2, 4.0), turn(4.3, 6.0)]
    scores = boundary_scores(GOLD, split)
    assert scores["recall"] == 1.0 and scores["precision"] == pytest.approx(2 / 3)


def test_boundaries_match_within_the_tolerance_only() -> None:
    near = [turn(0.0, 2.5), turn(2.6, 4.0), turn(4.7, 6.0)]  # starts 0.4 s late: matched
    far = [turn(0.0, 2.5), turn(2.8, 4.0), turn(4.9, 6.0)]  # 0.6 s late: not
    assert boundary_scores(GOLD, near)["f1"] == 1.0
    assert boundary_scores(GOLD, far)["f1"] == 0.0
    assert boundary_scores(GOLD, far, tolerance=0.7)["f1"] == 1.0


def test_an_overlap_boundary_is_the_second_speakers_onset() -> None:
    gold = [turn(0.0, 3.0, "A"), turn(2.5, 5.0, "B")]  # B starts 0.5 s before A ends
    partition = turn_partition(gold)
    assert [(s.start, s.end) for s in partition] == [(0.0, 2.5), (2.5, 5.0)]
    assert boundary_scores(gold, [turn(0.0, 2.5), turn(2.5, 5.0)])["f1"] == 1.0
    assert boundary_scores(gold, [turn(0.0, 5.0)])["recall"] == 0.0


def test_pooled_boundaries_sum_over_recordings() -> None:
    rows = [boundary_scores(GOLD, [turn(0.05, 4.0), turn(4.3, 6.0)]), boundary_scores(GOLD, GOLD)]
    pooled = pooled_boundaries(rows)
    assert pooled["recall"] == pytest.approx(3 / 4) and pooled["precision"] == 1.0


def test_purity_and_coverage_of_a_merge() -> None:
    scores = purity_coverage(GOLD, [turn(0.0, 4.0), turn(4.3, 6.0)])
    assert scores["coverage"] == pytest.approx(1.0)
    assert scores["purity"] < 0.8


# ---------------------------------------------------------------- diarization


def test_der_is_zero_for_the_right_turns_under_any_labels() -> None:
    relabelled = [dict(t, speaker={"A": "S2", "B": "S1"}[t["speaker"]]) for t in GOLD]
    scores = diarization_error(GOLD, relabelled, collar=0.0)
    assert scores["der"] == 0.0 and scores["total_s"] == pytest.approx(2.0 + 1.8 + 1.7)


def test_der_parts_of_a_merged_turn_and_a_missed_one() -> None:
    # the second gold turn (B, 1.8 s) is attributed to A's cluster, the third is not found at all
    hyp = [turn(0.0, 4.0, "S1")]
    scores = diarization_error(GOLD, hyp, collar=0.0)
    total = 5.5
    assert scores["confusion"] == pytest.approx(1.8 / total)
    assert scores["missed"] == pytest.approx(1.7 / total)
    assert scores["false_alarm"] == pytest.approx(0.2 / total)  # the gap 2.0-2.2 said to be speech
    assert scores["der"] == pytest.approx((1.8 + 1.7 + 0.2) / total)
    # a collar forgives the boundaries: less error, never more
    assert diarization_error(GOLD, hyp, collar=0.5)["der"] < scores["der"]


def test_der_within_a_uem_only() -> None:
    from pyannote.core import Segment, Timeline

    hyp = [turn(0.0, 2.0, "S1"), turn(2.2, 4.0, "S2"), turn(4.3, 6.0, "S2")]  # the last one wrong
    assert diarization_error(GOLD, hyp, collar=0.0)["der"] > 0.2
    assert diarization_error(GOLD, hyp, collar=0.0, uem=Timeline([Segment(0.0, 4.1)]))["der"] == 0.0


# ---------------------------------------------------------------- words


def test_wer_kinds_on_a_merge() -> None:
    merged = [turn(0.0, 4.0, "S1", "did you see the game yes it was great"), turn(4.3, 6.0, "S1", "we won again")]
    assert transcript_wer(GOLD, merged)["wer"] == 0.0  # the words are all there, in order
    matched = matched_wer(GOLD, merged, [(0, 0), (2, 1)])
    assert matched["errors"] == 4 and matched["words"] == 8  # "yes it was great" inserted into the first pair
    cp = cp_wer(GOLD, merged)  # one predicted speaker for two: B's words are deletions, then insertions
    assert cp["words"] == 12 and cp["errors"] == 8 and cp["mapping"] == {"S1": "A"}


def test_cpwer_is_zero_for_the_right_words_per_speaker_under_any_labels() -> None:
    hyp = [turn(0.0, 6.0, "X", "did you see the game we won again"), turn(2.2, 4.0, "Y", "yes it was great")]
    cp = cp_wer(GOLD, hyp)
    assert cp["cpwer"] == 0.0 and cp["mapping"] == {"X": "A", "Y": "B"}
    assert cp_wer(GOLD, [])["cpwer"] == 1.0


def test_weighted_f1() -> None:
    assert weighted_f1([("joy", "joy"), ("anger", "anger")]) == 1.0
    assert weighted_f1([("joy", "neutral"), ("joy", "joy")]) == pytest.approx(2 / 3)
    assert weighted_f1([]) is None


# ---------------------------------------------------------------- the benchmark's plumbing on the fixtures


def write_events(path: Path, turns: list[dict]) -> Path:
    lines = [json.dumps({"type": "turn", "turn": i, "speaker": t["speaker"], "text": t["text"], "label": "neutral",
                         "t_start": t["t_start"], "t_end": t["t_end"],
                         "timings_ms": {"segmentation": 600.0, "asr": 300.0, "speaker": 40.0, "features": 10.0,
                                        "graph": 1.0, "total": 951.0}}) for i, t in enumerate(turns)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["short_gaps", "overlap", "three_speakers", "backchannel"])
def test_bench_scores_a_perfect_replay_as_perfect(name: str, tmp_path: Path) -> None:
    conv = bench()
    gold = read_gold(open_recording(CONVERSATIONS / name))
    events = write_events(tmp_path / "events.jsonl", [dict(g, speaker=f"S{g['speaker']}") for g in gold])
    condition = conv.CONDITIONS["2spk-20dB"]
    row = conv.score_recording(CONVERSATIONS / name, events, condition)
    assert row["gold_turns"] == row["predicted_turns"] == len(gold)
    assert row["boundary_f1"] == 1.0 and row["speaker_accuracy"] == 1.0
    assert row["wer"] == 0.0 and row["cpwer"] == 0.0 and row["matched_wer"] == 0.0
    # back-channels are speech nobody predicted here: missed, and nothing else
    bc = sum(b["t_end"] - b["t_start"] for b in open_recording(CONVERSATIONS / name).manifest["synth"]
             .get("backchannels", []))
    assert row["confusion@0.25"] == 0.0 and row["false_alarm@0.25"] == 0.0
    assert (row["missed_s@0.25"] > 0) == (bc > 0.25)
    assert row["compute_ms"] == [351.0] * len(gold)


def test_bench_summary_and_table_of_a_merging_replay(tmp_path: Path) -> None:
    conv = bench()
    path = CONVERSATIONS / "short_gaps"
    gold = read_gold(open_recording(path))
    merged = [dict(gold[0], t_end=gold[1]["t_end"], text=gold[0]["text"] + " " + gold[1]["text"]), *gold[2:]]
    events = write_events(tmp_path / "events.jsonl", merged)
    condition = conv.CONDITIONS["2spk-20dB"]
    row = conv.score_recording(path, events, condition)
    assert row["predicted_turns"] == 5 and row["boundary_recall"] == pytest.approx(4 / 5)
    assert row["wer"] == 0.0 and row["matched_wer"] > 0
    row.update(emotion_scored=True, replay_s=None)
    summary = conv.summarise(condition, [row], [("joy", "joy")], [])
    pooled = summary["pooled"]
    assert pooled["gold_turns"] == 6 and pooled["predicted_turns"] == 5 and pooled["turn_count_ratio"] == 0.8333
    assert pooled["boundary_recall"] == 0.8 and pooled["emotion_wf1_gold_text"] == 100.0
    assert pooled["compute_ms_per_turn"] == {"p50": 351.0, "p95": 351.0}
    table = conv.markdown({"conditions": {"2spk-20dB": summary}})
    assert table.count("\n") == 3 and "| 2spk-20dB | 1 | 5/6 |" in table


def test_ami_clips_become_recordings_outside_the_data(tmp_path: Path, data_dir: Path) -> None:
    conv = bench()
    if not (data_dir / "ami_debug").is_dir():
        pytest.skip("ami_debug not in the data folder")
    args = conv.main.__globals__["argparse"].Namespace(out_dir=tmp_path, data_dir=data_dir, ami_dir=None)
    recordings = conv.ami_recordings(args)
    uems = conv.ami_uem(args)
    assert len(recordings) == 12 and set(uems) == {r.name for r in recordings}
    from pyannote.database.util import load_rttm

    rttm = {**load_rttm(str(data_dir / "ami_debug" / "debug.train.rttm")),
            **load_rttm(str(data_dir / "ami_debug" / "debug.development.rttm"))}
    for recording in recordings:
        assert recording.is_relative_to(tmp_path)
        rec = open_recording(recording)
        gold = read_gold(rec)
        assert len(gold) == len(list(rttm[recording.name].itertracks()))
        assert rec.manifest["duration_s"] == pytest.approx(30.0, abs=0.5)
        assert 1 <= len({g["speaker"] for g in gold}) <= 4
        events = write_events(tmp_path / f"{recording.name}.jsonl", gold)
        row = conv.score_recording(recording, events, conv.CONDITIONS["ami"], uems[recording.name])
        assert row["der@0"] == pytest.approx(0.0, abs=1e-9) and row["der@0.25"] == pytest.approx(0.0, abs=1e-9)
        assert "wer" not in row
