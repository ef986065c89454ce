"""docs/ERRORS.md, the catalogue of bad inputs and faults, held to its tests.

The catalogue's rows each name the tests that prove them; the first tests here walk it (every
named test exists, a row that is not met yet names an xfail test and says so, and the exit
code of a row is the one its tests assert). The rest prove the rows no other file proves:
each asserts the one line the user sees, the exit code and that nothing was written that the
user did not ask for. Rows not met today are strict xfails written as the behaviour should
be; the catalogue says "xfail" next to them.

How the faults are made, with real components wherever one can show the fault:

- the ``ddbpipe`` command runs in this process through typer's runner (the real command and
  its exit codes; an exception it lets escape is added to stderr as the traceback a process
  would print), so a fault endpoint or a full disk can live in the test;
- AWS replying with an error (access denied, expired token, a table being deleted) comes from
  an HTTP endpoint served from a thread of the test (``serving``), answering as the service
  does or forwarding to DynamoDB Local / moto's S3 and changing one thing on the way;
- a full disk: no tmpfs can be mounted here, so ``full_disk`` makes every file opened for
  writing under one folder fail with ENOSPC, as a full filesystem does, once a given number
  of files fit. It catches ``open`` and ``os.fdopen``, through which ddbpipe opens every file
  it writes (the Parquet spool's ``tempfile.TemporaryFile`` aside); renames and new folders
  still succeed, as they mostly do on a full filesystem.

The secrets tests run failing jobs with a value planted in items and in the credentials,
collect every log record at DEBUG (ddbpipe's, botocore's, every other's; without pytest's
logging plugin, which ``-p no:logging`` turns off) and the command's output, and look for it.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import errno
import functools
import json
import logging
import os
import re
import tempfile
import threading
import traceback
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner

import ddbpipe
from ddbpipe import errors
from ddbpipe.cli.main import app
from ddbpipe.config import AwsOptions, ExportOptions
from ddbpipe.export_job import run_export
from ddbpipe.manifest import MANIFEST_KEY
from ddbpipe.retry import ManualClock
from ddbpipe.shards import iter_shard_items
from ddbpipe.storage.local import TEMP_PREFIX
from tests.exports import flip_middle_byte, plain_items, shard_paths
from tools.services import free_port

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "docs" / "ERRORS.md"
TESTS = ROOT / "tests"


# --- the catalogue walks itself -----------------------------------------------------------------

#: A test named in the catalogue: ``tests/test_x.py::test_name`` or ``...::test_name[param]``.
TEST_REF = re.compile(r"tests/(test_\w+)\.py::(test_\w+)(?:\[([^\]\s]+)\])?")
#: Exit codes a test asserts of the ``ddbpipe`` command it runs.
ASSERTED_EXIT = re.compile(
    r"(?:returncode|exit_code|\.code|\.wait\([^)]*\))\s*==\s*(\d+)"
    r"|assert_refused\(\s*\w+\s*,\s*(\d+)"
)
EXIT_CODES = {0, 1, 2, 130}
#: This file's tests that check the catalogue itself rather than prove a row of it.
WALKERS = {"test_every_row_names_tests_that_exist", "test_every_row_exits_as_its_tests_assert",
           "test_every_test_of_this_file_proves_a_row"}


@dataclass(frozen=True)
class Row:
    line: int
    cells: dict[str, str]
    tests: list[tuple[str, str, str | None]]

    @property
    def exit(self) -> str:
        return self.cells["Exit"]

    def __str__(self) -> str:
        return f"docs/ERRORS.md line {self.line}: {self.cells['Bad input or fault']}"


def catalogue_rows() -> list[Row]:
    """The rows of every table of docs/ERRORS.md whose header has a "Proved by" column."""
    rows: list[Row] = []
    header: list[str] | None = None
    for number, text in enumerate(CATALOGUE.read_text(encoding="utf-8").splitlines(), 1):
        if not text.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in text.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if "Proved by" not in header or set(text) <= set("|-: "):
            continue
        assert len(cells) == len(header), f"line {number}: {len(cells)} cells, not {len(header)}"
        named = dict(zip(header, cells, strict=True))
        refs = [(module, name, param or None)
                for module, name, param in TEST_REF.findall(named["Proved by"])]
        rows.append(Row(number, named, refs))
    return rows


@dataclass(frozen=True)
class NamedTest:
    """One module-level test function, as its file spells it (decorators included)."""

    node: ast.FunctionDef
    text: str

    @functools.cached_property
    def param_ids(self) -> dict[str, str] | None:
        """Its parametrization's ids, each with the source of its case; None when the ids
        are not spelled out in the source (then they are not checked)."""
        found: dict[str, str] = {}
        for decorator in self.node.decorator_list:
            if not (isinstance(decorator, ast.Call) and _dotted(decorator.func).endswith(
                    "parametrize")):
                continue
            names = ast.literal_eval(decorator.args[0]) if decorator.args else None
            values = decorator.args[1] if len(decorator.args) > 1 else None
            ids = next((k.value for k in decorator.keywords if k.arg == "ids"), None)
            cases = values.elts if isinstance(values, ast.List | ast.Tuple) else None
            if ids is not None and isinstance(ids, ast.List) and cases is not None:
                for id_node, case in zip(ids.elts, cases, strict=True):
                    found[ast.literal_eval(id_node)] = ast.unparse(case)
            elif cases is not None:
                for case in cases:
                    case_id = _param_id(case, single=isinstance(names, str) and "," not in names)
                    if case_id is None:
                        return None
                    found[case_id] = ast.unparse(case)
            else:
                return None
        return found

    def is_xfail(self, param: str | None) -> bool:
        marks = [ast.unparse(d) for d in self.node.decorator_list]
        if any("xfail" in mark and "parametrize" not in mark for mark in marks):
            return True
        ids = self.param_ids or {}
        return param is not None and "xfail" in ids.get(param, "")

    def exit_codes(self) -> set[int]:
        """The exit codes this test asserts of the command, or else those that the ddbpipe
        errors it expects mean to the command (ConfigError 2, any other 1: cli/output.py)."""
        asserted = {int(a or b) for a, b in ASSERTED_EXIT.findall(self.text)}
        if asserted:
            return asserted
        raised = {getattr(errors, name) for name in re.findall(r"\b(\w+Error)\b", self.text)
                  if isinstance(getattr(errors, name, None), type)}
        return {2 if issubclass(kind, errors.ConfigError) else 1 for kind in raised
                if issubclass(kind, errors.DdbpipeError)}


def _dotted(node: ast.expr) -> str:
    return ast.unparse(node)


def _param_id(case: ast.expr, *, single: bool) -> str | None:
    if isinstance(case, ast.Call) and _dotted(case.func).endswith("param"):
        given = next((k.value for k in case.keywords if k.arg == "id"), None)
        return ast.literal_eval(given) if given is not None else None
    if single and isinstance(case, ast.Constant) and isinstance(case.value, str):
        return case.value
    return None


@functools.cache
def sources_of(module: str) -> dict[str, NamedTest]:
    """The test functions of ``tests/<module>.py`` (none if there is no such file)."""
    path = TESTS / f"{module}.py"
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tests = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            # With its decorators: the parametrization and the marks are part of the test.
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            tests[node.name] = NamedTest(node, "\n".join(lines[first - 1 : node.end_lineno]))
    return tests


def test_every_row_names_tests_that_exist() -> None:
    rows = catalogue_rows()
    assert len(rows) >= 40, f"only {len(rows)} rows found in {CATALOGUE}"
    for row in rows:
        assert row.exit in {str(code) for code in EXIT_CODES}, f"{row}: exit {row.exit!r}"
        assert row.cells["Message (one line, on stderr)"], f"{row}: no message"
        assert row.cells["Written"], f"{row}: does not say what was written"
        assert row.tests, f"{row}: names no test (tests/test_x.py::test_name)"
        xfails = []
        for module, name, param in row.tests:
            test = sources_of(module).get(name)
            assert test is not None, f"{row}: tests/{module}.py has no test {name}"
            ids = test.param_ids
            if param is not None and ids is not None:
                assert param in ids, f"{row}: {name} has no case [{param}] (it has {list(ids)})"
            xfails.append(test.is_xfail(param))
        # A row met only by an xfail test is not met yet, and says so; a fixed one says not.
        says_xfail = "xfail" in row.cells["Proved by"]
        assert says_xfail == any(xfails), (
            f"{row}: says {'xfail' if says_xfail else 'nothing'}, its tests xfail: {xfails}")


def test_every_row_exits_as_its_tests_assert() -> None:
    checked = 0
    for row in catalogue_rows():
        codes: set[int] = set()
        for module, name, _ in row.tests:
            test = sources_of(module).get(name)  # a missing one is the other walker's to say
            codes |= test.exit_codes() if test is not None else set()
        if codes:  # e.g. a verify report or a dead letter: the test asserts no exit code
            assert int(row.exit) in codes, f"{row}: exit {row.exit}, its tests assert {codes}"
            checked += 1
    assert checked >= 35


def test_every_test_of_this_file_proves_a_row() -> None:
    named = {name for row in catalogue_rows() for module, name, _ in row.tests
             if module == "test_errors_catalogue"}
    mine = set(sources_of("test_errors_catalogue")) - WALKERS
    assert mine - named == set(), "tests of this file that no row of docs/ERRORS.md names"


# --- running the command ------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


def ddbpipe_cli(*args: str, env: dict[str, str | None] | None = None) -> Run:
    """Run ``ddbpipe ARGS`` in this process: exit code, stdout, stderr. An exception the
    command lets escape is put on stderr as the traceback a real process would print."""
    result = CliRunner().invoke(app, list(args), env=env)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return Run(result.exit_code, result.stdout, stderr)


def assert_refused(run: Run, code: int, *words: str) -> str:
    """The command exited with ``code`` and said exactly one line on stderr: an error
    naming ``words``. Returns the line."""
    assert run.code == code, run.stderr
    assert len(run.lines) == 1, run.stderr
    (line,) = run.lines
    assert line.startswith("error: "), line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    return line


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An import's checkpoint and dead-letter files default to the current directory.
    monkeypatch.chdir(tmp_path)


def write_loose(path: Path, items: list[dict[str, Any]]) -> Path:
    """A folder's NDJSON file of ``{"Item": ...}`` lines; returns the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(msgspec.json.encode({"Item": item}) + b"\n" for item in items))
    return path.parent


def count(client: Any, table: str) -> int:
    return int(client.scan(TableName=table, Select="COUNT")["Count"])


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


# --- an endpoint of the test's own --------------------------------------------------------------

Reply = tuple[int, dict[str, str], bytes]
#: (method, path, headers, body) -> the reply.
Answer = Callable[[str, str, dict[str, str], bytes], Reply]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = dict(self.headers.items())
        self.server.seen.append((self.command, self.path, self.headers.get("X-Amz-Target", "")))
        status, reply_headers, payload = self.server.answer(self.command, self.path, headers, body)
        self.send_response(status)
        for name, value in reply_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer: Answer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.seen: list[tuple[str, str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


@contextmanager
def serving(answer: Answer) -> Iterator[_Server]:
    """``answer`` served on a loopback port from a thread; ``.url``, and ``.seen`` (method,
    path, X-Amz-Target) of each request."""
    server = _Server(answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
               "expect"}


def forward(upstream: str, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
    """The request, sent on to ``upstream`` as it came; its reply."""
    request = urllib.request.Request(
        upstream.rstrip("/") + path, data=body if method in ("PUT", "POST") else None,
        method=method,
        headers={k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            status, reply_headers, payload = reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as refused:
        status, reply_headers, payload = refused.code, refused.headers, refused.read()
    kept = {k: v for k, v in reply_headers.items() if k.lower() not in _HOP_BY_HOP}
    return status, kept, payload


def dynamodb_error(code: str, message: str) -> Reply:
    """DynamoDB's error reply: HTTP 400, its JSON, and the x-amz-crc32 of the body."""
    body = json.dumps({"__type": f"com.amazon.coral.service#{code}", "message": message}).encode()
    return 400, {"Content-Type": "application/x-amz-json-1.0",
                 "x-amz-crc32": str(zlib.crc32(body))}, body


def s3_error(status: int, code: str, message: str) -> Reply:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>test</RequestId></Error>").encode()
    return status, {"Content-Type": "application/xml"}, body


def denying_dynamodb(code: str, message: str) -> Answer:
    """DynamoDB refusing every call with ``code``."""
    return lambda *request: dynamodb_error(code, message)


def s3_denying_writes(upstream: str) -> Answer:
    """S3 (moto at ``upstream``) for credentials that may list and read but not write: every
    PUT, POST and DELETE is refused with 403 AccessDenied, as S3 does."""

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if method in ("PUT", "POST", "DELETE"):
            return s3_error(403, "AccessDenied", "Access Denied")
        return forward(upstream, method, path, headers, body)

    return answer


def s3_owned_by(upstream: str, owner: str) -> Answer:
    """S3 (moto at ``upstream``) whose buckets belong to account ``owner``: a request that
    names another expected bucket owner is refused with 403 AccessDenied, as S3 does."""

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        expected = next((value for name, value in headers.items()
                         if name.lower() == "x-amz-expected-bucket-owner"), owner)
        if expected != owner:
            return s3_error(403, "AccessDenied", "Access Denied")
        return forward(upstream, method, path, headers, body)

    return answer


def dynamodb_deleting(upstream: str, table: str) -> Answer:
    """DynamoDB Local at ``upstream``, except that DescribeTable says ``table`` is DELETING,
    as DynamoDB does from DeleteTable until the table is gone."""

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        status, reply_headers, payload = forward(upstream, method, path, headers, body)
        target = next((v for k, v in headers.items() if k.lower() == "x-amz-target"), "")
        if target.endswith(".DescribeTable") and status == 200:
            document = json.loads(payload)
            if document["Table"]["TableName"] == table:
                document["Table"]["TableStatus"] = "DELETING"
                payload = json.dumps(document).encode()
                reply_headers = {**reply_headers, "x-amz-crc32": str(zlib.crc32(payload))}
        return status, reply_headers, payload

    return answer


ACCESS_DENIED = ("User: arn:aws:sts::111122223333:assumed-role/restore/x is not authorized to "
                 "perform: dynamodb:DescribeTable on resource: arn:aws:dynamodb:us-east-1:"
                 "111122223333:table/orders because no identity-based policy allows it")
EXPIRED = "The security token included in the request is expired"
OWNER, STRANGER = "111122223333", "999999999999"


# --- a full disk --------------------------------------------------------------------------------


class _NoSpaceLeft:
    """A file opened for writing on a full filesystem: every write fails with ENOSPC."""

    def __init__(self, file: Any, path: str) -> None:
        self._file, self._path = file, path

    def write(self, data: Any) -> int:
        if len(memoryview(data)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)
        return 0

    def __enter__(self) -> _NoSpaceLeft:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


@contextmanager
def full_disk(folder: Path, *, files_that_fit: int = 0) -> Iterator[None]:
    """While inside: the filesystem under ``folder`` fills up after ``files_that_fit`` files
    were written; from then on every write to a file opened under it fails with ENOSPC."""
    root = str(folder.resolve()) + os.sep
    room = [files_that_fit]
    lock = threading.Lock()
    real_open, real_fdopen = builtins.open, os.fdopen

    def on_the_disk(file: Any, path: str, mode: str) -> Any:
        if not any(flag in mode for flag in "wxa+") or not os.path.realpath(path).startswith(root):
            return file
        with lock:
            if room[0] > 0:
                room[0] -= 1
                return file
        return _NoSpaceLeft(file, path)

    def opening(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        opened = real_open(file, mode, *args, **kwargs)
        if isinstance(file, str | bytes | os.PathLike):
            return on_the_disk(opened, os.fsdecode(file), mode)
        return opened

    def fd_opening(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        opened = real_fdopen(fd, mode, *args, **kwargs)
        return on_the_disk(opened, os.readlink(f"/proc/self/fd/{fd}"), mode)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "open", opening)
        patch.setattr(os, "fdopen", fd_opening)
        yield


# --- usage --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--segmnts", "3"], "--segmnts"),
        (["--segments", "0"], "--segments"),
        (["--format"], "--format"),
    ],
    ids=["unknown-option", "value-out-of-range", "option-without-value"],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    dest = tmp_path / "dest"
    run = ddbpipe_cli("export", "orders", str(dest), *args)
    assert_refused(run, 2, says, "--help")
    assert not dest.exists()


# --- AWS settings and access --------------------------------------------------------------------


def test_no_region_is_bad_usage_and_writes_nothing(tmp_path: Path) -> None:
    no_region: dict[str, str | None] = {"AWS_REGION": None, "AWS_DEFAULT_REGION": None}
    dest = tmp_path / "dest"
    for where in (str(dest), "s3://ddbpipe-bucket/orders"):
        run = ddbpipe_cli("export", "orders", where, env=no_region)
        assert_refused(run, 2, "no AWS region", "--region", "AWS_REGION")
    assert not dest.exists()


def test_dynamodb_access_denied_names_the_permission_and_writes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    loose = write_loose(tmp_path / "loose" / "items.json", plain_items(3))
    with serving(denying_dynamodb("AccessDeniedException", ACCESS_DENIED)) as dynamodb:
        export = ddbpipe_cli("export", "orders", str(dest), "--endpoint-url", dynamodb.url)
        imported = ddbpipe_cli("import", str(loose), "orders", "--endpoint-url", dynamodb.url)
    assert_refused(export, 1, "access denied", "need dynamodb:DescribeTable", "--profile")
    assert_refused(imported, 1, "access denied", "need dynamodb:DescribeTable", "--profile")
    assert not dest.exists()
    assert [target for _, _, target in dynamodb.seen] == ["DynamoDB_20120810.DescribeTable"] * 2
    assert files_under(tmp_path) == [loose / "items.json"]  # no checkpoint, no dead letters


def test_s3_access_denied_names_the_permission_and_writes_nothing(
    endpoint: str, make_table: Any, s3_server: Any, s3_client: Any, s3_bucket: str
) -> None:
    table = make_table(plain_items(20))
    with serving(s3_denying_writes(s3_server.endpoint)) as s3:
        run = ddbpipe_cli("export", table, f"s3://{s3_bucket}/orders", "--endpoint-url",
                          endpoint, "--s3-endpoint-url", s3.url)
    assert_refused(run, 1, "access denied", "need s3:PutObject", f"bucket '{s3_bucket}'",
                   "--profile")
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0


def test_a_bucket_of_another_owner_is_refused_naming_the_expected_owner(
    endpoint: str, make_table: Any, s3_server: Any, s3_client: Any, s3_bucket: str
) -> None:
    table = make_table(plain_items(5))
    with serving(s3_owned_by(s3_server.endpoint, OWNER)) as s3:
        run = ddbpipe_cli("export", table, f"s3://{s3_bucket}/orders", "--expected-bucket-owner",
                          STRANGER, "--endpoint-url", endpoint, "--s3-endpoint-url", s3.url)
    assert_refused(run, 1, f"bucket '{s3_bucket}'", "--expected-bucket-owner", STRANGER)
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0


def test_expired_credentials_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with serving(denying_dynamodb("ExpiredTokenException", EXPIRED)) as dynamodb:
        run = ddbpipe_cli("export", "orders", str(dest), "--endpoint-url", dynamodb.url)
    line = assert_refused(run, 1, "credentials", "--profile")
    assert "expired" in line.lower()
    assert not dest.exists()


def test_an_unreachable_endpoint_is_one_line_after_the_retries_and_writes_nothing(
    tmp_path: Path,
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    dest = tmp_path / "dest"
    options = ExportOptions(table="orders", destination=str(dest),
                            aws=AwsOptions(endpoint_url=nowhere))
    clock = ManualClock()  # the retries back off on it: the test does not wait for them
    with pytest.raises(errors.ServiceUnavailableError) as caught:
        asyncio.run(run_export(options, clock=clock))
    message = str(caught.value)
    assert "\n" not in message and f"could not reach {nowhere}/" in message
    assert "check the network and the endpoint" in message and len(clock.sleeps) >= 2
    assert not dest.exists()


# --- tables -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["export", "import"])
def test_a_table_being_deleted_is_refused_before_anything_is_written(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any, command: str
) -> None:
    table = make_table(plain_items(20) if command == "export" else [])
    dest = tmp_path / "dest"
    loose = write_loose(tmp_path / "loose" / "items.json", plain_items(5))
    with serving(dynamodb_deleting(endpoint, table)) as dynamodb:
        if command == "export":
            run = ddbpipe_cli("export", table, str(dest), "--endpoint-url", dynamodb.url)
        else:
            run = ddbpipe_cli("import", str(loose), table, "--endpoint-url", dynamodb.url)
    assert_refused(run, 1, f"'{table}'", "being deleted")
    assert not dest.exists()
    assert count(dynamodb_client, table) == (20 if command == "export" else 0)
    assert files_under(tmp_path) == [loose / "items.json"]


# --- destinations and the local disk ------------------------------------------------------------


def test_a_full_disk_at_dest_is_one_line_and_the_export_resumes_once_there_is_room(
    tmp_path: Path, endpoint: str, make_table: Any
) -> None:
    table = make_table(plain_items(400))
    dest = tmp_path / "disk" / "export"
    # Room for the plan and one segment's checkpoint: the disk fills up mid-export.
    with full_disk(tmp_path / "disk", files_that_fit=2):
        run = ddbpipe_cli("export", table, str(dest), "--segments", "4", "--endpoint-url",
                          endpoint)
    assert_refused(run, 1, f"cannot write {dest}/", "No space left on device", "free space")
    assert not (dest / MANIFEST_KEY).exists()
    assert not [path for path in files_under(dest) if path.name.startswith(TEMP_PREFIX)]
    # What it wrote is an unfinished export, which continues once there is room.
    resumed = ddbpipe_cli("export", table, str(dest), "--resume", "--json", "--endpoint-url",
                          endpoint)
    assert resumed.code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["items"] == 400
    assert ddbpipe.verify_export(str(dest), read_data=True).ok


def test_a_full_temporary_folder_is_one_line_naming_it(
    tmp_path: Path, endpoint: str, make_table: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = make_table(plain_items(50))
    spool = tmp_path / "disk" / "tmp"
    spool.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # TMPDIR, as the process read it
    dest = tmp_path / "export"
    with full_disk(tmp_path / "disk"):
        run = ddbpipe_cli("export", table, str(dest), "--endpoint-url", endpoint)
    assert_refused(run, 1, str(spool), "No space left on device", "TMPDIR")
    assert not (dest / MANIFEST_KEY).exists()
    assert list(spool.iterdir()) == []


# --- what an import reads -----------------------------------------------------------------------


def test_an_unlisted_file_stops_the_import_before_anything_is_written(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any
) -> None:
    dest = tmp_path / "export"
    ddbpipe.export_table(make_table(plain_items(30)), str(dest), segments=2,
                         endpoint_url=endpoint)
    # A shard of another export dropped in beside the listed ones.
    stray = dest / "data" / "00007-000000.json.zst"
    stray.write_bytes(shard_paths(dest)[0].read_bytes())
    target = make_table()
    run = ddbpipe_cli("import", str(dest), target, "--endpoint-url", endpoint)
    assert_refused(run, 1, "data/00007-000000.json.zst", "not listed in ddbpipe-manifest.json")
    assert count(dynamodb_client, target) == 0


def test_a_shard_changed_after_verify_stops_the_import_before_any_of_its_items(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any
) -> None:
    dest = tmp_path / "export"
    ddbpipe.export_table(make_table(plain_items(400)), str(dest), segments=4,
                         endpoint_url=endpoint)
    assert ddbpipe.verify_export(str(dest), read_data=True).ok
    changed = shard_paths(dest)[1]
    its_keys = {msgspec.json.decode(raw)["pk"]["S"]
                for raw in iter_shard_items([changed.read_bytes()], changed.name)}
    flip_middle_byte(changed)  # same size: only its checksum can tell
    target = make_table()
    run = ddbpipe_cli("import", str(dest), target, "--endpoint-url", endpoint)
    assert_refused(run, 1, f"data/{changed.name}", "SHA-256 does not match", "changed")
    written = {item["pk"]["S"] for item in dynamodb_client.scan(TableName=target)["Items"]}
    assert its_keys and not written & its_keys
    assert len(written) < 400  # shards read before it may be written: --resume continues


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"S": "leaf"}
    for _ in range(levels):
        value = {"L": [value]}
    return value


def test_items_dynamodb_would_refuse_are_dead_lettered_and_the_rest_written(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any
) -> None:
    refused = {
        "empty-set": ({"pk": {"S": "empty-set"}, "tags": {"SS": []}}, "set may not be empty"),
        "long-key": ({"pk": {"S": "k" * 2049}}, "over DynamoDB's 2,048 limit"),
        "empty-key": ({"pk": {"S": ""}}, "is empty"),
        "39-digits": ({"pk": {"S": "39-digits"}, "n": {"N": "1" * 39}}, "38 digits"),
        "33-levels": ({"pk": {"S": "33-levels"}, "deep": nested(33)}, "Nesting Levels"),
    }
    good = plain_items(10)
    folder = write_loose(tmp_path / "loose" / "items.json",
                         [*good[:5], *(item for item, _ in refused.values()), *good[5:]])
    target = make_table()
    run = ddbpipe_cli("import", str(folder), target, "--json", "--endpoint-url", endpoint)
    assert_refused(run, 1, "5 items could not be written", "with the reasons")
    summary = json.loads(run.stdout)
    assert (summary["items_read"], summary["items_written"], summary["items_dead_lettered"]) == (
        15, 10, 5)
    letters = [json.loads(line) for line in Path(summary["dead_letter"]).read_text().splitlines()]
    reasons = {json.dumps(letter["Item"], sort_keys=True): letter["reason"] for letter in letters}
    for item, says in refused.values():
        assert says in reasons[json.dumps(item, sort_keys=True)], reasons
    assert count(dynamodb_client, target) == 10


@pytest.fixture
def every_log() -> Iterator[list[str]]:
    """Every log record from here on, at DEBUG, of every logger (ddbpipe, botocore,
    aiobotocore, ...), formatted with its exception if any. A handler of its own, so it
    works without pytest's logging plugin."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    names = ["", "ddbpipe", "botocore", "aiobotocore", "aiohttp", "urllib3"]
    levels = {name: logging.getLogger(name).level for name in names}
    logging.getLogger().addHandler(handler)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logging.getLogger().removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def secret() -> str:
    return f"planted-{uuid.uuid4().hex}"


def assert_nowhere(
    secrets: list[str], run: Run, logs: list[str], *files: Path, loggers: tuple[str, ...] = ()
) -> None:
    """None of ``secrets`` is in the command's output, in a log line or in ``files``; the
    ``loggers`` named were heard (else the check of the logs would prove nothing)."""
    for name in loggers:
        assert any(line.startswith(f"{name} ") for line in logs), f"nothing logged by {name}"
    text = "\n".join([run.stdout, run.stderr, *logs])
    for planted in secrets:
        assert planted not in text, [line for line in text.splitlines() if planted in line][:3]
        for path in files:
            assert planted.encode() not in path.read_bytes(), path


def test_a_malformed_value_is_named_by_file_and_item_and_not_quoted(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any, every_log: list[str]
) -> None:
    planted = secret()
    folder = write_loose(tmp_path / "loose" / "items.json",
                         [{"pk": {"S": "a"}}, {"pk": {"S": "b"}, "price": {"N": planted}}])
    target = make_table()
    run = ddbpipe_cli("import", str(folder), target, "--endpoint-url", endpoint)
    assert_refused(run, 1, "items.json", "item 2", "number")
    assert_nowhere([planted], run, list(every_log), loggers=("ddbpipe.import_job",))
    assert count(dynamodb_client, target) == 0


# --- secrets stay out of messages and logs ------------------------------------------------------


def test_a_failing_import_keeps_item_values_and_keys_out_of_messages_and_logs(
    tmp_path: Path, endpoint: str, make_table: Any, dynamodb_client: Any, every_log: list[str]
) -> None:
    value, key = secret(), secret()
    # Bad items (one too big, one with an empty set): dead-lettered, the one place items go.
    folder = write_loose(tmp_path / "loose" / "items.json", [
        *plain_items(3),
        {"pk": {"S": key}, "note": {"S": value}, "blob": {"S": "x" * 420_000}},
        {"pk": {"S": f"{key}-2"}, "note": {"S": value}, "tags": {"SS": []}},
    ])
    # A key-schema mismatch: an export of a table of such items, into a table of other keys.
    source = make_table([{"pk": {"S": key}, "note": {"S": value}}])
    target, other_keys = make_table(), make_table(hash_key=("id", "N"))
    every_log.clear()  # the test's own boto3 calls, which botocore logs with the items
    export = tmp_path / "export"
    ddbpipe.export_table(source, str(export), segments=1, endpoint_url=endpoint)
    bad_items = ddbpipe_cli("import", str(folder), target, "--json", "--endpoint-url", endpoint)
    mismatch = ddbpipe_cli("import", str(export), other_keys, "--endpoint-url", endpoint)
    logs = list(every_log)
    assert_refused(bad_items, 1, "2 items could not be written")
    (dead_letter,) = tmp_path.glob("ddbpipe-import-*.dead-letter.jsonl")
    assert value.encode() in dead_letter.read_bytes() and key.encode() in dead_letter.read_bytes()
    assert_refused(mismatch, 1, "key schema mismatch")
    assert count(dynamodb_client, other_keys) == 0
    others = [path for path in files_under(tmp_path)
              if path != dead_letter and folder not in path.parents and export not in path.parents]
    for run in (bad_items, mismatch):
        assert_nowhere([value, key], run, logs, *others, loggers=("ddbpipe.import_job",))


@pytest.mark.parametrize(
    ("service", "planted_as"),
    [
        pytest.param("dynamodb-denied", ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
                     id="dynamodb-denied"),
        pytest.param("dynamodb-expired", ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
                     id="dynamodb-expired"),
        pytest.param("s3-denied", ("AWS_SECRET_ACCESS_KEY",), id="s3-denied-secret-key"),
        pytest.param("s3-denied", ("AWS_SESSION_TOKEN",), id="s3-denied-session-token"),
    ],
)
def test_a_failing_export_keeps_the_credentials_out_of_messages_and_logs(
    tmp_path: Path, endpoint: str, make_table: Any, s3_server: Any, s3_bucket: str,
    every_log: list[str], service: str, planted_as: tuple[str, ...],
) -> None:
    planted = {name: secret() for name in planted_as}
    env: dict[str, str | None] = dict(planted)
    if service.startswith("dynamodb"):
        code, message = (("AccessDeniedException", ACCESS_DENIED) if service.endswith("denied")
                         else ("ExpiredTokenException", EXPIRED))
        with serving(denying_dynamodb(code, message)) as dynamodb:
            run = ddbpipe_cli("export", "orders", str(tmp_path / "dest"), "--endpoint-url",
                              dynamodb.url, env=env)
    else:
        table = make_table(plain_items(5))
        with serving(s3_denying_writes(s3_server.endpoint)) as s3:
            run = ddbpipe_cli("export", table, f"s3://{s3_bucket}/orders", "--endpoint-url",
                              endpoint, "--s3-endpoint-url", s3.url, env=env)
    assert_refused(run, 1)
    # botocore resolved the credentials (and, for S3, logged each request it sent).
    heard = ("botocore.credentials",) + (("botocore.endpoint",) if service == "s3-denied" else ())
    assert_nowhere(list(planted.values()), run, every_log, *files_under(tmp_path), loggers=heard)
