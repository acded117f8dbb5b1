"""`merc-synth`: synthesise conversational recordings from corpus or user dialogues with espeak-ng."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from merc.cli.common import HelpFormatter
from merc.cli.exits import guarded
from merc.models.data.corpora import (
    SPLITS,
    Dialogue,
    load_corpus,
    load_dialogues_jsonl,
    resolve_data_dir,
)
from merc.stream.recordings.synth import (
    NOISE_KINDS,
    Espeak,
    Recording,
    SynthConfig,
    generate_recordings,
    select_dialogues,
)

CORPORA = ("meld", "iemocap", "iemocap-release")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merc-synth",
        description=(
            "Synthesise conversational recordings with espeak-ng: each dialogue is read aloud with a distinct "
            "voice per speaker (alternating male/female espeak-ng voice variants, each with its own pitch and "
            "speed), natural pauses between turns, occasional overlaps and optional background noise. Each "
            "dialogue becomes one "
            "directory OUT/<dialogue id>/ holding audio.wav (16 kHz mono PCM_16), gold.jsonl (per spoken turn: "
            "turn, speaker, text, emotion, t_start, t_end = the voiced span in seconds) and manifest.json (format "
            "merc-recording v1, with every generation parameter). The voices carry no acted emotion: the gold "
            "emotions are the corpus labels of the text."),
        epilog=("Needs the espeak-ng program (Debian package espeak-ng). Output is deterministic given --seed, the "
                "dialogue and the espeak-ng version. Exit status: 0 written, 2 bad input (dialogues, ids, options, "
                "existing output) or espeak-ng missing or failing, 70 internal error (traceback in a log)."),
        formatter_class=HelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", choices=CORPORA, help="read the dialogues of this corpus (see --data-dir, --split)")
    src.add_argument("--dialogues", type=Path, metavar="FILE",
                     help="read dialogues from this JSONL file (one {\"dialogue_id\", \"utterances\": [{\"speaker\", "
                          "\"text\", \"emotion\"?}]} per line, the merc-live format)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="with --corpus: folder holding meld/ and iemocap/ (default: $MERC_DATA, else "
                             "../shared/data relative to the working directory)")
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="split to read (default: test for --corpus; every dialogue of a --dialogues file, "
                             "otherwise those of this split plus those without a split key)")
    parser.add_argument("--dialogue-ids", nargs="+", default=None, metavar="ID",
                        help="synthesise these dialogues, in this order (ids may also be comma-separated); "
                             "MELD ids look like test_0")
    parser.add_argument("--count", type=int, default=None, metavar="N",
                        help="synthesise the first N dialogues (default: all of them, or those of --dialogue-ids)")
    parser.add_argument("--max-turns", type=int, default=None, metavar="N",
                        help="speak at most the first N turns of each dialogue (default: all)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder; one recording directory per dialogue, named by its id")
    parser.add_argument("--seed", type=int, default=0, help="seed of voices, pauses, overlaps and noise")
    parser.add_argument("--pause", type=float, nargs=2, default=(0.7, 1.6), metavar=("MIN", "MAX"),
                        help="silence between turns, seconds, drawn uniformly (the live segmenter ends a turn "
                             "after ~0.6 s of silence)")
    parser.add_argument("--overlap-prob", type=float, default=0.1, metavar="P",
                        help="probability that a turn by another speaker starts before the previous turn ends")
    parser.add_argument("--overlap", type=float, nargs=2, default=(0.2, 0.5), metavar=("MIN", "MAX"),
                        help="length of an overlap, seconds, drawn uniformly (at most half of either turn)")
    parser.add_argument("--edge-silence", type=float, default=0.5, metavar="S",
                        help="silence before the first and after the last turn, seconds")
    parser.add_argument("--max-internal-pause", type=float, default=0.4, metavar="S",
                        help="longest silence kept inside one turn (espeak's sentence breaks), seconds")
    parser.add_argument("--noise-snr", type=float, default=None, metavar="DB",
                        help="add background noise at this SNR in dB relative to the speech power (default: none)")
    parser.add_argument("--noise-kind", choices=NOISE_KINDS, default="pink", help="background noise colour")
    parser.add_argument("--espeak", default="espeak-ng", metavar="PROGRAM",
                        help="espeak-ng executable (a name on PATH or a path)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace recordings already in --out (default: stop with an error)")
    return parser


def _load(args: argparse.Namespace) -> tuple[list[Dialogue], str, dict[str, object]]:
    """The dialogues asked for, a description for errors, and the source fields of the manifest."""
    if args.dialogues is not None:
        dialogues = load_dialogues_jsonl(args.dialogues, None, args.split)
        source = {"corpus": "jsonl", "split": args.split, "dialogues_file": args.dialogues.name}
        return dialogues, str(args.dialogues), source
    split = args.split or "test"
    dialogues = load_corpus(args.corpus, resolve_data_dir(args.data_dir), split)
    return dialogues, f"{args.corpus} {split}", {"corpus": args.corpus, "split": split}


def main(argv: list[str] | None = None) -> int:
    """merc-synth (exit statuses: merc.cli.exits)."""
    return guarded("merc-synth", lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.data_dir is not None and args.dialogues is not None:
        parser.error("--data-dir applies to --corpus; --dialogues names its file itself")
    if args.dialogue_ids and args.count is not None:
        parser.error("give --dialogue-ids or --count, not both")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tqdm import tqdm

    ids = [i for arg in args.dialogue_ids or () for i in arg.split(",") if i]
    config = SynthConfig(seed=args.seed, pause_s=tuple(args.pause), overlap_prob=args.overlap_prob,
                         overlap_s=tuple(args.overlap), edge_silence_s=args.edge_silence,
                         max_internal_pause_s=args.max_internal_pause, noise_snr_db=args.noise_snr,
                         noise_kind=args.noise_kind, max_turns=args.max_turns)
    espeak = Espeak.find(args.espeak)
    dialogues, where, source = _load(args)
    chosen = select_dialogues(dialogues, ids or None, args.count, where)
    print(f"merc-synth: {len(chosen)} dialogue(s) from {where} -> {args.out} (espeak-ng {espeak.version}, "
          f"seed {args.seed})", file=sys.stderr)
    with tqdm(total=len(chosen), unit="dialogue", desc="merc-synth", file=sys.stderr) as bar:
        def written(path: Path, rec: Recording) -> None:
            bar.write(f"wrote {path}: {len(rec.turns)} turns, {rec.duration_s:.1f} s, "
                      f"{rec.synth['overlaps']} overlap(s), {len(rec.synth['voices'])} voice(s)", file=sys.stderr)
            bar.update()

        generate_recordings(chosen, args.out, config, espeak, source, overwrite=args.overwrite,
                            on_written=written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
