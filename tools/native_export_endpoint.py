"""DynamoDB's point-in-time recovery and native export to S3, in front of DynamoDB Local.

DynamoDB Local answers UnknownOperationException to DescribeContinuousBackups,
UpdateContinuousBackups, ExportTableToPointInTime, DescribeExport and ListExports. This
loopback proxy (served from a background thread, like the capacity simulator) answers them in
DynamoDB's JSON 1.0 shapes and errors, and forwards everything else to DynamoDB Local
untouched. Exports are written with boto3 to ``s3_endpoint`` (moto's S3 server in the tests)
in AWS's layout (``native_export.py``).

Point in time, for real: while a table's recovery is on, every PutItem, DeleteItem,
UpdateItem, BatchWriteItem and TransactWriteItems to it that passes through this endpoint is
logged with the item's images before and after (strongly consistent GetItems around the
forwarded write, writes serialized); an export at time T is the table's current contents
(a Scan) with the writes after T undone. **Tests must write through this endpoint**: writes
made straight to DynamoDB Local, or with PartiQL, are not known, and so are in every export
made after them whatever its ExportTime.

Time comes from one ``clock`` (``ddbpipe.retry.Clock``; its ``time()``): the recovery window,
ExportTime, StartTime, the time of each logged write, and an export's progress. An export is
IN_PROGRESS until ``export_seconds`` have passed on the clock since it was requested; the
first DescribeExport or ListExports after that writes it (data taken when it was requested)
and reports it COMPLETED, or FAILED (e.g. ``S3NoSuchBucket``). ``latest_lag`` is how far
LatestRestorableDateTime trails now: 5 minutes in AWS, 0 by default here so a test can
export "now". Simplified: ExportFormat ION, INCREMENTAL_EXPORT and FilterSpecification are
refused (ValidationException); the recovery window and client tokens never expire; ListExports
is in request order.

Usage::

    with start_native_export_endpoint(dynamodb_local.endpoint, s3_server.endpoint) as ep:
        client = boto3.client("dynamodb", endpoint_url=ep.endpoint)
        client.update_continuous_backups(TableName=t, PointInTimeRecoverySpecification={
            "PointInTimeRecoveryEnabled": True})
        ...
"""

from __future__ import annotations

import asyncio
import re
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import boto3
import botocore.exceptions
import msgspec
from aiohttp import web

from ddbpipe.retry import Clock, SystemClock
from tools.loopback_server import HOP_BY_HOP, LoopbackServer, UpstreamReply, forward
from tools.native_export import (
    RECOVERY_PERIOD_DAYS,
    ApiError,
    ExportPlan,
    Item,
    PitrTable,
    WrittenExport,
    choice_parameter,
    member,
    new_export_id,
    page_start,
    page_token,
    partition_files,
    s3_failure,
    string_parameter,
    table_id,
    time_parameter,
    write_export,
    written_keys,
)

__all__ = ["NativeExportEndpoint", "start_native_export_endpoint"]

TARGET_PREFIX = "DynamoDB_20120810."
ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"
_TABLE_ARN = re.compile(
    r"^arn:(aws[a-z-]*):dynamodb:([a-z0-9-]+):(\d{12}):table/([A-Za-z0-9_.-]{3,255})$"
)
_WRITES = frozenset({"PutItem", "DeleteItem", "UpdateItem", "BatchWriteItem",
                     "TransactWriteItems"})
_SSE_HEADERS = {"AES256": "AES256", "KMS": "aws:kms"}
MAX_LIST_RESULTS = 25


def _json_reply(status: int, document: dict[str, Any]) -> web.Response:
    body = msgspec.json.encode(document)
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amz-crc32": str(zlib.crc32(body)),
               "x-amzn-RequestId": uuid.uuid4().hex.upper()}
    return web.Response(status=status, body=body, headers=headers)


def _relayed(reply: UpstreamReply) -> web.Response:
    return web.Response(status=reply.status, headers=reply.headers, body=reply.body)


def _decode(body: bytes) -> dict[str, Any] | None:
    try:
        document = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError:
        return None
    return document if isinstance(document, dict) else None


@dataclass
class _Export:
    plan: ExportPlan
    description: dict[str, Any]
    request: dict[str, Any]  # the parameters but ClientToken, for idempotency
    files: list[list[Item]]
    put_options: dict[str, str]
    due: float
    failure: tuple[str, str] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def summary(self) -> dict[str, Any]:
        return {name: self.description[name]
                for name in ("ExportArn", "ExportStatus", "ExportType")}


class _Handler:
    """The aiohttp handler: the five operations here, everything else to the backend."""

    def __init__(self, backend: str, s3_client: Any, clock: Clock, *, export_seconds: float,
                 latest_lag: float, items_per_file: int, partitions: int) -> None:
        self._backend = backend
        self._s3 = s3_client
        self._clock = clock
        self._export_seconds = export_seconds
        self._latest_lag = latest_lag
        self._items_per_file = items_per_file
        self._partitions = partitions
        self._tables: dict[str, PitrTable] = {}
        self._exports: dict[str, _Export] = {}
        self._tokens: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._write_lock: asyncio.Lock | None = None
        self._operations: dict[str, Callable[[dict[str, Any], dict[str, str]],
                                             Awaitable[dict[str, Any]]]] = {
            "DescribeContinuousBackups": self._describe_continuous_backups,
            "UpdateContinuousBackups": self._update_continuous_backups,
            "ExportTableToPointInTime": self._export_table,
            "DescribeExport": self._describe_export,
            "ListExports": self._list_exports,
        }

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._write_lock = asyncio.Lock()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        action = target.removeprefix(TARGET_PREFIX) if target.startswith(TARGET_PREFIX) else ""
        operation = self._operations.get(action) if request.method == "POST" else None
        if operation is not None:
            payload = _decode(body)
            try:
                if payload is None:
                    raise ApiError("SerializationException", "the body is not a JSON object")
                return _json_reply(200, await operation(payload, self._headers(request)))
            except ApiError as error:
                return _json_reply(400, {"__type": ERROR_PREFIX + error.code,
                                         "message": error.message})
        if request.method == "POST" and action in _WRITES:
            return await self._logged_write(action, request, body)
        reply = await self._forward(request, body)
        if action == "DeleteTable" and reply.status == 200:
            self._tables.pop(str(member(_decode(body), "TableName")), None)
        return _relayed(reply)

    # --- the backend ---------------------------------------------------------------------------

    async def _forward(self, request: web.Request, body: bytes) -> UpstreamReply:
        assert self._session is not None, "the endpoint is not started"
        return await forward(self._session, self._backend, request, body)

    @staticmethod
    def _headers(request: web.Request) -> dict[str, str]:
        """The client's headers (its credentials: DynamoDB Local checks only their syntax) for
        the endpoint's own calls to the backend, which answers them uncompressed."""
        dropped = HOP_BY_HOP | {"accept-encoding", "x-amz-target", "content-type"}
        headers = {name: value for name, value in request.headers.items()
                   if name.lower() not in dropped}
        headers["Accept-Encoding"] = "identity"
        return headers

    async def _call(self, action: str, payload: dict[str, Any],
                    headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        assert self._session is not None, "the endpoint is not started"
        headers = dict(headers, **{"X-Amz-Target": TARGET_PREFIX + action,
                                   "Content-Type": "application/x-amz-json-1.0"})
        async with self._session.post(self._backend + "/", data=msgspec.json.encode(payload),
                                      headers=headers) as reply:
            return reply.status, _decode(await reply.read()) or {}

    async def _get_item(self, table: PitrTable, key: Item,
                        headers: dict[str, str]) -> Item | None:
        status, reply = await self._call(
            "GetItem", {"TableName": table.name, "Key": key, "ConsistentRead": True}, headers)
        item = reply.get("Item") if status == 200 else None
        return item if isinstance(item, dict) else None

    async def _scan(self, table: str, headers: dict[str, str]) -> list[Item]:
        items: list[Item] = []
        payload: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        while True:
            status, reply = await self._call("Scan", payload, headers)
            if status != 200:
                raise ApiError(str(reply.get("__type", "InternalServerError")).rpartition("#")[2],
                               str(reply.get("message", reply.get("Message", ""))))
            items += reply.get("Items") or []
            if not reply.get("LastEvaluatedKey"):
                return items
            payload["ExclusiveStartKey"] = reply["LastEvaluatedKey"]

    async def _table(self, name: str, headers: dict[str, str]) -> PitrTable:
        """The table's recovery state; TableNotFoundException unless the backend has it. A
        table created anew under the same name starts with recovery off, as in DynamoDB."""
        status, reply = await self._call("DescribeTable", {"TableName": name}, headers)
        if status != 200:
            code = str(reply.get("__type", "")).rpartition("#")[2]
            if code == "ResourceNotFoundException":
                raise ApiError("TableNotFoundException", f"Table not found: {name}")
            raise ApiError(code or "InternalServerError", str(reply.get("message", "")))
        described = reply["Table"]
        created = described.get("CreationDateTime")
        state = self._tables.get(name)
        if state is None or state.created != created:
            key_names = tuple(element["AttributeName"] for element in described["KeySchema"])
            state = PitrTable(name, key_names, created, table_id(described["TableArn"], created))
            self._tables[name] = state
        return state

    # --- continuous backups --------------------------------------------------------------------

    def _backups_description(self, table: PitrTable) -> dict[str, Any]:
        recovery: dict[str, Any] = {"PointInTimeRecoveryStatus": "DISABLED"}
        if table.enabled:
            now = self._clock.time()
            recovery = {"PointInTimeRecoveryStatus": "ENABLED",
                        "EarliestRestorableDateTime": table.earliest(now),
                        "LatestRestorableDateTime": now - self._latest_lag,
                        "RecoveryPeriodInDays": table.recovery_days}
        return {"ContinuousBackupsDescription": {
            "ContinuousBackupsStatus": "ENABLED", "PointInTimeRecoveryDescription": recovery}}

    async def _describe_continuous_backups(
        self, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        name = string_parameter(payload, "TableName", required=True)
        assert name is not None
        return self._backups_description(await self._table(name, headers))

    async def _update_continuous_backups(
        self, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        name = string_parameter(payload, "TableName", required=True)
        specification = payload.get("PointInTimeRecoverySpecification")
        enabled = member(specification, "PointInTimeRecoveryEnabled")
        days = member(specification, "RecoveryPeriodInDays")
        days = RECOVERY_PERIOD_DAYS if days is None else days
        if not isinstance(enabled, bool):
            raise ApiError("ValidationException", "1 validation error detected: Value at "
                           "'pointInTimeRecoverySpecification.pointInTimeRecoveryEnabled' "
                           "failed to satisfy constraint: Member must not be null")
        if not isinstance(days, int) or not 1 <= days <= RECOVERY_PERIOD_DAYS:
            raise ApiError("ValidationException", f"RecoveryPeriodInDays must be between 1 "
                           f"and {RECOVERY_PERIOD_DAYS}, not {days!r}")
        assert name is not None
        table = await self._table(name, headers)
        assert self._write_lock is not None
        async with self._write_lock:  # not while a logged write is half done
            if enabled:
                table.enable(self._clock.time(), days)
            else:
                table.disable()
        return self._backups_description(table)

    # --- logged writes -------------------------------------------------------------------------

    def _recovering(self, name: str) -> PitrTable | None:
        table = self._tables.get(name)
        return table if table is not None and table.enabled else None

    async def _logged_write(self, action: str, request: web.Request,
                            body: bytes) -> web.StreamResponse:
        targets = written_keys(action, _decode(body), self._recovering)
        if not targets:
            return _relayed(await self._forward(request, body))
        headers = self._headers(request)
        assert self._write_lock is not None
        async with self._write_lock:
            olds = await asyncio.gather(*(self._get_item(t, k, headers) for t, k in targets))
            reply = await self._forward(request, body)
            news = await asyncio.gather(*(self._get_item(t, k, headers) for t, k in targets))
            now = self._clock.time()
            for (table, _), old, new in zip(targets, olds, news, strict=True):
                if table.enabled:
                    table.record(now, old, new)
        return _relayed(reply)

    # --- exports -------------------------------------------------------------------------------

    async def _export_table(
        self, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        table_arn = string_parameter(payload, "TableArn", required=True)
        bucket = string_parameter(payload, "S3Bucket", required=True)
        prefix = string_parameter(payload, "S3Prefix")
        owner = string_parameter(payload, "S3BucketOwner")
        kms_key = string_parameter(payload, "S3SseKmsKeyId")
        sse = choice_parameter(payload, "S3SseAlgorithm", ("AES256", "KMS"), "AES256")
        export_format = choice_parameter(payload, "ExportFormat", ("DYNAMODB_JSON", "ION"),
                                         "DYNAMODB_JSON")
        export_type = choice_parameter(payload, "ExportType",
                                       ("FULL_EXPORT", "INCREMENTAL_EXPORT"), "FULL_EXPORT")
        export_time = time_parameter(payload, "ExportTime")
        token = string_parameter(payload, "ClientToken")
        assert table_arn is not None and bucket is not None
        match = _TABLE_ARN.match(table_arn)
        if match is None:
            raise ApiError("ValidationException", f"Invalid TableArn: {table_arn}")
        if export_format != "DYNAMODB_JSON":
            raise ApiError("ValidationException", f"ExportFormat {export_format} is not "
                           "supported by this endpoint: export DYNAMODB_JSON")
        if export_type != "FULL_EXPORT":
            raise ApiError("ValidationException", f"ExportType {export_type} is not supported "
                           "by this endpoint")
        if payload.get("FilterSpecification") is not None:
            raise ApiError("ValidationException", "FilterSpecification is not supported by this "
                           "endpoint")
        request = {name: value for name, value in payload.items() if name != "ClientToken"}
        if token is not None and token in self._tokens:
            earlier = self._exports[self._tokens[token]]
            if earlier.request != request:
                raise ApiError("ExportConflictException", f"Export with client token {token} "
                               "already exists with different parameters")
            return {"ExportDescription": dict(earlier.description)}
        _, region, account, name = match.group(1, 2, 3, 4)
        table = await self._table(name, headers)
        if not table.enabled:
            raise ApiError("PointInTimeRecoveryUnavailableException",
                           f"Point in time recovery is not enabled for table '{name}'")
        now = self._clock.time()
        earliest, latest = table.earliest(now), now - self._latest_lag
        if export_time is not None and not earliest <= export_time <= latest:
            raise ApiError("InvalidExportTimeException", f"ExportTime {export_time} is outside "
                           f"the point in time recovery window [{earliest}, {latest}]")
        at = now if export_time is None else export_time
        assert self._write_lock is not None
        async with self._write_lock:  # no logged write between the Scan and the history
            items = table.state_at(await self._scan(name, headers), at)
        export_id = new_export_id(now)
        partition = match.group(1)
        plan = ExportPlan(
            export_arn=f"arn:{partition}:dynamodb:{region}:{account}:table/{name}/export/"
                       f"{export_id}",
            export_id=export_id, table_arn=table_arn, table_id=table.table_id, bucket=bucket,
            s3_prefix=prefix, sse_algorithm=sse, sse_kms_key_id=kms_key, start_time=now,
            end_time=now + self._export_seconds, export_time=at,
        )
        description: dict[str, Any] = {
            "ExportArn": plan.export_arn, "ExportStatus": "IN_PROGRESS", "StartTime": now,
            "TableArn": table_arn, "TableId": table.table_id, "ExportTime": at,
            "S3Bucket": bucket, "S3SseAlgorithm": sse, "ExportFormat": export_format,
            "ExportType": export_type,
        }
        optional = {"ClientToken": token, "S3Prefix": prefix, "S3BucketOwner": owner,
                    "S3SseKmsKeyId": kms_key}
        description.update({k: v for k, v in optional.items() if v is not None})
        put_options = {"ServerSideEncryption": _SSE_HEADERS[sse]}
        if kms_key is not None:
            put_options["SSEKMSKeyId"] = kms_key
        if owner is not None:
            put_options["ExpectedBucketOwner"] = owner
        files = partition_files(items, table.key_names[0], partitions=self._partitions,
                                items_per_file=self._items_per_file)
        export = _Export(plan, description, request, files, put_options, due=plan.end_time)
        try:
            await asyncio.to_thread(self._put, export, plan.base + "_started", b"")
        except botocore.exceptions.ClientError as error:
            export.failure = s3_failure(error.response)
        self._exports[plan.export_arn] = export
        if token is not None:
            self._tokens[token] = plan.export_arn
        return {"ExportDescription": dict(description)}

    def _put(self, export: _Export, key: str, data: bytes) -> str:
        reply = self._s3.put_object(Bucket=export.plan.bucket, Key=key, Body=data,
                                    **export.put_options)
        return str(reply.get("ETag", "")).strip('"')

    async def _settle(self, export: _Export) -> None:
        """Write the export once its time has come (once), and say how it went."""
        async with export.lock:
            if export.description["ExportStatus"] != "IN_PROGRESS":
                return
            if self._clock.time() < export.due:
                return
            written: WrittenExport | None = None
            if export.failure is None:
                try:
                    written = await asyncio.to_thread(
                        write_export, lambda key, data: self._put(export, key, data),
                        export.plan, export.files)
                except botocore.exceptions.ClientError as error:
                    export.failure = s3_failure(error.response)
            export.files = []
            done = export.description
            done["EndTime"] = export.plan.end_time
            if written is not None:
                done.update(ExportStatus="COMPLETED", ExportManifest=export.plan.manifest_key,
                            ItemCount=written.item_count,
                            BilledSizeBytes=written.billed_size_bytes)
            else:
                assert export.failure is not None
                code, message = export.failure
                done.update(ExportStatus="FAILED", FailureCode=code, FailureMessage=message)

    async def _describe_export(
        self, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        arn = string_parameter(payload, "ExportArn", required=True)
        export = self._exports.get(str(arn))
        if export is None:
            raise ApiError("ExportNotFoundException", f"Export not found: {arn}")
        await self._settle(export)
        return {"ExportDescription": dict(export.description)}

    async def _list_exports(
        self, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        table_arn = string_parameter(payload, "TableArn")
        limit = payload.get("MaxResults", MAX_LIST_RESULTS)
        if isinstance(limit, bool) or not isinstance(limit, int) or not (
            1 <= limit <= MAX_LIST_RESULTS
        ):
            raise ApiError("ValidationException", f"1 validation error detected: Value "
                           f"'{limit}' at 'maxResults' failed to satisfy constraint: Member "
                           f"must have value between 1 and {MAX_LIST_RESULTS}")
        chosen = [export for export in self._exports.values()
                  if table_arn is None or export.plan.table_arn == table_arn]
        start = page_start(string_parameter(payload, "NextToken"), len(chosen))
        page = chosen[start : start + limit]
        for export in page:
            await self._settle(export)
        reply: dict[str, Any] = {"ExportSummaries": [export.summary() for export in page]}
        if start + limit < len(chosen):
            reply["NextToken"] = page_token(start + limit)
        return reply


class NativeExportEndpoint(LoopbackServer):
    """The running endpoint (see the module docstring); ``endpoint`` is its URL.

    ``clock``: where time comes from (``SystemClock`` by default). ``export_seconds``: how
    long an export stays IN_PROGRESS. ``latest_lag``: how far LatestRestorableDateTime trails
    now (AWS: 300). ``items_per_file``: the most items a data file holds. ``partitions``: how
    many partitions the exported table has; each writes at least one data file, an empty one
    for an empty partition. ``s3_region``: the region of the boto3 client that writes exports.
    """

    def __init__(
        self, dynamodb_endpoint: str, s3_endpoint: str, *, clock: Clock | None = None,
        export_seconds: float = 0.5, latest_lag: float = 0.0, items_per_file: int = 1000,
        partitions: int = 1, s3_region: str = "us-east-1",
    ) -> None:
        if items_per_file < 1 or partitions < 1:
            raise ValueError("items_per_file and partitions must be at least 1")
        self.clock: Clock = clock or SystemClock()
        s3_client = boto3.client("s3", endpoint_url=s3_endpoint, region_name=s3_region)
        self._handler = _Handler(
            dynamodb_endpoint.rstrip("/"), s3_client, self.clock, export_seconds=export_seconds,
            latest_lag=latest_lag, items_per_file=items_per_file, partitions=partitions,
        )
        # Room for a 16 MB BatchWriteItem, DynamoDB's own limit.
        super().__init__(self._handler, name="native-export-endpoint",
                         client_max_size=20 * 1024 * 1024)


def start_native_export_endpoint(
    dynamodb_endpoint: str, s3_endpoint: str, *, clock: Clock | None = None,
    export_seconds: float = 0.5, latest_lag: float = 0.0, items_per_file: int = 1000,
    partitions: int = 1, s3_region: str = "us-east-1",
) -> NativeExportEndpoint:
    """Serve a ``NativeExportEndpoint`` in front of ``dynamodb_endpoint`` (DynamoDB Local),
    writing exports to ``s3_endpoint``."""
    return NativeExportEndpoint(
        dynamodb_endpoint, s3_endpoint, clock=clock, export_seconds=export_seconds,
        latest_lag=latest_lag, items_per_file=items_per_file, partitions=partitions,
        s3_region=s3_region,
    ).start()
