"""Every command's ``--help`` renders, and every option a help text names is one that command (or the command the
text quotes, as in `isovol upsample --model DIR`) really has: help texts stay true as options move."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from isovol.workflows.cli import cli

COMMANDS = sorted(cli.commands)
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
QUOTED = re.compile(r"`isovol ([a-z-]+)([^`]*)`")


def _options(name: str) -> set[str]:
    cmd = cli.commands[name]
    return {o for p in cmd.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))} | {"--help"}


def test_every_command_is_listed():
    res = CliRunner().invoke(cli, ["--help"], prog_name="isovol")
    assert res.exit_code == 0
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\b", res.output, re.M), name
    assert {"upsample", "plan", "status", "pyramid", "view", "train", "evaluate", "demo", "methods"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_renders_and_names_only_real_options(name):
    res = CliRunner().invoke(cli, [name, "--help"], prog_name="isovol")
    assert res.exit_code == 0 and res.output.startswith(f"Usage: isovol {name}"), res.output
    text = " ".join(res.output.split())  # click wraps lines; a quoted command may span two
    for other, args in QUOTED.findall(text):
        assert other in cli.commands, f"{name} --help quotes an unknown command {other!r}"
        assert set(OPTION.findall(args)) <= _options(other), f"{name} --help: `isovol {other}{args}`"
    own = set(OPTION.findall(QUOTED.sub("", text)))
    assert own <= _options(name), f"{name} --help names options it does not have: {sorted(own - _options(name))}"


def test_the_check_sees_a_false_help_text():
    """The check above is worth something only if it catches the kind of text it is for."""
    text = "fsspec storage options for the input (and the output unless --output-storage-options is given)"
    assert set(OPTION.findall(text)) - _options("status") == {"--output-storage-options"}
