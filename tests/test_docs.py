"""The reference docs cannot go stale silently: every public name and every command is documented."""

from __future__ import annotations

import re
from pathlib import Path

import mone
from mone.cli import _SUBCOMMANDS

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_has_an_entry_in_the_api_reference():
    headings = set(re.findall(r"^### `(\w+)`$", (DOCS / "api.md").read_text(), flags=re.MULTILINE))
    assert set(mone.__all__) <= headings, sorted(set(mone.__all__) - headings)
    assert headings <= set(mone.__all__), sorted(headings - set(mone.__all__))  # nothing documented that is gone


def test_every_command_is_listed_in_the_api_reference_and_the_readme():
    api, readme = (DOCS / "api.md").read_text(), README.read_text()
    for command in _SUBCOMMANDS:
        assert f"| `mone {command}" in api, command
        assert f"mone {command} " in readme, command


def test_the_capacity_guide_links_its_plot():
    guide = (DOCS / "choosing-a-capacity.md").read_text()
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", guide):
        assert (DOCS / target).is_file(), target
