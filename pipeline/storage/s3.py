"""The S3 ``ObjectStore``: objects under ``s3://bucket/prefix``, through one aiobotocore client.

Retries. botocore's standard retry mode retries every S3 API call that failed for a reason
worth retrying (throttles such as SlowDown, 500/502/503/504 replies, connection errors and
timeouts), with its own jittered backoff, up to the store's ``RetryPolicy.max_attempts``
attempts in all (fewer when its per-client retry quota, as in every AWS SDK, is used up by
a run of failures). Each call is made once from here, and whatever it finally raises is
translated by ``aws.error_from_exception``. What botocore cannot do is resume a GetObject
body that drops mid-way (its call returned with the headers): ``iter_chunks``, and
``get_bytes`` which reads through it, then ask again from the byte reached, on the same ETag
(IfMatch: an object that changed meanwhile is refused), pacing those retries with
``retry.Attempts`` under the store's ``RetryPolicy`` and ``Clock``.

Expired credentials. botocore's standard mode does not retry ``ExpiredToken`` (it is neither
a transient nor a throttling code in ``botocore.retries.standard``), and retrying would not
help: its refreshable credentials renew themselves only near their own expiry time, so the
same client signs with the same expired token again. A call refused as expired is made once
more on a new client, whose credentials are resolved anew (``aws.is_expired_token``); the old
client stays open for the calls still running on it until the store closes. Expired again,
it is the ``CredentialsError`` of the map.

The client comes from ``client_factory``, which gives an async context manager yielding an
aiobotocore S3 client (``default_client_factory`` unless given), the way httpx takes a
transport: tests wrap the real client to drop a connection or to watch the calls.

Request parameters have one home each, so options to come touch one spot:

- every S3 API call goes through ``S3Store.request``, which fills in ``Bucket``; parameters
  of every call (an expected bucket owner) go there;
- every call that creates an object (PutObject, CreateMultipartUpload) goes through
  ``S3Store.create_object``; archive write options (SSE/KMS key, storage class, Object Lock
  mode and retain-until date, legal hold, checksum algorithm, tags) go there;
- the few S3 also wants on each UploadPart go into ``uploads._MultipartUpload._upload_part``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlencode

import botocore.exceptions as boto_errors
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore import xform_name

from .. import aws
from ..config import ArchiveOptions, AwsOptions
from ..errors import AccessDeniedError, ConfigError, DdbpipeError, StorageError
from ..retry import Attempts, Clock, RetryPolicy, SystemClock
from . import (
    DEFAULT_CHUNK_SIZE,
    ClosingStore,
    ObjectInfo,
    RestoreState,
    check_key,
    remove_quietly,
)
from .uploads import put_object, unquote_etag, upload_file

__all__ = ["DEFAULT_RETRY", "ClientFactory", "S3Store", "default_client_factory"]

log = logging.getLogger(__name__)

#: Makes an async context manager that yields an aiobotocore-like S3 client.
ClientFactory = Callable[[], AbstractAsyncContextManager[Any]]

#: ``max_attempts``: per S3 call (botocore's retries) and per stalled read; the delays pace
#: resumed reads only (botocore backs off by its own rules).
DEFAULT_RETRY = RetryPolicy(max_attempts=8, base_delay=0.25, max_delay=10.0)
#: File bodies held in memory at once per S3 store (each up to uploads.MULTIPART_THRESHOLD).
UPLOADS_IN_FLIGHT = 8


def default_client_factory(options: AwsOptions, max_attempts: int) -> ClientFactory:
    """aiobotocore S3 clients for ``options``, retrying each call up to ``max_attempts`` times.

    Profile, region and endpoint are resolved when a client is made (``aws.py``'s rules).
    """

    def create_client() -> AbstractAsyncContextManager[Any]:
        session = aws.session(options, AioSession)
        region = aws.region(options, session)
        endpoint = aws.s3_endpoint(options)
        config = AioConfig(
            # moto, MinIO and most S3-compatible servers need bucket-in-path addressing.
            s3={"addressing_style": "path"} if endpoint else None,
            # total_max_attempts counts the first attempt too, as RetryPolicy does.
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            # We send Content-MD5 ourselves; newer default checksums upset some servers.
            request_checksum_calculation="when_required",
            max_pool_connections=64,
            connect_timeout=10,
            read_timeout=60,
        )
        client: AbstractAsyncContextManager[Any] = session.create_client(
            "s3", region_name=region, endpoint_url=endpoint, config=config
        )
        return client

    return create_client


class S3Store(ClosingStore):
    """Objects under ``s3://bucket/prefix``; one client, made on first use, closed with us."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        aws: AwsOptions | None = None,
        *,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self.bucket: str | None = bucket
        self.bucket_name = bucket
        self.prefix = prefix
        self.aws = aws or AwsOptions()
        self.retry = retry or DEFAULT_RETRY
        self.clock: Clock = clock or SystemClock()
        self.client_factory = client_factory or default_client_factory(
            self.aws, self.retry.max_attempts
        )
        self.url = f"s3://{bucket}/{prefix.rstrip('/')}" if prefix else f"s3://{bucket}"
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._exit_stack = contextlib.AsyncExitStack()
        self._upload_slots = asyncio.Semaphore(UPLOADS_IN_FLIGHT)

    def root_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def where(self, key: str | None) -> str:
        """The object (or the store) as an s3:// URL, for messages."""
        return f"s3://{self.bucket_name}/{self.prefix}{key}" if key else self.url

    async def close(self) -> None:
        self._client = None
        await self._exit_stack.aclose()

    async def ensure_ready(self, *, for_write: bool, may_be_empty: bool = False) -> None:
        # One listing held to the prefix checks the bucket (missing, refused, of another
        # owner) and finds whether anything is there. Not HeadBucket: S3 authorises it as a
        # listing without a prefix, which a policy held to the prefix must refuse.
        page = await self.request("ListObjectsV2", None, Prefix=self.prefix, MaxKeys=1)
        if for_write or may_be_empty:
            return
        if not page.get("KeyCount"):
            raise StorageError(f"nothing at {self.url}: no objects under this prefix; check SOURCE")

    # -- objects -------------------------------------------------------------------------------

    async def check_archive(self, archive: ArchiveOptions) -> None:
        if archive.locks and not await self._object_lock_enabled():
            raise ConfigError(
                f"S3 bucket '{self.bucket_name}' does not have Object Lock enabled, so "
                f"{', '.join(f for f in archive.given if f in _LOCK_FLAGS)} cannot be applied: "
                "export to a bucket created with Object Lock enabled (or enable it on this "
                "one: versioning, then PutObjectLockConfiguration), or drop the lock options"
            )
        if archive.sse_kms_key_id is not None:
            await self._check_kms_key(archive.sse_kms_key_id)

    async def put_bytes(
        self, key: str, data: bytes, *, archive: ArchiveOptions | None = None
    ) -> ObjectInfo:
        return await put_object(self, key, data, _md5(data), archive)

    async def put_file(
        self,
        key: str,
        path: str,
        *,
        md5_hex: str | None = None,
        archive: ArchiveOptions | None = None,
    ) -> ObjectInfo:
        try:
            return await upload_file(
                self, check_key(key), path, md5_hex, self._upload_slots, archive
            )
        finally:
            remove_quietly(path)  # it is ours now, stored or not

    async def get_bytes(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks(key)])

    async def iter_chunks(
        self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """Stream the object; a body that drops mid-way resumes at the same byte, same version."""
        attempts = Attempts(self.retry, self.clock)
        reached, size, etag = 0, -1, ""
        while size < 0 or reached < size:
            reply = await self._get_object(key, reached, etag)
            if not etag:
                size, etag = reply["ContentLength"], reply["ETag"]
            try:
                async with reply["Body"] as body:
                    while chunk := await body.read(chunk_size):
                        reached += len(chunk)
                        attempts.succeeded()
                        yield chunk
                return
            except aws.NETWORK_ERRORS as exc:
                # Raises once the attempts are used up; otherwise waits, then we resume.
                await attempts.failed(self._error(exc, "GetObject", key))

    async def head(self, key: str) -> ObjectInfo | None:
        reply = await self.request(
            "HeadObject", key, none_if=("404", "NoSuchKey"), Key=self.root_key(key)
        )
        if reply is None:
            return None
        return ObjectInfo(
            key=key,
            size=reply["ContentLength"],
            etag=unquote_etag(reply["ETag"]),
            storage_class=reply.get("StorageClass") or "STANDARD",
            restore=_restore_state(reply.get("Restore")),
        )

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        infos: builtins.list[ObjectInfo] = []
        params: dict[str, Any] = {"Prefix": self.prefix + prefix}
        while True:
            page = await self.request("ListObjectsV2", prefix or None, **params)
            infos.extend(self._listed(item) for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            params["ContinuationToken"] = page["NextContinuationToken"]
        # Keys ending in '/' are console "folders", not objects of ours.
        return sorted((i for i in infos if not i.key.endswith("/")), key=lambda i: i.key)

    async def delete(self, key: str) -> None:
        await self.request("DeleteObject", key, Key=self.root_key(key))

    async def request_restore(self, key: str, *, days: int, tier: str) -> bool:
        reply = await self.request(
            "RestoreObject",
            key,
            none_if=("RestoreAlreadyInProgress",),
            Key=self.root_key(key),
            RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
        )
        return reply is not None

    def _listed(self, item: dict[str, Any]) -> ObjectInfo:
        key = item["Key"][len(self.prefix) :]
        return ObjectInfo(
            key=key,
            size=item["Size"],
            etag=unquote_etag(item["ETag"]),
            storage_class=item.get("StorageClass") or "STANDARD",
        )

    async def _get_object(self, key: str, offset: int, etag: str) -> dict[str, Any]:
        params: dict[str, Any] = {"Key": self.root_key(key)}
        if etag:  # a resumed read: only the version we started on will do
            params["IfMatch"] = etag
        if offset:
            params["Range"] = f"bytes={offset}-"
        reply: dict[str, Any] = await self.request("GetObject", key, **params)
        return reply

    # -- the one way out -----------------------------------------------------------------------

    async def create_object(
        self, action: str, key: str, archive: ArchiveOptions | None, **params: Any
    ) -> Any:
        """A call that creates the object ``key`` (PutObject, CreateMultipartUpload), kept as
        ``archive`` says."""
        return await self.request(
            action, key, Key=self.root_key(key), **object_params(archive), **params
        )

    async def request(
        self, action: str, key: str | None, *, none_if: tuple[str, ...] = (), **params: Any
    ) -> Any:
        """Make the S3 API call ``action`` (e.g. "PutObject") with ``params``, ``Bucket`` added.

        botocore retries it as it sees fit; a final failure raises a ddbpipe error naming
        ``key`` (or the store), except that the error codes in ``none_if`` return None.
        """
        if self.aws.expected_bucket_owner:
            # A bucket that changed hands is refused (403) instead of written or read.
            params["ExpectedBucketOwner"] = self.aws.expected_bucket_owner
        try:
            return await self._call_renewing(action, params)
        except boto_errors.ClientError as exc:
            if _code(exc) in none_if:
                return None
            raise self._error(exc, action, key) from exc
        except (boto_errors.BotoCoreError, *aws.NETWORK_ERRORS) as exc:
            raise self._error(exc, action, key) from exc

    async def _call_renewing(self, action: str, params: dict[str, Any]) -> Any:
        """The call; made once more on a new client if S3 said the credentials expired."""
        client = await self._get_client()
        try:
            return await self._call(client, action, params)
        except boto_errors.ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            call = aws.AwsCall("s3", action, resource=self.bucket_name)
            if not aws.is_expired_token(call, status, _code(exc)):
                raise
            await self._renew_client(client, call)
        return await self._call(await self._get_client(), action, params)

    async def _call(self, client: Any, action: str, params: dict[str, Any]) -> Any:
        return await getattr(client, xform_name(action))(Bucket=self.bucket_name, **params)

    async def _renew_client(self, expired: Any, call: aws.AwsCall) -> None:
        """A new client in place of ``expired`` (once for all the calls refused together)."""
        async with self._client_lock:
            if self._client is expired:
                log.info("the AWS credentials expired (%s); renewing them", call)
                self._client = await self._enter_client()

    async def _object_lock_enabled(self) -> bool:
        reply = await self.request(
            "GetObjectLockConfiguration", None, none_if=("ObjectLockConfigurationNotFoundError",)
        )
        configuration = (reply or {}).get("ObjectLockConfiguration") or {}
        return bool(configuration.get("ObjectLockEnabled") == "Enabled")

    async def _check_kms_key(self, key_id: str) -> None:
        """The key exists and these credentials may use it, as S3 will on every put: asking
        KMS for a data key is what S3 does on our behalf."""
        session = aws.session(self.aws, AioSession)
        region = aws.region(self.aws, session)
        endpoint = aws.kms_endpoint(self.aws)
        call = aws.AwsCall("kms", "GenerateDataKey", resource=key_id, region=region)
        try:
            async with session.create_client(
                "kms", region_name=region, endpoint_url=endpoint
            ) as kms:
                await kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
        except (boto_errors.ClientError, boto_errors.BotoCoreError, *aws.NETWORK_ERRORS) as exc:
            error = aws.error_from_exception(call, exc, endpoint or "AWS KMS")
            if isinstance(error, AccessDeniedError) or error.transient:
                raise error from exc
            raise ConfigError(
                f"KMS key {key_id!r} cannot encrypt this export in region {region} ({error}): "
                "check --sse-kms-key-id and --region"
            ) from exc

    def _error(self, exc: BaseException, action: str, key: str | None) -> DdbpipeError:
        call = aws.AwsCall("s3", action, resource=self.bucket_name, location=self.where(key))
        error = aws.error_from_exception(call, exc, aws.s3_endpoint(self.aws) or "AWS S3")
        owner = self.aws.expected_bucket_owner
        if owner and isinstance(error, AccessDeniedError):
            # S3 answers a bucket of another owner with the 403 of a missing permission.
            return AccessDeniedError(
                f"{error}, or the bucket is not owned by account {owner} "
                "(--expected-bucket-owner)",
                service=error.service, action=error.action, code=error.code,
                resource=error.resource)
        return error

    async def _get_client(self) -> Any:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await self._enter_client()
        return self._client

    async def _enter_client(self) -> Any:
        try:
            return await self._exit_stack.enter_async_context(self.client_factory())
        except ValueError as exc:  # botocore's word for a malformed endpoint URL
            raise ConfigError(
                f"cannot use S3 endpoint {aws.s3_endpoint(self.aws)!r} for {self.url}: "
                f"{aws.one_line(exc)}; check --endpoint-url / AWS_ENDPOINT_URL_S3"
            ) from exc


_LOCK_FLAGS = ("--object-lock-mode", "--retain-until", "--retain-for", "--legal-hold")


def object_params(archive: ArchiveOptions | None) -> dict[str, Any]:
    """The PutObject / CreateMultipartUpload parameters that keep an object as ``archive``
    says. Object Lock also needs an integrity header on each put: every put sends its
    Content-MD5 (see ``uploads``)."""
    if archive is None:
        return {}
    params: dict[str, Any] = {}
    if archive.sse is not None:
        params["ServerSideEncryption"] = archive.sse
    if archive.sse_kms_key_id is not None:
        params["SSEKMSKeyId"] = archive.sse_kms_key_id
    if archive.sse_bucket_key is not None:
        params["BucketKeyEnabled"] = archive.sse_bucket_key
    if archive.storage_class is not None:
        params["StorageClass"] = archive.storage_class
    if archive.object_lock_mode is not None and archive.retain_until is not None:
        params["ObjectLockMode"] = archive.object_lock_mode
        params["ObjectLockRetainUntilDate"] = archive.retain_until
    if archive.legal_hold:
        params["ObjectLockLegalHoldStatus"] = "ON"
    if archive.checksum_algorithm is not None:
        params["ChecksumAlgorithm"] = archive.checksum_algorithm
    if archive.tags:
        params["Tagging"] = urlencode(archive.tags)
    return params


def _restore_state(header: str | None) -> RestoreState | None:
    """S3's x-amz-restore header: ``ongoing-request="true"`` while a restore runs,
    ``ongoing-request="false", expiry-date="..."`` once the copy is readable."""
    if not header:
        return None
    return "in-progress" if 'ongoing-request="true"' in header else "restored"


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _code(exc: boto_errors.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
