"""The trainer core (recaug_spark.train): metrics with known answers, Delta → tensors, sharding,
models, and end-to-end training on a tiny synthetic table with a learnable pattern."""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from recaug_spark.train import metrics as M  # noqa: E402
from recaug_spark.train.config import TrainConfig  # noqa: E402
from recaug_spark.train.data import (  # noqa: E402
    DataFile,
    EvalSet,
    SequenceTrainingData,
    TrainDataError,
    Vocabulary,
    pinned_files,
    read_sequences,
    read_targets,
    shard_files,
)

N_ITEMS = 100


# ---------------------------------------------------------------- fixtures

def _item(i: int) -> str:
    return f"i{i % N_ITEMS:03d}"


def _synthetic_users(n_users: int, seed: int):
    """Users whose items follow the pattern i → i + 1 (mod N_ITEMS); leave-one-out split."""
    rnd = random.Random(seed)
    users = []
    for u in range(n_users):
        start, length = rnd.randrange(N_ITEMS), rnd.randint(5, 12)
        seq = [_item(start + j) for j in range(length)]
        users.append((f"u{u:04d}", seq[:-2], seq[-2], seq[-1]))
    return users


def _write(uri, rows, mode):
    from deltalake import write_deltalake

    table = pa.table({
        "sequence_id": [r[0] for r in rows], "user_id": [r[1] for r in rows],
        "item_ids": pa.array([r[2] for r in rows], pa.list_(pa.string())),
        "operator_chain": [r[3] for r in rows],
    })
    write_deltalake(uri, table, partition_by=["operator_chain"], mode=mode)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """augmented_sequences-like table: 'real' in two files (two commits), 'crop' copies, and a
    'junk' partition whose file is corrupt, so opening it would fail."""
    from deltalake import write_deltalake

    root = tmp_path_factory.mktemp("train")
    uri = str(root / "augmented_sequences")
    users = _synthetic_users(240, seed=7)
    real = [(u, u, train, "real") for u, train, _, _ in users]
    crops = [(f"{u}~0:0", u, train[1:], "crop") for u, train, _, _ in users[:120]]
    junk = [(f"{u}~1:0", u, ["zzz"], "junk") for u, *_ in users[:5]]
    _write(uri, real[:120] + crops + junk, "error")  # version 0
    _write(uri, real[120:], "append")  # version 1: a second 'real' file
    for f in pinned_files(uri, chains=["junk"]):
        with open(f.path, "wb") as handle:
            handle.write(b"not a parquet file")
    targets_uri = str(root / "sequence_targets")
    targets = pa.table({
        "user_id": [u for u, *_ in users] * 2,
        "split": ["valid"] * len(users) + ["test"] * len(users),
        "item_id": [v for _, _, v, _ in users] + [t for _, _, _, t in users],
    })
    write_deltalake(targets_uri, targets)
    return {"uri": uri, "targets_uri": targets_uri, "users": users, "root": root}


def _small_config(**overrides) -> TrainConfig:
    params = dict(hidden=32, blocks=1, heads=2, max_len=10, dropout=0.1, attention_dropout=0.1, lr=5e-3,
                  batch_size=64, epochs=12, patience=3, num_threads=1, device="cpu", seeds=(3,))
    params.update(overrides)
    return TrainConfig(**params)


# ---------------------------------------------------------------- metrics: known answers

def test_metrics_of_known_ranks():
    values = M.metric_values(np.array([0, 2, 30]), np.array([100, 100, 100]), ks=(1, 5, 10))
    assert values["hr@1"].tolist() == [1, 0, 0]
    assert values["hr@5"].tolist() == [1, 1, 0]
    assert values["ndcg@10"][0] == 1.0
    assert values["ndcg@10"][1] == pytest.approx(1 / math.log2(4))
    assert values["ndcg@10"][2] == 0.0
    assert values["recall@10"].tolist() == values["hr@10"].tolist()  # one relevant item per user
    assert values["mrr"].tolist() == pytest.approx([1, 1 / 3, 1 / 31])
    # AUC for 1-based rank r among N candidates is (N - r) / (N - 1)
    assert values["auc"].tolist() == pytest.approx([1.0, (100 - 3) / 99, (100 - 31) / 99])
    summary = M.summarize(np.array([0, 2]), 100, ks=(10,))
    assert summary["users"] == 2 and summary["ndcg@10"] == pytest.approx((1 + 0.5) / 2)


def test_full_ranks_exclude_history_but_not_the_target_and_count_ties_against_it():
    #                 pad  1    2    3    4    5
    scores = np.array([[9., 5.0, 4.0, 3.0, 2.0, 1.0],
                       [9., 1.0, 1.0, 1.0, 1.0, 1.0]])
    ranks, candidates = M.full_ranks(scores, np.array([3, 2]))
    assert ranks.tolist() == [2, 4]  # padding never counts; a constant model ranks the target last
    assert candidates.tolist() == [5, 5]
    ranks, candidates = M.full_ranks(scores, np.array([3, 2]), history=np.array([[1, 2], [2, 0]]))
    assert ranks.tolist() == [0, 4]  # items 1 and 2 removed; a target in the history keeps its score
    assert candidates.tolist() == [3, 5]
    ranks, _ = M.full_ranks(scores, np.array([3, 2]), history=np.array([[1, 2], [2, 0]]), exclude_history=False)
    assert ranks.tolist() == [2, 4]
    torch_ranks, _ = M.full_ranks(torch.tensor(scores), torch.tensor([3, 2]))
    assert torch_ranks.tolist() == [2, 4]


def test_full_ranks_match_a_naive_count_with_ties_and_repeats():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(2, 30, (), generator=generator))
        scores = torch.randint(0, 5, (6, n + 1), generator=generator).float()  # many ties
        targets = torch.randint(1, n + 1, (6,), generator=generator)
        history = torch.randint(0, n + 1, (6, 5), generator=generator)  # repeats, padding, the target
        ranks, candidates = M.full_ranks(scores, targets, history)
        for b in range(6):
            target = int(targets[b])
            pool = [i for i in range(1, n + 1) if i == target or i not in set(history[b].tolist())]
            expected = sum(1 for i in pool if i != target and scores[b, i] >= scores[b, target])
            assert (int(ranks[b]), int(candidates[b])) == (expected, len(pool))


def test_sampled_ranks_and_negative_sampling():
    scores = np.array([[0., 5, 4, 3, 2, 1]])
    ranks, candidates = M.sampled_ranks(scores, np.array([3]), np.array([[1, 4, 5]]))
    assert ranks.tolist() == [1] and candidates.tolist() == [4]
    generator = torch.Generator().manual_seed(0)
    history = torch.tensor([[1, 2, 0], [5, 0, 0]])
    negatives = M.sample_negatives(torch.tensor([3, 4]), history, n_items=20, k=10, generator=generator)
    assert negatives.shape == (2, 10)
    for row, banned in zip(negatives.tolist(), ({0, 1, 2, 3}, {0, 5, 4})):
        assert len(set(row)) == 10 and not set(row) & banned
    popularity = np.zeros(21)
    popularity[7] = 1e9
    popular = M.sample_negatives(torch.tensor([3]), None, 20, 1, torch.Generator().manual_seed(1), popularity)
    assert popular.tolist() == [[7]]
    # fewer eligible items than asked: k shrinks
    assert M.sample_negatives(torch.tensor([1]), torch.tensor([[2, 3]]), 5, 10, generator).shape == (1, 2)


def test_t_quantiles_and_confidence_interval():
    for df, expected in [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042), (120, 1.980)]:
        assert M.t_quantile(0.95, df) == pytest.approx(expected, abs=1e-3)
    assert M.t_quantile(0.99, 5) == pytest.approx(4.032, abs=1e-3)
    ci = M.mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["std"] == 1.0
    assert ci["half_width"] == pytest.approx(4.3027 / math.sqrt(3), abs=1e-3)
    assert math.isnan(M.mean_ci([0.5])["half_width"])


def test_breakdowns_short_long_and_head_tail():
    popularity = np.array([0, 50, 40, 1, 1, 1, 1, 1, 1, 1, 1], dtype=float)  # items 1..10
    head = M.head_items(popularity, share=0.2)
    assert np.flatnonzero(head).tolist() == [1, 2]
    groups = {**M.history_length_groups([2, 10, 3], short_max=5, cold_max=2),
              **M.popularity_groups([1, 5, 2], popularity, share=0.2)}
    out = M.breakdown(np.array([0, 50, 1]), 100, groups, ks=(10,))
    assert out["short"]["users"] == 2 and out["short"]["hr@10"] == 1.0
    assert out["cold"]["users"] == 1 and out["cold"]["ndcg@10"] == 1.0  # the 2-item history, ranked first
    assert out["long"]["hr@10"] == 0.0
    assert out["head"]["users"] == 2 and out["tail"]["users"] == 1


# ---------------------------------------------------------------- files, shards, tensors

def test_shards_are_balanced_deterministic_and_partition_the_files():
    files = [DataFile(f"/t/f{i:02d}.parquet", rows, 0) for i, rows in enumerate([100, 90, 80, 50, 40, 30, 20, 10, 5, 1])]
    shards = [shard_files(files, rank, 3) for rank in range(3)]
    assert sorted(f.path for s in shards for f in s) == sorted(f.path for f in files)
    loads = [sum(f.rows for f in s) for s in shards]
    assert loads == [150, 140, 136]  # greedy, largest first: 100+30+20 | 90+40+10 | 80+50+5+1
    assert max(loads) <= 1.06 * sum(loads) / 3
    shuffled = files[:]
    random.Random(1).shuffle(shuffled)
    assert [shard_files(shuffled, rank, 3) for rank in range(3)] == shards
    with pytest.raises(ValueError):
        shard_files(files, 3, 3)


def test_pinned_files_filter_chains_from_the_log_and_pin_versions(synthetic):
    uri = synthetic["uri"]
    every = pinned_files(uri)
    assert {f.partition_value("operator_chain") for f in every} == {"real", "crop", "junk"}
    real = pinned_files(uri, chains=["real"])
    assert len(real) == 2 and sum(f.rows for f in real) == 240
    assert len(pinned_files(uri, version=0, chains=["real"])) == 1  # time travel
    vocab = Vocabulary.from_files(pinned_files(uri, chains=["real", "crop"]))
    sequences = read_sequences(pinned_files(uri, chains=["real", "crop"]), vocab)  # the corrupt file is never opened
    assert len(sequences) == 240 + 120
    junk = [f.path for f in every if "junk" in f.path]
    assert len(junk) == 1  # the junk partition's file holds b"not a parquet file"
    with pytest.raises(TrainDataError, match=re.escape(junk[0]) + ".*Parquet magic bytes not found"):
        read_sequences(every, vocab)
    with pytest.raises(TrainDataError, match="partitioned by"):
        pinned_files(synthetic["targets_uri"], chains=["real"])


def test_the_same_rows_read_the_same_whatever_the_file_layout(tmp_path):
    """A model trains on what read_sequences returns: the same rows spread over other files, in
    another order, give identical sequences (keys, offsets, items), so a table written with more or
    fewer partitions trains the same model. Before, rows came in file and row order."""
    import pyarrow.parquet as pq

    rng = random.Random(3)
    rows = [{"sequence_id": f"u{u:02d}" + ("" if c == 0 else f"~b{c}:0"), "user_id": f"u{u:02d}",
             "item_ids": [f"i{rng.randrange(20)}" for _ in range(rng.randrange(1, 6))]}
            for u in range(30) for c in range(3)]

    def layout(name: str, chunks: list[list[dict]]) -> list[DataFile]:
        files = []
        for i, chunk in enumerate(chunks):
            path = tmp_path / f"{name}-{i}.parquet"
            pq.write_table(pa.Table.from_pylist(chunk), path)
            files.append(DataFile(str(path), len(chunk), path.stat().st_size))
        return files

    shuffled = rows[:]
    rng.shuffle(shuffled)
    vocab = Vocabulary({i for r in rows for i in r["item_ids"]})
    one = read_sequences(layout("one", [rows]), vocab)
    three = read_sequences(layout("three", [shuffled[:40], shuffled[40:41], shuffled[41:]]), vocab)
    assert one.keys.to_pylist() == three.keys.to_pylist() == sorted(r["user_id"] for r in rows)
    assert np.array_equal(one.offsets, three.offsets) and np.array_equal(one.items, three.items)
    first = sorted(rows, key=lambda r: r["sequence_id"])[0]
    assert [vocab.items[i - 1] for i in one.items[:one.offsets[1]]] == first["item_ids"]


def test_vocabulary_round_trip_and_mask_token(tmp_path):
    vocab = Vocabulary(["b", "a", "c", "[mask]"])
    assert vocab.n_items == 3 and vocab.size == 5
    assert vocab.encode(["a", "c", "zzz", "[mask]"]).tolist() == [1, 3, 0, 4]
    assert vocab.decode([1, 4, 0]) == ["a", "[mask]", None]
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json").items == ["a", "b", "c"]


def test_training_tensors_shift_pad_and_sample_negatives_outside_the_history():
    # sequences: [1, 2, 3], [4] (too short), [1..7] (longer than max_len + 1), [2, 6(mask), 3]
    n_items = 5
    offsets = np.array([0, 3, 4, 11, 14])
    items = np.array([1, 2, 3, 4, 1, 2, 3, 4, 5, 1, 2, 2, 6, 3])
    data = SequenceTrainingData(offsets, items, n_items=n_items, max_len=4)
    assert len(data) == 3
    inputs, positives, negatives = data.tensors(np.arange(3), torch.Generator().manual_seed(0))
    assert inputs.tolist() == [[0, 0, 1, 2], [3, 4, 5, 1], [0, 0, 2, 6]]
    assert positives.tolist() == [[0, 0, 2, 3], [4, 5, 1, 2], [0, 0, 0, 3]]  # no target = mask / padding
    assert (negatives[positives == 0] == 0).all()
    assert set(negatives[0][positives[0] > 0].tolist()) <= {4, 5}
    assert set(negatives[2][positives[2] > 0].tolist()) <= {1, 4, 5}
    first = [tuple(t.tolist() for t in b) for b in data.batches(epoch=1, batch_size=2, seed=9)]
    again = [tuple(t.tolist() for t in b) for b in data.batches(epoch=1, batch_size=2, seed=9)]
    other = [tuple(t.tolist() for t in b) for b in data.batches(epoch=2, batch_size=2, seed=9)]
    assert first == again and len(first) == 2 and first != other
    assert len(list(data.batches(epoch=0, batch_size=2, seed=9, steps=5))) == 5  # padded out for DDP


def test_eval_set_appends_the_validation_item_for_test():
    from recaug_spark.train.data import Sequences

    vocab = Vocabulary(["a", "b", "c", "d", "e"])

    histories = Sequences(keys=pa.array(["u1", "u2"]), offsets=np.array([0, 2, 3]), items=np.array([1, 2, 3]))
    targets = pa.table({"user_id": ["u1", "u2", "u1", "u2", "u3"], "split": ["valid", "valid", "test", "test", "test"],
                        "item_id": ["c", "zzz", "d", "e", "a"]})
    valid = EvalSet.build(histories, targets, vocab, max_len=3, split="valid")
    assert valid.targets.tolist() == [3] and valid.unknown_targets == 1
    test = EvalSet.build(histories, targets, vocab, max_len=3, split="test", valid_targets=targets)
    assert test.user_ids.to_pylist() == ["u1", "u2"] and test.missing_histories == 1
    assert test.inputs.tolist() == [[1, 2, 3], [0, 0, 3]]  # u1: history + valid item; u2's valid is unknown
    (_, _, _, history), = list(test.batches(8))
    assert history.tolist() == [[1, 2, 3], [0, 0, 3]]
    assert test.history_lengths.tolist() == [3, 1]


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_models_share_one_interface_and_are_causal(name):
    from recaug_spark.train.models import bce_loss, build_model

    torch.manual_seed(0)
    model = build_model(name, 20, hidden=16, blocks=2, heads=2, max_len=6, dropout=0.1, attention_dropout=0.1).eval()
    x = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    assert model(x).shape == (2, 6, 16) and model.score_all(x).shape == (2, 21)
    changed = x.clone()
    changed[:, -1] = 9
    assert torch.allclose(model(x)[:, :-1], model(changed)[:, :-1], atol=1e-6)  # the future is not seen
    loss = bce_loss(model.train(), x, torch.tensor([[0, 0, 4, 5, 6, 7]] * 2), torch.tensor([[0, 0, 9, 9, 9, 9]] * 2))
    assert loss.item() == pytest.approx(2 * math.log(2), rel=0.05)  # ≈ chance at initialisation
    with pytest.raises(ValueError, match="known models"):
        build_model("bert4rec", 20)


def test_dropout_zeroes_a_share_p_scales_the_rest_and_follows_the_torch_seed():
    from recaug_spark.train.models import Dropout

    x = torch.full((200, 500), 3.0, requires_grad=True)
    dropout = Dropout(0.25)
    torch.manual_seed(7)
    y = dropout(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(0.25, abs=0.01)
    assert set(torch.unique(y).tolist()) == {0.0, 4.0}  # kept values × 1 / (1 − p)
    y.sum().backward()
    assert torch.equal(x.grad, (y / 3.0).detach())  # the gradient flows through kept positions only
    torch.manual_seed(7)
    assert torch.equal(dropout(x), y)  # same seed, same mask
    assert torch.equal(dropout.eval()(x), x) and torch.equal(Dropout(0.0)(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)


def test_sasrec_gives_the_same_outputs_when_all_padding_leading_columns_are_cut():
    from recaug_spark.train.models import bce_loss, build_model, trim_leading_padding

    torch.manual_seed(0)
    model = build_model("sasrec", 30, hidden=16, blocks=2, heads=2, max_len=8, dropout=0.0, attention_dropout=0.0)
    x = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5], [0, 0, 0, 1, 2, 3, 4, 6], [0, 0, 0, 0, 0, 0, 0, 7]])
    positives = torch.roll(x, -1, 1) * (x > 0)
    negatives = (positives > 0) * 11
    offset, (cut, cut_positives, cut_negatives) = trim_leading_padding(model, x, positives, negatives)
    assert offset == 3 and cut.tolist() == x[:, 3:].tolist() and cut_positives.shape == (3, 5)
    model.eval()
    full, trimmed = model(x), model(cut, position_offset=3)
    real = x[:, 3:] > 0
    assert torch.allclose(full[:, 3:][real], trimmed[real], atol=1e-5)
    assert torch.allclose(model.score_all(x), model.score_all(cut, position_offset=3), atol=1e-5)
    # the position embeddings matter: without the offset the outputs differ
    assert not torch.allclose(model.score_all(x), model.score_all(cut), atol=1e-3)
    untrimmed_loss = _loss_without_trimming(model, x, positives, negatives)
    assert bce_loss(model, x, positives, negatives).item() == pytest.approx(untrimmed_loss, rel=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        model(cut, position_offset=4)
    gru = build_model("gru4rec", 30, hidden=16, max_len=8)
    assert trim_leading_padding(gru, x)[0] == 0  # a GRU reads padding: never cut


def _loss_without_trimming(model, x, positives, negatives) -> float:
    hidden = model(x)
    logits = (hidden * model.item_embedding(positives)).sum(-1), (hidden * model.item_embedding(negatives)).sum(-1)
    is_target = (positives > 0).float()
    losses = -torch.nn.functional.logsigmoid(logits[0]) - torch.nn.functional.logsigmoid(-logits[1])
    return ((losses * is_target).sum() / is_target.sum()).item()


def test_evaluation_in_length_order_gives_each_user_the_ranks_of_the_plain_order():
    from recaug_spark.train.data import Sequences
    from recaug_spark.train.models import build_model
    from recaug_spark.train.trainer import evaluate

    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 12, size=40)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(1, 31, size=int(offsets[-1]))
    vocab = Vocabulary([f"i{i}" for i in range(1, 31)])
    users = [f"u{u:02d}" for u in range(40)]
    histories = Sequences(keys=pa.array(users), offsets=offsets, items=items)
    targets = pa.table({"user_id": users, "split": ["valid"] * 40,
                        "item_id": [f"i{i}" for i in rng.integers(1, 31, size=40)]})
    eval_set = EvalSet.build(histories, targets, vocab, max_len=8, split="valid")
    order = [idx.tolist() for idx, *_ in eval_set.batches(7, by_length=True)]
    assert sorted(sum(order, [])) == list(range(40))
    widths = [int((eval_set.inputs[idx] != 0).sum(1).max()) for idx in order]
    assert widths == sorted(widths)
    torch.manual_seed(1)
    model = build_model("sasrec", 30, hidden=16, blocks=2, heads=2, max_len=8)
    cfg = TrainConfig(eval_batch_size=7, ks=[1, 5, 10])
    by_length = evaluate(model, eval_set, cfg, torch.device("cpu"), groups=True)
    # the reference: plain order, whole rows (trimming switched off)
    model.ignores_leading_padding = False
    plain = evaluate(model, eval_set, cfg, torch.device("cpu"), groups=True)
    assert by_length.keys() == plain.keys()
    for key in plain:
        assert by_length[key] == pytest.approx(plain[key], abs=1e-9), key


# ---------------------------------------------------------------- training

def test_sasrec_learns_a_deterministic_pattern_and_same_seed_gives_same_metrics(synthetic, tmp_path):
    from recaug_spark.train.trainer import load_checkpoint, train

    files = pinned_files(synthetic["uri"], chains=["real", "crop"])
    targets = read_targets(synthetic["targets_uri"])
    cfg = _small_config()
    result = train(cfg, files, targets, targets, checkpoint_path=str(tmp_path / "best.pt"))
    assert result["test"]["users"] == 240 and result["valid"]["users"] == 240
    assert result["train_sequences"] == 360
    # random HR@10 is about 10 / (100 - history) < 0.12
    print({k: round(v, 3) for k, v in result["test"].items()}, result["best_epoch"], result["seconds_total"])
    assert result["test"]["hr@10"] > 0.8, result["history"]
    assert result["test"]["ndcg@10"] > 0.5
    assert set(result["test_breakdown"]) == {"short", "long", "cold", "head", "tail"}
    assert sum(result["test_breakdown"][g]["users"] for g in ("short", "long")) == 240

    model, vocab, saved_cfg = load_checkpoint(str(tmp_path / "best.pt"))
    assert saved_cfg == cfg and vocab.n_items == N_ITEMS
    user = synthetic["users"][0]
    history = vocab.encode(user[1] + [user[2]])
    inputs = torch.from_numpy(np.pad(history, (cfg.max_len - len(history), 0))[None, -cfg.max_len:])
    scores = model.score_all(inputs)[0].detach()
    scores[0], scores[torch.from_numpy(history)] = -math.inf, -math.inf  # history excluded, as in evaluation
    top = scores.argmax().item()
    assert vocab.decode([top]) == [user[3]]  # the next item of the pattern

    short = _small_config(epochs=2, patience=5)
    first, second = train(short, files, targets, targets), train(short, files, targets, targets)
    assert first["test"] == second["test"] and first["valid"] == second["valid"]
    assert [h["loss"] for h in first["history"]] == [h["loss"] for h in second["history"]]
    third = train(short, files, targets, targets, seed=4)
    assert [h["loss"] for h in third["history"]] != [h["loss"] for h in first["history"]]


def test_gru4rec_and_sampled_protocol_train_end_to_end(synthetic):
    from recaug_spark.train.trainer import train_seeds

    files = pinned_files(synthetic["uri"], chains=["real"])
    targets = read_targets(synthetic["targets_uri"])
    cfg = _small_config(model="gru4rec", epochs=2, negatives_protocol="popularity", sampled_negatives=20, seeds=(1, 2))
    summary = train_seeds(cfg, files, targets, targets)
    assert len(summary["runs"]) == 2 and {r["seed"] for r in summary["runs"]} == {1, 2}
    assert all(r["test"]["users"] == 240 and r["protocol"] == "popularity" for r in summary["runs"])
    ci = summary["test"]["ndcg@10"]
    assert ci["n"] == 2 and ci["low"] <= ci["mean"] <= ci["high"]


def test_two_gloo_ranks_under_torch_distributor_train_on_their_own_shards(spark, synthetic):
    """train_rank as TorchDistributor's function: 2 local processes, DDP over gloo, one shard each."""
    from pyspark.ml.torch.distributor import TorchDistributor

    from recaug_spark.train.trainer import train_rank

    cfg = _small_config(epochs=1).model_dump(mode="json")
    result = TorchDistributor(num_processes=2, local_mode=True, use_gpu=False).run(
        train_rank, cfg, synthetic["uri"], version=1, chains=["real", "crop"], targets_uri=synthetic["targets_uri"])
    assert result["world_size"] == 2 and result["epochs_run"] == 1
    assert result["train_sequences"] == 360  # summed over the ranks' shards: every row read once
    assert result["test"]["users"] == 240 and result["valid"]["users"] == 240


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax"])
def test_softmax_losses_learn_the_pattern_and_record_convergence(synthetic, loss):
    from recaug_spark.train.trainer import train

    files = pinned_files(synthetic["uri"], chains=["real"])
    targets = read_targets(synthetic["targets_uri"])
    result = train(_small_config(loss=loss, loss_negatives=30, epochs=10, patience=2), files, targets, targets)
    assert result["loss"] == loss
    assert result["test"]["hr@10"] > 0.8, result["history"]
    assert result["cap_hit"] == (not result["stopped_early"])
    capped = train(_small_config(loss=loss, epochs=1), files, targets, targets)
    assert capped["cap_hit"] and capped["best_epoch"] == 0


def test_early_stopping_keeps_the_best_state_and_stops_after_patience():
    from recaug_spark.train.trainer import EarlyStopping

    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2)
    stopper.observe(0, 0.5, {"ndcg@10": 0.5}, model)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    assert not stopper.should_stop()
    with torch.no_grad():
        model.weight.add_(1.0)
    stopper.observe(1, 0.4, {"ndcg@10": 0.4}, model)
    assert not stopper.should_stop() and stopper.best_epoch == 0
    stopper.observe(2, float("nan"), {"ndcg@10": float("nan")}, model)  # NaN never counts as better
    assert stopper.should_stop() and stopper.stopped_early and stopper.best_valid == {"ndcg@10": 0.5}
    stopper.restore(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())


def test_an_objective_with_more_tensors_per_batch_plugs_into_the_loop(synthetic):
    """An objective factory whose batches carry an extra tensor (here a per-row weight of 1) trains
    through the same loop, with no change to it: the same losses as the default objective."""
    from recaug_spark.train.models import bce_loss
    from recaug_spark.train.trainer import Objective, next_item_objective, train

    def weighted(inputs):
        plain = next_item_objective(inputs)

        def batches(epoch):
            return ((*batch, torch.ones(len(batch[0]))) for batch in plain.batches(epoch))

        def loss(epoch):
            return lambda model, ids, positives, negatives, weights: bce_loss(model, ids, positives, negatives) * (
                weights.mean())

        return Objective(batches, loss)

    files = pinned_files(synthetic["uri"], chains=["real"])
    targets = read_targets(synthetic["targets_uri"])
    cfg = _small_config(epochs=2)
    default, custom = train(cfg, files, targets, targets), train(cfg, files, targets, targets, objective=weighted)
    assert [h["loss"] for h in custom["history"]] == [h["loss"] for h in default["history"]]
    assert custom["test"] == default["test"]


def test_an_interrupted_run_resumes_from_its_progress_file_with_the_same_figures(synthetic, tmp_path):
    from recaug_spark.train.progress import ProgressError
    from recaug_spark.train.trainer import train

    files = pinned_files(synthetic["uri"], chains=["real", "crop"])
    targets = read_targets(synthetic["targets_uri"])
    cfg = _small_config(epochs=4, patience=10, dropout=0.3)  # dropout: torch's random state must resume too
    straight = train(cfg, files, targets, targets)

    progress = tmp_path / "run.progress.pt"

    class Interrupted(Exception):
        pass

    def stop_after_second_epoch(line):
        if line.startswith("epoch=1 "):
            raise Interrupted

    with pytest.raises(Interrupted):
        train(cfg, files, targets, targets, log=stop_after_second_epoch, progress_path=str(progress))
    assert progress.exists()
    with pytest.raises(ProgressError, match="another run"):
        train(cfg, files, targets, targets, seed=99, progress_path=str(progress))
    lines = []
    other_groups = cfg.model_copy(update={"cold_history_max": cfg.cold_history_max + 1,  # breakdown only
                                          "seeds": (*cfg.seeds, 99)})  # the study's other seeds
    resumed = train(other_groups, files, targets, targets, log=lines.append, progress_path=str(progress))
    assert [line.split()[0] for line in lines] == ["epoch=2", "epoch=3"]  # only the epochs left
    assert "cold" in resumed["test_breakdown"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert resumed["test"] == straight["test"] and resumed["best_epoch"] == straight["best_epoch"]
    assert not progress.exists()  # removed once the run has its result


def test_a_data_file_without_a_needed_column_is_named_in_the_error(tmp_path):
    import pyarrow.parquet as pq

    from recaug_spark.train.data import DataFile, TrainDataError, iter_batches

    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "item_ids": [["a"], ["b", "c"]]}), good)
    pq.write_table(pa.table({"user_id": ["u3"]}), bad)
    files = [DataFile(str(good), 2, good.stat().st_size), DataFile(str(bad), 1, bad.stat().st_size)]
    batches = iter_batches(files, ["user_id", "item_ids"])
    assert next(batches).column("item_ids").to_pylist() == [["a"], ["b", "c"]]  # the good file reads first
    with pytest.raises(TrainDataError, match=r"bad\.parquet has no column\(s\) \['item_ids'\]"):
        next(batches)


def test_progress_saved_before_the_seed_list_left_the_fingerprint_still_resumes(synthetic, tmp_path, monkeypatch):
    from recaug_spark.train import trainer
    from recaug_spark.train.progress import ProgressError

    files = pinned_files(synthetic["uri"], chains=["real"])
    targets = read_targets(synthetic["targets_uri"])
    cfg = _small_config(epochs=3, patience=10)
    straight = trainer.train(cfg, files, targets, targets)
    progress = tmp_path / "old.progress.pt"

    def stop_after_first_epoch(line):
        if line.startswith("epoch=0 "):
            raise KeyboardInterrupt

    with monkeypatch.context() as old_code:  # the fingerprint of the code before: seeds list included
        old_code.setattr(trainer, "NOT_IN_FINGERPRINT", trainer.BREAKDOWN_ONLY)
        with pytest.raises(KeyboardInterrupt):
            trainer.train(cfg, files, targets, targets, log=stop_after_first_epoch, progress_path=str(progress))
    with pytest.raises(ProgressError):  # an older file of another run is still refused
        trainer.train(cfg.model_copy(update={"lr": cfg.lr * 2}), files, targets, targets, progress_path=str(progress))
    lines = []
    resumed = trainer.train(cfg, files, targets, targets, log=lines.append, progress_path=str(progress))
    assert [line.split()[0] for line in lines] == ["epoch=1", "epoch=2"]
    assert resumed["test"] == straight["test"]
