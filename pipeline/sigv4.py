"""AWS Signature Version 4 for DynamoDB's JSON POSTs, equal to botocore's ``SigV4Auth``.

botocore rebuilds a generic request and re-derives the signing key on every call (~50 us).
Here what is fixed per endpoint is prepared once, the keyed HMAC is cached until the UTC date
or the secret key changes, and the timestamp string until the second changes (~5 us a call).
``tests/test_signing.py`` checks the headers against botocore's for many endpoints, times,
regions and credentials, and on the wire against a server that verifies with botocore.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

import botocore.credentials
import botocore.utils

from .retry import Clock, SystemClock

__all__ = ["CONTENT_TYPE", "SigV4Signer"]

CONTENT_TYPE = "application/x-amz-json-1.0"
_SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class SigV4Signer:
    """Signs POSTs of a JSON body to one endpoint, for one region and service.

    The time comes from ``clock.time()`` (wall-clock seconds), so tests can fix the date.
    ``key_derivations`` counts how often the signing key was derived (the cache, observable).
    """

    def __init__(
        self, endpoint: str, region: str, service: str, *, clock: Clock | None = None
    ) -> None:
        self.region = region
        self.service = service
        self.clock: Clock = clock or SystemClock()
        self.key_derivations = 0
        path, host = canonical_target(endpoint)
        # The signed headers sort as content-type, host, x-amz-date, [x-amz-security-token],
        # x-amz-target; botocore signs exactly these (none is on its blacklist).
        self._request_head = f"POST\n{path}\n\ncontent-type:{CONTENT_TYPE}\nhost:{host}\n"
        self._key_for: tuple[str, str] | None = None
        self._hmac = hmac.new(b"", digestmod=hashlib.sha256)
        self._second = -1
        self._timestamp = ""

    def sign(
        self, credentials: botocore.credentials.ReadOnlyCredentials, target: str, body: bytes
    ) -> dict[str, str]:
        """The X-Amz-Target, Content-Type, X-Amz-Date, [X-Amz-Security-Token] and
        Authorization headers of a POST of ``body`` to the endpoint, as botocore would sign it."""
        timestamp = self._now()
        headers = {"X-Amz-Target": target, "Content-Type": CONTENT_TYPE, "X-Amz-Date": timestamp}
        if credentials.token:
            headers["X-Amz-Security-Token"] = credentials.token
        signed_names, canonical_request = self._canonical_request(
            timestamp, credentials.token, target, body
        )
        scope = f"{timestamp[:8]}/{self.region}/{self.service}/aws4_request"
        request_hash = _sha256_hex(canonical_request.encode())
        mac = self._keyed_hmac(credentials.secret_key, timestamp[:8])
        mac.update(f"AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n{request_hash}".encode())
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed_names}, Signature={mac.hexdigest()}"
        )
        return headers

    def _canonical_request(
        self, timestamp: str, token: str | None, target: str, body: bytes
    ) -> tuple[str, str]:
        # SigV4 trims header values and collapses inner whitespace; only these two can vary.
        lines = [self._request_head, f"x-amz-date:{timestamp}\n"]
        if token:
            lines.append(f"x-amz-security-token:{_trim_all(token)}\n")
            signed_names = "content-type;host;x-amz-date;x-amz-security-token;x-amz-target"
        else:
            signed_names = "content-type;host;x-amz-date;x-amz-target"
        lines.append(f"x-amz-target:{_trim_all(target)}\n\n{signed_names}\n{_sha256_hex(body)}")
        return signed_names, "".join(lines)

    def _now(self) -> str:
        # strftime costs a few microseconds; the string only changes once a second.
        second = int(self.clock.time())
        if second != self._second:
            moment = datetime.fromtimestamp(second, UTC)
            self._second, self._timestamp = second, moment.strftime(_SIGV4_TIMESTAMP)
        return self._timestamp

    def _keyed_hmac(self, secret_key: str, date_stamp: str) -> hmac.HMAC:
        # The key takes four HMACs and only changes with the day or the credentials; copying a
        # keyed HMAC also skips re-keying it for every request.
        if self._key_for != (secret_key, date_stamp):
            key = ("AWS4" + secret_key).encode()
            for part in (date_stamp, self.region, self.service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            self._hmac = hmac.new(key, digestmod=hashlib.sha256)
            self._key_for = (secret_key, date_stamp)
            self.key_derivations += 1
        return self._hmac.copy()


def canonical_target(endpoint: str) -> tuple[str, str]:
    """The canonical URI and the signed host of ``endpoint``, by botocore's rules: dot segments
    and repeated slashes removed, and the host lowercased, without user info or a default port,
    an IPv6 literal in brackets."""
    parts = urlsplit(endpoint)
    path = quote(botocore.utils.normalize_url_path(parts.path), safe="/~")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return path, host


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _trim_all(value: str) -> str:
    return " ".join(value.split())
