"""`sipas-bot heads invite UNIT_CODE`: a one-time deep link that links a unit head's chat."""

from __future__ import annotations

from telegram import Bot
from telegram.error import InvalidToken, TelegramError

from bot.app import Services
from bot.config import SettingsError, telegram_token_rejected
from bot.logging_setup import mask
from bot.startup import StartupError
from handlers.heads import invite_head


class TelegramUnreachable(StartupError):
    """The Bot API could not be asked for the bot's name (exit code 1)."""


async def bot_username(services: Services) -> str:
    """The Telegram bot's username: from SIPAS_TELEGRAM_BOT_USERNAME, else asked of the Bot API."""
    settings = services.settings
    if settings.telegram_bot_username:
        return settings.telegram_bot_username
    if settings.telegram_token is None:
        raise SettingsError(
            "SIPAS_TELEGRAM_TOKEN is not set: the invite opens the bot in Telegram; set it, "
            "or set SIPAS_TELEGRAM_BOT_USERNAME to the bot's name"
        )
    bot = Bot(settings.telegram_token.get_secret_value(), base_url=settings.telegram_api_url)
    try:
        async with bot:
            return bot.username
    except InvalidToken:
        raise telegram_token_rejected(settings) from None
    except TelegramError as exc:
        raise TelegramUnreachable(
            f"cannot reach the Telegram Bot API at {settings.telegram_api_url} to learn the "
            f"bot's name ({mask(str(exc))}); try again, or set SIPAS_TELEGRAM_BOT_USERNAME"
        ) from None


async def heads_invite(services: Services, unit_code: str) -> str:
    """Mints the invite and returns the link to hand to the head (valid for 7 days, once).

    With Zalo as the only chat channel the link opens the Zalo bot, and the head sends the
    token (the link's `start` value) to the bot as a message.
    """
    settings = services.settings
    zalo_only = settings.telegram_token is None and not settings.telegram_bot_username
    username = None if zalo_only and settings.zalo_token else await bot_username(services)
    async with services.sessions.begin() as session:
        invite = await invite_head(session, unit_code, services.clock.now(), services.policy)
        token = invite.token
    if username is None:
        assert settings.zalo_token is not None
        bot_id = settings.zalo_token.get_secret_value().split(":", 1)[0]
        return f"https://zalo.me/{bot_id}?start={token}"
    return f"https://t.me/{username}?start={token}"
