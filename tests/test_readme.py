"""The README is the short front page: exactly two Quick start commands (CI runs the second one
verbatim), under 10 KB, and a link to every page in docs/ where the detail lives. Its links and
commands are checked with the other docs' in ``test_docs.py``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_BYTES = 10 * 1024


def quick_start_commands() -> list[str]:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_exactly_two_one_line_commands():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert commands[0].endswith("recaug run") and commands[1].endswith("pytest")


def test_quick_start_commands_are_marked_for_ci():
    text = README.read_text()
    for marker, command in zip(("quickstart-run", "quickstart-test"), quick_start_commands()):
        assert re.search(rf"<!-- {marker} -->\n```sh\n{re.escape(command)}\n```", text), marker


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    # .ci/run extracts the command from the README block marked quickstart-test; emulate it.
    extraction = script.split("if [ -z")[0].split("cd \"$(dirname \"$0\")/..\"\n", 1)[1]
    extracted = subprocess.run(["bash", "-c", extraction + 'printf %s "$command"'], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    assert extracted == quick_start_commands()[1]


def test_readme_stays_short_and_links_every_docs_page():
    size = len(README.read_bytes())
    assert size < MAX_BYTES, f"README.md is {size} bytes: move detail to docs/"
    links = set(re.findall(r"\]\((docs/[^)#\s]+)", README.read_text()))
    assert links == {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
