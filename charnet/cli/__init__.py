"""The `charnet` command line: a typer app, one module per command.

`main` runs the app without click's standalone error handling so that every user
error, typer's own usage errors included, comes out as one line on stderr with exit
code 2 and no traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Annotated, Optional

import typer

try:  # typer >= 0.22 vendors click and raises its own exception classes
    from typer import TyperException as _UsageError
except ImportError:  # older typer raises click's
    from click import ClickException as _UsageError

from charnet import __version__
from charnet.errors import CharnetError, ConfigError, PeerFailed

def unescape(text: str) -> str:
    """Command-line text with its escape sequences (\\n, \\t, \\u00e9...) decoded, the
    rest kept as typed."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


app = typer.Typer(
    name="charnet",
    help="Character-level recurrent language models: train, evaluate, sample and serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"charnet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Character-level recurrent language models: train, evaluate, sample and serve."""


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _echoes_errors() -> bool:
    """Under torchrun every process of a node runs the same command on the same files
    and fails the same way; only the node's first process prints, so a bad option is
    one line, not one per process. (What fails on the main process alone reaches the
    others as `PeerFailed`, which prints nothing.)"""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("LOCAL_RANK", "0") == "0"


def fail(message: str, command: str | None = None) -> None:
    if _echoes_errors():
        prefix = f"charnet {command}" if command else "charnet"
        print(f"{prefix}: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def cli_command() -> typer.core.TyperGroup:
    """The click command of the whole app, every subcommand registered."""
    from charnet.cli import evaluate, export, sample, serve, train  # noqa: F401  (importing registers them)

    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> None:
    command = cli_command()
    try:
        code = command.main(args=argv, prog_name="charnet", standalone_mode=False)
    except _UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `charnet` alone prints help: not an error
            sys.exit(0)
        ctx = getattr(e, "ctx", None)
        fail(e.format_message(), ctx.command_path.removeprefix("charnet").strip() if ctx else None)
    except PeerFailed:
        sys.exit(2)  # the process that failed has said why
    except ConfigError as e:
        fail(f"{option_name(e.field)}: {e.message}")
    except CharnetError as e:
        fail(str(e))
    except OSError as e:
        # The machine's fault, not charnet's: a full disk, a read-only or forbidden path.
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            fail(f"{e.filename}: {e.strerror}" if e.filename else str(e.strerror))
        raise
    except typer.Abort:
        print("charnet: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
