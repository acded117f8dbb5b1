"""Latency of serving with ONNX Runtime against PyTorch: the DAG per turn and the text encoder.

Prints one JSON object:

- graph: per dialogue position (default 10, 100, 1000), the milliseconds one turn costs with
  (a) PyTorch full recompute (`MultiDAG.forward` over the dialogue so far), (b) PyTorch
  incremental `MultiDAG.step`, (c) ONNX Runtime incremental step (dag_step.onnx), p50 and p90;
  PyTorch runs on --threads threads, the ORT step on one (as `BundleTracker` serves it);
- text_encoder: milliseconds per turn at batch 1 and batch 16 for PyTorch fp32, PyTorch int8
  (torch dynamic quantisation of the Linear layers), ORT fp32 and ORT int8, on real turns
  (MELD test turns with the encoder's context, else the bundled example dialogue);
- targets: ORT step <= 1 ms p50 at every position, >= 50x faster than full recompute at the
  longest position.

    python bench/onnx_latency.py --model runs/meld-s0 [--bundle bundles/meld-s0] [--threads 2]

Without --bundle, the model's bundle is exported into the cache (merc-export --cached). DAG
inputs are seeded random features (latency does not depend on their values); three speakers
take turns.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from merc.export.build.onnx_export import ensure_bundle
from merc.export.serve.bundle import read_manifest
from merc.export.serve.runtime import DAGStepSession, TextEncoderSession
from merc.models.dag.checkpoint import load_model
from merc.models.dag.tracker import default_model_dir
from merc.models.data.corpora import load_corpus, load_dialogues_jsonl, resolve_data_dir
from merc.models.data.examples import example_dialogue
from merc.models.data.turns import turn_inputs
from merc.models.features.text_encoder import TextEncoder


def _stats(wall: list[float], cpu: list[float] | None = None) -> dict:
    """p50/p90 of wall-clock ms, and p50 of this process's CPU ms (all threads) per call: on a
    busy machine wall time includes waiting for a core, CPU time does not."""
    wall = sorted(wall)
    out = {"p50_ms": round(statistics.median(wall), 4), "p90_ms": round(wall[int(0.9 * (len(wall) - 1))], 4),
           "n": len(wall)}
    if cpu:
        out["cpu_p50_ms"] = round(statistics.median(cpu), 4)
    return out


def _timed(calls) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for call in calls:
        c0, t0 = time.process_time(), time.perf_counter()
        call()
        wall.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.process_time() - c0))
    return wall, cpu


def bench_graph(model, manifest, positions: list[int], repeats: int, full_repeats: int) -> list[dict]:
    dag = model.dag.eval()
    dims = dag.config.dims
    g = torch.Generator().manual_seed(0)
    total = max(positions) + repeats
    text = torch.randn(total, dims["text"], generator=g)
    speakers = [i % 3 for i in range(total)]
    mask = torch.tensor([True, False, False])
    session = DAGStepSession(manifest, device="cpu")  # serving's setting: one thread, no spinning
    text_np = text.numpy()
    results = []

    def ort_step(r: int, window: tuple) -> None:
        session.window_speakers, session.window_states, session.window_count = window
        session.step({"text": text_np[r]}, speakers[r])

    with torch.inference_mode():
        state = dag.initial_state()
        done = 0
        for position in sorted(positions):
            while done < position:  # advance both to this position, untimed
                _, state = dag.step(state, {"text": text[done]}, mask, speakers[done])
                session.step({"text": text_np[done]}, speakers[done])
                done += 1
            window = (session.window_speakers.copy(), session.window_states.copy(), session.window_count.copy())
            # The turn after `position`, from the same state each time; each engine timed in its own
            # loop so that one's idle threads do not compete with the other. (_timed calls each
            # lambda at once; the defaults only bind this iteration's state and window explicitly.)
            turns = range(position, position + repeats)
            torch_step = _timed(lambda r=r, state=state: dag.step(state, {"text": text[r]}, mask, speakers[r])
                                for r in turns)
            onnx_step = _timed(lambda r=r, window=window: ort_step(r, window) for r in turns)
            session.window_speakers, session.window_states, session.window_count = window
            batch = {"text": text[: position + 1].unsqueeze(0)}
            batch_mask = mask.expand(1, position + 1, 3)
            batch_speakers = torch.tensor([speakers[: position + 1]])
            full = _timed(functools.partial(dag, batch, batch_mask, batch_speakers) for _ in range(full_repeats))
            entry = {"position": position, "torch_full_recompute": _stats(*full), "torch_step": _stats(*torch_step),
                     "ort_step": _stats(*onnx_step)}
            ort_p50 = entry["ort_step"]["p50_ms"]
            entry["ort_speedup_vs_full"] = round(entry["torch_full_recompute"]["p50_ms"] / ort_p50, 1)
            entry["ort_speedup_vs_torch_step"] = round(entry["torch_step"]["p50_ms"] / ort_p50, 2)
            results.append(entry)
    return results


def _turns(encoder: TextEncoder, data_dir: str | None, n: int) -> tuple[list[tuple[str, str]], str]:
    try:
        dialogues = load_corpus("meld", resolve_data_dir(data_dir), "test")
        source = "meld test"
    except (OSError, ValueError):
        dialogues = load_dialogues_jsonl(example_dialogue(), None)
        source = "example dialogue"
    items = [item for d in dialogues
             for item in turn_inputs([u.text for u in d.utterances], encoder.spec.context_turns)]
    items = [item for item in items if item[0].strip()]
    return (items * (1 + n // max(len(items), 1)))[:n], source


def bench_encoder(model, manifest, data_dir: str | None, batches: list[int], repeats: int, threads: int) -> dict:
    encoder = TextEncoder.load(model.encoder_ref, device="cpu")
    quantized = TextEncoder(encoder.spec, torch.ao.quantization.quantize_dynamic(
        TextEncoder.load(model.encoder_ref, device="cpu").model, {torch.nn.Linear}, dtype=torch.qint8),
        encoder.tokenizer)
    items, source = _turns(encoder, data_dir, max(batches) * repeats)
    runners = {"torch_fp32": lambda batch: encoder(encoder.tokenize(batch)),
               "torch_int8": lambda batch: quantized(quantized.tokenize(batch))}
    for precision in ("fp32", "int8"):
        if precision in manifest.encoder["files"]:
            session = TextEncoderSession(manifest, precision, device="cpu", threads=threads)
            runners[f"ort_{precision}"] = session
    results = {"turns_from": source}
    with torch.inference_mode():
        for size in batches:
            batches_ = [items[i:i + size] for i in range(0, size * repeats, size)]
            entry = {}
            for name, run in runners.items():
                run(batches_[0])  # warm-up
                # tokenisation included, as in tracking
                wall, cpu = _timed(lambda b=b, run=run: run(b) for b in batches_)
                entry[name] = _stats([w / size for w in wall], [c / size for c in cpu])
            results[f"batch_{size}_per_turn"] = entry
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled default model)")
    parser.add_argument("--bundle", default=None, help="its bundle (default: exported into the cache on first use)")
    parser.add_argument("--data-dir", default=None,
                        help="corpus location for real encoder turns (default: ../shared/data)")
    parser.add_argument("--positions", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=100, help="timed steps per position")
    parser.add_argument("--full-repeats", type=int, default=3, help="timed full recomputes per position")
    parser.add_argument("--encoder-repeats", type=int, default=20, help="timed batches per batch size")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for PyTorch and ONNX Runtime")
    parser.add_argument("--skip-encoder", action="store_true", help="time the graph only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = Path(args.model) if args.model else default_model_dir()
    load_before = os.getloadavg()
    model = load_model(model_dir)
    bundle = Path(args.bundle) if args.bundle else ensure_bundle(model_dir, threads=args.threads)
    manifest = read_manifest(bundle)
    graph = bench_graph(model, manifest, args.positions, args.repeats, args.full_repeats)
    encoder = None if args.skip_encoder else bench_encoder(model, manifest, args.data_dir, [1, 16],
                                                           args.encoder_repeats, args.threads)
    longest = graph[-1]
    targets = {"ort_step_p50_le_1ms_everywhere": all(e["ort_step"]["p50_ms"] <= 1.0 for e in graph),
               f"ort_ge_50x_full_recompute_at_{longest['position']}": longest["ort_speedup_vs_full"] >= 50}
    import onnxruntime

    print(json.dumps({"benchmark": "onnx_latency", "model": str(args.model or "default"), "bundle": bundle.name,
                      "layers": model.dag.config.layers, "hidden": model.dag.config.hidden,
                      "max_predecessors": model.dag.config.max_predecessors, "threads": args.threads,
                      "ort_step_threads": 1,
                      "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                      "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                      "graph": graph,
                      "text_encoder": encoder, "targets": targets}, indent=2))


if __name__ == "__main__":
    main()
