"""Tune storage that every node of the cluster can use, checked before any trial starts.

Tune writes each trial's checkpoints to its storage path from the node the trial runs on, and
the driver reads them back. On a cluster whose nodes share no file system, a local path only
looks writable from another node (the worker creates the same path on its own disk), so a plain
write test would pass and the run would fail later. The check therefore goes through the
storage itself: the driver writes a random token, a tiny task pinned to every alive node must
read that token back and write a reply, and the driver must then read every reply.

Storage is a local or shared path, or a URI of any `pyarrow.fs` scheme (s3://, gs://, ...).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

PROBE_PREFIX = ".twostep-storage-probe-"
PROBE_TIMEOUT_S = 60.0
FIX = ("give --storage-path a directory that every node mounts (NFS, EFS, ...) or a bucket URI "
       "(s3://bucket/prefix, gs://bucket/prefix)")


class StorageError(RuntimeError):
    """Tune's storage cannot be used from some node of the cluster."""


def resolve_storage(storage: str) -> str:
    """A URI as it is; a path made absolute (Tune needs absolute paths)."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def _filesystem(storage: str):
    """(pyarrow filesystem, path inside it) for a path or URI."""
    import pyarrow.fs

    if "://" in storage:
        return pyarrow.fs.FileSystem.from_uri(storage)
    return pyarrow.fs.LocalFileSystem(), storage


def _write(storage: str, relative: str, data: bytes) -> None:
    fs, root = _filesystem(storage)
    path = f"{root.rstrip('/')}/{relative}"
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def _read(storage: str, relative: str) -> bytes:
    fs, root = _filesystem(storage)
    with fs.open_input_stream(f"{root.rstrip('/')}/{relative}") as stream:
        return stream.read()


def _remove(storage: str, relative: str) -> None:
    fs, root = _filesystem(storage)
    try:
        fs.delete_dir(f"{root.rstrip('/')}/{relative}")
    except (OSError, FileNotFoundError):
        pass


@ray.remote(num_cpus=0, max_retries=0)
def _probe_node(storage: str, probe: str, token: bytes, node_id: str) -> str | None:
    """On one node: read the driver's token, write this node's reply; None or what failed."""
    try:
        seen = _read(storage, f"{probe}/token")
    except Exception as err:  # noqa: BLE001 - any failure is the answer
        return f"cannot read from the storage ({type(err).__name__}: {err})"
    if seen != token:
        return "sees another storage than the driver (the probe token differs)"
    try:
        _write(storage, f"{probe}/{node_id}", token)
    except Exception as err:  # noqa: BLE001
        return f"cannot write to the storage ({type(err).__name__}: {err})"
    return None


def _node_name(node: dict) -> str:
    return f"{node.get('NodeManagerAddress', '?')} (node {node['NodeID'][:12]})"


def check_storage(storage: str, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """Check on every alive node that `storage` is the same readable, writable storage.

    Returns:
        The names of the nodes checked.

    Raises:
        StorageError: naming every node that cannot use it, and the fix.
    """
    probe = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    token = secrets.token_bytes(16)
    try:
        _write(storage, f"{probe}/token", token)
    except Exception as err:  # noqa: BLE001
        raise StorageError(f"Tune storage {storage} is not writable from the driver "
                           f"({type(err).__name__}: {err}); {FIX}") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    try:
        refs = [
            _probe_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node["NodeID"], soft=False)).remote(storage, probe, token, node["NodeID"])
            for node in nodes
        ]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        problems = []
        for node, ref in zip(nodes, refs, strict=True):
            if ref not in ready:
                problems.append(f"{_node_name(node)}: the probe task did not finish in {timeout_s:g} s")
                continue
            problem = ray.get(ref)
            if problem is None:
                try:
                    if _read(storage, f"{probe}/{node['NodeID']}") != token:
                        problem = "its reply differs from what it wrote"
                except Exception:  # noqa: BLE001
                    problem = "wrote its reply where the driver cannot see it (not shared storage)"
            if problem:
                problems.append(f"{_node_name(node)}: {problem}")
    finally:
        _remove(storage, probe)
    if problems:
        raise StorageError(f"Tune storage {storage} cannot be used by every node of the cluster:\n  "
                           + "\n  ".join(problems) + f"\nFix: {FIX}.")
    return [_node_name(n) for n in nodes]
