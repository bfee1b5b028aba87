"""Chat channels. Each configured channel contributes a part to the running service."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.app import Services, Startable


def channel_parts(services: Services) -> list[Startable]:
    """The parts of every channel the settings enable (Telegram, Zalo), in start order."""
    parts: list[Startable] = []
    return parts
