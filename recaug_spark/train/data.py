"""Delta snapshot → PyTorch tensors, with no Spark and no driver collect.

A training run pins one table version. ``pinned_files`` lists that version's data files and their
row counts from the Delta log alone; a provenance filter on ``operator_chain`` (the partition
column of ``augmented_sequences``) drops whole files before any is opened. ``shard_files`` gives
each rank a deterministic, row-balanced share of the files; ``iter_batches`` streams a rank's files
with ``pyarrow.parquet.ParquetFile.iter_batches`` reading only the columns asked for.

Item ids are strings; ``Vocabulary`` maps them to 1..N (0 is padding, N+1 the augmenters' mask
token) and is saved with the model. ``SequenceTrainingData`` turns sequences into SASRec training
tensors; ``EvalSet`` pairs users' real histories with their held-out targets.

Example::

    files = pinned_files("wh/augmented_sequences", version=3, chains=["real", "crop"])
    mine = shard_files(files, rank=0, world_size=2)
    vocab = Vocabulary.from_items_table("wh/items")
    seqs = read_sequences(mine, vocab)
    data = SequenceTrainingData(seqs.offsets, seqs.items, vocab.n_items, max_len=50)
    for input_ids, positives, negatives in data.batches(epoch=0, batch_size=256, seed=42):
        ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CHAIN_COLUMN = "operator_chain"
MASK_TOKEN = "[mask]"  # recaug_spark.augment.batch.MASK_TOKEN (not imported: that pulls in the augmenters)


class TrainDataError(ValueError):
    """Training data that cannot be used; the message names the table, column or file."""


# ---------------------------------------------------------------- pinned files and shards

@dataclass(frozen=True)
class DataFile:
    """One Parquet data file of a pinned table version."""

    path: str  # absolute local path, or a URI pyarrow can open
    rows: int
    size: int
    partition: tuple[tuple[str, str | None], ...] = ()

    def partition_value(self, column: str) -> str | None:
        return dict(self.partition).get(column)


def pinned_files(uri: str, version: int | None = None, chains: Iterable[str] | None = None, *,
                 column: str = CHAIN_COLUMN) -> list[DataFile]:
    """The data files of table ``uri`` at ``version`` (default: the latest), with row counts.

    Everything comes from the Delta log: ``chains`` keeps only files whose ``column`` partition
    value is one of them, so other operators' files are never opened. A file whose log entry has
    no ``numRecords`` gets its count from its Parquet footer (only files that passed the filter).
    """
    from recaug_spark.delta import data_files

    listing = data_files(uri, version)
    wanted = None
    if chains is not None:
        wanted = set(chains)
        if column not in listing.partition_columns:
            raise TrainDataError(f"cannot filter {uri} by {column}={sorted(wanted)}: the table is partitioned by "
                                 f"{list(listing.partition_columns) or 'nothing'}")
    files = []
    for f in listing.files:  # ordered by path
        if wanted is not None and dict(f.partition)[column] not in wanted:
            continue
        rows = f.rows if f.rows is not None else _open(f.path).metadata.num_rows
        files.append(DataFile(f.path, int(rows), f.size, f.partition))
    return files


def shard_files(files: Sequence[DataFile], rank: int, world_size: int) -> list[DataFile]:
    """Rank ``rank``'s share of ``files``, balanced by row count (greedy, largest file first).

    Deterministic: files are ordered by (rows descending, path) and each goes to the rank with the
    fewest rows so far (the lowest rank on ties), so every rank computes the same assignment.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    loads = [0] * world_size
    assigned: list[list[DataFile]] = [[] for _ in range(world_size)]
    for f in sorted(files, key=lambda f: (-f.rows, f.path)):
        target = min(range(world_size), key=lambda r: (loads[r], r))
        assigned[target].append(f)
        loads[target] += f.rows
    return sorted(assigned[rank], key=lambda f: f.path)


def _open(path: str, metadata: pq.FileMetaData | None = None) -> pq.ParquetFile:
    """The Parquet file at ``path`` (a local path or a URI); ``metadata``: its footer, already read.
    A file that is not Parquet (truncated, overwritten) is a :class:`TrainDataError` naming it."""
    from recaug_spark.paths import is_uri

    try:
        if is_uri(path):
            import pyarrow.fs as pafs

            fs, inner = pafs.FileSystem.from_uri(path)
            return pq.ParquetFile(fs.open_input_file(inner), metadata=metadata)
        return pq.ParquetFile(path, metadata=metadata)
    except pa.ArrowInvalid as error:
        raise TrainDataError(f"{path} is not a readable Parquet file: {error}") from error


def iter_batches(files: Iterable[DataFile], columns: Sequence[str],
                 batch_size: int = 8_192) -> Iterator[pa.RecordBatch]:
    """Stream record batches of ``columns`` from ``files`` (partition columns are not in the files)."""
    return _batches_of(((f.path, None) for f in files), columns, batch_size)


def _batches_of(footers: Iterable[tuple[str, pq.FileMetaData | None]], columns: Sequence[str],
                batch_size: int) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` from ``(path, footer or None)`` pairs, one file open at a time;
    a file without one of the columns is a :class:`TrainDataError`."""
    for path, metadata in footers:
        with _open(path, metadata) as parquet:
            missing = [c for c in columns if c not in parquet.schema_arrow.names]
            if missing:
                raise TrainDataError(f"{path} has no column(s) {missing}; it has {parquet.schema_arrow.names}")
            yield from parquet.iter_batches(batch_size=batch_size, columns=list(columns))


# ---------------------------------------------------------------- vocabulary

class Vocabulary:
    """Item id (string) ↔ index: items 1..N in sorted id order, 0 = padding, N+1 = mask token.

    Example::

        vocab = Vocabulary(["b", "a"])
        vocab.encode(["a", "zzz", "[mask]"])  # array([1, 0, 3]): unknown ids map to 0
    """

    def __init__(self, items: Iterable[str]):
        unique = sorted({str(i) for i in items if i is not None} - {MASK_TOKEN})
        self.items: list[str] = unique
        self._array = pa.array(unique, pa.string())

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def mask_index(self) -> int:
        return self.n_items + 1

    @property
    def size(self) -> int:
        """Rows of an embedding table: padding, N items and the mask token."""
        return self.n_items + 2

    def encode(self, values) -> np.ndarray:
        """Indices (int64) of item ids; unknown ids give 0, the mask token gives N+1."""
        values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(list(values), pa.string())
        found = pc.index_in(values, value_set=self._array)
        out = pc.fill_null(pc.add(found, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        out[pc.fill_null(pc.equal(values, MASK_TOKEN), False).to_numpy(zero_copy_only=False)] = self.mask_index
        return out

    def decode(self, indices: Iterable[int]) -> list[str | None]:
        return [self.items[i - 1] if 1 <= i <= self.n_items else (MASK_TOKEN if i == self.mask_index else None)
                for i in indices]

    def to_json(self) -> str:
        return json.dumps({"format_version": 1, "items": self.items})

    @classmethod
    def from_json(cls, text: str) -> "Vocabulary":
        data = json.loads(text)
        if data.get("format_version") != 1:
            raise TrainDataError(f"unknown vocabulary format {data.get('format_version')!r}")
        return cls(data["items"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    @classmethod
    def from_items_table(cls, uri: str, version: int | None = None) -> "Vocabulary":
        """All ``item_id`` values of the ``items`` table."""
        ids: set[str] = set()
        for batch in iter_batches(pinned_files(uri, version), ["item_id"]):
            ids.update(pc.unique(batch.column("item_id")).to_pylist())
        return cls(ids)

    @classmethod
    def from_files(cls, files: Iterable[DataFile], extra: Iterable[str] = ()) -> "Vocabulary":
        """Every item id of the sequences' ``item_ids`` plus ``extra`` (e.g. the held-out targets)."""
        ids: set[str] = set(extra)
        for batch in iter_batches(files, ["item_ids"]):
            ids.update(pc.unique(pc.list_flatten(batch.column("item_ids"))).to_pylist())
        return cls(ids)


# ---------------------------------------------------------------- sequences

@dataclass
class Sequences:
    """Encoded sequences: ``items[offsets[i]:offsets[i+1]]`` is sequence i (unknown items dropped)."""

    keys: pa.Array  # user_id of each sequence
    offsets: np.ndarray  # int64 [n + 1]
    items: np.ndarray  # int64 item indices
    dropped_items: int = 0  # occurrences of ids not in the vocabulary
    # Sequence i was row file_rows[i] of the files in read order (read_sequences sorts them); None: the same
    file_rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def in_file_order(self, values: np.ndarray) -> np.ndarray:
        """``values`` given per row of the files in read order (e.g. from their Delta row counts),
        rearranged to one per sequence."""
        return values if self.file_rows is None else values[self.file_rows]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


ORDER_COLUMN = "sequence_id"  # unique per row of an augmented sequence table


def read_sequences(files: Iterable[DataFile], vocabulary: Vocabulary, *, key_column: str = "user_id",
                   batch_size: int = 8_192) -> Sequences:
    """Read and encode the ``item_ids`` of ``files`` (streamed; only the columns needed are read).

    The sequences come in ``sequence_id`` order (``key_column`` order where a file lacks it; the sort
    is stable): the same rows give the same ``Sequences`` however the writer spread them over files
    and row groups, so what a model trains on never depends on the tables' physical layout."""
    footers = []
    for f in files:  # each footer read once (kept for the batches), one file open at a time
        with _open(f.path) as parquet:
            footers.append((f.path, parquet.metadata))
    order_column = ORDER_COLUMN if footers and all(ORDER_COLUMN in m.schema.to_arrow_schema().names
                                                   for _, m in footers) else key_column
    keys, order, offsets, items, dropped, total = [], [], [np.zeros(1, np.int64)], [], 0, 0
    for batch in _batches_of(footers, list(dict.fromkeys([key_column, "item_ids", order_column])), batch_size):
        lists = batch.column("item_ids")
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        encoded = vocabulary.encode(pc.list_flatten(lists))
        keep = encoded > 0
        if not keep.all():
            row = np.repeat(np.arange(len(lengths)), lengths)
            lengths = np.bincount(row[keep], minlength=len(lengths)).astype(np.int64)
            dropped += int((~keep).sum())
            encoded = encoded[keep]
        keys.append(batch.column(key_column))
        order.append(batch.column(order_column))
        offsets.append(total + np.cumsum(lengths))
        total += int(lengths.sum())
        items.append(encoded)
    read = Sequences(
        keys=pa.concat_arrays([pa.array(k) for k in keys]) if keys else pa.array([], pa.string()),
        offsets=np.concatenate(offsets),
        items=np.concatenate(items) if items else np.zeros(0, np.int64),
        dropped_items=dropped,
    )
    if not order:
        return read
    rows = pc.sort_indices(pa.chunked_array(order)).to_numpy()
    sorted_offsets, sorted_items = gather(read.offsets, read.items, rows)
    return Sequences(keys=read.keys.take(pa.array(rows)), offsets=sorted_offsets, items=sorted_items,
                     dropped_items=dropped, file_rows=rows)


def read_targets(uri: str, version: int | None = None) -> pa.Table:
    """The held-out targets table (user_id, split, item_id) at ``version``."""
    batches = list(iter_batches(pinned_files(uri, version), ["user_id", "split", "item_id"]))
    if not batches:
        return pa.table({"user_id": pa.array([], pa.string()), "split": pa.array([], pa.string()),
                         "item_id": pa.array([], pa.string())})
    return pa.Table.from_batches(batches)


def targets_of(targets, split: str | None = None) -> pa.Table:
    """Normalise targets to a (user_id, item_id) table: a table with a ``split`` column (filtered
    by ``split``), a table/mapping of columns, or a ``{user_id: item_id}`` dict."""
    if isinstance(targets, pa.Table):
        table = targets
    elif isinstance(targets, Mapping) and set(targets) >= {"user_id", "item_id"}:
        table = pa.table({k: targets[k] for k in targets})
    elif isinstance(targets, Mapping):
        table = pa.table({"user_id": pa.array(list(targets), pa.string()),
                          "item_id": pa.array([str(v) for v in targets.values()], pa.string())})
    else:
        raise TrainDataError(f"targets must be a pyarrow Table or a mapping, not {type(targets).__name__}")
    if split is not None and "split" in table.column_names:
        table = table.filter(pc.equal(table.column("split"), split))
    return table.select(["user_id", "item_id"])


def tails(offsets: np.ndarray, items: np.ndarray, width: int) -> np.ndarray:
    """[n, width] matrix of each sequence's last ``width`` items, left-padded with 0."""
    n = len(offsets) - 1
    out = np.zeros((n, width), dtype=np.int64)
    if n == 0:
        return out
    lengths = np.minimum(np.diff(offsets), width)
    row = np.repeat(np.arange(n), lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    source = np.repeat(offsets[1:] - lengths, lengths) + within
    out[row, width - np.repeat(lengths, lengths) + within] = items[source]
    return out


def gather(offsets: np.ndarray, items: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and items of the sequences ``rows`` (in that order), vectorised."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = offsets[rows + 1] - offsets[rows]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    within = np.arange(int(new_offsets[-1])) - np.repeat(new_offsets[:-1], lengths)
    return new_offsets, items[np.repeat(offsets[rows], lengths) + within]


def _member(rows: np.ndarray, values: np.ndarray, seq_offsets: np.ndarray, seq_items: np.ndarray,
            selected: np.ndarray, base: int) -> np.ndarray:
    """Whether values[i] occurs in sequence selected[rows[i]] (vectorised with sorted keys)."""
    offsets, flat = gather(seq_offsets, seq_items, selected)
    local = np.repeat(np.arange(len(selected)), np.diff(offsets))
    keys = np.unique(local * base + flat)
    if not len(keys):
        return np.zeros(len(values), bool)
    probe = rows * base + values
    position = np.minimum(np.searchsorted(keys, probe), len(keys) - 1)
    return keys[position] == probe


def _positions(values, within) -> np.ndarray:
    """Index of each value in ``within`` (-1 where absent)."""
    within = within.combine_chunks() if isinstance(within, pa.ChunkedArray) else within
    found = pc.fill_null(pc.index_in(values, value_set=within), -1)
    return found.to_numpy(zero_copy_only=False).astype(np.int64)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integer parts (e.g. seed, epoch, rank): a change in any part
    gives an unrelated seed."""
    from recaug_spark.rng import mix64

    value = np.uint64(0)
    for part in parts:
        value = mix64(np.uint64(value ^ np.uint64(part & 0xFFFFFFFFFFFFFFFF)))
    return int(value) & 0x7FFFFFFFFFFFFFFF


@dataclass
class SequenceTrainingData:
    """SASRec training tensors from encoded sequences.

    For a sequence s of length L: input = s[:-1] and positives = s[1:], both the last ``max_len``
    entries, left-padded with 0; a position without a real next item (padding, or a next item that
    is the mask token) has positive 0 and is ignored by the loss. One negative per position is drawn
    uniformly from 1..n_items, resampled while it occurs anywhere in that sequence. Sequences with
    fewer than two items give no training pair and are left out.
    """

    offsets: np.ndarray
    items: np.ndarray
    n_items: int
    max_len: int
    _tail: np.ndarray = field(init=False, repr=False)
    _rows: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self._rows = np.flatnonzero(np.diff(self.offsets) >= 2)
        self._seq_offsets, self._seq_items = gather(np.asarray(self.offsets, np.int64),
                                                     np.asarray(self.items, np.int64), self._rows)
        self._tail = tails(self._seq_offsets, self._seq_items, self.max_len + 1).astype(np.int32)

    def __len__(self) -> int:
        return len(self._rows)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def tensors(self, rows: np.ndarray, generator):
        """(input_ids, positives, negatives) int64 tensors [len(rows), max_len] for these sequences."""
        import torch

        tail = self._tail[rows].astype(np.int64)
        inputs, positives = tail[:, :-1], tail[:, 1:].copy()
        mask_index = self.n_items + 1
        positives[(inputs == 0) | (positives == mask_index)] = 0
        negatives = torch.randint(1, self.n_items + 1, positives.shape, generator=generator).numpy()
        negatives[positives == 0] = 0
        base = self.n_items + 2
        todo = np.flatnonzero(positives.ravel() > 0)
        flat = negatives.ravel()
        for _ in range(100):  # rejection sampling; a sequence holding every item keeps its last draw
            if not len(todo):
                break
            clash = _member(todo // self.max_len, flat[todo], self._seq_offsets, self._seq_items, rows, base)
            todo = todo[clash]
            if len(todo):
                flat[todo] = torch.randint(1, self.n_items + 1, (len(todo),), generator=generator).numpy()
        negatives = flat.reshape(positives.shape)
        return torch.from_numpy(inputs), torch.from_numpy(positives), torch.from_numpy(negatives)

    @property
    def sequence_rows(self) -> np.ndarray:
        """For each training row (0..len - 1), the index of its sequence in the input ``offsets``."""
        return self._rows

    def batches(self, epoch: int, batch_size: int, seed: int, rank: int = 0, steps: int | None = None):
        """Shuffled batches ``(input_ids, positives, negatives)`` for one epoch; see ``batch_rows``."""
        for rows, generator in self.batch_rows(epoch, batch_size, seed, rank, steps):
            yield self.tensors(rows, generator)

    def batch_rows(self, epoch: int, batch_size: int, seed: int, rank: int = 0, steps: int | None = None):
        """``(rows, generator)`` per batch of one epoch: training row indices and the epoch's generator
        (which ``tensors`` draws negatives from); randomness is a function of (seed, epoch, rank).

        ``steps`` > the natural number of batches repeats (reshuffled) passes over the data, so that
        every rank of a distributed run takes the same number of steps.
        """
        import torch

        generator = torch.Generator().manual_seed(mix_seed(seed, epoch, rank))
        n = len(self)
        natural = self.num_batches(batch_size)
        steps = natural if steps is None else steps
        if n == 0:
            return
        order = torch.randperm(n, generator=generator).numpy()
        # One pass ends with a short batch (as the reference does); only extra steps take more passes.
        while steps > natural and len(order) < steps * batch_size:
            order = np.concatenate([order, torch.randperm(n, generator=generator).numpy()])
        for step in range(steps):
            rows = order[step * batch_size:(step + 1) * batch_size]
            if len(rows) == 0:
                break
            yield rows, generator


# ---------------------------------------------------------------- evaluation users

@dataclass
class EvalSet:
    """Users with a held-out target: model input, target index and the items excluded from ranking.

    For ``split="valid"`` the input is the user's real training history; for ``split="test"`` the
    history followed by the validation target (when known), as in leave-one-out evaluation.
    """

    user_ids: pa.Array
    inputs: np.ndarray  # [U, max_len] left-padded
    targets: np.ndarray  # [U] item index (1..N)
    history_offsets: np.ndarray  # items excluded from ranking: history (+ valid target for test)
    history_items: np.ndarray
    history_lengths: np.ndarray  # length of the history the model conditions on
    unknown_targets: int = 0  # targets whose item is not in the vocabulary (left out)
    missing_histories: int = 0  # targets of users without a real history (left out)

    def __len__(self) -> int:
        return len(self.targets)

    def batches(self, batch_size: int, *, by_length: bool = False):
        """(indices, inputs, targets, padded history [B, H]) numpy arrays.

        ``by_length``: users in order of input length (ties by position), so that each batch holds
        sequences of similar length and a model that ignores leading padding runs it at its own
        width; ``indices`` say where each row belongs.
        """
        order = np.argsort((self.inputs != 0).sum(1), kind="stable") if by_length else np.arange(len(self))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            offsets, items = gather(self.history_offsets, self.history_items, idx)
            width = max(int(np.diff(offsets).max()) if len(idx) else 1, 1)
            history = tails(offsets, items, width)
            yield idx, self.inputs[idx], self.targets[idx], history

    @classmethod
    def build(cls, histories: Sequences, targets, vocabulary: Vocabulary, max_len: int, split: str,
              valid_targets=None) -> "EvalSet":
        table = targets_of(targets, split)
        position = _positions(table.column("user_id"), histories.keys)
        has_history = position >= 0
        target_index = vocabulary.encode(table.column("item_id"))
        known = (target_index >= 1) & (target_index <= vocabulary.n_items)
        keep = has_history & known
        rows, target_index = position[keep], target_index[keep]
        user_ids = table.column("user_id").combine_chunks().filter(pa.array(keep))
        extra = np.zeros(len(rows), np.int64)  # the validation item appended to the test input
        if valid_targets is not None:
            valid = targets_of(valid_targets, "valid")
            at = _positions(user_ids, valid.column("user_id"))
            valid_index = vocabulary.encode(valid.column("item_id"))
            extra = np.where(at >= 0, valid_index[np.maximum(at, 0)] if len(valid_index) else 0, 0)
            extra[(extra < 1) | (extra > vocabulary.n_items)] = 0
        offsets, items = gather(histories.offsets, histories.items, rows)
        if (extra > 0).any():  # append the validation item to those users' histories
            lengths = np.diff(offsets) + (extra > 0)
            grown = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            out = np.zeros(int(grown[-1]), np.int64)
            src = np.diff(offsets)
            out[np.repeat(grown[:-1], src) + (np.arange(len(items)) - np.repeat(offsets[:-1], src))] = items
            out[grown[1:][extra > 0] - 1] = extra[extra > 0]
            offsets, items = grown, out
        lengths = np.diff(offsets)
        return cls(user_ids=user_ids, inputs=tails(offsets, items, max_len), targets=target_index,
                   history_offsets=offsets, history_items=items, history_lengths=lengths,
                   unknown_targets=int((has_history & ~known).sum()), missing_histories=int((~has_history).sum()))
