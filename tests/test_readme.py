"""The README cannot drift: the files, test ids, make targets, CLI commands and options it shows
exist, its Python parses, and the sample summary line is what the simulator prints."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import click
import pytest

from trimaran.cli import main
from trimaran.simulations.run import run_seed

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, re.S)


def _shell_lines() -> list[str]:
    lines: list[str] = []
    for lang, body in BLOCKS:
        if lang != "sh":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_named_test_files_and_ids_exist() -> None:
    named = set(re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", README))
    assert named, "the README names tests"
    for path, test in named:
        assert (ROOT / path).is_file(), path
        if test:
            assert re.search(rf"def {test}\(", (ROOT / path).read_text()), f"{path}::{test}"


def test_named_source_files_exist() -> None:
    named = set(re.findall(r"`(src/trimaran/[\w/]+\.py)`", README))
    assert named, "the README names source files"
    for path in named:
        assert (ROOT / path).is_file(), path


def test_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    used = {m for line in _shell_lines() for m in re.findall(r"(?:^|\s)make ([\w-]+)", line)}
    used |= set(re.findall(r"`make ([\w-]+)", README))
    assert used and used <= targets, used - targets


def _trimaran_commands() -> list[list[str]]:
    commands = []
    for line in _shell_lines():
        line = re.sub(r"^\w+=\$\(", "", line).rstrip(")")  # TOKEN=$(trimaran auth token ...)
        words = shlex.split(line)
        if words and words[0] in ("trimaran", ".venv/bin/trimaran"):
            commands.append(words[1:])
    return commands


def _check_command(words: list[str]) -> None:
    """AssertionError unless ``trimaran WORDS`` names a real command and only its options."""
    command: click.Command = main
    rest = list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"trimaran {' '.join(words)}: no command {rest[0]!r}"
        command, rest = sub, rest[1:]
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"-h", "--help"}
    for word in rest:
        if word.startswith("-") and word != "-":
            assert word.split("=")[0] in known, f"trimaran {' '.join(words)}: no option {word}"


def test_every_cli_command_and_option_shown_exists() -> None:
    commands = _trimaran_commands()
    assert len(commands) > 10
    for words in commands:
        _check_command(words)


@pytest.mark.parametrize("words", [["kv", "sett", "k", "v"], ["kv", "set", "k", "v", "--ttl", "5"], ["simulat"]])
def test_the_command_check_can_fail(words: list[str]) -> None:
    with pytest.raises(AssertionError):
        _check_command(words)


def test_python_blocks_parse() -> None:
    python = [body for lang, body in BLOCKS if lang == "python"]
    assert python
    for body in python:
        ast.parse(body)


@pytest.mark.slow
def test_the_sample_summary_line_is_what_the_simulator_prints() -> None:
    """The README promises the same digest on any machine: its sample line must be the real one."""
    shown = re.search(r"^seed=42 .*$", README, re.M)
    assert shown is not None
    assert run_seed(42).summary() == shown.group(0)
