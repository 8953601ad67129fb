"""Every benchmark command documented in docs/benchmarks.md and README.md runs as written, at a tiny size.

The commands are read from the documents' ``sh`` blocks (continuation lines joined, comments dropped,
shell variables expanded), then only their sizes are shrunk (:data:`TINY`: events, repeats, epochs,
seeds...) and their scratch paths moved into a temporary folder; every other flag is kept as written,
so a renamed flag, a default pipeline that needs missing models or a broken code path fails here. The
commands of one block run in order (later ones reuse what earlier ones wrote, as in the docs).
``reproduce_sports.py`` gets a tiny file in the Amazon 5-core format for ``--data``: the real one lives
in ``../shared/datasets`` (the script says so when it is absent, as in a fresh clone).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = (ROOT / "docs" / "benchmarks.md", ROOT / "README.md")

# Per script: flag -> tiny value (replaced where the command has the flag, added where it has not).
TINY: dict[str, dict[str, str]] = {
    "io_floor.py": {"--events": "20000", "--repeats": "1"},
    "augment_throughput.py": {"--events": "20000", "--scales": "1e4,2e4", "--repeats": "1",
                              "--operator-events": "10000", "--baseline-events": "5000",
                              "--heavy-users": "2", "--heavy-events": "3000"},
    "generator_inference.py": {"--events": "20000", "--fit-scales": "1e4", "--epochs": "1", "--repeats": "1"},
    "trainer_throughput.py": {"--users": "400", "--items": "300", "--eval-users": "50", "--steps": "3",
                              "--repeats": "1"},
    "reproduce_sports.py": {"--seeds": "1", "--max-epochs": "1", "--patience": "1"},
    "scale.py": {"--sizes": "2e4"},
}
# Extra --set overrides where a documented layer trains for long (epochs of the generators' fit).
TINY_SETS = {"reproduce_sports.py": ("fit.reverse_transformer.epochs=1", "fit.forward_transformer.epochs=1",
                                     "fit.item_attributes.epochs=1")}


def sh_blocks(path: Path) -> list[list[str]]:
    """The commands of each ``sh`` block of a document that runs a benchmark script."""
    blocks = []
    for block in re.findall(r"```sh\n(.*?)```", path.read_text(), flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands = [line.split(" # ")[0].strip() for line in joined.splitlines()]
        commands = [c for c in commands if c and not c.startswith("#")]
        if any("benchmarks/" in c for c in commands):
            blocks.append(commands)
    return blocks


def documented_blocks() -> list[tuple[str, list[str]]]:
    found = []
    for document in DOCUMENTS:
        for index, block in enumerate(sh_blocks(document)):
            scripts = sorted({Path(w).name for c in block for w in c.split() if w.startswith("benchmarks/")})
            found.append((f"{document.name}:{index}:{'+'.join(scripts)}", block))
    return found


def shrink(argv: list[str], script: str) -> list[str]:
    """``argv`` with the flags of :data:`TINY` set to their tiny values (a report from saved runs: as it is)."""
    if "--report-from" in argv:
        return list(argv)
    out, tiny = list(argv), TINY.get(script, {})
    for flag, value in tiny.items():
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    for override in TINY_SETS.get(script, ()):
        out += ["--set", override]
    return out


def relocate(word: str, scratch: Path) -> str:
    """Scratch paths of the docs (/tmp/..., relative .json/.jsonl outputs) moved under ``scratch``."""
    if word.startswith("/tmp/"):
        return str(scratch / word[len("/tmp/"):])
    if re.fullmatch(r"[\w.-]+\.jsonl?", word):
        return str(scratch / word)
    return word


def tiny_sports_file(path: Path, users: int = 60, items: int = 40) -> Path:
    """Lines ``user item item ...`` (Amazon 5-core format: integer ids), every user with 5 to 12 events."""
    lines = []
    for u in range(1, users + 1):
        length = 5 + u % 8
        lines.append(" ".join([str(u), *(str(1 + (u * 7 + k * 3) % items) for k in range(length))]))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_block(commands: list[str], scratch: Path) -> None:
    variables = {"S": str(tiny_sports_file(scratch / "Sports_and_Outdoors.txt"))}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for command in commands:
        assignment = re.fullmatch(r"(\w+)=(\S+)", command)
        if assignment:  # S=<the real dataset>: the tiny file stands in for it
            continue
        argv = [re.sub(r"\$(\w+)", lambda m: variables[m[1]], relocate(w, scratch)) for w in shlex.split(command)]
        if argv[0].endswith("python"):
            script = Path(argv[1]).name
            argv = [sys.executable, *shrink(argv[1:], script)]
            if script == "reproduce_sports.py" and "--data" not in argv and "--report-from" not in argv:
                argv += ["--data", variables["S"]]
        for folder in {Path(w).parent for w in argv if w.startswith(str(scratch))}:
            folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{' '.join(argv)}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def test_every_benchmark_script_is_documented_with_a_command():
    """Each script in benchmarks/ has at least one documented command, and each documented one exists."""
    documented = {Path(w).name for _, block in documented_blocks() for c in block for w in c.split()
                  if w.startswith("benchmarks/")}
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert documented == scripts
    assert set(TINY) == scripts, "every script needs its tiny sizes here"


def test_shrink_replaces_sizes_and_keeps_other_flags():
    argv = ["benchmarks/augment_throughput.py", "--events", "2000000", "--scales", "2e6", "--skip-skew"]
    tiny = shrink(argv, "augment_throughput.py")
    assert tiny[:6] == ["benchmarks/augment_throughput.py", "--events", "20000", "--scales", "1e4,2e4", "--skip-skew"]
    assert tiny[tiny.index("--repeats") + 1] == "1"
    assert relocate("/tmp/sports/wh", Path("/x")) == "/x/sports/wh"
    assert relocate("a.runs.jsonl", Path("/x")) == "/x/a.runs.jsonl" and relocate("--json", Path("/x")) == "--json"


def first_blocks() -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]]]:
    """(blocks that run a script for the first time in the documents, the others). Running one
    block per script keeps the suite's time bounded; the others' flags are checked against the
    script's ``--help`` (:func:`test_documented_flags_exist`), which catches a renamed flag."""
    seen: set[str] = set()
    first, rest = [], []
    for name, block in documented_blocks():
        scripts = set(name.split(":")[2].split("+"))
        (first if scripts - seen else rest).append((name, block))
        seen |= scripts
    return first, rest


@functools.lru_cache(maxsize=None)
def script_help(script: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def help_options(text: str) -> set[str]:
    """The ``--options`` named in an argparse help text, each as a whole token (``--seeds`` is not ``--seed``)."""
    return set(re.findall(r"(?<![\w-])--[A-Za-z0-9][\w-]*", text))


def test_help_options_are_whole_tokens():
    text = "usage: s.py [-h] [--seeds SEEDS] [--spark-conf KEY=VALUE]\n  --seeds SEEDS  comma-separated, see --json-out"
    assert help_options(text) == {"--seeds", "--spark-conf", "--json-out"}  # the three written above, no "--seed"


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.parametrize("name,commands", first_blocks()[0], ids=[name for name, _ in first_blocks()[0]])
def test_documented_benchmark_command_runs(name, commands, tmp_path):
    run_block(commands, tmp_path)


@pytest.mark.parametrize("name,commands", first_blocks()[1], ids=[name for name, _ in first_blocks()[1]])
def test_documented_flags_exist(name, commands):
    for command in commands:
        words = shlex.split(command)
        scripts = [Path(w).name for w in words if w.startswith("benchmarks/")]
        if not scripts:
            continue
        flags = {w.split("=")[0] for w in words if w.startswith("--")}
        options = help_options(script_help(scripts[0]))
        missing = sorted(flags - options)
        assert not missing, f"{name}: {scripts[0]} has no {missing}"
