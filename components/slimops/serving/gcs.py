"""Download the model Vertex AI names with a ``gs://bucket/prefix`` ``AIP_STORAGE_URI`` into a fresh private
directory, once, at startup.

Vertex copies the model given at upload (``artifact_uri``) into a bucket the container's service account can read
and leaves the download to a custom container. The objects are untrusted names: every one is checked before
anything is written (no ``..``, no absolute or backslashed names, a size and a count cap), files are created
exclusively in a directory only this process made (so no symlink is ever followed), and any failure removes the
whole directory. Credentials are whatever ``google.auth.default`` finds (the endpoint's service account);
``STORAGE_EMULATOR_HOST`` points the client at an emulator, anonymously (the client library's own rule).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from slimops.errors import BadInput

MAX_BYTES_ENV = "SLIMOPS_MAX_DOWNLOAD_BYTES"
DEFAULT_MAX_BYTES = 8 * 1024**3  # a compressed model is far smaller; a bucket this big is the wrong prefix
MAX_OBJECTS = 10_000


def split_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ("bucket", "a/b/"); the prefix ends with '/' so ``a/b2`` is not part of it."""
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    if not bucket or any(c in bucket for c in "\\ \t\n?#"):
        raise BadInput(f"AIP_STORAGE_URI is {uri[:120]!r}; a Cloud Storage model location is gs://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def safe_relative(name: str, prefix: str) -> str:
    """The object's path under the download directory, or BadInput when its name could land anywhere else."""
    relative = name[len(prefix):]
    parts = relative.split("/")
    if ("\\" in relative or "\x00" in relative or relative.startswith("/") or ":" in parts[0]
            or any(part in ("", ".", "..") for part in parts)):
        raise BadInput(f"AIP_STORAGE_URI holds an object named {name[:120]!r}, which would be written outside the "
                       "model directory (names with '..', '.', '//', a leading '/' or '\\' are refused); upload the "
                       "model directory's files under plain relative names")
    return relative


def max_bytes(env=os.environ) -> int:
    text = env.get(MAX_BYTES_ENV)
    if not text:
        return DEFAULT_MAX_BYTES
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise BadInput(f"${MAX_BYTES_ENV} is {text[:40]!r}; give a positive number of bytes")
    return int(text)


def download_model(uri: str, env=os.environ) -> Path:
    """Download every object under ``uri`` into a new private temporary directory and return it (the caller
    removes it when serving ends)."""
    try:
        from google.api_core import exceptions as api_errors
        from google.auth import exceptions as auth_errors
        from google.cloud import storage
    except ImportError:
        raise BadInput(f"AIP_STORAGE_URI is {uri[:120]}, a Cloud Storage URI, and google-cloud-storage is not "
                       "installed: pip install 'slimops[gcs]' (the serving image built with SLIMOPS_IMAGE_EXTRAS "
                       "including gcs has it), or mount the bucket and give its path") from None
    bucket_name, prefix = split_uri(uri)
    limit = max_bytes(env)
    try:
        client = storage.Client()
        blobs = []
        for blob in client.list_blobs(bucket_name, prefix=prefix or None):
            if blob.name.endswith("/") and not blob.size:
                continue  # a console-made "folder" placeholder, not a file
            blobs.append((safe_relative(blob.name, prefix), blob))
            if len(blobs) > MAX_OBJECTS:
                raise BadInput(f"AIP_STORAGE_URI {uri[:120]} holds more than {MAX_OBJECTS} objects; point it at "
                               "the model directory itself")
        total = sum(blob.size or 0 for _, blob in blobs)
        if total > limit:
            raise BadInput(f"AIP_STORAGE_URI {uri[:120]} holds {total} bytes, over the {limit}-byte limit; point it "
                           f"at the model directory itself, or raise ${MAX_BYTES_ENV}")
        if not blobs:
            raise BadInput(f"AIP_STORAGE_URI {uri[:120]} holds no objects; upload the model directory there (the "
                           "artifact_uri given at model upload)")
        return _write_all(blobs, uri, limit)
    except (auth_errors.GoogleAuthError, api_errors.GoogleAPIError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BadInput(f"could not download AIP_STORAGE_URI {uri[:120]}: {first_line[:200]}; check the endpoint's "
                       "service account can read the bucket") from None


def _write_all(blobs, uri: str, limit: int) -> Path:
    root = Path(tempfile.mkdtemp(prefix="slimops-model-"))  # mode 0700, a name nobody else could have made
    try:
        written = 0
        for relative, blob in blobs:
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL: a fresh file, never through a link; two objects cannot claim one path.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as sink:
                blob.download_to_file(sink)
                written += sink.tell()
            if written > limit:  # the listing's sizes are checked first; this catches an object that grew
                raise BadInput(f"AIP_STORAGE_URI {uri[:120]} grew past the {limit}-byte limit while downloading; "
                               f"raise ${MAX_BYTES_ENV} or point it at the model directory itself")
        return root
    except OSError as err:  # e.g. objects "a" and "a/b": one path cannot be both a file and a folder
        shutil.rmtree(root, ignore_errors=True)
        raise BadInput(f"could not write AIP_STORAGE_URI {uri[:120]} to a local directory: {err.strerror or err} "
                       f"({err.filename}); the objects must form a directory tree") from None
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
