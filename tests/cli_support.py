"""Helpers for tests that run the command line: in-process `main([...])` and real processes."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.__main__ import main

REPO = Path(__file__).resolve().parent.parent


async def run_main(args: Sequence[str]) -> int:
    """`main(args)` in a worker thread: it runs its own event loop, as the console script does.

    `main` configures the root logger for the process; it is put back afterwards so one
    test's handler (writing to that test's captured stderr) never outlives the test.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        return await asyncio.to_thread(main, list(args))
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def subprocess_env(**sipas: str) -> dict[str, str]:
    """The environment of a `python -m bot` child: no SIPAS_* but the given ones."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SIPAS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(sipas)
    return env


PYTHON = sys.executable
