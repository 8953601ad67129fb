"""The operator reference in docs/ is generated from the registry and must match the code."""

from __future__ import annotations

from pathlib import Path

from recaug_spark.augment.catalog import _registries, reference_markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "augmenters.md"


def test_docs_augmenters_md_is_up_to_date():
    assert DOC.read_text() == reference_markdown(), "regenerate: recaug augmenters --markdown > docs/augmenters.md"


def test_every_operator_says_when_it_helps_and_describes_its_parameters():
    for _, registry in _registries():
        for name, cls in registry.items():
            assert "helps" in (cls.__doc__ or "").lower(), f"{name}: docstring lacks 'when it helps'"
            undocumented = [p for p, field in cls.Params.model_fields.items() if not field.description]
            assert not undocumented, f"{name}: parameters without a description: {undocumented}"
