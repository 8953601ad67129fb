"""Canonical table schemas of the warehouse. Columns may grow; none may silently change type."""

from __future__ import annotations

from pyspark.sql import types as T

# What every source adapter produces before validation: canonical names, raw string values, plus
# where the row came from and its raw text, so a rejected row can be quarantined verbatim.
RAW_EVENT_FIELDS = (
    "user_id", "item_id", "event_type", "ts", "quantity", "price", "session_id", "order_id",
    "country", "device",
)
RAW_ITEM_FIELDS = ("item_id", "title", "description", "category", "price", "attributes")

EVENT_TYPES = ("view", "cart", "purchase", "return")

# The operator chain (and origin) of a row copied unchanged from the input into an augmented table.
REAL_CHAIN = "real"

EVENTS_RAW = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("item_id", T.StringType(), False),
    T.StructField("event_type", T.StringType(), False),
    T.StructField("ts", T.TimestampType(), False),
    T.StructField("quantity", T.IntegerType(), True),
    T.StructField("price", T.DoubleType(), True),
    T.StructField("session_id", T.StringType(), True),
    T.StructField("order_id", T.StringType(), True),
    T.StructField("country", T.StringType(), True),
    T.StructField("device", T.StringType(), True),
    T.StructField("source", T.StringType(), True),
    T.StructField("dt", T.DateType(), False),
])

ITEMS_RAW = T.StructType([
    T.StructField("item_id", T.StringType(), False),
    T.StructField("title", T.StringType(), True),
    T.StructField("description", T.StringType(), True),
    T.StructField("category", T.StringType(), True),
    T.StructField("price", T.DoubleType(), True),
    T.StructField("attributes", T.StringType(), True),  # JSON object, readable by any engine
    T.StructField("source", T.StringType(), True),
])

QUARANTINE = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("stage", T.StringType(), False),
    T.StructField("table", T.StringType(), False),
    T.StructField("source", T.StringType(), True),
    T.StructField("raw", T.StringType(), True),
    T.StructField("reason", T.StringType(), False),
    T.StructField("row_number", T.LongType(), True),  # logical record in the source file (header = 1)
    T.StructField("byte_offset", T.LongType(), True),  # where the record starts in the (decompressed) file
])

RUNS = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("stage", T.StringType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("duration_s", T.DoubleType(), False),
    T.StructField("rows_in", T.LongType(), False),
    T.StructField("rows_out", T.LongType(), False),
    T.StructField("rows_quarantined", T.LongType(), False),
    T.StructField("counts", T.StringType(), False),  # JSON: reason -> rows, table -> rows, ...
    T.StructField("tables", T.StringType(), False),  # JSON: table -> Delta version written
    T.StructField("config_hash", T.StringType(), False),
    T.StructField("config", T.StringType(), False),  # effective config as JSON
])

# ---- silver tables written by the clean stage (recaug_spark/stages/clean.py) ----

EVENTS = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("item_id", T.StringType(), False),
    T.StructField("event_type", T.StringType(), False),
    T.StructField("ts", T.TimestampType(), False),
    T.StructField("quantity", T.IntegerType(), True),  # after returns netting
    T.StructField("price", T.DoubleType(), True),
    T.StructField("session_id", T.StringType(), False),  # computed: "<user_id>-<n>", n = 1, 2, ...
    T.StructField("order_id", T.StringType(), True),
    T.StructField("country", T.StringType(), True),
    T.StructField("device", T.StringType(), True),
    T.StructField("source", T.StringType(), True),
    T.StructField("split", T.StringType(), True),  # train / valid / test; null: not in a sequence
    T.StructField("dt", T.DateType(), False),
])

ITEMS = T.StructType([
    T.StructField("item_id", T.StringType(), False),
    T.StructField("title", T.StringType(), True),  # normalized: trimmed, single spaces, lower case
    T.StructField("description", T.StringType(), True),
    T.StructField("category", T.StringType(), True),
    T.StructField("price", T.DoubleType(), True),
    T.StructField("price_imputed", T.BooleanType(), False),  # price is its category's median
    T.StructField("attributes", T.StringType(), True),  # JSON object
])

SEQUENCES = T.StructType([  # the training part only; held-out targets live in SEQUENCE_TARGETS
    T.StructField("user_id", T.StringType(), False),
    T.StructField("item_ids", T.ArrayType(T.StringType()), False),
    T.StructField("timestamps", T.ArrayType(T.TimestampType()), False),
    T.StructField("event_types", T.ArrayType(T.StringType()), False),
    T.StructField("session_ids", T.ArrayType(T.StringType()), False),
    T.StructField("countries", T.ArrayType(T.StringType()), True),  # context of each event (may be null)
    T.StructField("devices", T.ArrayType(T.StringType()), True),
    T.StructField("length", T.IntegerType(), False),
])

# Per-event context list columns of ``sequences``: carried along by every augmenter, and the
# fields the context augmenters swap or drop. Name in ``sequences`` → name inside a batch.
CONTEXT_COLUMNS = {"countries": "country", "devices": "device"}

SEQUENCE_TARGETS = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("split", T.StringType(), False),  # valid / test
    T.StructField("item_id", T.StringType(), False),
    T.StructField("ts", T.TimestampType(), False),
    T.StructField("event_type", T.StringType(), False),
])

# ---- gold tables written by the augment stage (recaug_spark/stages/augment.py, augment_items.py) ----

# Where every row of an augmented table comes from, in the same columns for sequences and items:
# real rows carry REAL_CHAIN and null branch/copy/params; augmented rows their branch's chain.
PROVENANCE_FIELDS = (
    T.StructField("origin", T.StringType(), False),  # REAL_CHAIN, "augmented", or "synthetic" (new users)
    T.StructField("operator_chain", T.StringType(), False),  # REAL_CHAIN, or e.g. "crop>mask"
    T.StructField("branch", T.IntegerType(), True),  # index of the config branch
    T.StructField("copy", T.IntegerType(), True),
    T.StructField("params", T.StringType(), True),  # JSON: operator -> parameters, plus the branch's targeting
    T.StructField("seed", T.LongType(), False),
    T.StructField("generator", T.StringType(), True),  # name@version of the models (or lexicon) the chain uses
    T.StructField("run_id", T.StringType(), False),
    T.StructField("config_hash", T.StringType(), False),
)

AUGMENTED_SEQUENCES = T.StructType([
    T.StructField("sequence_id", T.StringType(), False),  # user_id for real rows, user_id~branch:copy[:k] otherwise
    T.StructField("user_id", T.StringType(), False),  # the real user whose training sequence is the parent
    T.StructField("item_ids", T.ArrayType(T.StringType()), False),
    T.StructField("timestamps", T.ArrayType(T.TimestampType()), False),
    T.StructField("event_types", T.ArrayType(T.StringType()), False),
    T.StructField("session_ids", T.ArrayType(T.StringType()), True),
    T.StructField("countries", T.ArrayType(T.StringType()), True),
    T.StructField("devices", T.ArrayType(T.StringType()), True),
    T.StructField("negative_item_ids", T.ArrayType(T.StringType()), True),  # sampled negative per position
    T.StructField("length", T.IntegerType(), False),
    *PROVENANCE_FIELDS,
])

AUGMENTED_ITEMS = T.StructType([
    T.StructField("variant_id", T.StringType(), False),  # item_id for real rows, item_id~branch:copy otherwise
    T.StructField("item_id", T.StringType(), False),  # the real parent item
    T.StructField("title", T.StringType(), True),
    T.StructField("description", T.StringType(), True),
    T.StructField("category", T.StringType(), True),
    T.StructField("price", T.DoubleType(), True),
    T.StructField("price_imputed", T.BooleanType(), True),  # the parent's flag (real rows: as in `items`)
    T.StructField("attributes", T.StringType(), True),
    *PROVENANCE_FIELDS,
])
