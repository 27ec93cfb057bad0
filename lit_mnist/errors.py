"""The one exception type whose message is meant for the user, and the argparse that raises it."""

from __future__ import annotations

import argparse
from typing import Any


class LitMNISTError(Exception):
    """A problem the user can fix; the CLI prints the message alone and exits with status 1."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ``LitMNISTError``, prefixed with the command, instead of printing usage."""

    def error(self, message: str) -> Any:
        raise LitMNISTError(f"{self.prog.rsplit(' ', 1)[-1]}: {message}.")
