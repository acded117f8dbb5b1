"""The one error tree: every error merc raises for the user derives from MercError, with a stable,
unique code, and every command reports one as a single line with status 2."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import merc.cli
import merc.clients
import merc.export
import merc.models
import merc.stream
from merc.models.errors import MercError


def _merc_modules():
    for package in (merc.cli, merc.clients, merc.export, merc.models, merc.stream):
        yield package.__name__
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            yield info.name


def _error_classes() -> list[type[BaseException]]:
    found = {}
    for name in _merc_modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return list(found.values())


def test_every_error_class_is_a_merc_error_with_its_own_code():
    classes = _error_classes()
    assert len(classes) >= 18  # the tree drawn in merc.models.errors
    strays = [c.__qualname__ for c in classes if not issubclass(c, MercError)]
    assert strays == []
    codes = [c.code for c in classes if c is not MercError]
    assert len(codes) == len(set(codes)), sorted(codes)
    assert all(code.isidentifier() and code == code.lower() for code in codes)


def test_the_tree_in_the_docstring_names_every_error():
    import merc.models.errors as errors

    for cls in _error_classes():
        if cls is not MercError:
            assert cls.__name__ in errors.__doc__ and cls.code in errors.__doc__, cls


def test_errors_keep_their_builtin_bases():
    from merc.models.data.corpora import CorpusError
    from merc.models.data.labels import LabelError
    from merc.stream.capture.audio import AudioSourceError

    assert issubclass(CorpusError, ValueError) and issubclass(AudioSourceError, RuntimeError)
    assert str(LabelError("unknown label 'x'")) == "unknown label 'x'"  # not KeyError's quoted repr


@pytest.mark.parametrize("argv, expected", [
    (["merc-track", "--dialogue", "no/such/dialogue.jsonl"], "no/such/dialogue.jsonl"),
    (["merc-train", "--config", "no/such/config.toml", "--out", "unused-run"], "no/such/config.toml"),
    (["merc-eval", "--replay", "no/such/recording"], "no/such/recording"),
])
def test_commands_report_a_user_error_in_one_line_with_status_2(argv, expected, tmp_path):
    script = f"import sys; from importlib.metadata import entry_points; " \
             f"main = entry_points(group='console_scripts')[{argv[0]!r}].load(); sys.exit(main({argv[1:]!r}))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{argv[0]}: error:")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_internal_error_is_one_line_status_70_and_a_log_with_the_traceback(tmp_path, monkeypatch, capsys):
    from merc.cli.exits import INTERNAL, guarded

    monkeypatch.setenv("MERC_CACHE", str(tmp_path / "cache"))

    def broken() -> int:
        return {}["no such key"]  # a bug, not the user's input

    assert guarded("merc-test", broken) == INTERNAL == 70
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("merc-test: internal error (KeyError)")
    logs = list((tmp_path / "cache" / "logs").glob("merc-test-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    assert "Traceback" in logs[0].read_text() and "no such key" in logs[0].read_text()


def test_user_errors_and_interrupts_keep_their_statuses(capsys):
    from merc.cli.exits import INTERRUPTED, USAGE, guarded
    from merc.models.data.corpora import CorpusError

    def bad_input() -> int:
        raise CorpusError("dialogues.jsonl:3: no utterances")

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert guarded("merc-test", bad_input) == USAGE
    assert capsys.readouterr().err == "merc-test: error: dialogues.jsonl:3: no utterances\n"
    assert guarded("merc-test", interrupted) == INTERRUPTED
    assert guarded("merc-test", lambda: 0) == 0
