"""The documentation matches the code: the operator reference is generated from the registry, every
link resolves, every documented command parses with the real CLI and its config validates, every
benchmark says when, where and how it was measured, and the module map lists the package's files."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from recaug_spark.augment.catalog import reference_markdown, registries

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC = DOCS / "augmenters.md"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]


def test_docs_augmenters_md_is_up_to_date():
    assert DOC.read_text() == reference_markdown(), "regenerate: recaug augmenters --markdown > docs/augmenters.md"


def test_every_operator_says_when_it_helps_and_describes_its_parameters():
    for _, registry in registries():
        for name, cls in registry.items():
            assert "helps" in (cls.__doc__ or "").lower(), f"{name}: docstring lacks 'when it helps'"
            undocumented = [p for p, field in cls.Params.model_fields.items() if not field.description]
            assert not undocumented, f"{name}: parameters without a description: {undocumented}"


# ---------------------------------------------------------------------------------------------
# Links


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(m) for m in re.findall(r"^#+ (.+)$", _prose(page.read_text()), flags=re.M)}


def _prose(text: str) -> str:
    """The page without its fenced code blocks."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_relative_links_point_to_files_and_headings_that_exist(page):
    links = re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text()))
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local or page == DOC, f"{page.name} links to nothing in the repository"
    for link in local:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: broken link {link}"
        if anchor:
            assert anchor in _anchors(target), f"{page.name}: no heading for #{anchor} in {target.name}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_no_page_cites_notes_outside_the_repository(page):
    assert not re.search(r"\b(DESIGN|STYLE)\.md\b", page.read_text())


# ---------------------------------------------------------------------------------------------
# Commands


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _command_lines(page: Path) -> list[list[str]]:
    """Each shell command of the page's ``sh`` and ``bash`` blocks, continuation lines joined, as argv."""
    commands = []
    for block in _code_blocks(page.read_text(), "(?:sh|bash)"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def _example_configs(page: Path, folder: Path) -> dict[str, str]:
    """YAML blocks that open with ``# <name>.yaml``, written to ``folder``: name → path."""
    written = {}
    for block in _code_blocks(page.read_text(), "yaml"):
        match = re.match(r"# (\S+\.ya?ml)\n", block)
        if match:
            path = folder / match.group(1)
            path.write_text(block)
            written[match.group(1)] = str(path)
    return written


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_documented_recaug_commands_parse_and_their_config_validates(page, tmp_path, monkeypatch):
    """Each ``recaug ...`` line parses with the real click command (options, choices) and, where the
    command takes config options, its --config files and --set values validate (before any Spark)."""
    import click

    from recaug_spark.cli import main, order_only_conflict, resolve_config
    from recaug_spark.pipeline import planned_stages

    monkeypatch.chdir(ROOT)  # paths in the commands are relative to the repository root
    examples = _example_configs(page, tmp_path)
    checked = 0
    for argv in _command_lines(page):
        if argv[0] != "recaug":
            continue
        command, args = main, argv[1:]
        while isinstance(command, click.Group):
            assert args and args[0] in command.commands, f"{page.name}: unknown command in {shlex.join(argv)}"
            command, args = command.commands[args[0]], args[1:]
        ctx = command.make_context(command.name, list(args))
        params = dict(ctx.params)
        if "configs" in params and "sets" in params:
            configs = [examples.get(c, c) for c in params.pop("configs")]
            if "experiment_yaml" in params:  # an experiment file is one more config layer
                configs.append(params.pop("experiment_yaml"))
            until = params.pop("until", None)
            cfg = resolve_config(configs, params.pop("sets"), **params)  # names that are not shorthands are ignored
            stages = planned_stages(cfg, until) if command.name == "run" else [command.name]
            assert order_only_conflict(cfg, stages) is None, f"{page.name}: {shlex.join(argv)}"
        checked += 1
    if page.name in ("README.md", "pipeline.md"):
        assert checked >= 3, f"{page.name}: expected recaug commands, found {checked}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_documented_yaml_is_valid_config(page, tmp_path):
    """Every YAML block of the docs is a valid config layer (alone, over the defaults)."""
    from recaug_spark.config import load_config

    for block in _code_blocks(page.read_text(), "yaml"):
        path = tmp_path / "layer.yaml"
        path.write_text(block)
        assert isinstance(yaml.safe_load(block), dict)
        load_config([path])


def test_benchmark_commands_name_real_scripts_and_options():
    page = DOCS / "benchmarks.md"
    pythons = [argv for argv in _command_lines(page) if argv[0].endswith("python")]
    for argv in (a for a in pythons if a[1] == "-m"):  # `python -m recaug_spark...`: a module of the package
        assert (ROOT / (argv[2].replace(".", "/") + ".py")).is_file(), f"no module {argv[2]}"
    scripts = [argv for argv in pythons if argv[1] != "-m"]
    assert {argv[1] for argv in scripts} == {f"benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("*.py")}
    for argv in scripts:
        source = (ROOT / argv[1]).read_text()
        for option in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
            assert f'"{option}"' in source, f"{argv[1]} has no option {option}"


def test_every_benchmark_section_says_when_where_and_how():
    text = (DOCS / "benchmarks.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(sections) >= 5
    for section in sections:
        title = section.splitlines()[0]
        assert re.search(r"\*\*Measured\*\* \d{4}-\d\d-\d\d", section), f"{title}: no date"
        assert "2-core development machine" in section, f"{title}: no machine"
        assert "```sh" in section, f"{title}: no command"


# ---------------------------------------------------------------------------------------------
# Module map


def test_the_module_map_lists_exactly_the_package_modules():
    text = (DOCS / "architecture.md").read_text()
    block = text.split("<!-- module-map -->", 1)[1].split("<!-- /module-map -->", 1)[0]
    listed = re.findall(r"^- `(recaug_spark/[\w/]+\.py)` — \S", block, flags=re.M)
    assert len(listed) == len(set(listed)), "a module is listed twice"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "recaug_spark").rglob("*.py")
               if p.name != "__init__.py"}
    assert set(listed) == modules, (
        f"refresh the module map in docs/architecture.md: missing {sorted(modules - set(listed))}, "
        f"gone {sorted(set(listed) - modules)}")
