"""Where Serve replicas get the model series, on whichever node of the cluster they run.

`publish_series` runs where the app is built (`twostep serve`, `serve run`): it turns the
`series_dir` argument into a *series reference* (a plain dict, bound into every replica):

- a URI of any `pyarrow.fs` scheme (s3://, gs://, hdfs://, file://): every replica reads it;
- a directory: published by a small `SeriesPublisher` actor pinned to this node, which hands out
  the manifest, the profiles and the weights files as bytes. The directory may be one only this
  machine sees, or a shared file system.

`SeriesMirror` runs in each replica. When its node sees the directory with the very manifest
that was published (one machine, or a shared file system), it reads it in place. Otherwise it
keeps a local mirror, `<cache>/<manifest sha256>/`, filled on demand: each weights file is
fetched once per node, its sha256 checked against the manifest before it is kept (a mismatch is
refused there, naming the node), and reused by every replica of that node. Nothing is
unpickled: weights are safetensors, the manifest JSON.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import time
from pathlib import Path

from pipeline.atomic import write_bytes_atomic
from pipeline.checkpoint import file_sha256
from pipeline.profile_paths import SERIES_PROFILES
from pipeline.series import MANIFEST, Manifest, SeriesError, SeriesStore, graph_files, parse_manifest

NAMESPACE = "twostep"
CACHE_ENV = "TWOSTEP_CACHE_DIR"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_uri(location: str) -> bool:
    return "://" in location


def _uri_read(uri: str, relative: str) -> bytes | None:
    """A file under `uri`, or None if it does not exist."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    path = f"{root.rstrip('/')}/{relative}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _allowed(manifest: Manifest, relative: str) -> bool:
    return relative in (MANIFEST, *SERIES_PROFILES) or relative in {
        v.weights for v in manifest.variants} or relative in graph_files(manifest)


class SeriesPublisher:
    """Hands out the files of one series directory on its node (a Ray actor, see publish_series)."""

    def __init__(self, directory: str, manifest_sha256: str):
        self.directory = Path(directory)
        data = (self.directory / MANIFEST).read_bytes()
        if _sha256(data) != manifest_sha256:
            raise SeriesError(f"{self.directory}/{MANIFEST} changed while it was being published")
        self.manifest = parse_manifest(data, str(self.directory))
        self.manifest_bytes = data

    def read(self, relative: str) -> bytes | None:
        """A file of the series (manifest, profiles, listed weights), None if absent."""
        if relative == MANIFEST:
            return self.manifest_bytes
        if not _allowed(self.manifest, relative):
            raise SeriesError(f"{relative!r} is not a file of the published series")
        path = self.directory / relative
        return path.read_bytes() if path.is_file() else None

    def node(self) -> str:
        return socket.gethostname()


def _publisher_name(node_id: str, directory: str, manifest_sha256: str) -> str:
    key = _sha256(f"{node_id}|{directory}|{manifest_sha256}".encode())[:20]
    return f"twostep-series-{key}"


def publish_series(location: str, join_from_env: bool = False) -> dict:
    """The series reference for `location` (a directory on this machine, or a URI).

    A directory is published through a `SeriesPublisher` actor on this node. That needs a Ray
    session: the current one, or with `join_from_env` the cluster at `RAY_ADDRESS` (joined here:
    `serve run` builds the app before it connects); without one (only validating, or `serve run`
    about to start a local Ray) the reference reads the directory in place.

    Raises:
        SeriesError: no readable series at `location`.
    """
    if _is_uri(location):
        try:
            data = _uri_read(location, MANIFEST)
        except (OSError, ValueError) as err:
            raise SeriesError(f"cannot read the series at {location}: {err}") from err
        parse_manifest(data, location)
        return {"location": location, "manifest_sha256": _sha256(data), "publisher": None}
    directory = str(Path(location).expanduser().resolve())
    path = Path(directory) / MANIFEST
    data = path.read_bytes() if path.is_file() else None
    parse_manifest(data, directory)
    ref = {"location": directory, "manifest_sha256": _sha256(data), "publisher": None}
    import ray

    if join_from_env and not ray.is_initialized() and os.environ.get("RAY_ADDRESS"):
        # `serve run IMPORT_PATH` builds the app before it connects; join the cluster it will
        # use (Serve's own namespace, as `serve run` would), so the series can be published.
        ray.init(address=os.environ["RAY_ADDRESS"], namespace="serve")
    if not ray.is_initialized():
        return ref
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_id = ray.get_runtime_context().get_node_id()
    name = _publisher_name(node_id, directory, ref["manifest_sha256"])
    actor = ray.remote(SeriesPublisher).options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
        max_restarts=-1, max_concurrency=8,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(directory, ref["manifest_sha256"])
    ray.get(actor.node.remote())  # fails here, with the reason, if the actor cannot start
    return {**ref, "publisher": name}


def unpublish_series(ref: dict) -> None:
    """Stop the publisher of `ref`, if it has one (when its app is deleted)."""
    if not ref.get("publisher"):
        return
    import ray

    try:
        ray.kill(ray.get_actor(ref["publisher"], namespace=NAMESPACE), no_restart=True)
    except ValueError:  # already gone
        pass


def cache_root() -> Path:
    """`$TWOSTEP_CACHE_DIR`, else a directory of this user's under the temp dir (mode 0700,
    refused if another user owns it: nobody else may plant files a replica would trust)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = Path(tempfile.gettempdir()) / f"twostep-series-cache-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    info = root.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SeriesError(f"series cache {root} belongs to another user or is open to others; "
                          f"set {CACHE_ENV} to a directory of your own")
    return root


class SeriesMirror:
    """The series of a reference as a local `SeriesStore`, weights fetched and verified on demand."""

    def __init__(self, ref: dict, cache: str | os.PathLike | None = None):
        self.ref = ref
        self.node = socket.gethostname()
        self.fetches: list[dict] = []
        self._publisher = None
        location, wanted = ref["location"], ref["manifest_sha256"]
        local = None if _is_uri(location) else Path(location) / MANIFEST
        if local is not None and local.is_file() and _sha256(local.read_bytes()) == wanted:
            self.in_place = True
            self.store = SeriesStore.open(location)
            return
        self.in_place = False
        data = self._read(MANIFEST)
        if data is None or _sha256(data) != wanted:
            raise SeriesError(f"the series at {location} changed since it was published "
                              f"(manifest sha256 {wanted[:12]}...); redeploy the app")
        directory = Path(cache or cache_root()) / wanted
        (directory / "weights").mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(directory / MANIFEST, data)
        for name in SERIES_PROFILES:
            profile = self._read(name)
            if profile is not None:
                write_bytes_atomic(directory / name, profile)
            else:
                (directory / name).unlink(missing_ok=True)  # the series has none: keep none
        # the verified bytes, not what the file holds by the time it is read back
        self.store = SeriesStore(directory, parse_manifest(data, self.ref["location"]))

    @property
    def source(self) -> str:
        if self.in_place:
            return f"{self.ref['location']} (read in place)"
        via = f"publisher {self.ref['publisher']}" if self.ref.get("publisher") else "URI"
        return f"{self.ref['location']} via {via}, cached in {self.store.directory}"

    def _read(self, relative: str) -> bytes | None:
        if _is_uri(self.ref["location"]):
            return _uri_read(self.ref["location"], relative)
        if not self.ref.get("publisher"):
            raise SeriesError(f"the series directory {self.ref['location']} is not visible on node "
                              f"{self.node} and was not published: serve it with `twostep serve "
                              "--address`, set RAY_ADDRESS for `serve run`, or give a shared path "
                              "or a URI")
        import ray

        if self._publisher is None:
            try:
                self._publisher = ray.get_actor(self.ref["publisher"], namespace=NAMESPACE)
            except ValueError:
                raise SeriesError(f"the publisher of {self.ref['location']} is gone; "
                                  "redeploy the app") from None
        return ray.get(self._publisher.read.remote(relative))

    def ensure(self, variant_id: str) -> None:
        """Make the variant's weights present locally, verified against the manifest."""
        if self.in_place:
            return
        entry = self.store.get(variant_id)
        path = self.store.directory / entry.weights
        if path.is_file() and file_sha256(path) == entry.sha256:
            return
        start = time.perf_counter()
        data = self._read(entry.weights)
        if data is None:
            raise SeriesError(f"variant {variant_id}: {entry.weights} is missing at "
                              f"{self.ref['location']}")
        actual = _sha256(data)
        if actual != entry.sha256:
            raise SeriesError(f"variant {variant_id}: weights from {self.ref['location']} hash to "
                              f"{actual[:16]}..., the manifest says {entry.sha256[:16]}...; "
                              f"refused on node {self.node}")
        write_bytes_atomic(path, data)
        self.fetches.append({"variant": variant_id, "bytes": len(data),
                             "ms": (time.perf_counter() - start) * 1000.0})

    def graph_bytes(self, variant_id: str, split: str, part: str) -> bytes | None:
        """An exported ONNX graph of the variant (fetched and verified like the weights), or None."""
        record = self.store.graph_record(variant_id, split, part)
        if record is None or self.in_place:
            return self.store.graph_bytes(variant_id, split, part)
        path = self.store.directory / record.path
        if not (path.is_file() and file_sha256(path) == record.sha256):
            data = self._read(record.path)
            if data is None or _sha256(data) != record.sha256:
                raise SeriesError(f"variant {variant_id}: {record.path} from {self.ref['location']} "
                                  f"is missing or does not match its sha256; refused on node {self.node}")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data)
        return self.store.graph_bytes(variant_id, split, part)

    @property
    def manifest(self) -> Manifest:
        return self.store.manifest

    def load_model(self, variant_id: str):
        """`SeriesStore.load_model` after `ensure` (sha256 checked again on load)."""
        self.ensure(variant_id)
        return self.store.load_model(variant_id)
