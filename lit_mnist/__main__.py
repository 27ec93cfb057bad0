"""``python -m lit_mnist`` and the ``lit-mnist`` script: every command, behind one entry point.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's (``lit_mnist.cli``); ``export``,
``tune`` and ``serve`` are the project's own, each a module whose ``main`` runs it as a jsonargparse
command (``--help`` from its docstring, ``--config``, ``--print_config``). ``--help`` lists all
seven. A command's module is imported only when it runs (Optuna only for ``tune``, LitServe only
for ``serve``), and every problem the user can fix ends as one sentence (``reported_errors``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from lit_mnist.errors import reported_errors

#: The project's own commands: name → the module that runs it.
COMMANDS = {"export": "lit_mnist.export", "tune": "lit_mnist.tune", "serve": "lit_mnist.serve"}


def command_help(name: str) -> str:
    r"""A command's line in ``python -m lit_mnist --help``: its module docstring's first line.

    That line reads ``\`\`python -m lit_mnist <name>\`\`: <what it does>.``; the part after the colon is kept.
    """
    module = importlib.import_module(COMMANDS[name])
    what = (module.__doc__ or name).strip().splitlines()[0].split(": ", 1)[-1]
    return what[:1].upper() + what[1:]


def main(args: Sequence[str] | None = None) -> None:
    """Run the command that ``args`` (default: ``sys.argv[1:]``) names, with its options."""
    argv = list(sys.argv[1:] if args is None else args)
    with reported_errors():
        if argv and argv[0] in COMMANDS:
            importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
            return
        from lit_mnist.cli import LIGHTNING_COMMANDS, LitMNISTCLI

        # The other commands are listed in --help (and a mistyped name is told about them), but
        # only imported when the command line names no Lightning command.
        listed = {} if argv and argv[0] in LIGHTNING_COMMANDS else {n: command_help(n) for n in COMMANDS}
        LitMNISTCLI(args=argv, commands=listed)


if __name__ == "__main__":
    main()
