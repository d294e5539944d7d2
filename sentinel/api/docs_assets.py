"""The docs page's static files, shipped in the package and served from memory.

A fixed allow-list maps each public name to a packaged file (Swagger UI's pinned bundle, its
licences, and the page's own script and style), so no client input ever reaches the filesystem.
Files are read once, when `DocsAssets` is built. Answers carry a strong ``ETag`` (the content's
sha256), honour ``If-None-Match`` with 304, and ``Cache-Control: public, max-age=86400`` (a day:
the names are not content-hashed, so an upgrade must not stay cached for long); ``nosniff`` keeps
browsers to the declared type. Assets are public: they hold no secret and the sign-in page needs
its stylesheet before any key is given.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from importlib import resources

from sentinel.api.responses import RawResponse

SWAGGER_UI_VERSION = "5.35.0"
CACHE_CONTROL = b"public, max-age=86400"
_JS = "text/javascript; charset=utf-8"
_CSS = "text/css; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"

# public name -> (file under sentinel/api/static, content type)
FILES: dict[str, tuple[str, str]] = {
    "swagger-ui-bundle.js": ("swagger-ui/swagger-ui-bundle.js", _JS),
    "swagger-ui.css": ("swagger-ui/swagger-ui.css", _CSS),
    "swagger-ui-LICENSE.txt": ("swagger-ui/LICENSE", _TEXT),
    "swagger-ui-NOTICE.txt": ("swagger-ui/NOTICE", _TEXT),
    "swagger-ui-bundle.js.LICENSE.txt": ("swagger-ui/swagger-ui-bundle.js.LICENSE.txt", _TEXT),
    "docs.js": ("docs/docs.js", _JS),
    "docs.css": ("docs/docs.css", _CSS),
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One file ready to send."""

    body: bytes
    content_type: bytes
    etag: bytes
    integrity: str  # Subresource Integrity value, e.g. "sha384-..."


class DocsAssets:
    """The allow-listed files (`files`: public name -> (path under sentinel/api/static, content
    type); the docs page's by default), loaded from the installed package."""

    def __init__(self, files: dict[str, tuple[str, str]] | None = None) -> None:
        root = resources.files("sentinel.api").joinpath("static")
        self._assets: dict[str, Asset] = {}
        for name, (relative, content_type) in (FILES if files is None else files).items():
            body = root.joinpath(relative).read_bytes()
            etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
            integrity = "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode()
            self._assets[name] = Asset(body, content_type.encode(), etag, integrity)

    def names(self) -> list[str]:
        """The public names, as served under ``/native/docs/assets/``."""
        return list(self._assets)

    def integrity(self, name: str) -> str:
        """The ``integrity`` attribute value for a page tag loading `name`."""
        return self._assets[name].integrity

    def response(self, name: str, if_none_match: str | None) -> RawResponse | None:
        """The answer for `name` (304 when the client's copy is current), None when unknown."""
        asset = self._assets.get(name)
        if asset is None:
            return None
        headers = [
            (b"etag", asset.etag),
            (b"cache-control", CACHE_CONTROL),
            (b"x-content-type-options", b"nosniff"),
        ]
        if if_none_match is not None and asset.etag.decode() in {t.strip() for t in if_none_match.split(",")}:
            return RawResponse(304, b"", headers)
        return RawResponse(200, asset.body, [(b"content-type", asset.content_type), *headers])
