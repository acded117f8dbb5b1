"""Speech recognition alone on conversational turns: Whisper tiny.en vs base, with and without a
prompt from the earlier turns, with and without the repetition and hallucination guards.

Turns are cut from merc-synth recordings at their gold spans (gold.jsonl t_start/t_end), so the
segmenter's errors do not count; overlapping speech of the other voice stays in, as it would live.
Each condition is a folder of recordings, e.g. (the figures in the README):

    merc-synth --corpus meld --split test --count 8 --max-turns 10 --pause 0.25 0.4 \\
        --overlap-prob 0.2 --out RECORDINGS/clean
    merc-synth ... --noise-snr 10 --out RECORDINGS/noisy10
    python bench/asr_conversation.py --condition clean=RECORDINGS/clean \\
        --condition noisy10=RECORDINGS/noisy10 --model tiny.en --passes raw prompt:32 timing

Passes, each a decode of every turn in dialogue order (faster-whisper, int8, CPU, beam 5 unless --beam, the
full window unless --window turn):

- ``raw``: no prompt, no repetition control, word probabilities on. The guards are then applied
  to its transcripts offline (``variants``): they only read what the decoder wrote, so each
  variant's WER is what decoding with it gives, without decoding again;
- ``prompt:N``: each turn prompted with the last N words of the earlier turns' transcripts of the
  same dialogue, as the live pipeline passes them (guarded by the default ``Decoding``);
- ``decoder:nrK`` / ``decoder:rpP`` / ``decoder:nrK,rpP``: the decoder's own repetition controls
  (no_repeat_ngram_size K, repetition_penalty P), guards applied offline as for ``raw``;
- ``timing``: each turn decoded with and without word timestamps (the same loaded model,
  alternating, so machine load falls on both alike): the alignment's cost.

``--merge K`` joins K consecutive gold turns into one, as the live segmenter merges turns separated
by short gaps (longer turns, where a decoder loops more); ``--window turn`` uses the short encoder
window.

WER is jiwer's over all turns of a condition (lowercase, punctuation removed, as merc-eval scores).
Decode times are wall-clock and CPU milliseconds per turn (p50, p95); on a shared machine CPU
time is the steadier figure. Results merge into --out (default
bench/results/<date>-asr-conversation.json) under "<model>|<condition>|<pass>", so passes can be
run one at a time; "guard_examples" lists the turns whose text the guards changed, and
--transcripts FILE keeps every transcript with its scores and words.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf
from asr import cpu_model  # bench/asr.py, beside this script

from merc.stream.recordings.scoring import normalise_text
from merc.stream.turns.transcribe import (
    COMPRESSION_RATIO_THRESHOLD,
    Decoding,
    FasterWhisperTranscriber,
    Transcript,
    apply_guards,
    conversation_prompt,
)

RATE = 16000
DEFAULT = Decoding()
# Guards applied offline to a pass's transcripts: name -> Decoding (None: drop any turn whose raw
# text loops, instead of cutting the loop).
VARIANTS: dict[str, Decoding | None] = {
    "none (Whisper's silence rule only)": Decoding.raw(),
    "repeats>2 cut": replace(Decoding.raw(), max_repeats=2),
    "repeats>3 cut": replace(Decoding.raw(), max_repeats=3),
    "repeats>4 cut": replace(Decoding.raw(), max_repeats=4),
    "compression ratio > 2.4 dropped": replace(Decoding.raw(), compression_ratio_threshold=2.4),
    "default: repeats>3 cut + compression ratio": DEFAULT,
    "looping turn dropped": None,
    "default + avg logprob < -1.0 dropped": replace(DEFAULT, logprob_threshold=-1.0),
    "default + avg logprob < -1.5 dropped": replace(DEFAULT, logprob_threshold=-1.5),
    "default + words p < 0.05 dropped": replace(DEFAULT, min_word_probability=0.05),
    "default + words p < 0.1 dropped": replace(DEFAULT, min_word_probability=0.1),
    "default + words p < 0.2 dropped": replace(DEFAULT, min_word_probability=0.2),
    "default + words p < 0.3 dropped": replace(DEFAULT, min_word_probability=0.3),
}


def load_turns(root: Path, merge: int = 1) -> list[list[tuple[str, np.ndarray]]]:
    """Per recording under ``root`` (sorted), its turns in order: (gold text, audio at the gold span).
    ``merge`` > 1 joins that many consecutive turns into one (their texts, the span from the first's
    start to the last's end), as the live segmenter does when gaps are short."""
    dialogues = []
    for folder in sorted(p for p in root.iterdir() if (p / "gold.jsonl").is_file()):
        audio, rate = sf.read(str(folder / "audio.wav"), dtype="float32")
        if rate != RATE:
            raise SystemExit(f"{folder}: {rate} Hz, expected {RATE}")
        gold = [json.loads(line) for line in (folder / "gold.jsonl").read_text().splitlines()]
        turns = []
        for i in range(0, len(gold), merge):
            group = gold[i:i + merge]
            span = audio[int(group[0]["t_start"] * RATE):int(round(max(g["t_end"] for g in group) * RATE))]
            turns.append((" ".join(g["text"] for g in group), span))
        dialogues.append(turns)
    return dialogues


def wer(references: list[str], hypotheses: list[str]) -> float:
    pairs = [(normalise_text(r), normalise_text(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]  # a gold turn without words ("...") has no word to miss
    return round(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]), 4)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 1), "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 1)}


def decode(asr: FasterWhisperTranscriber, dialogues: list[list[tuple[str, np.ndarray]]],
           prompt_words: int) -> tuple[list[Transcript], list[float], list[float]]:
    """Every turn in dialogue order, prompted from the same dialogue's earlier transcripts."""
    results, wall, cpu = [], [], []
    for turns in dialogues:
        history: list[str] = []
        for _, audio in turns:
            prompt = conversation_prompt(history, prompt_words)
            c0, t0 = time.process_time(), time.perf_counter()
            result = asr.transcribe(audio, prompt=prompt)
            wall.append(1000 * (time.perf_counter() - t0))
            cpu.append(1000 * (time.process_time() - c0))
            results.append(result)
            history.append(result.text)
    return results, wall, cpu


def guarded(result: Transcript, decoding: Decoding | None) -> tuple[str, str | None]:
    """(text, why dropped) of a raw transcript under other guards (one window: turns < 30 s)."""
    if decoding is None:  # drop the whole turn when the decoder looped
        kept = apply_guards(result.raw_text, result.words, result.avg_logprob, result.no_speech_prob, Decoding.raw())
        if kept.text and (result.compression_ratio > COMPRESSION_RATIO_THRESHOLD
                          or apply_guards(result.raw_text, (), result.avg_logprob, result.no_speech_prob,
                                          replace(Decoding.raw(), max_repeats=3)).trimmed):
            return "", "looped"
        return kept.text, kept.dropped
    kept = apply_guards(result.raw_text, result.words, result.avg_logprob, result.no_speech_prob, decoding)
    return kept.text, kept.dropped


def summary(references: list[str], results: list[Transcript], wall: list[float], cpu: list[float],
            variants: bool) -> dict:
    out = {"turns": len(results), "wer": wer(references, [r.text for r in results]),
           "decode_wall_ms": percentiles(wall), "decode_cpu_ms": percentiles(cpu),
           "dropped": dict(Counter(r.dropped for r in results if r.dropped)),
           "trimmed": dict(Counter(t for r in results for t in r.trimmed)),
           "raw_looped": sum(r.compression_ratio > COMPRESSION_RATIO_THRESHOLD for r in results)}
    if variants:
        out["variants"] = {}
        for name, decoding in VARIANTS.items():
            kept = [guarded(r, decoding) for r in results]
            out["variants"][name] = {"wer": wer(references, [text for text, _ in kept]),
                                     "dropped": sum(why is not None for _, why in kept)}
    return out


def timing(asr: FasterWhisperTranscriber, dialogues: list[list[tuple[str, np.ndarray]]], limit: int) -> dict:
    """Decode time with and without word timestamps, alternating on the same turns."""
    with_words = FasterWhisperTranscriber(asr.model, "words", window=asr.window, beam_size=asr.beam_size,
                                          decoding=replace(DEFAULT, words=True))
    without = FasterWhisperTranscriber(asr.model, "no-words", window=asr.window, beam_size=asr.beam_size,
                                       decoding=DEFAULT)
    audio = [a for turns in dialogues for _, a in turns][:limit]
    with_words.transcribe(audio[0])  # warm-up
    times: dict[str, list[float]] = {"words": [], "no_words": [], "cpu_words": [], "cpu_no_words": []}
    for clip in audio:
        for key, asr in (("words", with_words), ("no_words", without)):
            c0, t0 = time.process_time(), time.perf_counter()
            asr.transcribe(clip)
            times[key].append(1000 * (time.perf_counter() - t0))
            times["cpu_" + key].append(1000 * (time.process_time() - c0))
    deltas = [a - b for a, b in zip(times["cpu_words"], times["cpu_no_words"], strict=True)]
    return {"turns": len(audio), "wall_ms_words": percentiles(times["words"]),
            "wall_ms_no_words": percentiles(times["no_words"]), "cpu_ms_words": percentiles(times["cpu_words"]),
            "cpu_ms_no_words": percentiles(times["cpu_no_words"]), "cpu_ms_added_by_words": percentiles(deltas)}


def pass_decoding(name: str) -> tuple[int, Decoding]:
    """(prompt words, decoding) of a pass name."""
    if name == "raw":
        return 0, Decoding.raw()
    if name.startswith("prompt:"):
        return int(name.split(":", 1)[1]), DEFAULT
    if name.startswith("decoder:"):
        decoding = Decoding.raw()
        for part in name.split(":", 1)[1].split(","):
            if part.startswith("nr"):
                decoding = replace(decoding, no_repeat_ngram_size=int(part[2:]))
            elif part.startswith("rp"):
                decoding = replace(decoding, repetition_penalty=float(part[2:]))
            else:
                raise SystemExit(f"unknown decoder option {part!r} (nrK, rpP)")
        return 0, decoding
    raise SystemExit(f"unknown pass {name!r} (raw, prompt:N, decoder:..., timing)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--condition", action="append", required=True, metavar="NAME=DIR",
                        help="a condition and its folder of merc-synth recordings (repeatable)")
    parser.add_argument("--model", default="tiny.en", help="Whisper model (tiny.en, base, a directory)")
    parser.add_argument("--passes", nargs="+", default=["raw", "prompt:32", "timing"])
    parser.add_argument("--threads", type=int, default=2, help="CTranslate2 CPU threads")
    parser.add_argument("--beam", type=int, default=5, help="beam width (1: greedy; merc-live's is 5)")
    parser.add_argument("--window", choices=("full", "turn"), default="full",
                        help="the encoder window (merc-live --asr-window)")
    parser.add_argument("--timing-turns", type=int, default=40, help="turns in the timing pass")
    parser.add_argument("--merge", type=int, default=1,
                        help="join this many consecutive gold turns into one (a merged turn, as live)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--transcripts", type=Path, default=None,
                        help="also keep every turn's transcript, scores and words in this JSON file (merged by pass)")
    args = parser.parse_args()
    date = datetime.date.today().isoformat()
    out = args.out or Path(__file__).resolve().parent / "results" / f"{date}-asr-conversation.json"
    results = json.loads(out.read_text()) if out.is_file() else {
        "benchmark": "asr-conversation", "runs": {}, "timing": {}}
    transcripts_out = json.loads(args.transcripts.read_text()) if args.transcripts and args.transcripts.is_file() \
        else {}
    conditions = dict(c.split("=", 1) for c in args.condition)
    asr = FasterWhisperTranscriber.load(args.model, device="cpu", threads=args.threads, window=args.window,
                                        beam_size=args.beam)
    label = args.model if args.window == "full" else f"{args.model}+turn-window"
    label += "" if args.beam == 5 else f"+beam{args.beam}"
    asr.transcribe(np.zeros(RATE, dtype=np.float32))  # warm-up
    for condition, folder in conditions.items():
        dialogues = load_turns(Path(folder), args.merge)
        references = [text for turns in dialogues for text, _ in turns]
        manifest = json.loads((sorted(Path(folder).iterdir())[0] / "manifest.json").read_text())
        results.setdefault("conditions", {})[condition] = {
            "recordings": len(dialogues), "turns": len(references), "merged": args.merge,
            "synth": {k: manifest["synth"].get(k) for k in ("corpus", "split", "pause_s", "overlap_prob", "noise",
                                                            "seed")}}
        for name in args.passes:
            key = f"{label}|{condition}|{name}"
            load = os.getloadavg()[0]
            if name == "timing":
                results["timing"][key] = timing(asr, dialogues, args.timing_turns)
                results["timing"][key]["load_1min_before"] = round(load, 2)
                print(key, json.dumps(results["timing"][key]), flush=True)
                continue
            prompt_words, decoding = pass_decoding(name)
            asr.decoding = decoding
            started = time.perf_counter()
            transcripts, wall, cpu = decode(asr, dialogues, prompt_words)
            run = summary(references, transcripts, wall, cpu, variants=prompt_words == 0)
            run.update(prompt_words=prompt_words, decoding=decoding.__dict__,
                       seconds=round(time.perf_counter() - started, 1),
                       load_1min_before_after=[round(load, 2), round(os.getloadavg()[0], 2)])
            results["runs"][key] = run
            results.setdefault("guard_examples", {})[key] = [
                [ref, t.raw_text, t.text, t.dropped or ",".join(t.trimmed)]
                for ref, t in zip(references, transcripts, strict=True)
                if t.trimmed or (t.dropped and t.dropped != "no_speech")]
            print(key, json.dumps({k: v for k, v in run.items() if k != "decoding"}), flush=True)
            if args.transcripts is not None:
                transcripts_out[key] = [
                    {"gold": ref, "text": t.text, "raw": t.raw_text, "dropped": t.dropped, "trimmed": list(t.trimmed),
                     "avg_logprob": round(t.avg_logprob, 3), "no_speech_prob": round(t.no_speech_prob, 3),
                     "compression_ratio": round(t.compression_ratio, 2),
                     "words": [[w.word, w.start, w.end, round(w.probability, 3)] for w in t.words]}
                    for ref, t in zip(references, transcripts, strict=True)]
                args.transcripts.write_text(json.dumps(transcripts_out) + "\n")
        results.update(date=date, cpu=cpu_model(), cpus=os.cpu_count(), threads=args.threads)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
