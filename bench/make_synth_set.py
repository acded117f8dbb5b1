"""A benchmark set of synthetic recordings: the same corpus dialogues, clean and at several noise levels.

Writes OUT/<condition>/<dialogue id>/ (the recording format of `merc.stream.recordings.synth`) for each
condition ("clean", "snr20", "snr10", ...) and prints one JSON summary: dialogues, turns, hours of
audio and overlaps per condition. The same seed gives the same voices and timings in every
condition, so conditions differ only in the noise.

    python bench/make_synth_set.py --out runs/synth-meld-test [--corpus meld] [--count 50] [--snr 20 10]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from merc.models.data.corpora import SPLITS, load_corpus, resolve_data_dir
from merc.stream.recordings.synth import (
    Espeak,
    Recording,
    SynthConfig,
    generate_recordings,
    select_dialogues,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (one subfolder per condition)")
    parser.add_argument("--corpus", choices=("meld", "iemocap"), default="meld")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--data-dir", default=None, help="folder holding meld/ and iemocap/ (default: $MERC_DATA, "
                                                         "else ../shared/data)")
    parser.add_argument("--count", type=int, default=None, help="first N dialogues of the split (default: all)")
    parser.add_argument("--max-turns", type=int, default=None, help="at most N turns per dialogue")
    parser.add_argument("--snr", type=float, nargs="*", default=[20.0, 10.0],
                        help="noisy conditions besides clean, dB (pink noise)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace recordings already there")
    args = parser.parse_args()

    dialogues = load_corpus(args.corpus, resolve_data_dir(args.data_dir), args.split)
    chosen = select_dialogues(dialogues, count=args.count)
    espeak = Espeak.find()
    source = {"corpus": args.corpus, "split": args.split}
    summary: dict[str, object] = {"corpus": args.corpus, "split": args.split, "seed": args.seed,
                                  "espeak_ng": espeak.version, "conditions": {}}
    for snr in [None, *args.snr]:
        condition = "clean" if snr is None else f"snr{snr:g}"
        config = SynthConfig(seed=args.seed, noise_snr_db=snr, max_turns=args.max_turns)
        stats: dict[str, float] = {"dialogues": 0, "turns": 0, "seconds": 0.0, "overlaps": 0}
        with tqdm(total=len(chosen), desc=condition, unit="dialogue", file=sys.stderr) as bar:
            def count(_: Path, rec: Recording, stats: dict[str, float] = stats, bar: tqdm = bar) -> None:
                stats["dialogues"] += 1
                stats["turns"] += len(rec.turns)
                stats["seconds"] += rec.duration_s
                stats["overlaps"] += rec.synth["overlaps"]
                bar.update()

            generate_recordings(chosen, args.out / condition, config, espeak, source, overwrite=args.overwrite,
                                on_written=count)
        stats["hours"] = round(stats.pop("seconds") / 3600, 3)
        summary["conditions"][condition] = stats
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
