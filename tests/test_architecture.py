"""The shape of the package, checked: layers documented, modules small, commands registered.

The import rules themselves (layers, no cycles) are import-linter contracts in pyproject.toml,
run by ``make lint``.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from src.infra.backup import cli

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "infra" / "backup"
MAX_MODULE_LINES = 600
LAYERS = ("storage", "format", "repository", "files", "policy", "app", "monitoring", "cli")


def test_no_module_is_longer_than_600_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_says_what_it_knows_nothing_of(layer: str) -> None:
    doc = (PACKAGE / layer / "__init__.py").read_text().split('"""')[1]
    assert "nothing" in doc.lower(), f"{layer}/__init__.py: {doc!r}"


def test_every_command_module_is_registered_under_its_name() -> None:
    modules = {path.stem for path in (PACKAGE / "cli").glob("cmd_*.py")}
    assert {module for module, _ in cli.COMMANDS.values()} == modules
    for name in cli.COMMANDS:
        command = cli.main.get_command(click.Context(cli.main), name)
        assert isinstance(command, click.Command) and command.name == name
    assert cli.main.list_commands(click.Context(cli.main)) == sorted(cli.COMMANDS)
