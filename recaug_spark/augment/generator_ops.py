"""Model-based sequence augmenters: items written by the sequence generators of ``recaug fit``.

* ``prehistory`` (ASReP, Liu et al. SIGIR 2021): the reverse Transformer writes ``k`` items the
  user plausibly saw *before* their first event, prepended to the sequence. Meant for short
  sequences: give its branch ``max_length: M``.
* ``extend``: the forward Transformer appends ``k`` plausible next items.
* ``synthetic_user``: a whole generated session of ``length`` items starting from a real user's
  first item; its rows are ``origin = synthetic`` (the parent is that real user). Meant for
  cold-start users: give its branch ``cold_start_days``.

Generated events copy the event type of the real event they attach to and get timestamps one
mean gap of the sequence apart (one hour for a single event), before the first event or after
the last one. Generated items are always vocabulary items of the model, which was trained on the
training sequences' items (its vocabulary is checked against them at fit: a model trained on
other data fails with a clear error). Every row records ``generator = name@version``.

The fitted state is a small :class:`GeneratorState` (the artifact reference and the vocabulary);
executors load the model through :func:`recaug_spark.generators.runtime.load`, once per worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from recaug_spark.augment.base import Augmenter, FitContext, Params, register
from recaug_spark.augment.batch import Edit, SequenceBatch, offsets_from_lengths
from recaug_spark.generators.artifacts import check_vocabulary, latest, read_vocabulary
from recaug_spark.generators.runtime import load
from recaug_spark.generators.sequence import generate, popularity_shift

_HOUR_US = 3_600 * 1_000_000


@dataclass(frozen=True)
class GeneratorState:
    """What a generator augmenter ships to executors: the artifact reference and the model's items."""

    ref: object  # ArtifactRef
    items: pa.Array  # the model's vocabulary: item code k >= 1 is items[k - 1] (code 0 = the mask token)
    logit_shift: np.ndarray | None = None  # popularity correction per model index (popularity_alpha > 0)


class _GeneratorParams(Params):
    temperature: float = Field(1.0, gt=0, le=10, description="softmax temperature of sampling")
    top_k: int = Field(20, ge=1, description="sample among the k most likely items")
    allow_repeats: bool | None = Field(None, description="None: as in the data (repeat rate ≥ 1%)")
    popularity_alpha: float = Field(0.0, ge=0, le=2, description=(
        "sample from logits − α·log(training popularity): α > 0 writes tail items more often (a model "
        "trained on clicks over-samples popular items; `recaug fit` reports the popularity KL per α)"))


class GeneratorAugmenter(Augmenter):
    """Augmenters backed by a generator artifact named ``model`` in the models folder."""

    def fit(self, context: FitContext) -> GeneratorState:
        from pyspark.sql import functions as F

        if context.models_dir is None:
            raise ValueError(f"augmenter {self.name!r} needs the models folder (run.models) of `recaug fit`")
        ref = latest(context.models_dir, self.params.model)
        trained = context.sequences.select(F.explode("item_ids").alias("item_id")).distinct().toArrow().column("item_id")
        check_vocabulary(ref, trained.to_pylist())
        items = pa.array(read_vocabulary(ref), pa.string())
        shift = None
        if self.params.popularity_alpha > 0:
            shift = popularity_shift(_item_counts(context.sequences, items), self.params.popularity_alpha)
        return GeneratorState(ref, items, shift)

    def generator_tag(self, state: GeneratorState) -> str:
        return state.ref.tag

    def _model(self, state: GeneratorState):
        return load(state.ref)

    def _generate(self, state, histories, k, draws) -> np.ndarray:
        p = self.params
        return generate(self._model(state), histories, k, keys=draws.keys, seed=draws.seed,
                        stream=f"{draws.stream}/{draws.copy}",
                        temperature=p.temperature, top_k=p.top_k, allow_repeats=p.allow_repeats,
                        logit_shift=state.logit_shift)


def _item_counts(sequences, items: pa.Array) -> np.ndarray:
    """Occurrences in the training ``sequences`` (Spark) of each model index (0 = padding, 1..N)."""
    from pyspark.sql import functions as F

    counted = sequences.select(F.explode("item_ids").alias("item_id")).groupBy("item_id").count().toArrow()
    index = pc.fill_null(pc.index_in(counted.column("item_id"), value_set=items), -1).to_numpy(zero_copy_only=False)
    counts = np.zeros(len(items) + 1, np.int64)
    known = index >= 0
    counts[index[known] + 1] = counted.column("count").to_numpy()[known]
    return counts


def _mean_gaps(batch: SequenceBatch) -> np.ndarray:
    """Mean gap between consecutive events of each sequence (one hour for a single event)."""
    lengths = batch.lengths
    gaps = np.full(len(batch), _HOUR_US, dtype=np.int64)
    many = lengths >= 2
    if many.any():
        first, last = batch.offsets[:-1][many], batch.offsets[1:][many] - 1
        spans = (batch.timestamps[last] - batch.timestamps[first]) // (lengths[many] - 1)
        gaps[many] = np.where(spans > 0, spans, _HOUR_US)
    return gaps


def _splice(batch: SequenceBatch, generated: np.ndarray, *, before: bool, whole: bool = True) -> Edit:
    """The edit putting each row's generated items (model codes, ``generated[i, 0]`` nearest to the
    real events, zeros = none) before its first event or after its last one.

    ``whole=False`` keeps only the first real event (a synthetic session grown from it). Generated
    events copy the anchor event's columns and get timestamps one mean gap apart.
    """
    lengths = batch.lengths
    real = lengths if whole else np.minimum(lengths, 1)
    counts = np.where(lengths >= 1, (generated > 0).sum(axis=1), 0)  # zeros only trail (nothing left to draw)
    offsets = offsets_from_lengths(real + counts)
    seq = np.repeat(np.arange(len(batch), dtype=np.int64), real + counts)
    at = np.arange(offsets[-1], dtype=np.int64) - offsets[:-1][seq]
    first = batch.offsets[:-1][seq]
    if before:
        is_generated, step, real_at = at < counts[seq], counts[seq] - 1 - at, at - counts[seq]
        anchor = first
    else:
        is_generated, step, real_at = at >= real[seq], at - real[seq], at
        anchor = first + real[seq] - 1
    positions = np.where(is_generated, anchor, first + real_at)
    width = max(generated.shape[1], 1)
    codes = np.where(is_generated, generated.reshape(-1)[seq * generated.shape[1] + np.clip(step, 0, width - 1)]
                     if generated.size else -1, -1)
    offset = _mean_gaps(batch)[seq] * (step + 1)
    timestamps = np.where(is_generated, batch.timestamps[anchor] + (-offset if before else offset),
                          batch.timestamps[np.clip(first + real_at, 0, max(len(batch.timestamps) - 1, 0))])
    return Edit(offsets, positions, item_codes=codes, timestamps=timestamps)


def _encoded(batch: SequenceBatch, generator) -> list[np.ndarray]:
    """Each sequence's items as the model's codes (0 for items it does not know)."""
    if len(batch) == 0:
        return []  # np.split would still return one (empty) piece
    return np.split(generator.encode(batch.items), batch.offsets[1:-1])


class _SpliceAugmenter(GeneratorAugmenter):
    """Generates ``k`` items per sequence and puts them before its first event (``before``, read by
    a reverse model) or after its last one."""

    before: ClassVar[bool]

    def plan(self, batch, draws, state: GeneratorState) -> Edit:
        generator = self._model(state)
        histories = _encoded(batch, generator)
        if self.before:
            histories = [h[::-1] for h in histories]  # the reverse model reads backwards in time
        generated = self._generate(state, histories, self.params.k, draws)  # [n, k]: g1 nearest to the real events
        return _splice(batch, generated, before=self.before)


@register
class Prehistory(_SpliceAugmenter):
    """Prepend ``k`` items generated by the reverse Transformer (ASReP pre-history).

    When it helps: short sequences (give the branch ``max_length``): the model learns from longer,
    plausible histories; ASReP lifted SASRec's Recall@5 on Amazon Beauty from .396 to .468.
    """

    name = "prehistory"
    before = True

    class Params(_GeneratorParams):
        model: str = Field("reverse_transformer", description="artifact name in the models folder")
        k: int = Field(3, ge=1, le=200, description="generated items prepended to each sequence")


@register
class Extend(_SpliceAugmenter):
    """Append ``k`` items generated by the forward Transformer.

    When it helps: short or stalled histories; more (plausible) next-item targets per user.
    """

    name = "extend"
    before = False

    class Params(_GeneratorParams):
        model: str = Field("forward_transformer", description="artifact name in the models folder")
        k: int = Field(3, ge=1, le=200, description="generated items appended to each sequence")


@register
class SyntheticUser(GeneratorAugmenter):
    """A synthetic user: a session of ``length`` items generated forward from a real user's first item.

    Rows are ``origin = synthetic``. When it helps: cold-start segments (give the branch
    ``cold_start_days``) and thin categories, where real users are too few to learn transitions.
    """

    name = "synthetic_user"
    origin = "synthetic"

    class Params(_GeneratorParams):
        model: str = Field("forward_transformer", description="artifact name in the models folder")
        length: int = Field(8, ge=2, le=200, description="items of the generated session, the seed item included")

    def plan(self, batch, draws, state: GeneratorState) -> Edit:
        generator = self._model(state)
        codes_all = generator.encode(batch.items)
        starts = [codes_all[start:start + 1] for start in batch.offsets[:-1]]
        generated = self._generate(state, starts, self.params.length - 1, draws)
        return _splice(batch, generated, before=False, whole=False)
