"""The AWS boundary: as whom and where ddbpipe calls AWS, and what AWS's answers mean.

Resolution follows the AWS CLI, the same for every service:

- profile: ``--profile``, else ``AWS_PROFILE``; one that the config files lack is a
  ``ConfigError``;
- region: ``--region``, else ``AWS_REGION`` (which botocore itself ignores), else
  ``AWS_DEFAULT_REGION``, else the profile's; none at all is a ``ConfigError``, for S3 as for
  DynamoDB (a silently assumed region signs requests for the wrong place);
- endpoints: ``--endpoint-url`` / ``--s3-endpoint-url``, else ``AWS_ENDPOINT_URL_DYNAMODB`` /
  ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else AWS's own;
- credentials: botocore's chain (environment, config files, SSO, instance roles).

Errors: ``ERROR_CODES`` is the one table from AWS error codes, of DynamoDB and S3 alike, to
ddbpipe's error tree; where a reply has no code we know, its HTTP status decides.
``error_from_reply`` and ``error_from_exception`` build the one-line errors the user sees,
naming the call (``AwsCall``) and what to do; access denied names the IAM action to grant
from ``OPERATION_PERMISSIONS``, the one map from an API operation to its action (which
``iam_policy`` builds policies from too).

Logs: botocore logs each request at DEBUG with its headers, the session token and the
signature among them. A filter on its loggers, added at import, blanks them, so a program
that turns botocore's logging on gets no credential in its logs.

Expired credentials: refreshable credentials (roles, SSO) can expire mid-run before botocore
renews them (revoked sessions, clocks apart). A call refused as expired (``is_expired_token``)
gets the credentials renewed once (``fresh_credentials``: the profile's source asked again)
and is sent once more, by ``dynamo.py`` and ``storage/s3.py``; refused again (static
credentials that really expired), it is the ``CredentialsError`` of the map.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import botocore.credentials
import botocore.exceptions
import botocore.session

from .config import AwsOptions
from .errors import (
    AccessDeniedError,
    AwsRequestError,
    BucketNotFoundError,
    ConfigError,
    CredentialsError,
    DdbpipeError,
    ServiceUnavailableError,
    StorageError,
    TableNotFoundError,
    ThrottledError,
)

__all__ = [
    "ERROR_CODES",
    "EXPIRED_TOKEN_CODES",
    "NETWORK_ERRORS",
    "OPERATION_PERMISSIONS",
    "AwsCall",
    "credentials",
    "default_dynamodb_endpoint",
    "dynamodb_endpoint",
    "error_from_exception",
    "error_from_reply",
    "fresh_credentials",
    "hide_credentials",
    "is_expired_token",
    "kms_endpoint",
    "service_endpoint",
    "one_line",
    "region",
    "s3_endpoint",
    "session",
]

S = TypeVar("S", bound=botocore.session.Session)

#: AWS error codes, of both services, and what each means in ddbpipe's error tree.
ERROR_CODES: dict[str, type[DdbpipeError]] = {
    # Out of capacity, for now: back off and retry.
    "ProvisionedThroughputExceededException": ThrottledError,
    "ThrottlingException": ThrottledError,
    "Throttling": ThrottledError,
    "RequestLimitExceeded": ThrottledError,
    "SlowDown": ThrottledError,
    "TooManyRequestsException": ThrottledError,
    "RequestThrottled": ThrottledError,
    "RequestThrottledException": ThrottledError,
    # The service failed this time: retry.
    "InternalServerError": ServiceUnavailableError,
    "InternalFailure": ServiceUnavailableError,
    "InternalError": ServiceUnavailableError,
    "ServiceUnavailable": ServiceUnavailableError,
    "ServiceUnavailableException": ServiceUnavailableError,
    "RequestTimeout": ServiceUnavailableError,
    "RequestTimeoutException": ServiceUnavailableError,
    # The credentials are unknown to AWS, expired or malformed: the user must fix them.
    "UnrecognizedClientException": CredentialsError,
    "InvalidClientTokenId": CredentialsError,
    "InvalidAccessKeyId": CredentialsError,
    "InvalidSignatureException": CredentialsError,
    "SignatureDoesNotMatch": CredentialsError,
    "IncompleteSignatureException": CredentialsError,
    "MissingAuthenticationTokenException": CredentialsError,
    "ExpiredTokenException": CredentialsError,
    "ExpiredToken": CredentialsError,
    "InvalidToken": CredentialsError,
    "TokenRefreshRequired": CredentialsError,
    # Known credentials without the permission.
    "AccessDeniedException": AccessDeniedError,
    "AccessDenied": AccessDeniedError,
    "UnauthorizedOperation": AccessDeniedError,
    "AllAccessDisabled": AccessDeniedError,
    # Not there.
    "ResourceNotFoundException": TableNotFoundError,
    "NoSuchBucket": BucketNotFoundError,
    "NoSuchKey": StorageError,
    "NotFound": StorageError,
    "NoSuchUpload": StorageError,
    # A conditional read found another version of the object.
    "PreconditionFailed": StorageError,
    # An archived object (GLACIER, DEEP_ARCHIVE) read before it was restored.
    "InvalidObjectState": StorageError,
}

#: Codes that say the credentials expired: renew them once and send the call again.
EXPIRED_TOKEN_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired"})

#: Errors of the connection itself, raised while a request or reply is on its way.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.IncompleteReadError,
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
)

#: A source of credentials (a role, SSO, a process) that failed to give them.
_CREDENTIAL_SOURCE_ERRORS = (
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.SSOError,
    botocore.exceptions.TokenRetrievalError,
)

#: Every AWS API operation ddbpipe makes, and the IAM action that authorises it: what an
#: access-denied message says to grant, and what ``iam_policy`` builds policies from (its
#: recording test holds the jobs' real calls to it). An operation missing here is named as
#: its own action.
OPERATION_PERMISSIONS: dict[str, str] = {
    "dynamodb:DescribeTable": "dynamodb:DescribeTable",
    "dynamodb:DescribeTimeToLive": "dynamodb:DescribeTimeToLive",
    "dynamodb:ListTagsOfResource": "dynamodb:ListTagsOfResource",
    "dynamodb:Scan": "dynamodb:Scan",
    "dynamodb:BatchWriteItem": "dynamodb:BatchWriteItem",
    "dynamodb:CreateTable": "dynamodb:CreateTable",
    "dynamodb:UpdateTable": "dynamodb:UpdateTable",
    "dynamodb:UpdateTimeToLive": "dynamodb:UpdateTimeToLive",
    "dynamodb:DescribeContinuousBackups": "dynamodb:DescribeContinuousBackups",
    "dynamodb:ExportTableToPointInTime": "dynamodb:ExportTableToPointInTime",
    "dynamodb:DescribeExport": "dynamodb:DescribeExport",
    "application-autoscaling:DescribeScalableTargets":
        "application-autoscaling:DescribeScalableTargets",
    "application-autoscaling:RegisterScalableTarget":
        "application-autoscaling:RegisterScalableTarget",
    # S3 authorises several operations by one action.
    "s3:ListObjectsV2": "s3:ListBucket",
    "s3:GetObjectLockConfiguration": "s3:GetBucketObjectLockConfiguration",
    "s3:HeadObject": "s3:GetObject",
    "s3:GetObject": "s3:GetObject",
    "s3:PutObject": "s3:PutObject",
    "s3:CreateMultipartUpload": "s3:PutObject",
    "s3:UploadPart": "s3:PutObject",
    "s3:CompleteMultipartUpload": "s3:PutObject",
    "s3:AbortMultipartUpload": "s3:AbortMultipartUpload",
    # Made by DynamoDB, as the caller, when it writes a native export.
    "s3:PutObjectAcl": "s3:PutObjectAcl",
    "s3:DeleteObject": "s3:DeleteObject",
    "s3:RestoreObject": "s3:RestoreObject",
    "kms:GenerateDataKey": "kms:GenerateDataKey",
}


# --- as whom and where ----------------------------------------------------------------------


def session(options: AwsOptions, factory: Callable[..., S]) -> S:
    """A session of ``factory`` (botocore's or aiobotocore's) for the options' profile."""
    new = factory(profile=options.profile)
    try:
        new.get_scoped_config()
    except botocore.exceptions.ProfileNotFound as error:
        raise _missing_profile(error.kwargs.get("profile") or options.profile) from error
    return new


def region(options: AwsOptions, from_session: botocore.session.Session | None = None) -> str:
    """The region to call, by the AWS CLI's rules; ``ConfigError`` when there is none."""
    found = (
        options.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or (from_session.get_config_variable("region") if from_session is not None else None)
    )
    if not found:
        raise ConfigError("no AWS region: pass --region or set AWS_REGION")
    return str(found)


def dynamodb_endpoint(options: AwsOptions, in_region: str) -> str:
    return (
        options.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
        or os.environ.get("AWS_ENDPOINT_URL")
        or default_dynamodb_endpoint(in_region)
    )


def default_dynamodb_endpoint(in_region: str) -> str:
    suffix = "amazonaws.com.cn" if in_region.startswith("cn-") else "amazonaws.com"
    return f"https://dynamodb.{in_region}.{suffix}"


def s3_endpoint(options: AwsOptions) -> str | None:
    """A custom S3 endpoint (MinIO, moto, ...), or None for AWS's own."""
    return (
        options.s3_endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )


def service_endpoint(service_env: str) -> str | None:
    """A custom endpoint of a service the options do not name, as the AWS CLI finds it:
    ``AWS_ENDPOINT_URL_<service_env>``, else ``AWS_ENDPOINT_URL``; None for AWS's own."""
    return os.environ.get(f"AWS_ENDPOINT_URL_{service_env}") or os.environ.get("AWS_ENDPOINT_URL")


def kms_endpoint(options: AwsOptions) -> str | None:
    """A custom KMS endpoint (``AWS_ENDPOINT_URL_KMS``), or None for AWS's."""
    return service_endpoint("KMS")


def credentials(from_session: botocore.session.Session) -> botocore.credentials.Credentials:
    """The session's credentials, resolved now so a missing one is said before any work."""
    try:
        found = from_session.get_credentials()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        # ClientError: the source itself refused, e.g. STS AssumeRole for a role profile.
        raise CredentialsError(f"could not load AWS credentials: {one_line(error)}") from error
    if found is None:
        raise CredentialsError(_NO_CREDENTIALS)
    return found


def fresh_credentials(options: AwsOptions) -> botocore.credentials.Credentials:
    """Credentials resolved anew, by a new session: a role or SSO profile asks its source
    again, static credentials come back the same. botocore's refreshable credentials renew
    themselves only when their own expiry time comes near; this is the public way to renew
    them when AWS says they expired earlier."""
    return credentials(session(options, botocore.session.Session))


_NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "or pass --profile"
)


def _missing_profile(profile: str | None) -> ConfigError:
    return ConfigError(
        f"AWS profile '{profile}' not found in the AWS config files: check --profile / AWS_PROFILE"
    )


# --- what the answers mean ------------------------------------------------------------------


@dataclass(frozen=True)
class AwsCall:
    """One AWS API call, as error messages name it.

    ``resource`` is the table (name or ARN) or the bucket; ``location`` how the user knows
    the object of the call, e.g. ``s3://bucket/prefix/key`` (default: the resource).
    """

    service: str
    action: str
    resource: str = ""
    location: str = ""
    region: str = ""

    def __str__(self) -> str:
        target = self.location or (f"'{self.resource}'" if self.resource else "")
        return f"{self.service}:{self.action}" + (f" on {target}" if target else "")

    @property
    def permission(self) -> str:
        """The IAM permission this call needs."""
        operation = f"{self.service}:{self.action}"
        return OPERATION_PERMISSIONS.get(operation, operation)


def error_from_reply(call: AwsCall, status: int, code: str, message: str = "") -> DdbpipeError:
    """The ddbpipe error for an error reply (HTTP ``status``, AWS ``code`` and ``message``)."""
    kind = _kind_of(call, status, code)
    detail = f"{code or f'HTTP {status}'}: {one_line(message)}" if message else (
        code or f"HTTP {status}"
    )
    fields = {"service": call.service, "action": call.action, "code": code,
              "resource": call.resource}
    if kind is ThrottledError:
        return ThrottledError(f"{call} was throttled ({detail})")
    if kind is ServiceUnavailableError:
        return ServiceUnavailableError(f"{call} failed on the service side ({detail})")
    if kind is CredentialsError:
        return CredentialsError(
            f"AWS rejected the credentials for {call} ({detail}): check or refresh them "
            "(--profile / AWS_PROFILE, AWS_ACCESS_KEY_ID), or use another profile"
        )
    if kind is AccessDeniedError:
        on = f" on bucket '{call.resource}'" if call.service == "s3" and call.resource else ""
        return AccessDeniedError(
            f"access denied for {call} ({detail}): these credentials need {call.permission}"
            f"{on}; grant it or use another --profile",
            **fields,
        )
    if kind is TableNotFoundError:
        in_region = f" in region {call.region}" if call.region else ""
        return TableNotFoundError(
            f"table '{call.resource}' not found{in_region} ({call.service}:{call.action}): "
            "check the name, --region and --profile",
            **fields,
        )
    if kind is BucketNotFoundError:
        return BucketNotFoundError(
            f"S3 bucket '{call.resource}' does not exist ({call}): check the bucket name and "
            "--region, or create the bucket",
            **fields,
        )
    if kind is StorageError:
        where = call.location or call.resource
        if code == "PreconditionFailed":
            return StorageError(f"{where} changed while it was read ({call}): read it again")
        if code == "InvalidObjectState":
            return StorageError(
                f"{where} is archived and not restored ({call}): thaw it first (ddbpipe thaw)"
            )
        return StorageError(f"{where} not found ({call}): check the key and DEST/SOURCE")
    if _bare_head_refusal(call, status, code):
        return AwsRequestError(
            f"{call} was refused with a bare HTTP 400 (S3 gives no reason for a HEAD): "
            "usually expired credentials (renew them, or use another --profile) or a --region "
            "other than the bucket's",
            **fields,
        )
    return AwsRequestError(f"{call} was refused ({detail})", **fields)


def _kind_of(call: AwsCall, status: int, code: str) -> type[DdbpipeError]:
    if code in ERROR_CODES:
        return ERROR_CODES[code]
    if status == 429:
        return ThrottledError
    if status >= 500:
        return ServiceUnavailableError
    if status == 403:
        return AccessDeniedError
    if status == 404 and call.service == "s3":
        # A HEAD reply has no body, so no code: on the bucket it means the bucket is missing.
        return BucketNotFoundError if call.action == "HeadBucket" else StorageError
    return AwsRequestError


def error_from_exception(call: AwsCall, error: BaseException, endpoint: str) -> DdbpipeError:
    """The ddbpipe error for what botocore or the network raised during ``call``.

    ``endpoint`` names where the call went, for connection errors.
    """
    if isinstance(error, botocore.exceptions.ClientError):
        response: dict[str, Any] = error.response
        details = response.get("Error", {})
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return error_from_reply(
            call, status, str(details.get("Code", "")), str(details.get("Message") or "")
        )
    if isinstance(error, botocore.exceptions.NoCredentialsError
                  | botocore.exceptions.PartialCredentialsError):
        return CredentialsError(f"{_NO_CREDENTIALS} (needed for {call})")
    if isinstance(error, _CREDENTIAL_SOURCE_ERRORS):
        # The source of the credentials (a role, SSO, a process) failed to give them.
        return CredentialsError(
            f"could not load AWS credentials for {call}: {one_line(error)}"
        )
    if isinstance(error, botocore.exceptions.ProfileNotFound):
        return _missing_profile(error.kwargs.get("profile"))
    if isinstance(error, botocore.exceptions.NoRegionError):
        return ConfigError("no AWS region: pass --region or set AWS_REGION")
    if isinstance(error, botocore.exceptions.ParamValidationError):
        return ConfigError(f"{call} was refused before it was sent: {one_line(error)}")
    if isinstance(error, NETWORK_ERRORS):
        reason = f"{type(error).__name__} {one_line(error)}".rstrip()
        return ServiceUnavailableError(
            f"{call} could not reach {endpoint} ({reason}): check the network and the endpoint"
        )
    return AwsRequestError(
        f"{call} failed: {one_line(error)}",
        service=call.service, action=call.action, resource=call.resource,
    )


def is_expired_token(call: AwsCall, status: int, code: str) -> bool:
    """Whether a refused ``call`` may say its credentials expired (renew them, send again).

    S3 answers HEAD without a body, so botocore names the code after the status: a bare 400
    to a HEAD may be an expired token too.
    """
    return code in EXPIRED_TOKEN_CODES or _bare_head_refusal(call, status, code)


def _bare_head_refusal(call: AwsCall, status: int, code: str) -> bool:
    # botocore names the code of a reply without a body after its status.
    head = call.service == "s3" and call.action.startswith("Head")
    return head and status == 400 and code in ("", "400")


def one_line(text: object) -> str:
    return " ".join(str(text).split())


# --- credentials never reach a log line ---------------------------------------------------------

_SECRET_HEADERS = "x-amz-security-token|authorization"
_SECRETS_IN_LOGS = (
    # Headers in a dict repr: {'X-Amz-Security-Token': b'...', 'Authorization': b'...'}
    (re.compile(rf"""(?i)(['"](?:{_SECRET_HEADERS})['"]\s*:\s*b?)(['"]).*?\2"""),
     r"\1\2<hidden>\2"),
    # A canonical request, one header per line: x-amz-security-token:...
    (re.compile(rf"(?im)^((?:{_SECRET_HEADERS}):).*$"), r"\1<hidden>"),
    # A presigned URL's query: X-Amz-Security-Token=...
    (re.compile(r"(?i)(X-Amz-Security-Token=)[^&\s'\"]+"), r"\1<hidden>"),
)

#: The loggers that write requests (with their headers) and what is signed.
_REQUEST_LOGGERS = ("botocore.endpoint", "aiobotocore.endpoint", "botocore.auth",
                    "botocore.httpsession", "aiobotocore.httpsession")


def hide_credentials(text: str) -> str:
    """``text`` with the session token and signature of any request in it blanked."""
    for pattern, replacement in _SECRETS_IN_LOGS:
        text = pattern.sub(replacement, text)
    return text


class _HideCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = hide_credentials(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        return True


_hide_credentials_filter = _HideCredentials()
for _name in _REQUEST_LOGGERS:
    logging.getLogger(_name).addFilter(_hide_credentials_filter)
