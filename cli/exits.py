"""Exit statuses, the same for every command, and the one place errors become them.

    0    done
    1    done, but the input was damaged (e.g. a truncated recording: the turns before the damage
         are kept, and each problem is reported)
    2    bad usage or bad input, nothing done: one line on stderr naming the file, line, device
         or option (every `MercError`, and the OS's own errors about files and devices)
    70   internal error (a bug): one line on stderr with the path of a log holding the traceback
    130  interrupted (Ctrl-C)
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from merc.models.errors import MercError
from merc.models.paths import cache_dir

__all__ = ["DAMAGED", "INPUT_ERRORS", "INTERNAL", "INTERRUPTED", "OK", "USAGE", "fail", "guarded", "internal_error",
           "run_command"]

OK, DAMAGED, USAGE, INTERNAL, INTERRUPTED = 0, 1, 2, 70, 130

# What the user can fix: every MercError, and the OS's own errors about files and devices.
INPUT_ERRORS: tuple[type[BaseException], ...] = (MercError, OSError)


def fail(prog: str, err: BaseException) -> int:
    """Report a user's error in one line; the exit status for it (2)."""
    message = err.user_message() if isinstance(err, MercError) else str(err)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return USAGE


def internal_error(prog: str, err: BaseException) -> int:
    """Report a bug in one line, with the traceback written to a log file (in merc's cache, else the
    temporary directory); the exit status for it (70)."""
    text = "".join(traceback.format_exception(err))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in (cache_dir() / "logs", Path("/tmp")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            log = folder / f"{prog}-{stamp}.log"
            log.write_text(f"{prog} {' '.join(sys.argv[1:])}\n\n{text}", encoding="utf-8")
            break
        except OSError:
            continue
    else:
        print(text, file=sys.stderr, end="")
        log = None
    where = f"; the traceback is in {log}" if log else ""
    print(f"{prog}: internal error ({type(err).__name__}){where}; please report it", file=sys.stderr)
    return INTERNAL


def guarded(prog: str, command: Callable[[], int]) -> int:
    """Run `command` under the exit-status table: user errors are one line and 2, Ctrl-C is 130,
    anything else is an internal error (70) whose traceback goes to a log."""
    try:
        return command()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except INPUT_ERRORS as err:
        return fail(prog, err)
    except Exception as err:
        return internal_error(prog, err)


def run_command(prog: str, command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`guarded` for a command that takes its parsed arguments."""
    return guarded(prog, lambda: command(args))
