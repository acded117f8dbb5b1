"""Cost of one incremental DAG step as the dialogue grows, against recomputing the whole dialogue.

Prints one JSON object: per position, the median milliseconds of `step` (incremental) and of a
batch forward over the dialogue so far (full recompute), measured in the same run.

    python bench/step_cost.py [--model DIR] [--positions 10 100 1000] [--repeats 30]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from merc.models.dag.checkpoint import load_model
from merc.models.dag.tracker import default_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled default model)")
    parser.add_argument("--positions", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per position")
    parser.add_argument("--full-repeats", type=int, default=3, help="timed full recomputes per position")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model or default_model_dir())
    dag = model.dag.eval()
    dims = dag.config.dims
    g = torch.Generator().manual_seed(0)
    longest = max(args.positions)
    feats = {"text": torch.randn(longest + args.repeats, dims["text"], generator=g)}
    speakers = [i % 3 for i in range(longest + args.repeats)]  # three speakers taking turns
    mask = torch.tensor([True, False, False])
    results = []
    with torch.inference_mode():
        state = dag.initial_state()
        done = 0
        for position in sorted(args.positions):
            while done < position:  # advance the dialogue to this position (untimed)
                _, state = dag.step(state, {"text": feats["text"][done]}, mask, speakers[done])
                done += 1
            times = []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                dag.step(state, {"text": feats["text"][position + r]}, mask, speakers[position + r])
                times.append(1000 * (time.perf_counter() - t0))
            full = []
            batch_feats = {"text": feats["text"][: position + 1].unsqueeze(0)}
            batch_mask = mask.expand(1, position + 1, 3)
            batch_speakers = torch.tensor([speakers[: position + 1]])
            for _ in range(args.full_repeats):
                t0 = time.perf_counter()
                dag(batch_feats, batch_mask, batch_speakers)
                full.append(1000 * (time.perf_counter() - t0))
            step_ms, full_ms = statistics.median(times), statistics.median(full)
            results.append({"position": position, "step_ms_p50": round(step_ms, 4),
                            "full_recompute_ms_p50": round(full_ms, 3), "speedup": round(full_ms / step_ms, 1),
                            "state_turns": state.turns})
    print(json.dumps({"benchmark": "dag_step_cost", "model": str(args.model or "default"),
                      "layers": dag.config.layers, "hidden": dag.config.hidden,
                      "max_predecessors": dag.config.max_predecessors, "threads": args.threads,
                      "machine": platform.processor() or platform.machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
