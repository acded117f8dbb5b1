"""`merc-export`: turn a trained model directory into a validated ONNX serving bundle."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from merc.cli.exits import guarded

DESCRIPTION = """\
Export a trained model directory (a merc-train run, or the bundled default model) to a serving
bundle that ONNX Runtime runs without torch or transformers:

  dag_step.onnx            one incremental MultiDAG step: text/audio/face features, modality mask,
                           speaker, the window (speakers, per-layer states, count) -> probabilities
                           and the new window. The audio and face projections are in this graph.
  text_encoder.onnx        the text encoder with its pooling (fp32), dynamic batch and sequence
  text_encoder.int8.onnx   dynamically quantised (int8 weights)       } with --variants
  text_encoder.fp16.onnx   half precision (for GPUs)                  }
  tokenizer.json           the encoder's tokenizer (for the `tokenizers` library)
  manifest.json            labels, encoder spec, feature dims, window, opset, sha256 of every
                           file, and the validation numbers

The export is validated: onnx.checker on every graph, then real dialogues are tracked turn by
turn with PyTorch and with ONNX Runtime. Token ids must be identical and fp32 probabilities
within 1e-4, or nothing is written to BUNDLE (the attempt stays in BUNDLE.partial). The int8
and fp16 encoders are reported (max |delta prob|, agreement of the predicted label, weighted F1
when the dialogues' labels match the model's label set) but not held to that tolerance.
"""

EPILOG = """\
examples:
  merc-export runs/meld-s0 -o bundles/meld-s0
  merc-export runs/meld-s0 -o bundles/meld-s0 --parity-dialogues 0     # whole MELD test split
  merc-export runs/iemocap-s0 -o bundles/iemocap --parity-corpus iemocap
  merc-export runs/my-run -o bundles/mine --parity-corpus jsonl --data-dir my_dialogues.jsonl
  merc-export --cached runs/meld-s0     # export once into ~/.cache/merc/bundles, print its path
"""


def main(argv: list[str] | None = None) -> int:
    """merc-export (exit statuses: merc.cli.exits)."""
    return guarded("merc-export", lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="merc-export", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="model directory: a merc-train run or the bundled default model")
    parser.add_argument("-o", "--out", type=Path, help="bundle directory to write (required unless --cached)")
    parser.add_argument("--cached", action="store_true",
                        help="write the bundle into the cache ($MERC_CACHE or ~/.cache/merc)/bundles/NAME-KEY, "
                             "keyed by the model files' sha256; reuse it when it is there and verifies; print its path")
    parser.add_argument("--variants", nargs="*", choices=("int8", "fp16"), default=None,
                        help="text encoder variants to add besides fp32 (default: int8 fp16; --cached: int8)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or later (default: 17)")
    parser.add_argument("--parity-corpus", default="meld",
                        help="corpus of the parity dialogues: meld, iemocap, iemocap-release or jsonl (default: meld)")
    parser.add_argument("--data-dir", default=None,
                        help="corpus location (default: $MERC_DATA, else ../shared/data); for jsonl, the file")
    parser.add_argument("--parity-split", default="test", choices=("train", "valid", "test"),
                        help="split the parity dialogues come from (default: test)")
    parser.add_argument("--parity-dialogues", type=int, default=4,
                        help="number of dialogues (the longest of the split) tracked for parity; 0 = all (default: 4)")
    parser.add_argument("--no-validate", action="store_true",
                        help="skip the parity check (onnx.checker still runs); for machines without a corpus")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for PyTorch and ONNX Runtime during validation (default: library defaults)")
    parser.add_argument("--force", action="store_true", help="replace BUNDLE if it exists")
    parser.add_argument("--json", action="store_true", help="print the manifest's validation section as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("merc").setLevel(logging.INFO)
    if not args.cached and args.out is None:
        parser.error("give -o BUNDLE (or --cached)")

    from merc.export.build.onnx_export import ensure_bundle, export_bundle
    from merc.export.serve.bundle import MANIFEST_FILE

    if args.cached:
        out = ensure_bundle(args.run, variants=args.variants, threads=args.threads,
                            parity_dialogues=args.data_dir if args.parity_corpus == "jsonl" else None)
        manifest = json.loads((out / MANIFEST_FILE).read_text())
    else:
        out = args.out
        manifest = export_bundle(args.run, out, opset=args.opset, variants=args.variants,
                                 corpus=args.parity_corpus, data_dir=args.data_dir, split=args.parity_split,
                                 n_dialogues=args.parity_dialogues, validate=not args.no_validate,
                                 force=args.force, threads=args.threads)
    validation = manifest.get("validation") or {}
    if args.json:
        print(json.dumps(validation, indent=2))
    elif args.cached:
        print(out)
    else:
        parity = validation.get("parity")
        print(f"bundle written to {out} ({len(manifest['labels'])} labels, opset {manifest['opset']})")
        if parity:
            print(f"parity on {parity['turns']} turns of {len(parity['dialogues'])} {parity['corpus']} "
                  f"{parity['split']} dialogues; token ids identical: {parity['token_ids_identical']}; "
                  f"DAG with all modality subsets: max |dprob| {parity['dag_all_modalities']['max_abs_dprob']:.2e}")
            for precision in manifest["encoder"]["files"]:
                p = parity[precision]
                line = (f"  {precision:<5} max |dprob| {p['max_abs_dprob']:.2e}  max |dembedding| "
                        f"{p['max_abs_dembedding']:.2e}  same label {100 * p['argmax_agreement']:.1f}%")
                if "weighted_f1" in p:
                    line += f"  weighted F1 {100 * p['weighted_f1']:.2f} (torch {100 * p['weighted_f1_torch']:.2f})"
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
