"""The report of a policy search (``recaug tune --report``), rendered from the trial history alone.

``render_report(folder, records, ...)`` writes into ``folder``:

* ``scores.png`` — validation score against trial number: proxy scores (complete trials as dots,
  pruned ones as crosses at their last reported epoch), full re-runs, the best proxy score so far,
  and the real-only baseline's full score as a line;
* ``report.md`` — the best policy, the with-vs-without table on validation (the baseline and the
  best policy under the full budget, one seed: what the search chose on), the proxy-to-full Spearman
  rank correlation, every trial, and — once ``recaug tune --confirm`` has run — the test table
  over the confirmation seeds with paired-by-seed 95% CIs (``train.experiment.comparison_table``).

No model is trained here: everything comes from ``tune_trials`` (``history.read_history``) and the
confirmation's saved runs (``confirm.json`` in the study folder).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from recaug_spark.train.figures import new_figure, save_figure
from recaug_spark.tune.history import baseline_verdict, best_record, rank_correlation

CONFIRM_FILE = "confirm.json"


def plot_scores(folder: Path, records: Sequence[dict], metric: str) -> str:
    """``scores.png``: validation score per trial (proxy, pruned, full), best so far, baseline."""
    fig, ax = new_figure(figsize=(7, 4))
    trials = [r for r in records if r["trial"] >= 0 and r["proxy_score"] is not None]
    for state, marker, label in (("COMPLETE", "o", "proxy (complete)"), ("PRUNED", "x", "proxy (pruned)")):
        chosen = [r for r in trials if r["state"] == state]
        ax.scatter([r["trial"] for r in chosen], [r["proxy_score"] for r in chosen], marker=marker, label=label)
    full = [r for r in trials if r["full_score"] is not None]
    ax.scatter([r["trial"] for r in full], [r["full_score"] for r in full], marker="*", s=120, label="full re-run")
    best, xs, ys = -math.inf, [], []
    for r in sorted((r for r in trials if r["state"] == "COMPLETE"), key=lambda r: r["trial"]):
        best = max(best, r["proxy_score"])
        xs.append(r["trial"])
        ys.append(best)
    ax.step(xs, ys, where="post", label="best proxy so far")
    baseline = [r for r in records if r["trial"] < 0 and r["full_score"] is not None]
    if baseline:
        ax.axhline(baseline[0]["full_score"], linestyle="--", color="grey", label="baseline (full)")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.legend(fontsize="small")
    return save_figure(fig, folder / "scores.png")


def validation_table(records: Sequence[dict], metric: str) -> str:
    """The with-vs-without table on validation (full budget): baseline and best policy."""
    best = best_record(records)
    baseline = next((r for r in records if r["trial"] < 0), None)
    lines = [f"| policy | validation {metric} (full) | Δ vs baseline | best epoch | cap hit |", "|---|---|---|---|---|"]
    if baseline is not None:
        lines.append(
            f"| baseline: real rows only | {_fmt(baseline['full_score'])} | — | {baseline['full_best_epoch']} | "
            f"{_cap(baseline['full_cap_hit'])} |"
        )
    change = "n/a"
    if baseline is not None and best["full_score"] is not None and baseline["full_score"]:
        change = f"{(best['full_score'] - baseline['full_score']) / baseline['full_score']:+.1%}"
    lines.append(
        f"| trial {best['trial']}: {best['policy']} | {_fmt(best['full_score'])} | {change} | "
        f"{best['full_best_epoch']} | {_cap(best['full_cap_hit'])} |"
    )
    return "\n".join(lines)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _cap(value) -> str:
    return "—" if value is None else ("**yes**" if value else "no")


def trials_table(records: Sequence[dict]) -> str:
    lines = [
        "| trial | state | policy | proxy | best epoch | cap hit | pruned at | full | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["trial"] < 0:
            continue
        seconds = "—" if r["proxy_seconds"] is None else f"{r['proxy_seconds']:.1f}"
        lines.append(
            f"| {r['trial']} | {r['state']} | {r['policy'] or '—'} | {_fmt(r['proxy_score'])} | "
            f"{r['proxy_best_epoch'] if r['proxy_best_epoch'] is not None else '—'} | {_cap(r['proxy_cap_hit'])} | "
            f"{r['pruned_at_epoch'] if r['pruned_at_epoch'] is not None else '—'} | {_fmt(r['full_score'])} | "
            f"{seconds} |"
        )
    return "\n".join(lines)


def correlation_line(records: Sequence[dict]) -> str:
    c = rank_correlation(records)
    if math.isnan(c["rho"]):
        return (
            f"Proxy-to-full rank correlation: n/a ({c['n']} polic{'y' if c['n'] == 1 else 'ies'} re-run in full; "
            "it needs 3: raise tune.budget.rerun_top)."
        )
    return f"Proxy-to-full Spearman rank correlation: ρ = {c['rho']:+.2f} (p = {c['p']:.2g}) over {c['n']} policies."


def proxy_cap_line(records: Sequence[dict]) -> str:
    """How many complete proxy trials stopped at their epoch cap rather than by validation patience.
    A capped proxy ranks how fast a policy learns, not how good it is once converged (the full runs
    stop by patience), so the line warns when any did."""
    complete = [r for r in records if r["trial"] >= 0 and r["state"] == "COMPLETE"]
    capped = sum(bool(r["proxy_cap_hit"]) for r in complete)
    line = f"Proxy trials stopped by the epoch cap: {capped} of {len(complete)} complete."
    if capped:
        line += (" **Warning:** a capped proxy ranks early learning, not converged quality; raise "
                 "tune.budget.proxy_epochs until patience stops the proxies.")
    return line


def confirmation_section(folder: Path) -> str:
    """The test table of ``recaug tune --confirm`` (paired by seed), or a line saying it has not run."""
    path = folder / CONFIRM_FILE
    if not path.exists():
        return "Not confirmed on test yet: run `recaug tune <config> --confirm` (reads the test split once)."
    from recaug_spark.train.experiment import RunRecord, comparison_table

    saved = json.loads(path.read_text())
    records = [RunRecord(r["variant"], r["seed"], r["result"]) for r in saved["runs"]]
    return (
        f"Policy: {saved['policy']}\n\n```\n{comparison_table(records, chains=saved.get('chains'))}\n```\n\n"
        f"Cap hit in any run: {any(r.result.get('cap_hit') for r in records)}."
    )


def render_report(
    folder: str | Path, records: Sequence[dict], *, study: str, metric: str, layer_path: str | None = None
) -> Path:
    """``report.md`` and ``scores.png`` into ``folder`` (the study folder); returns report.md's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    best = best_record(records)
    plot = plot_scores(folder, records, metric)
    counts = {s: sum(r["state"] == s for r in records if r["trial"] >= 0) for s in ("COMPLETE", "PRUNED", "FAIL")}
    text = [
        f"# Policy search `{study}`",
        "",
        f"Trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed; scored on the "
        f"validation split only ({metric}).",
        "",
        f"**Best policy** (trial {best['trial']}): {best['policy']}" + (f" → `{layer_path}`" if layer_path else "")
        + (f"; {verdict}." if (verdict := baseline_verdict(records)) else ""),
        "",
        "## With vs without augmentation (validation, full budget, one seed)",
        "",
        validation_table(records, metric),
        "",
        correlation_line(records),
        "",
        proxy_cap_line(records),
        "",
        f"![score per trial]({plot})",
        "",
        "## Confirmation on test (paired by seed)",
        "",
        confirmation_section(folder),
        "",
        "## Trials",
        "",
        trials_table(records),
        "",
    ]
    path = folder / "report.md"
    path.write_text("\n".join(text), encoding="utf-8")
    return path
