"""`python -m merc.cli.package_default RUN [--out DIR]`: turn a training run into the bundled default
model (the DAG in fp16 and the fine-tuned encoder layers, under 10 MB)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from merc.models.paths import default_model_dir
from merc.models.train.package_default import package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m merc.cli.package_default", description=__doc__)
    parser.add_argument("run", type=Path, help="training run directory (merc-train --out)")
    parser.add_argument("--out", type=Path, default=default_model_dir(),
                        help="where to write the packaged model (default: the installed default model)")
    args = parser.parse_args(argv)
    size = package(args.run, args.out)
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
