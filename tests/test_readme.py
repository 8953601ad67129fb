"""The README's Quick start has exactly two commands, and CI runs the second one verbatim."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_exactly_two_one_line_commands():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert commands[0].endswith("recaug run") and commands[1].endswith("pytest")


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    # .ci/run extracts the command from the README block marked quickstart-test; emulate it.
    extracted = subprocess.run(
        ["bash", "-c", script.split("if [ -z")[0].split("cd \"$(dirname \"$0\")/..\"\n", 1)[1] + 'printf %s "$command"'],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    assert extracted == quick_start_commands()[1]
