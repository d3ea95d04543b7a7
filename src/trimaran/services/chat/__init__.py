"""The chat service: channels, history, presence and the applied-events window (see
:mod:`trimaran.services.chat.service`)."""

from trimaran.services.chat.service import CHAT_MUTANTS, ChatService

__all__ = ["CHAT_MUTANTS", "ChatService"]
