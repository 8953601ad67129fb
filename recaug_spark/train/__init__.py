"""Training and evaluation of sequential recommenders on pinned Delta snapshots (issue 5).

Importing this package imports neither torch nor Spark: ``config`` (pydantic) and ``metrics``
(numpy; torch only inside the functions that take tensors) are light, ``data``, ``models`` and
``trainer`` import torch inside their functions or are imported only by training code.

Modules:

* ``config``  — ``TrainConfig``, the ``train`` section (frozen, unknown keys rejected).
* ``data``    — Delta log → pinned data files with row counts, balanced shards per rank, a
  streaming Parquet reader, the item ``Vocabulary`` and ``SequenceTrainingData`` (SASRec tensors).
* ``models``  — SASRec and GRU4Rec behind one interface (``forward``, ``score_all``).
* ``metrics`` — ranks under full or sampled ranking, HR/NDCG/Recall@K, MRR, AUC, breakdowns, CIs.
* ``trainer`` — ``train`` (one process), ``train_rank`` (a TorchDistributor rank), ``train_seeds``;
  the loop in parts (``Objective``, ``EarlyStopping``, one function per epoch, validation, test
  and checkpoint).
* ``experiment`` — plans and runs a baseline against augmented variants at an equal step budget;
  the metrics table rows and the with-vs-without comparison.
* ``report``  — the experiment's report folder: ``report.md``, ``runs.json`` and its plots.
* ``quality`` — data-quality figures of an augmented table from Spark aggregates (fidelity,
  diversity, privacy), as Markdown and plots.
"""
