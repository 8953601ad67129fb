"""The search space of ``recaug tune``: config (``TuneSpaceConfig``) → a trial's parameters → a policy.

A *policy* is what an experiment variant needs: the augment branches that write the rows
(``BranchConfig``) and the way a trainer consumes them (``VariantConfig``), or no branch at all (the
real-only policy, when ``include_none``). :func:`suggest_policy` draws one from an Optuna trial
(define-by-run: a chain's parameters are drawn only when the chain is on, a mode's settings only for
that mode); replaying the stored parameters through ``optuna.trial.FixedTrial`` gives the same
policy back (:func:`policy_from_params`), so the history never has to store more than the
parameters. :func:`policy_layer` writes a policy as a config layer (``conf/tuned/<name>.yaml``)
that ``recaug experiment`` and ``recaug tune --confirm`` read.

Example::

    policy = policy_from_params({"chains": "crop", "crop.crop.eta": 0.6, "consume": "rows"}, cfg.tune.space)
    policy.chains            # ("crop",)
    policy_layer(policy, "default")["train"]["variants"][0]["chains"]   # ["crop"]
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from recaug_spark.config import BranchConfig, ParamRange, TuneSpaceConfig, VariantConfig

NONE = "none"  # the value of the ``chains`` parameter for the real-only policy
VARIANT = "tuned"  # the variant name of the written policy
MODE_KEYS = {
    "weighted": ("weight",),
    "contrastive": ("contrastive_weight", "temperature"),
    "pretrain": ("pretrain_epochs",),
    "rows": (),
}
TARGETING = ("copies", "max_length", "cold_start_days", "long_tail_share")


@dataclass(frozen=True)
class Policy:
    """Augment branches and how they are consumed; no branch: the real rows only."""

    branches: tuple[BranchConfig, ...]
    variant: VariantConfig | None

    @property
    def chains(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(">".join(b.operators) for b in self.branches))

    @property
    def is_baseline(self) -> bool:
        return not self.branches

    def key(self) -> str:
        """A short content hash: equal policies train the same rows the same way."""
        data = {
            "branches": [b.model_dump(mode="json") for b in self.branches],
            "variant": None if self.variant is None else self.variant.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One line: ``crop(eta=0.61) + mask(gamma=0.2) as weighted(weight=0.3)``; ``real rows only``."""
        if self.is_baseline:
            return "real rows only"
        parts = []
        for branch in self.branches:
            params = ", ".join(
                f"{k}={_short(v)}" for op in branch.operators for k, v in branch.params.get(op, {}).items()
            )
            extra = ", ".join(
                f"{k}={_short(getattr(branch, k))}"
                for k in TARGETING
                if getattr(branch, k) is not None and not (k == "copies" and branch.copies == 1)
            )
            parts.append(f"{branch.chain}({', '.join(p for p in (params, extra) if p)})")
        mode = self.variant.consume
        settings = ", ".join(f"{k}={_short(getattr(self.variant, k))}" for k in MODE_KEYS[mode])
        return " + ".join(parts) + f" as {mode}" + (f"({settings})" if settings else "")


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def chain_subsets(space: TuneSpaceConfig) -> list[str]:
    """The choices of the ``chains`` parameter: every set of at most ``max_chains`` candidates, as
    their names joined by ``+`` (in config order), and ``none`` first when ``include_none``."""
    names = [c.name for c in space.chains]
    subsets = [
        "+".join(combo)
        for size in range(1, min(space.max_chains, len(names)) + 1)
        for combo in itertools.combinations(names, size)
    ]
    return ([NONE] if space.include_none else []) + subsets


def suggest(trial, name: str, value: Any) -> Any:
    """``value`` drawn by ``trial`` as parameter ``name`` when it is a ``ParamRange``; else itself."""
    if not isinstance(value, ParamRange):
        return value
    if value.choices is not None:
        return trial.suggest_categorical(name, list(value.choices))
    if isinstance(value.low, int) and isinstance(value.high, int) and not isinstance(value.step, float):
        return trial.suggest_int(name, value.low, value.high, step=value.step or 1, log=value.log)
    return trial.suggest_float(name, float(value.low), float(value.high), step=value.step, log=value.log)


def suggest_policy(trial, space: TuneSpaceConfig) -> Policy:
    """Draw a policy: the chains that are on, each one's parameters and targeting, then the mode."""
    chosen = trial.suggest_categorical("chains", chain_subsets(space))
    if chosen == NONE:
        return Policy((), None)
    by_name = {c.name: c for c in space.chains}
    branches = []
    for name in chosen.split("+"):
        candidate = by_name[name]
        params = {
            op: {key: suggest(trial, f"{name}.{op}.{key}", value) for key, value in values.items()}
            for op, values in candidate.params.items()
        }
        targeting = {key: suggest(trial, f"{name}.{key}", getattr(candidate, key)) for key in TARGETING}
        branches.append(BranchConfig(chain=candidate.chain, params=params, **targeting))
    mode = trial.suggest_categorical("consume", list(space.consume))
    settings = {key: suggest(trial, f"{mode}.{key}", getattr(space, key)) for key in MODE_KEYS[mode]}
    variant = VariantConfig(
        name=VARIANT, chains=tuple(dict.fromkeys(">".join(b.operators) for b in branches)), consume=mode, **settings
    )
    return Policy(tuple(branches), variant)


def policy_from_params(params: dict[str, Any], space: TuneSpaceConfig) -> Policy:
    """The policy a trial with these stored parameters drew (a replay through ``FixedTrial``)."""
    import optuna

    return suggest_policy(optuna.trial.FixedTrial(dict(params)), space)


def policy_layer(policy: Policy, name: str) -> dict:
    """The config layer of a policy: ``augment.branches`` and one ``train`` variant (none for the
    real-only policy), with the experiment named ``tuned_<name>``."""
    branches = [_branch_yaml(b) for b in policy.branches]
    variants = [] if policy.variant is None else [_variant_yaml(policy.variant)]
    return {"augment": {"branches": branches}, "train": {"experiment": f"tuned_{name}", "variants": variants}}


def _branch_yaml(branch: BranchConfig) -> dict:
    data = {"chain": branch.chain, "copies": branch.copies}
    if branch.params:
        data["params"] = {op: dict(values) for op, values in branch.params.items()}
    data.update({k: getattr(branch, k) for k in TARGETING[1:] if getattr(branch, k) is not None})
    return data


def _variant_yaml(variant: VariantConfig) -> dict:
    data = {"name": variant.name, "chains": list(variant.chains), "consume": variant.consume}
    data.update({k: getattr(variant, k) for k in MODE_KEYS[variant.consume]})
    return data
