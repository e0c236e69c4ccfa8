"""The one error boundary of every command-line tool: any exception becomes one line `error: ...` and exit status 2.

    @error_boundary
    def main(argv: list[str] | None = None) -> int: ...

`--debug` anywhere on the command line (it is taken out before the tool parses its arguments) or TBPS_DEBUG=1 in
the environment shows the traceback instead. Known failures carry their own message (our error classes name the
bad input); the boundary is the net for everything else, which it names by its exception type.

Several ranks: errors of our own classes come from checks that every rank runs alike on the same inputs, so rank 0
alone prints them; any other exception is printed by each rank that raised it, prefixed with its rank; a rank whose
collective failed because another rank left prints nothing of its own.

This module imports nothing of the project, so that every entry point can use it without import cycles.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence

EXIT_USER_ERROR = 2
DEBUG_FLAG = "--debug"
DEBUG_ENV = "TBPS_DEBUG"
OUR_PACKAGES = frozenset({"engine", "data", "eval", "launcher", "kernels", "benchmarks"})
# Words in the message of a collective that failed because a peer went away (gloo, NCCL, torch's store).
_debug_in_progress = False  # set while a --debug command runs, for the boundaries of its subcommands
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe", "gloo", "nccl", "timed out")


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    return DEBUG_FLAG in (sys.argv[1:] if argv is None else argv) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def is_ours(error: BaseException) -> bool:
    """An exception class defined in this project: its message was written to name the bad input. A class of the
    module run as `python -m ...` is ours too: the boundary wraps only this project's entry points."""
    return type(error).__module__.split(".")[0] in OUR_PACKAGES or type(error).__module__ == "__main__"


def one_line(error: BaseException) -> str:
    """The error as one line: our messages as they are, anything else prefixed with its type."""
    text = " ".join(str(error).split()) if str(error).strip() else ""
    if isinstance(error, KeyError) and error.args:
        text = f"missing key {error.args[0]!r}"
    if isinstance(error, OSError) and getattr(error, "filename", None) and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    if is_ours(error):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)


def _group_active() -> bool:
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def _peer_gone(error: BaseException) -> bool:
    text = str(error).lower()
    return type(error).__name__ in ("DistBackendError", "DistNetworkError") or (
        isinstance(error, RuntimeError) and any(word in text for word in _PEER_GONE)
    )


def report(error: BaseException, *, debug: bool = False) -> int:
    """Prints `error` as the boundary does (or its traceback with `debug`) and returns the exit status."""
    rank, world = _rank()
    if debug:
        traceback.print_exception(error, file=sys.stderr)
        return EXIT_USER_ERROR
    if world > 1:
        if is_ours(error) and rank != 0:  # every rank found the same: rank 0 says it
            return EXIT_USER_ERROR
        if not is_ours(error) and _group_active() and _peer_gone(error):  # another rank left; it says why
            return EXIT_USER_ERROR
    prefix = f"rank {rank}: " if world > 1 and not is_ours(error) else ""
    hint = "" if is_ours(error) else f" (rerun with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback)"
    print(f"{prefix}error: {one_line(error)}{hint}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def error_boundary(main: Callable[..., int]) -> Callable[..., int]:
    """Wraps a CLI's `main(argv)`: --debug is taken out of argv, any exception becomes one line and exit 2."""

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        global _debug_in_progress
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = debug_requested(argv) or _debug_in_progress
        argv = [a for a in argv if a != DEBUG_FLAG]
        outer, _debug_in_progress = _debug_in_progress, debug  # a subcommand's own boundary sees the flag too
        try:
            return main(argv)
        except SystemExit:  # argparse's usage errors (status 2, one line naming the argument) and explicit exits
            raise
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr, flush=True)
            return 130
        except Exception as error:  # the net: every failure ends as one line
            return report(error, debug=debug)
        finally:
            _debug_in_progress = outer

    wrapped.error_boundary = True  # tests/test_output_policy.py checks every entry point for it
    return wrapped


# argparse types for numeric flags: a bad value is argparse's one-line usage error naming the flag.
def positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {value})")
    return value


def port_number(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, 0 picking a free one (got {value})")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {value})")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None
