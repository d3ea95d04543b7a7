"""The shape every replicated service's commands and queries share: ``[op, required arguments...,
{options}?]``. A trailing options map may be left out or be ``None``; an option given as ``None``
means "not given". One place for it, so that every service refuses a misshapen message with the
same words (each service checks its own arguments' types and bounds).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from trimaran.errors import InvalidArgument
from trimaran.protocols.codec import brief

T = TypeVar("T")


def op_of(message: Any, kind: str) -> str:
    """The op of ``message`` (``kind`` names it in the error: "command", "chat query", ...)."""
    if type(message) is not list or not message or type(message[0]) is not str:
        raise InvalidArgument(f"a {kind} is a list [op, arguments..., {{options}}?]")
    return message[0]


def split(message: list[Any], kind: str, required: int, options: tuple[str, ...]) -> tuple[list[Any], dict[str, Any]]:
    """``[op, *required, {options}?]`` -> (the required arguments, the options given and not None)."""
    args = message[1:]
    opts: dict[str, Any] = {}
    if len(args) == required + 1 and args[-1] is None:
        args.pop()  # a None options map is no options
    elif len(args) == required + 1 and type(args[-1]) is dict:
        opts = args.pop()
        unknown = sorted(str(k) for k in opts if k not in options)
        if unknown:
            allowed = ", ".join(options) or "none"
            raise InvalidArgument(f"{kind} {brief(message[0])}: unknown option(s) {', '.join(unknown)} (allowed: {allowed})")
        opts = {k: v for k, v in opts.items() if v is not None}
    if len(args) != required:
        raise InvalidArgument(f"{kind} {brief(message[0])} takes {required} argument(s) and an optional options map")
    return args, opts


def parse(message: Any, service: str, kind: str, parsers: Mapping[str, Callable[[list[Any]], T]]) -> T:
    """``message`` parsed by the parser of its op (``kind``: "command" or "query" of ``service``);
    ``InvalidArgument`` naming the known ops when it has none."""
    op = op_of(message, f"{service} {kind}")
    parser = parsers.get(op)
    if parser is None:
        raise InvalidArgument(f"unknown {service} {kind} {brief(op)} (known: {', '.join(parsers)})")
    return parser(message)
