"""One dataset's study table: every baseline and augmented arm against the strongest baseline.

A study is trained in pieces — the cross-entropy baseline by one process, the BCE baseline by
another, each consumption mode by a third — and each piece saves its runs, one JSON object per
line (``*.runs.jsonl``, see ``benchmarks/reproduce_sports.py --json``). ``study_table`` merges
them into the table a shop needs before it spends cluster time on augmentation:

* an **arm** is a (loss, variant) pair: ``baseline (ce)``, ``baseline (bce)``, ``contrastive (ce)``…;
* the **strongest baseline** is the baseline arm with the best mean *validation* score (never the
  test score: choosing on test would flatter whichever arm is compared with it);
* every other arm is compared with it on the test split, paired by seed (same seed = same initial
  weights and batches), on all users and on each segment of the trainer's breakdown (short/long
  history, cold-start users, head/tail target); a segment where the arm is significantly worse is
  named;
* each row ends with a plain sentence (``experiment.verdict``): helps, hurts, or no measurable effect.

Usage::

    python -m recaug_spark.train.study ce_baseline.runs.jsonl bce_baseline.runs.jsonl ce_contrastive.runs.jsonl
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from recaug_spark.train import metrics as M
from recaug_spark.train.experiment import BASELINE, Comparison, compare, format_mean_ci, format_relative, verdict

SEGMENTS = ("short", "long", "cold", "head", "tail")


def read_runs(paths: Iterable[Path]) -> dict[str, dict[int, dict]]:
    """``{arm: {seed: result}}`` from ``*.runs.jsonl`` files; an arm is ``"<variant> (<loss>)"``.
    A run saved twice, or arms whose epochs differ in length (other data or batch size), are refused."""
    arms: dict[str, dict[int, dict]] = {}
    steps: dict[int, str] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            result = json.loads(line)
            arm = f"{result.pop('variant')} ({result.get('loss', 'bce')})"
            seed = int(result.pop("seed"))
            if seed in arms.get(arm, {}):
                raise ValueError(f"{path}: {arm} seed {seed} is saved twice")
            arms.setdefault(arm, {})[seed] = result
            steps.setdefault(result.get("steps_per_epoch"), f"{path} ({arm} seed {seed})")
    if len(steps) > 1:
        raise ValueError(f"runs with different epoch lengths (not the same data or batch size): {steps}")
    return arms


def strongest_baseline(arms: dict[str, dict[int, dict]], metric: str) -> str:
    """The baseline arm with the best mean validation ``metric``."""
    baselines = {arm: runs for arm, runs in arms.items() if arm.startswith(f"{BASELINE} (")}
    if not baselines:
        raise ValueError(f"no baseline arm among {sorted(arms)}")
    return max(baselines, key=lambda arm: M.mean_ci([r["valid"][metric] for r in baselines[arm].values()])["mean"])


def _values(arms: dict[str, dict[int, dict]], metric: str, segment: str = "all") -> dict[str, dict[int, float]]:
    """``{arm: {seed: test value}}`` of one metric on all users or one segment (arms lacking it left out)."""
    out: dict[str, dict[int, float]] = {}
    for arm, runs in arms.items():
        for seed, result in runs.items():
            values = result["test"] if segment == "all" else result.get("test_breakdown", {}).get(segment, {})
            if metric in values:
                out.setdefault(arm, {})[seed] = float(values[metric])
    return out


def _against(values: dict[str, dict[int, float]], reference: str, metric: str) -> dict[str, Comparison]:
    """Each arm against ``reference`` on the seeds both have (a paired comparison never mixes
    seeds); the reference's own row is its mean over all its seeds, with no interval of change."""
    if reference not in values:
        return {}
    ref = values[reference]
    out = {reference: compare({BASELINE: ref}, metric)[0]}
    for arm, by_seed in values.items():
        seeds = sorted(set(by_seed) & set(ref))
        if arm == reference or not seeds:
            continue
        c = compare({BASELINE: {s: ref[s] for s in seeds}, arm: {s: by_seed[s] for s in seeds}}, metric)[1]
        out[arm] = c
    return out


def worse_segments(arms: dict[str, dict[int, dict]], arm: str, reference: str, metric: str) -> list[str]:
    """The segments where ``arm`` is significantly worse than ``reference`` (paired CI below 0)."""
    out = []
    for segment in SEGMENTS:
        c = _against(_values(arms, metric, segment), reference, metric).get(arm)
        if c is not None and not math.isnan(c.relative_high) and c.relative_high < 0:
            out.append(f"{segment} {format_relative(c).removesuffix(' *')}")
    return out


def study_table(arms: dict[str, dict[int, dict]], metric: str = "ndcg@10", second: str = "hr@10") -> str:
    """The markdown table (one row per arm) and one sentence per arm; see the module docstring."""
    reference = strongest_baseline(arms, metric)
    main = _against(_values(arms, metric), reference, metric)
    other = _against(_values(arms, second), reference, second)
    segments = [s for s in SEGMENTS if any(s in r.get("test_breakdown", {}) for runs in arms.values()
                                           for r in runs.values())]
    header = (f"| arm | seeds | valid {metric} | test {metric} | Δ vs {reference} | test {second} | "
              f"best epochs | cap hits | " + " | ".join(f"Δ {s}" for s in segments) + " |")
    lines = [f"Strongest baseline (chosen on validation {metric}): **{reference}**. Test split, mean ± 95% CI over "
             "seeds; Δ: relative change with its paired-by-seed 95% CI (* = excludes 0).", "", header,
             "|" + "---|" * (8 + len(segments))]
    per_segment = {s: _against(_values(arms, metric, s), reference, metric) for s in segments}  # once, not per arm
    order = sorted(arms, key=lambda a: (a != reference, not a.startswith(f"{BASELINE} ("), a))
    for arm in order:
        runs = arms[arm]
        valid = M.mean_ci([r["valid"][metric] for r in runs.values()])
        by_segment = [per_segment[s].get(arm) for s in segments]
        cells = [arm, str(len(runs)), format_mean_ci(valid["mean"], valid["half_width"]),
                 format_mean_ci(main[arm].mean, main[arm].half_width),
                 "—" if arm == reference else format_relative(main[arm]),
                 format_mean_ci(other[arm].mean, other[arm].half_width),
                 ", ".join(str(runs[s]["best_epoch"] + 1) for s in sorted(runs)),
                 str(sum(bool(runs[s].get("cap_hit")) for s in sorted(runs))),
                 *("n/a" if c is None else "—" if arm == reference else format_relative(c) for c in by_segment)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", *_sentences(arms, order, reference, main, metric)])


def _sentences(arms, order: Sequence[str], reference: str, main: dict[str, Comparison], metric: str) -> list[str]:
    lines = []
    for arm in order:
        if arm == reference:
            continue
        worse = worse_segments(arms, arm, reference, metric)
        tail = f" Significantly worse on: {'; '.join(worse)}." if worse else ""
        lines.append(f"- {verdict(main[arm])}{tail}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        raise SystemExit("usage: python -m recaug_spark.train.study RUNS.jsonl [RUNS.jsonl ...]")
    print(study_table(read_runs(paths)))


if __name__ == "__main__":
    main()
