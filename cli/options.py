"""Options several commands share, defined once: where and as whom they call AWS, and --json.

``main.py`` and ``ops.py`` both use them; ``ops.py`` cannot import ``main.py`` (see its
docstring), so they live here.
"""

from __future__ import annotations

from typing import Annotated

import typer

Region = Annotated[str | None, typer.Option(help="AWS region (default: AWS_REGION or profile).")]
Profile = Annotated[str | None, typer.Option(help="Named AWS profile (default: AWS_PROFILE).")]
EndpointUrl = Annotated[
    str | None,
    typer.Option(help="DynamoDB endpoint, e.g. http://localhost:8000 for DynamoDB Local."),
]
S3EndpointUrl = Annotated[
    str | None, typer.Option(help="S3 endpoint for s3:// paths (MinIO, moto, ...).")
]
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print one JSON summary object on stdout at the end.")
]
ExpectedBucketOwner = Annotated[
    str | None,
    typer.Option(help="AWS account id that must own the S3 bucket: every S3 call says so, and "
                 "S3 refuses (403) a bucket that changed hands.", metavar="ACCOUNT"),
]
PointInTime = Annotated[
    str | None,
    typer.Option(
        "--point-in-time", metavar="TIME",
        help="Export the table as it was at TIME ('latest', or ISO 8601 like "
        "2026-12-01T09:30:00Z, UTC unless it says), consistently: DynamoDB exports it from "
        "point-in-time recovery (which must be on; no read capacity used) and ddbpipe converts "
        "that export. Can take many minutes before the first item.",
    ),
]
Staging = Annotated[
    str | None,
    typer.Option(
        metavar="S3URL",
        help="With --point-in-time: where DynamoDB writes its own export before ddbpipe "
        "converts it, removed after (default: under DEST's _ddbpipe-state/; needed when DEST "
        "is a local directory).",
    ),
]
