"""Who a teacher is, cheaply: what stores and generation folders record and check.

- a local model (HF folder or GGUF file, bundled ones included): a fingerprint over the
  config (``config.json``), every weight file's size and a hash of its first and last MiB
  (the safetensors/GGUF header and the tail of the data). Moving or renaming the folder keeps
  the identity; re-training or re-quantising changes it. Computed once per file version: the
  result is cached by resolved path, size and mtime, never a full read of a 100 GB model.
- a served model: ``base_url`` + the model name (+ the server's ``system_fingerprint`` when
  it sends one).

Each identity is a dict with ``kind``, a human ``name`` and a ``fingerprint``; two teachers
are the same when their fingerprints are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kdistill.models.bundled import BUNDLED, bundled_gguf_path, cache_root

_EDGE = 1 << 20  # bytes hashed at each end of a weight file
_WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:24]


def _file_edges(path: Path) -> str:
    """sha256 of a file's size, first and last MiB, cached by (path, size, mtime)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = cache_root() / "identity-cache.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(_EDGE))
        if st.st_size > _EDGE:
            fh.seek(max(st.st_size - _EDGE, _EDGE))
            h.update(fh.read(_EDGE))
    value = h.hexdigest()
    cache[key] = value
    try:
        from kdistill.files import atomic_write_json

        atomic_write_json(cache_file, cache)
    except Exception:  # a read-only cache only costs a re-hash next time
        pass
    return value


def local_model_identity(spec: str) -> dict:
    """Identity of a bundled name, a ``.gguf`` file, a local HF folder or a hub id (its
    cached snapshot, with the commit it holds)."""
    from kdistill.models.hub import looks_like_hub_id, snapshot_commit

    if spec in BUNDLED:
        path = bundled_gguf_path(spec)
        return {"kind": "local", "name": spec, "fingerprint": _digest(["gguf", _file_edges(path)])}
    path = Path(spec).expanduser()
    if path.is_file():
        return {"kind": "local", "name": spec, "fingerprint": _digest(["gguf", _file_edges(path)])}
    commit = None
    if not path.exists() and looks_like_hub_id(spec):
        from kdistill.models.hub import hub_snapshot

        path = hub_snapshot(spec)
        commit = snapshot_commit(path)
    config = path / "config.json"
    parts: list = [hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None]
    for pattern in _WEIGHT_GLOBS:
        for w in sorted(path.glob(pattern)):
            parts.append([w.name, _file_edges(w)])
    out = {"kind": "local", "name": spec, "fingerprint": _digest(parts)}
    if commit:
        out["hub_commit"] = commit
    return out


def served_identity(base_url: str, model: str, system_fingerprint: str | None = None) -> dict:
    url = base_url.rstrip("/")
    parts = [url, model, system_fingerprint]
    return {
        "kind": "served",
        "name": f"{model} at {url}",
        "fingerprint": _digest(parts),
        "system_fingerprint": system_fingerprint,
    }


def same_teacher(a: dict | None, b: dict | None) -> bool:
    return bool(a) and bool(b) and a.get("fingerprint") == b.get("fingerprint")


def describe(identity: dict | None) -> str:
    if not identity:
        return "an unrecorded teacher"
    return f"{identity.get('name')} (fingerprint {str(identity.get('fingerprint'))[:12]})"
