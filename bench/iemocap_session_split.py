"""Write IEMOCAP's ERC JSONL with one whole training session as the validation split, for the
`jsonl` corpus of merc-train: a validation set the size of the test split (session 5), with its
own actors, instead of the standard 12 dialogues drawn from sessions 1-4.

    python bench/iemocap_session_split.py --hold-out 4 --out runs/iemocap-s4valid.jsonl
    merc-train --config models/configs/iemocap.toml --corpus jsonl --data-dir runs/iemocap-s4valid.jsonl \\
        --label-set iemocap-6 --seed 0 --out runs/s4valid-top2/seed0

The test split (session 5) is left as it is; every other dialogue is train or valid by session.
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from merc.models.data.corpora import resolve_data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hold-out", type=int, choices=[1, 2, 3, 4], required=True, help="session used for validation")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", help="data folder (default $MERC_DATA or ../shared/data)")
    args = parser.parse_args()
    source = resolve_data_dir(args.data) / "iemocap" / "iemocap_dialogues.jsonl"
    counts = collections.Counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with source.open(encoding="utf-8") as src, args.out.open("w", encoding="utf-8") as out:
        for line in src:
            dialogue = json.loads(line)
            if dialogue["split"] != "test":
                held = dialogue["dialogue_id"].startswith(f"Ses0{args.hold_out}")
                dialogue["split"] = "valid" if held else "train"
            counts[dialogue["split"]] += len(dialogue["utterances"])
            out.write(json.dumps(dialogue, ensure_ascii=False) + "\n")
    print(json.dumps({"source": str(source), "out": str(args.out), "hold_out": args.hold_out, "turns": counts}))


if __name__ == "__main__":
    main()
