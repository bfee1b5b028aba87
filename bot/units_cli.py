"""Loading the units file (docs/contract.md section 5) from a path: CLI and start-up share this."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from handlers.errors import InvalidInput
from handlers.units import LoadReport, load_units, parse_units_file

if TYPE_CHECKING:
    from bot.app import Services


async def load_units_file(services: Services, path: Path) -> LoadReport:
    """Reads, checks and loads the file in one transaction; errors name the file and entry."""
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput({"file": f"cannot read {path}: {exc.strerror}"}) from None
    parsed = parse_units_file(text)
    async with services.sessions.begin() as session:
        return await load_units(session, parsed)
