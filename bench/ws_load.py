"""Load on the event service: N clients on loopback, events at a realistic rate, delivery latency and leaks.

The server and the publisher run in this process (as in merc-live: the pipeline thread publishes,
the server's loop sends); the clients run in a child process, so their work does not share the
server's interpreter. Latency is publish -> client receive, from a wall-clock stamp in each event
(same machine, same clock). After the measured phase, clients connect and disconnect for a few
rounds; the leak checks compare the server's connections, loop tasks, bus subscribers, file
descriptors and RSS with their values before any client came.

    python bench/ws_load.py --clients 50 --rate 20 --seconds 10 --out bench/results/DATE-ws-load.json

Resume amplification (SECURITY.md): with `--history N --resumers M`, the bus first holds N events and
M more clients (a second child process) reconnect with ?since=0 in a loop for the whole measured
phase, while the followers' latency is measured as above:

    python bench/ws_load.py --clients 1 --history 10000 --resumers 20 --seconds 10
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from merc.stream.wire.events import EventBus
from merc.stream.wire.server import EventServer

HELLO = {"labels": ["neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust"],
         "model": {"label_set": "bench"}, "modalities": ["text", "audio"]}


def turn_body(i: int) -> dict:
    """A turn the size of a real one (text, 7 probabilities, timings), stamped for latency."""
    probs = {label: round(1 / 7, 4) for label in HELLO["labels"]}
    return {"type": "turn", "turn": i, "speaker": "S1", "t_start": i * 2.0, "t_end": i * 2.0 + 1.5,
            "text": "so I was thinking we could go to the lake this weekend if the weather holds",
            "label": "joy", "confidence": 0.5, "probs": probs, "modalities": ["text", "audio"],
            "available": ["text", "audio"], "timings_ms": {"segmentation": 1.0, "asr": 120.0, "features": 8.0,
                                                           "speaker": 3.0, "graph": 2.0, "total": 134.0},
            "speech_end": time.time(), "bench_t": time.time()}


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_clients(url: str, clients: int, expected: int, results: multiprocessing.Queue, churn_rounds: int) -> None:
    """In the child: `clients` followers until each has `expected` turns, then churn rounds."""
    from websockets.asyncio.client import connect

    async def follower(latencies: list[float]) -> int:
        got = 0
        async with connect(url) as ws:
            await ws.recv()  # hello
            while got < expected:
                event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if event.get("type") == "turn":
                    latencies.append(time.time() - event["bench_t"])
                    got += 1
        return got

    async def churn_one() -> None:
        async with connect(url) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "ping"}))
            await ws.recv()

    async def main() -> dict:
        latencies: list[float] = []
        counts = await asyncio.gather(*(follower(latencies) for _ in range(clients)))
        for _ in range(churn_rounds):
            await asyncio.gather(*(churn_one() for _ in range(clients)))
        return {"latencies": latencies, "counts": counts}

    results.put(asyncio.run(main()))


def run_resumers(url: str, resumers: int, seconds: float, results: multiprocessing.Queue) -> None:
    """In a second child: `resumers` clients reconnecting with ?since=0 for `seconds`, each reading
    what the server sends for a moment before it goes (bounded in count and time)."""
    from websockets.asyncio.client import connect

    async def resumer(deadline: float) -> int:
        rounds = 0
        while time.monotonic() < deadline:
            async with connect(url + "?since=0", max_size=None, close_timeout=0.2) as ws:
                resent = 0  # read the backlog (the server sends at most its resume limit), then go again
                round_ends = min(deadline, time.monotonic() + 2.0)
                try:
                    while resent < 1000 and time.monotonic() < round_ends:
                        if json.loads(await asyncio.wait_for(ws.recv(), 0.5)).get("turn", 0) < 0:
                            resent += 1
                except TimeoutError:
                    pass
            rounds += 1
        return rounds

    async def main() -> list[int]:
        deadline = time.monotonic() + seconds
        return list(await asyncio.gather(*(resumer(deadline) for _ in range(resumers))))

    results.put(asyncio.run(main()))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=20.0, help="events published per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to publish")
    parser.add_argument("--churn-rounds", type=int, default=5, help="connect/disconnect rounds of all clients after")
    parser.add_argument("--history", type=int, default=0, help="events published before the clients come")
    parser.add_argument("--resumers", type=int, default=0,
                        help="clients that reconnect with ?since=0 in a loop during the measured phase")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here too")
    args = parser.parse_args(argv)

    bus = EventBus("bench", history=max(10000, args.history))
    for i in range(args.history):
        bus.publish(turn_body(-1 - i))
    server = EventServer(bus, HELLO, port=0)
    server.start()
    results: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    time.sleep(0.2)
    baseline = {"tasks": server.task_count(), "subscribers": bus.subscriber_count, "fds": fd_count(),
                "rss_mib": round(rss_mib(), 1)}
    count = int(args.rate * args.seconds)
    child = multiprocessing.get_context("spawn").Process(
        target=run_clients, args=(server.url, args.clients, count, results, args.churn_rounds))
    child.start()
    deadline = time.monotonic() + 30
    while server.connections < args.clients and time.monotonic() < deadline:
        time.sleep(0.05)
    connected = server.connections
    resumer_results: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    resumers = None
    if args.resumers:
        resumers = multiprocessing.get_context("spawn").Process(
            target=run_resumers, args=(server.url, args.resumers, args.seconds, resumer_results))
        resumers.start()
        time.sleep(1.0)  # the resumers are connecting and being sent their backlogs
    started = time.perf_counter()
    publish_ms = []
    for i in range(count):  # paced like a pipeline: publish, then wait for the next slot
        t = time.perf_counter()
        bus.publish(turn_body(i))
        publish_ms.append((time.perf_counter() - t) * 1000)
        time.sleep(max(0.0, started + (i + 1) / args.rate - time.perf_counter()))
    report = results.get(timeout=120)
    child.join(30)
    child.close()
    resume_rounds: list[int] = []
    if resumers is not None:
        resume_rounds = resumer_results.get(timeout=120)
        resumers.join(30)
        resumers.close()
    deadline = time.monotonic() + 10
    while (server.connections or server.task_count() != baseline["tasks"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = {"connections": server.connections, "tasks": server.task_count(), "subscribers": bus.subscriber_count,
             "fds": fd_count(), "rss_mib": round(rss_mib(), 1)}
    server.stop()
    latencies_ms = [x * 1000 for x in report["latencies"]]
    out = {
        "benchmark": "ws_load",
        "command": "python bench/ws_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "clients": args.clients, "connected_at_start": connected, "rate_per_s": args.rate, "seconds": args.seconds,
        "events": count, "delivered": sum(report["counts"]), "expected": count * args.clients,
        "latency_ms": {"p50": round(percentile(latencies_ms, 50), 2), "p95": round(percentile(latencies_ms, 95), 2),
                       "p99": round(percentile(latencies_ms, 99), 2), "max": round(max(latencies_ms), 2),
                       "mean": round(statistics.fmean(latencies_ms), 2)},
        "publish_ms": {"p50": round(percentile(publish_ms, 50), 3), "max": round(max(publish_ms), 3)},
        "churn": {"rounds": args.churn_rounds, "clients_per_round": args.clients},
        "resume_amplification": {"history": args.history, "resumers": args.resumers,
                                 "resumes_done": sum(resume_rounds)},
        "leaks": {"before": baseline, "after": after,
                  "ok": after["connections"] == 0 and after["tasks"] == baseline["tasks"]
                  and after["subscribers"] == baseline["subscribers"] and after["fds"] <= baseline["fds"] + 3},
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0 if out["leaks"]["ok"] and out["delivered"] == out["expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
