"""merc-batch end to end, through the installed command, on a local Ray with the real pipeline.

One archive (copies of the fixtures and the bundled example, plus a truncated copy, a WAV that is
not one and a recording without its manifest) goes through two runs that every test shares: the
first is killed with SIGKILL (its whole process group) once one recording is done, the second
resumes it. Between and after them no Ray process may be left. A merc-replay --speed max run of
one recording is the reference for the events.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from conftest import command

from merc.stream.recordings.recording import example_recording, open_recording, read_gold, read_jsonl
from merc.stream.recordings.scoring import apply_updates, read_events, score_replay

FIXTURES = Path(__file__).parent / "fixtures" / "recordings"
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """The pids still running (a zombie has exited: only its parent's wait is missing)."""
    running = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z":
            running.add(pid)
    return running


def wait_gone(pids: set[int], timeout: float = 30.0) -> set[int]:
    """Wait for `pids` to end; those still running after `timeout` are killed (by pid) and returned."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = alive(pids)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def run_watched(args: list[str], stop_when=None, timeout: float = 300.0) -> dict:
    """merc-batch in its own process group, its process tree watched while it runs (Ray's raylet,
    GCS and workers are descendants); `stop_when()` true: SIGKILL the whole group. Returns the
    status, stderr, and the descendants still running a while after the end."""
    proc = subprocess.Popen([command("merc-batch"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, start_new_session=True)
    seen: set[int] = set()
    killed = False
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= descendants(proc.pid)
        if stop_when is not None and stop_when():
            seen |= descendants(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    if proc.poll() is None and not killed:
        os.killpg(proc.pid, signal.SIGKILL)
    stdout, stderr = proc.communicate()
    return {"status": proc.returncode, "stderr": stderr, "stdout": stdout, "killed": killed, "seen": seen,
            "left": wait_gone(seen)}


@pytest.fixture(scope="module")
def ray_temp(tmp_path_factory):
    """Ray's session folder for these runs: under pytest's temporary folder when its path is short
    enough for Ray's sockets (merc-batch refuses longer ones), else a new folder in /tmp."""
    path = tmp_path_factory.mktemp("ray")
    if len(str(path)) <= 40:
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="merc-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    for name in ("kitchen-2spk", "bus-stop-3spk"):
        shutil.copytree(FIXTURES / name, root / "a" / name)
    damaged = shutil.copytree(FIXTURES / "kitchen-2spk", root / "b" / "kitchen-2spk")  # same folder name
    wav = (damaged / "audio.wav").read_bytes()
    (damaged / "audio.wav").write_bytes(wav[:44 + 5 * 32000])  # 5 s of the declared 18.9: replayed, damaged
    broken = root / "a" / "broken-wav"
    broken.mkdir()
    shutil.copy(FIXTURES / "kitchen-2spk" / "manifest.json", broken)
    (broken / "audio.wav").write_bytes(b"not a wav file at all" * 100)
    headless = root / "a" / "no-manifest"
    headless.mkdir()
    shutil.copy(FIXTURES / "kitchen-2spk" / "audio.wav", headless)
    shutil.copytree(example_recording(), root / "extra" / "recording")
    (root / "lists").mkdir()
    (root / "lists" / "more.txt").write_text("# the bundled example, relative to this list\n\n../extra/recording\n")
    return root


@pytest.fixture(scope="module")
def runs(archive, ray_temp, tmp_path_factory) -> dict:
    """The killed run, then the resumed one, into the same output folder; and merc-replay's events."""
    out = tmp_path_factory.mktemp("out")
    args = [str(archive / "a"), str(archive / "b"), str(archive / "lists" / "more.txt"), "--out", str(out),
            "--ray-temp-dir", str(ray_temp), "--object-store-mb", "100"]
    killed = run_watched([*args, "--workers", "1"], stop_when=lambda: any(out.glob("*/result.json")))
    first = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/result.json")}
    resumed = run_watched([*args, "--workers", "2"])
    replay_out = tmp_path_factory.mktemp("replay") / "events.jsonl"
    subprocess.run([command("merc-replay"), str(archive / "a" / "kitchen-2spk"), "--speed", "max", "--out",
                    str(replay_out)], check=True, capture_output=True, env=ENV)
    return {"out": out, "args": args, "killed": killed, "first": first, "resumed": resumed,
            "replay": read_jsonl(replay_out)}


def test_help_explains_every_option():
    done = subprocess.run([command("merc-batch"), "--help"], capture_output=True, text=True, check=True)
    for option in ("--out", "--recursive", "--format", "--workers", "--cpus-per-worker", "--address",
                   "--ray-temp-dir", "--object-store-mb", "--asr-model", "--bundle"):
        assert option in done.stdout
    assert "examples:" in done.stdout and "Exit status: 0" in done.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "list"])
def test_bad_input_is_status_2_naming_the_file(case, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text(f"{FIXTURES / 'kitchen-2spk'}\nnowhere/rec\n")
    path, expected = {"missing": (tmp_path / "nope", f"{tmp_path / 'nope'}: not found"),
                      "empty": (empty, f"{empty}: no recordings in it"),
                      "list": (listing, f"{listing}:2: nowhere/rec: not found")}[case]
    done = subprocess.run([command("merc-batch"), str(path), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_killed_run_left_no_process_and_no_half_output(runs):
    killed = runs["killed"]
    assert killed["killed"], killed["stderr"]
    assert killed["seen"], "Ray's processes were never seen"
    assert killed["left"] == set(), f"still running after the kill: {killed['left']}"
    assert len(runs["first"]) == 1  # killed after the first recording: its outputs complete, no others
    (done,) = runs["first"]
    assert (runs["out"] / done / "events.jsonl").is_file()


def test_the_resumed_run_skips_what_is_done_and_does_the_rest(runs):
    resumed, out = runs["resumed"], runs["out"]
    assert resumed["status"] == 1, resumed["stderr"]  # a broken WAV, a missing manifest, a truncated WAV
    assert resumed["left"] == set(), f"Ray processes left behind: {resumed['left']}"
    (first,) = runs["first"]
    assert f"{first}: skipped: done by an earlier run" in resumed["stderr"]
    assert (out / first / "result.json").stat().st_mtime_ns == runs["first"][first]  # not replayed again
    summary = json.loads((out / "summary.json").read_text())
    statuses = {r["recording"]: r["status"] for r in summary["recordings"]}
    assert statuses.pop(first) == "skipped"
    assert sorted(statuses.values()) == ["damaged", "done", "done", "failed", "failed"]
    assert "1 skipped (done before), 2 failed, 1 damaged" in resumed["stderr"]


def test_failures_are_reported_with_path_and_error(runs, archive):
    resumed, out = runs["resumed"], runs["out"]
    failures = {row["recording"]: row for row in read_jsonl(out / "failures.jsonl")}
    truncated = f"kitchen-2spk-{hashlib.sha1(os.fsencode(archive / 'b' / 'kitchen-2spk')).hexdigest()[:8]}"
    assert set(failures) == {"broken-wav", "no-manifest", truncated}
    assert failures["broken-wav"]["source"] == str(archive / "a" / "broken-wav")
    assert "not a WAV file" in failures["broken-wav"]["error"]
    assert "manifest.json: not found" in failures["no-manifest"]["error"]
    assert failures[truncated]["status"] == "damaged" and "truncated" in failures[truncated]["problems"][0]
    for name in ("broken-wav", "no-manifest"):
        assert f"{name}: failed: " in resumed["stderr"] and str(archive / "a" / name) in resumed["stderr"]
        assert not (out / name / "result.json").exists()
    assert (out / truncated / "result.json").is_file()  # replayed up to the damage, and kept


def test_same_folder_names_get_distinct_stable_outputs(runs, archive):
    out = runs["out"]
    names = {json.loads(p.read_text())["source"]: p.parent.name for p in out.glob("*/source.json")}
    kitchens = {str(archive / d / "kitchen-2spk") for d in ("a", "b")}
    for source in kitchens:
        digest = hashlib.sha1(os.fsencode(source)).hexdigest()[:8]
        assert names[source] == f"kitchen-2spk-{digest}"
    assert names[str(archive / "a" / "bus-stop-3spk")] == "bus-stop-3spk"
    assert names[str(archive / "extra" / "recording")] == "recording"  # found through the list file


def test_turn_table_matches_the_events(runs):
    out = runs["out"]
    table = pq.read_table(out / "turns.parquet").to_pylist()
    done = sorted(p.parent.name for p in out.glob("*/result.json"))
    assert sorted({row["recording"] for row in table}) == done
    for name in done:
        turns = [e for e in apply_updates(read_jsonl(out / name / "events.jsonl")) if e["type"] == "turn"]
        rows = [row for row in table if row["recording"] == name]
        assert len(rows) == len(turns) == json.loads((out / name / "result.json").read_text())["turns"] > 0
        for row, turn in zip(rows, turns):
            assert (row["turn"], row["speaker"], row["text"], row["label"]) == \
                (turn["turn"], turn["speaker"], turn["text"], turn["label"])
            assert row["t_start"] == turn["t_start"] and row["confidence"] == turn["confidence"]
            probs = {k[len("prob_"):]: v for k, v in row.items() if k.startswith("prob_")}
            assert probs == turn["probs"]


def test_scores_are_merc_eval_scores(runs, archive):
    out = runs["out"]
    scores = {row["recording"]: row for row in pq.read_table(out / "scores.parquet").to_pylist()}
    for result in out.glob("*/result.json"):
        name = result.parent.name
        recording = open_recording(json.loads(result.read_text())["source"])
        expected = score_replay(read_gold(recording), read_events(out / name / "events.jsonl")).as_dict()
        assert json.loads((out / name / "scores.json").read_text()) == expected
        assert scores[name]["wer"] == expected["wer"] and scores[name]["gold_turns"] == expected["gold_turns"]


def test_events_are_merc_replays(runs, archive):
    out = runs["out"]
    name = f"kitchen-2spk-{hashlib.sha1(os.fsencode(archive / 'a' / 'kitchen-2spk')).hexdigest()[:8]}"

    def key(event: dict) -> tuple:
        return tuple(event.get(k) for k in ("type", "turn", "speaker", "t_start", "t_end", "text", "label",
                                            "confidence", "probs"))

    assert [key(e) for e in read_jsonl(out / name / "events.jsonl")] == [key(e) for e in runs["replay"]]


def test_a_third_run_only_rewrites_the_tables_and_refuses_other_options(runs):
    out, args = runs["out"], runs["args"]
    done = subprocess.run([command("merc-batch"), *args, "--format", "csv"], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert done.returncode == 1, done.stderr  # the failures are still failures
    assert "0 replayed, 4 skipped" in done.stderr and "starting a local Ray" not in done.stderr
    csv_rows = pcsv.read_csv(out / "turns.csv").num_rows
    assert csv_rows == pq.read_table(out / "turns.parquet").num_rows
    other = subprocess.run([command("merc-batch"), *args, "--asr-window", "turn"], capture_output=True, text=True,
                           env=ENV, timeout=120)
    assert other.returncode == 2 and "other options (asr)" in other.stderr


def _replaying_worker(root: int) -> int | None:
    """The pid of a Ray worker of merc-batch `root` busy with a replay (Ray titles it so), or None."""
    for pid in descendants(root):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"ray::ReplayWorker.replay"):
            return pid
    return None


def test_a_worker_that_dies_fails_its_recording_and_is_replaced(ray_temp, tmp_path):
    """SIGKILL the worker in the middle of the first replay: that recording fails, naming the dead
    worker; a new worker loads the models and replays the second."""
    for name in ("one", "two"):
        shutil.copytree(FIXTURES / "kitchen-2spk", tmp_path / "set" / name)
    out = tmp_path / "out"
    proc = subprocess.Popen([command("merc-batch"), str(tmp_path / "set"), "--out", str(out), "--workers", "1",
                             "--ray-temp-dir", str(ray_temp), "--object-store-mb", "100"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    seen: set[int] = set()
    victim = None
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= descendants(proc.pid)
            if victim is None and (victim := _replaying_worker(proc.pid)) is not None:
                os.kill(victim, signal.SIGKILL)
            time.sleep(0.1)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert victim is not None, stderr
    assert proc.returncode == 1, stderr
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert failure["recording"] == "one" and failure["code"] == "worker_died"
    assert "the worker died while replaying it" in failure["error"]
    assert (out / "two" / "result.json").is_file() and not (out / "one" / "result.json").exists()
    assert wait_gone(seen) == set()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
