"""Versioned generator artifacts in a models folder: ``<models>/<name>/<version>/``.

An artifact is a folder of files (weights, vocabulary, index arrays …) and a ``manifest.json``
saying what it is (``kind``, used to find its loader), how it was trained (``config``), on which
data (``trained_on``: table versions and run id), on which item vocabulary (``vocabulary_hash``),
how good it is (``fidelity``) and a ``content_hash`` over its files. Versions are ``v1``, ``v2`` …
in order of writing; a folder is written under a temporary name and renamed into place, so a
reader never sees half an artifact.

The driver broadcasts only an :class:`ArtifactRef` (a few strings); executors load the files
through :func:`recaug_spark.generators.runtime.load`, which checks the content hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from recaug_spark.paths import is_remote, local_path

MANIFEST = "manifest.json"
VOCABULARY = "vocabulary.json"
_VERSION = re.compile(r"^v(\d+)$")


class ArtifactError(RuntimeError):
    """A generator artifact is missing, corrupt or does not fit the data it is applied to."""


@dataclass(frozen=True)
class ArtifactRef:
    """What the driver ships to executors: where an artifact is and which content it must have."""

    name: str
    version: str
    path: str
    content_hash: str

    @property
    def tag(self) -> str:
        """``name@version``: the ``generator`` provenance column of the rows it writes."""
        return f"{self.name}@{self.version}"


def _local(models_dir: str | os.PathLike) -> Path:
    text = str(models_dir)
    if is_remote(text):
        raise ArtifactError(f"run.models {text!r}: generator artifacts live on a POSIX path every executor can read "
                            f"(a local folder, NFS or a FUSE mount of the object store), not a {text.split(':')[0]}:// URI")
    return Path(local_path(text)).expanduser()


def content_hash(folder: Path, names: Iterable[str]) -> str:
    """sha256 over the named files (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def vocabulary_hash(items: Iterable[str]) -> str:
    """Order-independent hash of a set of item ids."""
    digest = hashlib.sha256()
    for item in sorted(set(map(str, items))):
        digest.update(item.encode() + b"\n")
    return digest.hexdigest()[:16]


def _versions(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _VERSION.match(p.name)) and p.is_dir())


def save_artifact(models_dir, name: str, *, kind: str, files: dict[str, bytes], config: dict, trained_on: dict,
                  vocabulary: list[str] | None = None, fidelity: dict | None = None,
                  data_hash: str | None = None) -> ArtifactRef:
    """Write a new version of artifact ``name`` atomically and return its reference.

    ``data_hash`` (:func:`data_fingerprint` of the training data) lets :func:`reusable` find it again."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"artifact name {name!r}: use letters, digits, '_', '.', '-'")
    reserved = {MANIFEST, VOCABULARY} & set(files)
    if reserved:
        raise ValueError(f"file names {sorted(reserved)} are reserved for the artifact's own use")
    root = _local(models_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        payload = dict(files)
        if vocabulary is not None:
            payload[VOCABULARY] = json.dumps(list(vocabulary)).encode()
        for file_name, data in payload.items():
            (staging / file_name).write_bytes(data)
        manifest = {
            "name": name, "kind": kind, "config": config, "trained_on": trained_on,
            "vocabulary_hash": vocabulary_hash(vocabulary) if vocabulary is not None else None,
            "files": sorted(payload), "content_hash": content_hash(staging, payload),
            "fidelity": fidelity or {}, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "data_hash": data_hash,
        }
        while True:  # another writer may take a version number first: rename fails, try the next
            version = f"v{(_versions(root) or [0])[-1] + 1}"
            (staging / MANIFEST).write_text(json.dumps({**manifest, "version": version}, indent=2, sort_keys=True))
            try:
                staging.rename(root / version)
                break
            except OSError:
                if not (root / version).exists():
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ArtifactRef(name, version, str(root / version), manifest["content_hash"])


def data_fingerprint(*parts) -> str:
    """sha256 of the training data as the fitter sees it (Arrow arrays / tables, numpy arrays, strings,
    JSON-able values), with :data:`FIT_CODE_VERSION`: equal fingerprints mean the same training input
    for the same training code, whatever table version or Spark partitioning it came from."""
    import numpy as np
    import pyarrow as pa

    digest = hashlib.sha256(f"fit-code {FIT_CODE_VERSION}".encode())
    for part in parts:
        if isinstance(part, pa.Table):
            part = part.combine_chunks()
            for column in part.columns:
                _hash_arrow(digest, column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
        elif isinstance(part, (pa.Array, pa.ChunkedArray)):
            _hash_arrow(digest, part.combine_chunks() if isinstance(part, pa.ChunkedArray) else part)
        elif isinstance(part, np.ndarray):
            digest.update(f"{part.dtype}{part.shape}".encode() + np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()


def _hash_arrow(digest, array) -> None:
    """Feed an Arrow array's values (not its buffers: slicing and chunking must not matter) to ``digest``."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    batch = pa.record_batch([array], names=["v"])
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    digest.update(sink.getvalue().to_pybytes())


# Bumped whenever a change in the fitting code changes what a fit produces from the same data and
# config, so that artifacts of older code are not reused (:func:`reusable`).
FIT_CODE_VERSION = 2


def reusable(models_dir, name: str, config: dict, data_hash: str) -> ArtifactRef | None:
    """The newest intact version of ``name`` fitted with ``config`` on data of ``data_hash``, else None.

    Refitting it would give the same model (fits are deterministic), so the fit stage reuses it."""
    root = _local(models_dir) / name
    for number in reversed(_versions(root)):
        path = root / f"v{number}"
        try:
            written = _read_manifest(path)
            ref = ArtifactRef(written["name"], written["version"], str(path), written["content_hash"])
            if written.get("data_hash") == data_hash and written.get("config") == config:
                verify(ref)
                return ref
        except (ArtifactError, KeyError, OSError):
            continue  # a broken version is never reused; an older intact one may be
    return None


def latest(models_dir, name: str) -> ArtifactRef:
    """The newest version of artifact ``name``."""
    root = _local(models_dir) / name
    versions = _versions(root)
    if not versions:
        raise ArtifactError(f"no generator model {name!r} in {_local(models_dir)}: run `recaug fit` first "
                            f"(or set run.models to the folder that holds it)")
    return ref_of(root / f"v{versions[-1]}")


def ref_of(path) -> ArtifactRef:
    """The reference of the artifact folder ``path`` (from its manifest)."""
    written = _read_manifest(Path(path))
    return ArtifactRef(written["name"], written["version"], str(path), written["content_hash"])


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"generator artifact {path} is missing its {MANIFEST}: it is not an artifact, or it was "
                            f"deleted; run `recaug fit` again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"generator artifact {path}: corrupt {MANIFEST} ({error}); run `recaug fit` again") from None


def manifest(ref: ArtifactRef) -> dict:
    return _read_manifest(Path(ref.path))


def verify(ref: ArtifactRef) -> dict:
    """The manifest, after checking that the files on disk are the ones the reference names."""
    path = Path(ref.path)
    written = _read_manifest(path)
    missing = [name for name in written["files"] if not (path / name).is_file()]
    if missing:
        raise ArtifactError(f"generator artifact {ref.tag} at {path} lacks {missing}; run `recaug fit` again")
    actual = content_hash(path, written["files"])
    if actual != ref.content_hash or actual != written["content_hash"]:
        raise ArtifactError(f"generator artifact {ref.tag} at {path} is corrupt or was changed after it was written "
                            f"(content hash {actual[:12]}…, expected {ref.content_hash[:12]}…); run `recaug fit` again")
    return written


def read_vocabulary(ref: ArtifactRef) -> list[str]:
    path = Path(ref.path) / VOCABULARY
    if not path.is_file():
        raise ArtifactError(f"generator artifact {ref.tag} has no item vocabulary")
    return json.loads(path.read_text())


def check_vocabulary(ref: ArtifactRef, items: Iterable[str]) -> None:
    """Fail when the artifact was trained on another item vocabulary than ``items``."""
    written = manifest(ref)
    current = vocabulary_hash(items)
    if written.get("vocabulary_hash") != current:
        raise ArtifactError(
            f"generator {ref.tag} was trained on another item vocabulary (hash {written.get('vocabulary_hash')}, "
            f"trained on {written.get('trained_on')}) than the data it is applied to (hash {current}): "
            f"run `recaug fit` on the current tables")
