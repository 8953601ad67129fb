"""The operator reference: every registered augmenter with its parameters, from the code itself.

``recaug augmenters`` prints it; ``docs/augmenters.md`` is generated from it (a test keeps the file
up to date), so the documentation of names, parameters and defaults cannot drift from the code.
"""

from __future__ import annotations

import inspect
import json

from recaug_spark.augment.registry import ITEM_REGISTRY, REGISTRY

REGISTRIES = (
    ("Sequence augmenters (`augment.branches[].chain`)", REGISTRY),
    ("Item augmenters (`augment.items.branches[].chain`)", ITEM_REGISTRY),
)


def registries() -> list[tuple[str, dict]]:
    """(section title, registry) of every registry the reference documents, in order."""
    return list(REGISTRIES)


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    return json.dumps(value if not isinstance(value, tuple) else list(value))


def reference_markdown() -> str:
    """The Markdown reference of all registered augmenters, grouped by registry, sorted by name."""
    lines = ["# Augmenters", "",
             "Generated from the registry by `recaug augmenters --markdown`; do not edit by hand.", ""]
    for title, registry in registries():
        lines += [f"## {title}", ""]
        for name in sorted(registry):
            cls = registry[name]
            lines += [f"### `{name}`", "", inspect.cleandoc(cls.__doc__ or "(undocumented)"), ""]
            fields = cls.Params.model_fields
            if fields:
                lines += ["| parameter | default | meaning |", "|---|---|---|"]
                for pname, field in fields.items():
                    meaning = (field.description or "").replace("|", "\\|")
                    lines.append(f"| `{pname}` | `{_default(field)}` | {meaning} |")
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"
