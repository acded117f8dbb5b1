"""`merc-synth`: synthesise conversational recordings from corpus or user dialogues (espeak-ng, flite,
festival voices), or lay out EmoDB's human recordings as conversations."""
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
    ENGINES,
    NOISE_KINDS,
    TURN_TAKING,
    Engines,
    Espeak,
    Recording,
    SynthConfig,
    SynthError,
    emodb_dialogues,
    filter_by_speakers,
    generate_recordings,
    parse_speaker_range,
    recording_name,
    select_dialogues,
    synthesize_emodb_dialogue,
    write_recording,
)

CORPORA = ("meld", "iemocap", "iemocap-release", "emodb")
# defaults that depend on --turn-taking: (overlap probability, overlap range in seconds)
OVERLAP_DEFAULTS = {"uniform": (0.1, (0.2, 0.5)), "conversational": (0.15, (0.1, 1.0))}


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
        epilog=("Needs the espeak-ng program (Debian package espeak-ng); --engines flite needs flite, festival needs "
                "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts. Realistic conversations: "
                "--turn-taking conversational "
                "(gaps of median 0.2 s, 15% of speaker changes overlapping by 0.1-1 s, short pauses between one "
                "speaker's utterances) --backchannels 0.2 --loudness-range 10 --engines espeak,flite,festival "
                "--noise-kind babble --noise-snr 20. --corpus emodb lays out EmoDB's human recordings (German) as "
                "dialogues of --speakers speakers: gold text is empty and the manifest says so (no WER). Output is "
                "deterministic given --seed, the dialogue and the engine versions (all in the manifest). Exit "
                "status: 0 written, 2 bad input (dialogues, ids, options, existing output) or a synthesiser missing "
                "or failing, 70 internal error (traceback in a log)."),
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
                        help="synthesise the first N dialogues (default: all of them, or those of --dialogue-ids; "
                             "with --corpus emodb: 8)")
    parser.add_argument("--max-turns", type=int, default=None, metavar="N",
                        help="speak at most the first N turns of each dialogue (default: all; with --corpus emodb: "
                             "the turns of each made-up dialogue, 10)")
    parser.add_argument("--min-turns", type=int, default=None, metavar="N",
                        help="only dialogues with at least N spoken turns (counting at most --max-turns)")
    parser.add_argument("--speakers", default=None, metavar="N|MIN-MAX",
                        help="only dialogues with this many speakers among the turns spoken (2, or 3-4); with "
                             "--corpus emodb: speakers per made-up dialogue (default 2)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder; one recording directory per dialogue, named by its id")
    parser.add_argument("--seed", type=int, default=0, help="seed of voices, pauses, overlaps and noise")
    parser.add_argument("--turn-taking", choices=TURN_TAKING, default="uniform",
                        help="uniform: pauses drawn uniformly from --pause; conversational: gaps as people leave "
                             "them (lognormal, median --gap-median), overlaps of 0.1-1 s at 15%% of speaker "
                             "changes, pauses between one speaker's utterances (median --same-speaker-pause)")
    parser.add_argument("--pause", type=float, nargs=2, default=(0.7, 1.6), metavar=("MIN", "MAX"),
                        help="with --turn-taking uniform: silence between turns, seconds, drawn uniformly (the live "
                             "segmenter ends a turn after ~0.6 s of silence)")
    parser.add_argument("--gap-median", type=float, default=0.2, metavar="S",
                        help="with --turn-taking conversational: median gap at a speaker change, seconds")
    parser.add_argument("--same-speaker-pause", type=float, default=0.4, metavar="S",
                        help="with --turn-taking conversational: median pause between consecutive utterances of "
                             "one speaker, seconds")
    parser.add_argument("--overlap-prob", type=float, default=None, metavar="P",
                        help="probability that a turn by another speaker starts before the previous turn ends "
                             "(default: 0.1; with --turn-taking conversational 0.15)")
    parser.add_argument("--overlap", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="length of an overlap, seconds, drawn uniformly, at most half of either turn (default: "
                             "0.2 0.5; with --turn-taking conversational 0.1 1.0)")
    parser.add_argument("--backchannels", type=float, default=0.0, metavar="P",
                        help="probability that a listener says mm-hm, yeah, right or uh-huh inside a turn of at "
                             "least 1.5 s (not gold turns: listed in the manifest's synth.backchannels)")
    parser.add_argument("--loudness-range", type=float, default=0.0, metavar="DB",
                        help="lower each speaker's level by a gain drawn from 0..DB dB (speakers differ by up to DB)")
    parser.add_argument("--engines", default="espeak", metavar="LIST",
                        help=f"comma-separated speech synthesisers to draw speakers' voices from "
                             f"({', '.join(ENGINES)}); a dialogue mixes them and no two speakers share a voice")
    parser.add_argument("--edge-silence", type=float, default=0.5, metavar="S",
                        help="silence before the first and after the last turn, seconds")
    parser.add_argument("--max-internal-pause", type=float, default=0.4, metavar="S",
                        help="longest silence kept inside one turn (espeak's sentence breaks), seconds")
    parser.add_argument("--noise-snr", type=float, default=None, metavar="DB",
                        help="add background noise at this SNR in dB relative to the speech power (default: none)")
    parser.add_argument("--noise-kind", choices=NOISE_KINDS, default="pink",
                        help="background noise: pink, white, or babble (other synthetic voices reading unrelated "
                             "sentences, summed)")
    parser.add_argument("--babble-talkers", type=int, default=6, metavar="N", help="voices in babble noise")
    parser.add_argument("--espeak", default="espeak-ng", metavar="PROGRAM",
                        help="espeak-ng executable (a name on PATH or a path)")
    parser.add_argument("--flite", default="flite", metavar="PROGRAM", help="flite executable")
    parser.add_argument("--festival", default="festival", metavar="PROGRAM", help="festival executable")
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


def _config(args: argparse.Namespace, engines: tuple[str, ...]) -> SynthConfig:
    prob, span = OVERLAP_DEFAULTS[args.turn_taking]
    return SynthConfig(seed=args.seed, pause_s=tuple(args.pause),
                       overlap_prob=prob if args.overlap_prob is None else args.overlap_prob,
                       overlap_s=span if args.overlap is None else tuple(args.overlap),
                       edge_silence_s=args.edge_silence, max_internal_pause_s=args.max_internal_pause,
                       noise_snr_db=args.noise_snr, noise_kind=args.noise_kind, max_turns=args.max_turns,
                       engines=engines, turn_taking=args.turn_taking, gap_median_s=args.gap_median,
                       same_speaker_pause_s=args.same_speaker_pause, backchannel_prob=args.backchannels,
                       loudness_range_db=args.loudness_range, babble_talkers=args.babble_talkers)


def _run(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.data_dir is not None and args.dialogues is not None:
        parser.error("--data-dir applies to --corpus; --dialogues names its file itself")
    if args.dialogue_ids and args.count is not None:
        parser.error("give --dialogue-ids or --count, not both")
    if args.dialogue_ids and (args.speakers or args.min_turns is not None):
        parser.error("give --dialogue-ids or --speakers/--min-turns, not both")
    if args.corpus == "emodb" and args.dialogue_ids:
        parser.error("--corpus emodb makes its own dialogues: give --count and --speakers, not --dialogue-ids")
    engines_asked = tuple(dict.fromkeys(e.strip() for e in args.engines.split(",") if e.strip()))
    unknown = [e for e in engines_asked if e not in ENGINES]
    if unknown or not engines_asked:
        parser.error(f"--engines: unknown engine(s) {', '.join(unknown) or '(none given)'} "
                     f"(known: {', '.join(ENGINES)})")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tqdm import tqdm

    ids = [i for arg in args.dialogue_ids or () for i in arg.split(",") if i]
    speakers = parse_speaker_range(args.speakers) if args.speakers else None
    if args.corpus == "emodb":
        args.max_turns = args.max_turns or 10
    config = _config(args, engines_asked)
    # babble is spoken by the dialogue's engines (EmoDB: espeak-ng)
    needed = engines_asked if args.corpus != "emodb" else (("espeak",) if args.noise_kind == "babble" else ())
    engines = Engines.find(needed, espeak=args.espeak, flite=args.flite, festival=args.festival) if needed else None
    versions = ", ".join(f"{k} {v}" for k, v in engines.versions().items()) if engines else "no synthesiser"

    def report(bar: tqdm, path: Path, rec: Recording) -> None:
        bar.write(f"wrote {path}: {len(rec.turns)} turns, {rec.duration_s:.1f} s, "
                  f"{rec.synth['overlaps']} overlap(s), {len(rec.synth['voices'])} voice(s)", file=sys.stderr)
        bar.update()

    if args.corpus == "emodb":
        made = emodb_dialogues(args.data_dir, args.count or 8, speakers or (2, 2), args.max_turns, args.seed)
        print(f"merc-synth: {len(made)} EmoDB dialogue(s) -> {args.out} ({versions}, seed {args.seed})",
              file=sys.stderr)
        for d in made:
            target = args.out / recording_name(d.id)
            if (target / "manifest.json").exists() and not args.overwrite:
                raise SynthError(f"{target}: a recording is already there; pass overwrite to replace it")
        with tqdm(total=len(made), unit="dialogue", desc="merc-synth", file=sys.stderr) as bar:
            for d in made:
                rec = synthesize_emodb_dialogue(d, config, engines, {"speakers": list(speakers or (2, 2))})
                report(bar, write_recording(rec, args.out / rec.name, overwrite=args.overwrite), rec)
        return 0

    assert engines is not None
    dialogues, where, source = _load(args)
    if speakers is not None or args.min_turns is not None:
        dialogues = filter_by_speakers(dialogues, speakers, args.max_turns, args.min_turns)
        if speakers is not None:
            where += f" with {args.speakers} speakers"
            source["speakers"] = list(speakers)
        if args.min_turns is not None:
            where += f" and at least {args.min_turns} turns"
            source["min_turns"] = args.min_turns
        if not dialogues:
            raise SynthError(f"no dialogue in {where}")
    chosen = select_dialogues(dialogues, ids or None, args.count, where)
    print(f"merc-synth: {len(chosen)} dialogue(s) from {where} -> {args.out} ({versions}, seed {args.seed})",
          file=sys.stderr)
    tts: Espeak | Engines = engines if config.realistic else engines.engines["espeak"]  # type: ignore[assignment]
    with tqdm(total=len(chosen), unit="dialogue", desc="merc-synth", file=sys.stderr) as bar:
        generate_recordings(chosen, args.out, config, tts, source, overwrite=args.overwrite,
                            on_written=lambda path, rec: report(bar, path, rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
