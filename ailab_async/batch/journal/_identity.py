"""What makes two items, and two journals, the same.

:class:`ItemIdentity` (what an input *is*) and :func:`canonical_params` (its parameters as one
string) together with the operation form the journal's uniqueness key; :class:`JournalAccount`
says whose journal it is. The one place these rules live: the runner claims by them, and a
caller asking "what would a rerun do" looks up by them (:meth:`Journal.lookup`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from ...models import converter, key_fingerprint

if TYPE_CHECKING:
    from ...client import AILabClient

__all__ = ["ItemIdentity", "JournalAccount", "canonical_params"]


@attrs.frozen
class ItemIdentity:
    """What an input *is*, as a stable string: the journal's notion of "the same photo".

    >>> ItemIdentity.for_bytes(b"abc").key[:13]
    'sha256:ba7816'
    """

    key: str

    @classmethod
    def for_path(
        cls, path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
    ) -> ItemIdentity:
        """Identify a file by its path, size and modification time (``mtime_ns``).

        Cheap (one ``stat``, no read), and an edited file counts as a new item. With ``root``
        the path is taken relative to it, so a whole input tree that is moved or mounted
        elsewhere keeps its identities; ``path`` must then lie under ``root``. This call does
        blocking file-system I/O.
        """
        resolved = Path(path).resolve()
        info = resolved.stat()
        shown = (
            resolved.relative_to(Path(root).resolve()).as_posix()
            if root is not None
            else str(resolved)
        )
        return cls(f"path:{info.st_size}:{info.st_mtime_ns}:{shown}")

    @classmethod
    def for_bytes(cls, data: bytes) -> ItemIdentity:
        """Identify an input by a SHA-256 of its content, wherever it lives."""
        return cls(f"sha256:{hashlib.sha256(data).hexdigest()}")


def canonical_params(params: Mapping[str, object]) -> str:
    """The parameters as canonical JSON: sorted keys, no spaces, so equal maps compare equal.

    Values go through the shared converter first (enums, datetimes, attrs classes). Numbers
    are kept as given: ``1`` and ``1.0`` are different parameters, so pass them normalised.

    >>> canonical_params({"retouch_degree": 0.5, "whitening_degree": 1.0})
    '{"retouch_degree":0.5,"whitening_degree":1.0}'
    """
    return json.dumps(
        converter.unstructure(dict(params)),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


@attrs.frozen
class JournalAccount:
    """Whose journal it is: the API base URL and a fingerprint of the key (never the key).

    The fingerprint is the first 8 bytes (hex) of HMAC-SHA256 keyed by the API key over a
    fixed label: it tells two keys apart without revealing either.

    >>> JournalAccount.for_key("https://www.ailabapi.com", "k").base_url
    'https://www.ailabapi.com'
    """

    base_url: str
    key_fingerprint: str

    @classmethod
    def for_key(cls, base_url: str, api_key: str) -> JournalAccount:
        return cls(base_url.rstrip("/"), key_fingerprint(api_key))

    @classmethod
    def for_client(cls, client: AILabClient) -> JournalAccount:
        """The account a client calls: its base URL and its key's fingerprint."""
        return cls(client.base_url.rstrip("/"), client.key_fingerprint)
