"""Sequence generators on a toy grammar with a known answer: item i is always followed by item i + 1."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recaug_spark.generators import runtime
from recaug_spark.generators.artifacts import manifest, read_vocabulary
from recaug_spark.generators.sequence import _holdout, generate, identical_share, repeat_rate

ITEMS = 30  # the toy grammar of the toy_generators fixture (tests/conftest.py)


def item(i: int) -> str:
    return f"i{i % ITEMS:02d}"


def encode(generator, items):
    return generator.encode(pa.array(items, pa.string()))


def test_both_models_learn_the_grammar_and_report_fidelity(toy_generators):
    _, refs, _ = toy_generators
    forward, reverse = manifest(refs["forward"])["fidelity"], manifest(refs["reverse"])["fidelity"]
    assert forward["evaluated_on"] == "validation targets" and forward["users"] == 50
    assert reverse["evaluated_on"] == "held-out first items"
    assert forward["hr@10"] >= 0.95 and forward["ndcg@10"] >= 0.9
    assert reverse["hr@10"] >= 0.95 and reverse["ndcg@10"] >= 0.9
    assert forward["repeat_rate"] == 0.0


def test_identical_share_bounded_by_the_real_runs_a_generation_can_equal(toy_generators):
    """Generation starts from each held-out user's first item and runs as long as the longest held-out
    sequence (at most 10): it can equal a real sequence (cut to that length) only where some real
    sequence at least that long starts with the same item."""
    _, refs, rows = toy_generators
    forward = manifest(refs["forward"])["fidelity"]
    share = forward["identical_share"]
    rows = sorted(rows)  # fit orders the training rows by user id (sequence.training_table)
    # the fixture's fidelity_users=50 and the config's default seed 0 choose the held-out users
    held = [rows[i][1] for i in _holdout([u for u, _ in rows], 50, 0)]
    length = min(10, max(map(len, held)))
    starts = {items[0] for _, items in rows if len(items) >= length}
    possible = sum(items[0] in starts for items in held) / len(held)
    assert possible < 1 and 0 <= share <= possible  # NaN fails
    assert round(share * len(held), 6) == int(round(share * len(held)))  # a count of generated sequences
    real = [np.array(s) for s in ([1, 2, 3], [4, 5], [1, 2])]
    assert identical_share([[1, 2, 3], [1, 2], [4, 5, 6], [2, 3]], real) == 0.5  # 2 of 4 equal a real one
    assert identical_share([], real) == 0.0


def test_greedy_generation_continues_forward_and_backward(toy_generators):
    _, refs, _ = toy_generators
    forward, reverse = runtime.load(refs["forward"]), runtime.load(refs["reverse"])
    keys = np.array([7], dtype=np.uint64)
    ahead = generate(forward, [encode(forward, ["i05", "i06", "i07"])], 3, keys=keys, seed=1, stream="t", top_k=1)
    assert [forward.items[i - 1].as_py() for i in ahead[0]] == ["i08", "i09", "i10"]
    # the reverse model reads the sequence backwards and writes what came before i05
    before = generate(reverse, [encode(reverse, ["i07", "i06", "i05"])], 3, keys=keys, seed=1, stream="t", top_k=1)
    assert [reverse.items[i - 1].as_py() for i in before[0]] == ["i04", "i03", "i02"]


def test_sampling_is_keyed_per_sequence_not_per_batch(toy_generators):
    _, refs, rows = toy_generators
    model = runtime.load(refs["forward"])
    histories = [encode(model, items) for _, items in rows[:40]]
    keys = np.arange(100, 140, dtype=np.uint64)
    whole = generate(model, histories, 4, keys=keys, seed=3, stream="s", top_k=10, temperature=2.0)
    pieces = np.concatenate([generate(model, histories[a:b], 4, keys=keys[a:b], seed=3, stream="s", top_k=10,
                                      temperature=2.0, chunk_rows=7) for a, b in ((0, 13), (13, 40))])
    assert (whole == pieces).all()
    reordered = generate(model, histories[::-1], 4, keys=keys[::-1], seed=3, stream="s", top_k=10, temperature=2.0)
    assert (reordered[::-1] == whole).all()
    other_seed = generate(model, histories, 4, keys=keys, seed=4, stream="s", top_k=10, temperature=2.0)
    assert (other_seed != whole).any()  # hot sampling: another seed gives other items somewhere


def test_generated_items_are_catalog_items_without_repeats(toy_generators):
    _, refs, rows = toy_generators
    model = runtime.load(refs["forward"])
    vocabulary = set(read_vocabulary(refs["forward"]))
    histories = [encode(model, items) for _, items in rows[:60]]
    out = generate(model, histories, 12, keys=np.arange(60, dtype=np.uint64), seed=5, stream="c", temperature=5.0,
                   top_k=1000)
    assert (out >= 1).all() and (out <= model.n_items).all()  # never padding (0) nor the mask token (N + 1)
    assert {model.items[i - 1].as_py() for i in out.ravel()} <= vocabulary
    for history, generated in zip(histories, out):
        together = [*history.tolist(), *generated.tolist()]
        assert len(together) == len(set(together))  # the grammar has no repeats: the generator makes none


def test_repeat_rate_counts_occurrences_seen_before():
    assert repeat_rate([np.array([1, 2, 1, 1]), np.array([3])]) == pytest.approx(2 / 5)


def test_exhausted_vocabulary_generates_nothing_rather_than_padding(toy_generators):
    _, refs, _ = toy_generators
    model = runtime.load(refs["forward"])
    everything = np.arange(1, model.n_items + 1, dtype=np.int64)
    out = generate(model, [everything], 2, keys=np.array([1], dtype=np.uint64), seed=1, stream="x")
    assert (out == 0).all()


def test_allowed_items_mask_restricts_generation(toy_generators):
    _, refs, rows = toy_generators
    model = runtime.load(refs["forward"])
    histories = [encode(model, items) for _, items in rows[:40]]
    allowed = np.zeros(model.n_items + 1, dtype=bool)
    allowed[1:model.n_items // 2 + 1] = True  # only the first half of the vocabulary (and never padding)
    out = generate(model, histories, 3, keys=np.arange(40, dtype=np.uint64), seed=2, stream="m", temperature=5.0,
                   top_k=1000, allowed_items=allowed)
    generated = out[out > 0]
    assert generated.size and allowed[generated].all()
    with pytest.raises(ValueError, match="bool mask"):
        generate(model, histories, 1, keys=np.arange(40, dtype=np.uint64), seed=2, stream="m", allowed_items=allowed[1:])


def test_two_torch_distributor_ranks_train_the_same_kind_of_generator(spark, tmp_path):
    """num_processes 2: the same training function on two gloo ranks (DDP), one artifact at the end."""
    from conftest import grammar_rows

    from recaug_spark.generators.sequence import SequenceGeneratorConfig, fit_sequence_generator

    sequences = spark.createDataFrame(grammar_rows(), "user_id string, item_ids array<string>")
    cfg = SequenceGeneratorConfig(direction="forward", hidden=16, epochs=30, dropout=0.0, lr=5e-3, fidelity_users=50,
                                  num_processes=2)
    ref = fit_sequence_generator(sequences, None, cfg, tmp_path, name="forward_ddp", trained_on={})
    fidelity = manifest(ref)["fidelity"]
    assert fidelity["evaluated_on"] == "held-out last items" and fidelity["hr@10"] >= 0.9
    model = runtime.load(ref)
    ahead = generate(model, [encode(model, ["i05", "i06"])], 2, keys=np.array([1], dtype=np.uint64), seed=1,
                     stream="t", top_k=1)
    assert [model.items[i - 1].as_py() for i in ahead[0]] == ["i07", "i08"]


def test_popularity_correction_moves_generated_popularity_towards_the_real_one():
    """A model that over-samples popular items (logits = 2·log count, i.e. probabilities ∝ count²)
    corrected by α = 1 samples ∝ count: the real popularity, so the KL to it drops and the tail
    share rises to the real one."""
    torch = pytest.importorskip("torch")
    from recaug_spark.generators.sequence import SequenceGenerator, popularity_fidelity, popularity_shift

    counts = np.array([0, 400, 200, 100, 50, 25, 12, 6, 3, 2, 2], dtype=np.int64)  # model index 0 = padding

    class HeadHeavy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def score_all(self, x):
            logits = 2 * torch.log(torch.from_numpy(counts.astype(np.float32)) + 1)
            return logits.expand(x.shape[0], -1).clone()

    model = SequenceGenerator(HeadHeavy(), pa.array([f"i{k}" for k in range(1, 11)]), "forward", 5,
                              repeat_rate=1.0, tag="stub")
    starts = [np.array([1]) for _ in range(400)]
    keys = np.arange(400, dtype=np.uint64)

    def made(alpha):
        shift = popularity_shift(counts, alpha) if alpha else None
        return generate(model, starts, 5, keys=keys, seed=1, stream="t", top_k=10, logit_shift=shift)

    plain, corrected = popularity_fidelity(made(0.0), counts), popularity_fidelity(made(1.0), counts)
    assert corrected["kl"] < plain["kl"] / 4 and corrected["kl"] < 0.02
    assert plain["generated_tail_share"] < corrected["generated_tail_share"]
    assert corrected["generated_tail_share"] == pytest.approx(corrected["real_tail_share"], abs=0.04)
    assert popularity_shift(counts, 0.5)[0] == 0 and popularity_shift(counts, 0.5)[1] == pytest.approx(
        -0.5 * np.log(401))
