"""The `mlx-serve` command. Flags become the highest settings layer; output is for people unless --json.

- `parser`: every subcommand and its flags;
- `server_commands`: config, start, stop, status, service;
- `model_commands`: pull, list, show, remove, ps, unload;
- `client`: talking to a running server; `table`: printing lists.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from mlx_serve.cli.parser import build_parser, cli_layer
from mlx_serve.process.lifecycle import EXIT_SETTINGS, MANAGER_ENV, NO_RESTART_EXIT_CODES
from mlx_serve.settings import SettingsError, load_settings

EXIT_CONFIG = 2
PRINTING_COMMANDS = {"config", "list", "show", "ps", "status"}
# Commands that help find out what is wrong or running: with bad settings they still run, on the settings
# without the bad values, after the error. Everything else (start above all) refuses.
DIAGNOSTIC_COMMANDS = {"config", "status", "list", "show", "stop", "ps"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in PRINTING_COMMANDS and hasattr(signal, "SIGPIPE"):
        # `mlx-serve list | head` ends quietly, like other tools. Never for `start`: a server must get an
        # error, not die, when a client hangs up.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        loaded = load_settings(cli=cli_layer(args))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        if args.command in DIAGNOSTIC_COMMANDS and exc.fallback is not None:
            print(f"mlx-serve: the settings above are invalid; `{args.command}` goes on without them.", file=sys.stderr)
            code = int(args.func(args, exc.fallback) or 0)
            return EXIT_CONFIG if args.command == "config" else code
        print(f"mlx-serve: {args.command}: not done: fix the settings above.", file=sys.stderr)
        # start: a code the service units list as not worth a restart
        return for_the_manager(args.command, EXIT_SETTINGS) if args.command == "start" else EXIT_CONFIG
    for warning in loaded.warnings:  # an old setting name that still works, for one release
        print(f"mlx-serve: {warning}", file=sys.stderr)
    try:
        try:
            code = int(args.func(args, loaded) or 0)
        except SystemExit as exc:  # gunicorn's own exits (3: the worker failed to boot)
            code = exc.code if isinstance(exc.code, int) else 1
        return for_the_manager(args.command, code)
    except KeyboardInterrupt:  # Ctrl-C in a pull, a wait, a listing: a line, not a traceback
        what = "; nothing was stored" if args.command == "pull" else ""
        print(f"mlx-serve: {args.command}: interrupted{what}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # At once: a pull's download threads, still blocked on the network, would otherwise hold the exit.
        os._exit(130)


def for_the_manager(command: str, code: int) -> int:
    """The exit code to give the service manager. systemd is told which codes not to restart on
    (RestartPreventExitStatus); launchd cannot be, and its KeepAlive {SuccessfulExit: false} would respawn
    a server whose settings are bad, whose port is taken or whose preload failed, again and again. Under
    launchd those exit 0, after one line saying why."""
    if command != "start" or code not in NO_RESTART_EXIT_CODES or os.environ.get(MANAGER_ENV) != "launchd":
        return code
    print(
        f"mlx-serve: start failed (exit {code}); exiting 0 so that launchd does not restart it into the same "
        "failure: fix the cause above, then `mlx-serve service start`",
        file=sys.stderr,
    )
    return 0


__all__ = ["main"]
