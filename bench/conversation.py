"""The live front end on realistic conversations: conditions of voices, turn-taking, noise and speakers.

Each condition is a set of recordings, synthesised once into --out-dir by `merc-synth` (deterministic
given --seed) and reused by later runs; `ami` wraps real meeting clips (`../shared/data/ami_debug`) as
recordings in --out-dir. Each recording is replayed through the live pipeline in a separate process
(`python -m merc.cli.replay DIR --speed max`, as a user runs it) and the turns it emits are scored
against the gold:

- diarization error rate with missed speech / false alarm / speaker confusion (pyannote.metrics,
  collar 0.25 s; AMI also collar 0, within its UEM, overlap scored). Back-channels of the synthetic
  conversations count as their speaker's speech here;
- turn-boundary precision / recall / F1 within 0.5 s (pyannote.metrics' SegmentationPrecision/Recall on
  the turns as a partition: a boundary is where the next turn starts), segmentation purity/coverage;
- predicted and gold turn counts; speaker accuracy (merc-eval's scorer: paired turns, best one-to-one
  speaker mapping, over all gold turns; also over paired turns only);
- WER (jiwer): whole-dialogue transcript (robust to merges), over paired turns, and cpWER per speaker.
  Not scored where the manifest says `text_scored: false` (EmoDB: German) or there is no text (AMI);
- emotion weighted F1 on the ASR path (paired turns, pooled over the condition's recordings) next to
  the same dialogues' gold turns tracked on gold text (`merc-track`), for recordings of --emotion-corpus;
- pipeline compute per turn (`timings_ms`: ASR + speaker + features + graph) p50/p95 and the replay's
  speed (audio seconds per wall second, model loading included). End-of-speech -> event latency
  (`timings_ms.total`) is only meaningful at real time: --latency N replays N recordings per synthetic
  condition again at --speed 1 and reports its p50/p95.

Gold turns exclude back-channels (listed in each manifest's `synth.backchannels`): a pipeline that
makes a turn of one is charged an extra turn and a false boundary, and its words are insertions.

    python bench/conversation.py --out-dir OUT_DIR --label current --markdown OUT_DIR/table.md
    python bench/conversation.py --out-dir OUT_DIR --conditions 2spk-20dB ami

To compare another checkout of the pipeline on the same recordings, give its replay module and
import path:

    python bench/conversation.py --out-dir OUT_DIR --label before \\
        --replay-module merc.cli.replay --pythonpath OTHER_TREE

Prints one JSON object (per-condition means, pooled totals, per-recording rows).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from merc.stream.recordings.diarization import (
    boundary_scores,
    cp_wer,
    diarization_error,
    matched_wer,
    percentiles,
    pooled_boundaries,
    purity_coverage,
    transcript_wer,
    weighted_f1,
)
from merc.stream.recordings.recording import open_recording, read_gold
from merc.stream.recordings.scoring import pair_turns, read_events, score_replay

# how people talk: see stream/recordings/synth.py (conversational turn-taking)
REALISTIC = ["--turn-taking", "conversational", "--backchannels", "0.2", "--loudness-range", "10",
             "--engines", "espeak,flite,festival"]


@dataclass(frozen=True)
class Source:
    """One merc-synth call of a condition: `count` dialogues of `corpus` with `speakers` speakers."""

    corpus: str
    count: int
    speakers: str | None = None
    min_turns: int | None = 6


@dataclass(frozen=True)
class Condition:
    name: str
    description: str
    kind: str  # synth | emodb | ami
    sources: tuple[Source, ...] = ()
    args: tuple[str, ...] = ()
    default: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


TWO = (Source("meld", 4, "2"), Source("iemocap", 3, "2"))
CONDITIONS = {c.name: c for c in (
    Condition("2spk-20dB", "2 speakers (MELD + IEMOCAP test), realistic turn-taking, mixed engines, "
              "pink noise 20 dB", "synth", TWO, (*REALISTIC, "--noise-kind", "pink", "--noise-snr", "20")),
    Condition("2spk-10dB", "as 2spk-20dB, pink noise 10 dB", "synth", TWO,
              (*REALISTIC, "--noise-kind", "pink", "--noise-snr", "10")),
    Condition("2spk-babble-20dB", "as 2spk-20dB, babble noise (6 other voices) 20 dB", "synth", TWO,
              (*REALISTIC, "--noise-kind", "babble", "--noise-snr", "20")),
    Condition("3-4spk-20dB", "3-4 speakers (MELD test), realistic turn-taking, mixed engines, pink noise 20 dB",
              "synth", (Source("meld", 7, "3-4"),), (*REALISTIC, "--noise-kind", "pink", "--noise-snr", "20")),
    Condition("emodb-2spk", "2 EmoDB speakers (human, German; turns and speakers only), realistic gaps, "
              "levels up to 10 dB apart, pink noise 20 dB", "emodb", (Source("emodb", 7, "2"),),
              ("--turn-taking", "conversational", "--loudness-range", "10", "--noise-kind", "pink",
               "--noise-snr", "20")),
    Condition("ami", "AMI meeting clips (real, 3-4 speakers, overlap; pyannote-audio's debug set), DER in "
              "the UEM", "ami"),
    # not in the default run
    Condition("2spk-white-30dB", "as 2spk-20dB, white noise 30 dB", "synth", TWO,
              (*REALISTIC, "--noise-kind", "white", "--noise-snr", "30"), default=False),
    Condition("2spk-clean", "as 2spk-20dB without noise", "synth", TWO, tuple(REALISTIC), default=False),
    Condition("2spk-espeak-20dB", "as 2spk-20dB with espeak-ng voices only", "synth", TWO,
              ("--turn-taking", "conversational", "--backchannels", "0.2", "--loudness-range", "10",
               "--noise-kind", "pink", "--noise-snr", "20"), default=False),
    Condition("2spk-babble-10dB", "as 2spk-20dB, babble noise 10 dB", "synth", TWO,
              (*REALISTIC, "--noise-kind", "babble", "--noise-snr", "10"), default=False),
    Condition("emodb-3-4spk", "3-4 EmoDB speakers, as emodb-2spk", "emodb", (Source("emodb", 7, "3-4"),),
              ("--turn-taking", "conversational", "--loudness-range", "10", "--noise-kind", "pink",
               "--noise-snr", "20"), default=False),
)}


# ---------------------------------------------------------------- recordings


def synthesise(condition: Condition, args: argparse.Namespace) -> list[Path]:
    """The condition's recordings, made once into OUT/<condition>/recordings (a `.complete` file marks a
    finished set; delete the folder to remake it)."""
    folder = args.out_dir / condition.name / "recordings"
    done = folder / ".complete"
    if not done.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for source in condition.sources:
            count = source.count if args.per_source is None else args.per_source
            command = [sys.executable, "-m", "merc.cli.synth", "--corpus", source.corpus, "--count", str(count),
                       "--max-turns", str(args.max_turns), "--seed", str(args.seed), "--out", str(folder),
                       "--overwrite", *condition.args]
            if source.speakers:
                command += ["--speakers", source.speakers]
            if source.min_turns and source.corpus != "emodb":
                command += ["--min-turns", str(source.min_turns)]
            if args.data_dir:
                command += ["--data-dir", str(args.data_dir)]
            print(f"[{condition.name}] {' '.join(command[2:])}", file=sys.stderr)
            subprocess.run(command, check=True)
        done.write_text("merc-synth finished\n", encoding="utf-8")
    return sorted(p for p in folder.iterdir() if (p / "manifest.json").is_file())


def _ami_dir(args: argparse.Namespace) -> Path:
    if args.ami_dir:
        return Path(args.ami_dir)
    from merc.models.data.corpora import resolve_data_dir

    return Path(resolve_data_dir(str(args.data_dir) if args.data_dir else None)) / "ami_debug"


def ami_recordings(args: argparse.Namespace) -> list[Path]:
    """AMI clips as recording directories under OUT/ami/recordings: audio.wav (the clip as 16 kHz PCM-16),
    gold.jsonl (the RTTM's speaker turns, no text or emotion), manifest.json (naming the source clip,
    its RTTM and UEM). Nothing is written into the data folder."""
    import soundfile as sf
    from pyannote.database.util import load_rttm

    source = _ami_dir(args)
    folder = args.out_dir / "ami" / "recordings"
    rttm: dict[str, Any] = {}
    for path in sorted(source.glob("*.rttm")):
        rttm.update(load_rttm(str(path)))
    out = []
    for uri in sorted(rttm):
        target = folder / uri
        wav = source / f"{uri}.wav"
        if not wav.is_file():
            continue
        if not (target / "manifest.json").is_file():
            target.mkdir(parents=True, exist_ok=True)
            audio, rate = sf.read(wav, dtype="float32", always_2d=True)
            audio = audio.mean(axis=1)
            if rate != 16000:
                from scipy.signal import resample_poly

                audio = resample_poly(audio, 16000, rate).astype(np.float32)
            sf.write(target / "audio.wav", np.clip(audio, -1, 1), 16000, subtype="PCM_16", format="WAV")
            turns = sorted((seg.start, seg.end, label) for seg, _, label in rttm[uri].itertracks(yield_label=True))
            gold = "".join(json.dumps({"turn": k, "speaker": label, "text": "", "emotion": None,
                                       "t_start": round(s, 3), "t_end": round(e, 3)}) + "\n"
                           for k, (s, e, label) in enumerate(turns))
            (target / "gold.jsonl").write_text(gold, encoding="utf-8")
            manifest = {"format": "merc-recording", "format_version": 1, "sample_rate": 16000, "channels": 1,
                        "audio": "audio.wav", "video": None, "duration_s": round(audio.size / 16000, 5),
                        "source": "ami",
                        "ami": {"uri": uri, "clip": wav.name, "rttm": "debug.*.rttm", "uem": "debug.*.uem",
                                "from": "pyannote-audio tests/data (AMI Meeting Corpus, CC BY 4.0)"},
                        "synth": {"corpus": "ami", "language": "en", "text_scored": False}}
            (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        out.append(target)
    if not out:
        raise SystemExit(f"no AMI clips with RTTM found in {source}")
    return out


def ami_uem(args: argparse.Namespace) -> dict[str, Any]:
    from pyannote.database.util import load_uem

    uem: dict[str, Any] = {}
    for path in sorted(_ami_dir(args).glob("*.uem")):
        uem.update(load_uem(str(path)))
    return uem


# ---------------------------------------------------------------- replay and scoring


def replay(recording: Path, events: Path, args: argparse.Namespace, speed: str = "max") -> float:
    """Replay `recording` in its own process; the wall seconds it took (model loading included)."""
    events.parent.mkdir(parents=True, exist_ok=True)
    if args.reuse_events and events.is_file():
        return float("nan")
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", args.replay_module, str(recording), "--speed", speed,
                           "--out", str(events), *args.replay_args], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"replay of {recording} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


def compute_ms(turn: dict) -> float:
    """The pipeline's own work on a turn: everything in timings_ms but the silence wait and the total."""
    timings = turn.get("timings_ms") or {}
    return float(sum(v for k, v in timings.items() if k not in ("segmentation", "total")))


def score_recording(recording: Path, events_path: Path, condition: Condition, uem: Any = None) -> dict[str, Any]:
    rec = open_recording(recording)
    gold = read_gold(rec)
    synth = rec.manifest.get("synth") or {}
    events = read_events(events_path)
    predicted = sorted((e for e in events if e.get("type") == "turn"), key=lambda e: e["t_start"])
    scores = score_replay(gold, events).as_dict()
    scores.pop("speaker_mapping")
    backchannels = [dict(b, text="") for b in synth.get("backchannels") or []]
    row: dict[str, Any] = {"recording": recording.name, "corpus": synth.get("corpus"),
                           "duration_s": rec.manifest.get("duration_s"),
                           "gold_turns": len(gold), "predicted_turns": len(predicted),
                           "backchannels": len(backchannels)}
    right = round(scores["speaker_accuracy"] * len(gold))
    row["speaker_accuracy"] = scores["speaker_accuracy"]
    row["speaker_accuracy_paired"] = right / scores["paired_turns"] if scores["paired_turns"] else None
    row["speakers_right"] = right
    row["paired_turns"] = scores["paired_turns"]
    if condition.kind == "ami":
        for collar in (0.25, 0.0):
            der = diarization_error(gold, predicted, collar=collar, uem=uem, skip_overlap=False)
            row.update({f"{k}@{collar:g}": v for k, v in der.items()})
    else:
        der = diarization_error([*gold, *backchannels], predicted, collar=0.25)
        row.update({f"{k}@0.25": v for k, v in der.items()})
    bounds = boundary_scores(gold, predicted, tolerance=0.5)
    row.update({f"boundary_{k}": v for k, v in bounds.items()})
    row.update(purity_coverage(gold, predicted))
    text_scored = synth.get("text_scored", True) and any(g["text"] for g in gold)
    if text_scored:
        pairs = pair_turns(gold, predicted)
        t = transcript_wer(gold, predicted)
        m = matched_wer(gold, predicted, pairs)
        c = cp_wer(gold, predicted)
        row.update(wer=t["wer"], wer_errors=t["errors"], wer_words=t["words"], matched_wer=m["wer"],
                   matched_wer_errors=m["errors"], matched_wer_words=m["words"], cpwer=c["cpwer"],
                   cpwer_errors=c["errors"], cpwer_words=c["words"])
        row["emotion_pairs"] = [(gold[g]["emotion"], predicted[p]["label"]) for g, p in pairs
                                if gold[g].get("emotion")]
    computes = [compute_ms(t) for t in predicted]
    row["compute_ms"] = computes
    return row


def track_gold_text(recordings: list[Path], out: Path, args: argparse.Namespace) -> list[tuple[str, str]]:
    """(gold, predicted) emotions of the recordings' gold turns tracked on their gold text (merc-track,
    with the replay's import path and --gold-model): the same dialogues as the ASR path, with perfect
    turns and words."""
    lines = []
    for recording in recordings:
        gold = read_gold(open_recording(recording))
        lines.append(json.dumps({"dialogue_id": recording.name, "utterances": [
            {"speaker": g["speaker"], "text": g["text"], **({"emotion": g["emotion"]} if g.get("emotion") else {})}
            for g in gold]}))
    if not lines:
        return []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    model = ["--model", str(args.gold_model)] if args.gold_model else []
    proc = subprocess.run([sys.executable, "-m", "merc.cli.track", "--dialogue", str(out), "--json", *model],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"merc-track failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [(r["gold"], r["label"]) for r in results if r.get("gold")]


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None and not (isinstance(r[key], float)
                                                                        and np.isnan(r[key]))]
    return round(statistics.fmean(values), 4) if values else None


def _ratio(rows: list[dict[str, Any]], num: str, den: str) -> float | None:
    total = sum(r.get(den) or 0 for r in rows)
    return round(sum(r.get(num) or 0 for r in rows) / total, 4) if total else None


def first_partial_ms(events: list[dict[str, Any]], pad: float = 0.1) -> list[float]:
    """Per turn with a `turn.partial`, the ms from its speech onset to its first partial: the audio
    the partial covered after the onset (its t_end - t_start, less the segmenter's pad) plus the
    partial's own processing. At real time audio seconds are wall seconds."""
    seen: set[int] = set()
    out = []
    for e in events:
        if e.get("type") == "turn.partial" and e["turn"] not in seen:
            seen.add(e["turn"])
            out.append(1000 * (e["t_end"] - e["t_start"] - pad) + float(e["timings_ms"].get("total", 0.0)))
        elif e.get("type") == "turn":
            seen.discard(e["turn"])  # numbers start again after a reset
    return out


def summarise(condition: Condition, rows: list[dict[str, Any]], gold_text_pairs: list[tuple[str, str]] | None,
              latency: list[dict[str, float]]) -> dict[str, Any]:
    """Per-condition means of per-recording figures and pooled totals (sums of seconds, boundaries,
    words, turns over the condition's recordings)."""
    collars = (0.25, 0.0) if condition.kind == "ami" else (0.25,)
    pooled: dict[str, Any] = {}
    for c in collars:
        total = sum(r[f"total_s@{c:g}"] for r in rows)
        for part in ("missed", "false_alarm", "confusion"):
            pooled[f"{part}@{c:g}"] = round(sum(r[f"{part}_s@{c:g}"] for r in rows) / total, 4) if total else None
        pooled[f"der@{c:g}"] = round(sum(pooled[f"{p}@{c:g}"] or 0 for p in ("missed", "false_alarm",
                                                                             "confusion")), 4) if total else None
    bounds = pooled_boundaries({"matched": r["boundary_matched"],
                                "reference_boundaries": r["boundary_reference_boundaries"],
                                "hypothesis_boundaries": r["boundary_hypothesis_boundaries"],
                                "cut_turns": r["boundary_cut_turns"],
                                "reference_turns": r["boundary_reference_turns"]} for r in rows)
    pooled.update({f"boundary_{k}": (round(v, 4) if v is not None else None) for k, v in bounds.items()})
    gold_turns = sum(r["gold_turns"] for r in rows)
    predicted_turns = sum(r["predicted_turns"] for r in rows)
    pooled.update(gold_turns=gold_turns, predicted_turns=predicted_turns,
                  turn_count_ratio=round(predicted_turns / gold_turns, 4) if gold_turns else None,
                  backchannels=sum(r["backchannels"] for r in rows),
                  speaker_accuracy=_ratio(rows, "speakers_right", "gold_turns"),
                  speaker_accuracy_paired=_ratio(rows, "speakers_right", "paired_turns"),
                  wer=_ratio(rows, "wer_errors", "wer_words"),
                  matched_wer=_ratio(rows, "matched_wer_errors", "matched_wer_words"),
                  cpwer=_ratio(rows, "cpwer_errors", "cpwer_words"))
    emotion_rows = [r for r in rows if r.get("emotion_pairs") is not None and r.get("emotion_scored")]
    asr_pairs = [tuple(p) for r in emotion_rows for p in r["emotion_pairs"]]
    wf1 = weighted_f1(asr_pairs)  # type: ignore[arg-type]
    gold_wf1 = weighted_f1(gold_text_pairs or [])
    pooled.update(emotion_wf1_asr=round(100 * wf1, 2) if wf1 is not None else None,
                  emotion_wf1_gold_text=round(100 * gold_wf1, 2) if gold_wf1 is not None else None,
                  emotion_turns_asr=len(asr_pairs), emotion_turns_gold_text=len(gold_text_pairs or []),
                  emotion_recordings=len(emotion_rows))
    computes = [c for r in rows for c in r["compute_ms"]]
    pooled["compute_ms_per_turn"] = percentiles(computes)
    totals = [float(t.get("total", float("nan"))) for t in latency]
    pooled["latency_ms_speed1"] = percentiles(totals) if totals else None
    # each stage's share at real time: p50 / p95 over the turns that have it, and how many do
    parts = sorted({k for t in latency for k in t if k != "total"})
    pooled["latency_parts_speed1"] = {k: {**percentiles([float(t[k]) for t in latency if k in t]),
                                          "turns": sum(k in t for t in latency)} for k in parts} if latency else None
    speeds = [r["duration_s"] / r["replay_s"] for r in rows if r.get("replay_s")]
    pooled["replay_speed_x"] = round(statistics.fmean(speeds), 2) if speeds else None
    mean_keys = ["speaker_accuracy", "speaker_accuracy_paired", "boundary_f1", "boundary_precision",
                 "boundary_recall", "purity", "coverage", "wer", "matched_wer", "cpwer",
                 *(f"{k}@{c:g}" for c in collars for k in ("der", "missed", "false_alarm", "confusion"))]
    return {"description": condition.description, "recordings": len(rows),
            "pooled": pooled, "means": {k: _mean(rows, k) for k in mean_keys}}


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """The per-condition table (pooled figures) as Markdown."""
    head = ("| condition | recs | turns pred/gold | DER % (miss / FA / conf) | boundary F1 (P / R) | "
            "early cuts / merges % | speaker acc. | WER % (dialogue / matched / cpWER) | "
            "emotion WF1 ASR / gold text | compute ms/turn p50 / p95 | latency ms p50 / p95 |")
    lines = [head, "|" + "---|" * 11]
    for name, c in result["conditions"].items():
        p = c["pooled"]
        der = (f"{_pct(p['der@0.25'])} ({_pct(p['missed@0.25'])} / {_pct(p['false_alarm@0.25'])} / "
               f"{_pct(p['confusion@0.25'])})")
        if "der@0" in p:
            der += f"; collar 0: {_pct(p['der@0'])}"
        f1 = (f"{p['boundary_f1']:.2f} ({p['boundary_precision']:.2f} / {p['boundary_recall']:.2f})"
              if p["boundary_f1"] is not None else "-")
        cuts = ("-" if p.get("boundary_early_cuts") is None else
                f"{_pct(p['boundary_early_cuts'])} / {_pct(p['boundary_merges'])}")
        wer = "-" if p["wer"] is None else f"{_pct(p['wer'])} / {_pct(p['matched_wer'])} / {_pct(p['cpwer'])}"
        emo = ("-" if p["emotion_wf1_asr"] is None else
               f"{p['emotion_wf1_asr']:.1f} / {p['emotion_wf1_gold_text']:.1f}" if p["emotion_wf1_gold_text"]
               is not None else f"{p['emotion_wf1_asr']:.1f} / -")
        comp = p["compute_ms_per_turn"]
        lat = p["latency_ms_speed1"]
        lines.append(f"| {name} | {c['recordings']} | {p['predicted_turns']}/{p['gold_turns']} | {der} | {f1} | "
                     f"{cuts} | {_pct(p['speaker_accuracy'])} % | {wer} | {emo} | {comp['p50']} / {comp['p95']} | "
                     f"{'-' if not lat else str(lat['p50']) + ' / ' + str(lat['p95'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True, help="recordings and event files go here")
    parser.add_argument("--label", default="current", help="names this run's event files")
    parser.add_argument("--conditions", nargs="+", default=None, metavar="NAME",
                        help=f"conditions to run (default: {' '.join(n for n, c in CONDITIONS.items() if c.default)}; "
                             f"also: {' '.join(n for n, c in CONDITIONS.items() if not c.default)})")
    parser.add_argument("--per-source", type=int, default=None, metavar="N",
                        help="dialogues per merc-synth source of a condition (default: the condition's: 4 MELD + 3 "
                             "IEMOCAP, 7 MELD, 7 EmoDB); a set already in --out-dir is reused as it is")
    parser.add_argument("--max-turns", type=int, default=10, help="turns per dialogue at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None, help="corpus location (default: as merc-synth)")
    parser.add_argument("--ami-dir", type=Path, default=None, help="AMI clips (default: DATA/ami_debug)")
    parser.add_argument("--ami-count", type=int, default=None, metavar="N",
                        help="the first N AMI clips (default: all 12)")
    parser.add_argument("--replay-module", default="merc.cli.replay", help="the merc-replay module to run")
    parser.add_argument("--gold-model", type=Path, default=None, metavar="DIR",
                        help="the model merc-track reads the gold text with (default: merc-track's, the text "
                             "default; give the replay's model, e.g. models/live, to compare like with like)")
    parser.add_argument("--pythonpath", default=None, help="PYTHONPATH for the replay and merc-track (another "
                                                            "checkout)")
    parser.add_argument("--replay-args", nargs=argparse.REMAINDER, default=[],
                        help="the rest of the command line goes to every replay (e.g. --asr-window turn)")
    parser.add_argument("--emotion-corpus", default="meld",
                        help="score emotions on recordings of this corpus (the model's label set; default meld)")
    parser.add_argument("--latency", type=int, default=0, metavar="N",
                        help="also replay the first N recordings of each synthetic condition at --speed 1 and "
                             "report end-of-speech -> event latency (timings_ms.total)")
    parser.add_argument("--reuse-events", action="store_true",
                        help="score event files already in --out-dir for this --label instead of replaying")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    names = args.conditions or [n for n, c in CONDITIONS.items() if c.default]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        parser.error(f"unknown condition(s) {', '.join(unknown)} (known: {', '.join(CONDITIONS)})")

    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "conversation",
        "label": args.label,
        "command": "python bench/conversation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": {"seed": args.seed, "max_turns": args.max_turns, "per_source": args.per_source,
                     "collar_s": 0.25, "boundary_tolerance_s": 0.5, "replay_args": args.replay_args},
        "conditions": {},
        "recordings": [],
    }
    for name in names:
        condition = CONDITIONS[name]
        recordings = ami_recordings(args)[:args.ami_count] if condition.kind == "ami" else synthesise(condition, args)
        uems = ami_uem(args) if condition.kind == "ami" else {}
        rows = []
        for recording in recordings:
            events = args.out_dir / "events" / args.label / name / f"{recording.name}.jsonl"
            seconds = replay(recording, events, args)
            uem = uems.get(recording.name)
            row = score_recording(recording, events, condition, uem)
            row.update(condition=name, replay_s=None if seconds != seconds else round(seconds, 2))
            row["emotion_scored"] = row.get("corpus") == args.emotion_corpus and "emotion_pairs" in row
            rows.append(row)
            brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                     if k in ("gold_turns", "predicted_turns", "der@0.25", "boundary_f1", "speaker_accuracy", "wer",
                              "replay_s")}
            print(f"[{name}] {recording.name}: {brief}", file=sys.stderr)
        latency: list[dict[str, float]] = []
        first_partials: list[float] = []
        if args.latency and condition.kind != "ami":
            for recording in recordings[:args.latency]:
                events = args.out_dir / "events" / f"{args.label}-speed1" / name / f"{recording.name}.jsonl"
                replay(recording, events, args, speed="1")
                replayed = read_events(events)
                latency += [e.get("timings_ms") or {} for e in replayed if e.get("type") == "turn"]
                first_partials += first_partial_ms(replayed)
        emotion_recordings = [r for r, row in zip(recordings, rows, strict=True) if row["emotion_scored"]]
        gold_pairs = track_gold_text(emotion_recordings, args.out_dir / "gold-text" / args.label / f"{name}.jsonl",
                                     args) if emotion_recordings else None
        result["conditions"][name] = summarise(condition, rows, gold_pairs, latency)
        result["conditions"][name]["pooled"]["first_partial_ms_speed1"] = (
            {**percentiles(first_partials), "turns": len(first_partials)} if first_partials else None)
        for row in rows:
            row.pop("emotion_pairs", None)
            computes = row.pop("compute_ms")
            row["compute_ms_per_turn"] = percentiles(computes)
        result["recordings"] += rows
        print(f"[{name}] {json.dumps(result['conditions'][name]['pooled'])}", file=sys.stderr)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if args.markdown:
        args.markdown.write_text(markdown(result), encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
