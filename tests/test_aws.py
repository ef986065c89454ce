"""The one AWS boundary: resolution of profile, region and endpoints, and the one map from
AWS error codes to ddbpipe's errors. DynamoDB and S3 used to disagree on four points; each
has a test here that holds both services to the same answer."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, CredentialRetrievalError, EndpointConnectionError

from ddbpipe import aws, iam_policy
from ddbpipe.aws import AwsCall, error_from_exception, error_from_reply
from ddbpipe.config import AwsOptions
from ddbpipe.dynamo import DynamoClient
from ddbpipe.errors import (
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
from ddbpipe.storage import S3Store
from tools.fault_endpoint import ROTATING_PROFILE, write_rotating_profile

DYNAMODB_SCAN = AwsCall("dynamodb", "Scan", resource="orders", region="eu-west-1")
S3_PUT = AwsCall("s3", "PutObject", resource="bkt", location="s3://bkt/pre/data/k")
BOTH = [DYNAMODB_SCAN, S3_PUT]


def s3_put_through(options: AwsOptions) -> None:
    async def put() -> None:
        async with S3Store("bkt", "pre/", options) as store:
            await store.put_bytes("k", b"v")

    asyncio.run(put())


# --- the four disagreements, settled ---------------------------------------------------------


@pytest.mark.parametrize("call", BOTH, ids=str)
@pytest.mark.parametrize(
    "code",
    ["UnrecognizedClientException", "InvalidAccessKeyId", "SignatureDoesNotMatch",
     "ExpiredTokenException", "ExpiredToken", "InvalidClientTokenId"],
)
def test_rejected_credentials_are_a_credentials_error_for_both_services(
    call: AwsCall, code: str
) -> None:
    error = error_from_reply(call, 403 if call.service == "s3" else 400, code, "not valid")
    assert type(error) is CredentialsError
    assert str(call) in str(error) and "--profile" in str(error)


def test_a_missing_profile_is_a_config_error_for_both_services(s3_server: Any) -> None:
    options = AwsOptions(profile="nobody-has-this", region="eu-west-1",
                         s3_endpoint_url=s3_server.endpoint)
    with pytest.raises(ConfigError, match="AWS profile 'nobody-has-this' not found"):
        DynamoClient.open(options)
    with pytest.raises(ConfigError, match="AWS profile 'nobody-has-this' not found"):
        s3_put_through(options)


def test_a_missing_region_is_a_config_error_for_both_services(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    options = AwsOptions(s3_endpoint_url=s3_server.endpoint)
    with pytest.raises(ConfigError, match="no AWS region: pass --region or set AWS_REGION"):
        DynamoClient.open(options)
    with pytest.raises(ConfigError, match="no AWS region: pass --region or set AWS_REGION"):
        s3_put_through(options)


THROTTLE_CODES = [
    "ProvisionedThroughputExceededException", "ThrottlingException", "Throttling",
    "RequestLimitExceeded", "SlowDown", "TooManyRequestsException", "RequestThrottled",
    "RequestThrottledException",
]


@pytest.mark.parametrize("call", BOTH, ids=str)
@pytest.mark.parametrize("code", THROTTLE_CODES)
def test_every_throttle_code_throttles_both_services(call: AwsCall, code: str) -> None:
    error = error_from_reply(call, 400, code)
    assert type(error) is ThrottledError and error.transient
    assert code in str(error)


@pytest.mark.parametrize("call", BOTH, ids=str)
def test_http_429_without_a_known_code_is_a_throttle(call: AwsCall) -> None:
    assert type(error_from_reply(call, 429, "")) is ThrottledError


# --- credentials that expire ----------------------------------------------------------------


@pytest.mark.parametrize("call", BOTH, ids=str)
@pytest.mark.parametrize("code", sorted(aws.EXPIRED_TOKEN_CODES))
def test_expired_token_codes_say_renew_for_both_services(call: AwsCall, code: str) -> None:
    assert aws.is_expired_token(call, 400, code)
    # Refused again after the renewal, they are what the map says: credentials to fix.
    assert type(error_from_reply(call, 400, code, "expired")) is CredentialsError


def test_a_bare_400_to_an_s3_head_may_be_an_expired_token() -> None:
    head = AwsCall("s3", "HeadObject", resource="bkt", location="s3://bkt/pre/k")
    assert aws.is_expired_token(head, 400, "400")
    assert not aws.is_expired_token(head, 403, "403")
    assert not aws.is_expired_token(S3_PUT, 400, "400")
    assert not aws.is_expired_token(DYNAMODB_SCAN, 400, "")
    error = error_from_reply(head, 400, "400", "Bad Request")
    assert type(error) is AwsRequestError
    assert "expired credentials" in str(error) and "--region" in str(error)


def test_a_credential_source_that_fails_is_a_credentials_error() -> None:
    failure = CredentialRetrievalError(provider="process", error_msg="session ended")
    error = error_from_exception(S3_PUT, failure, "http://s3.local")
    assert type(error) is CredentialsError and "session ended" in str(error)


def test_fresh_credentials_ask_the_source_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    static = [aws.fresh_credentials(AwsOptions()).get_frozen_credentials() for _ in range(2)]
    assert static[0] == static[1]  # the environment's: the same each time
    config = write_rotating_profile(tmp_path, access_key="ddbpipelocal", secret_key="secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    options = AwsOptions(profile=ROTATING_PROFILE)
    tokens = {aws.fresh_credentials(options).get_frozen_credentials().token for _ in range(2)}
    assert len(tokens) == 2


# --- the rest of the map -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "status", "code", "expected"),
    [
        (S3_PUT, 503, "SlowDown", ThrottledError),
        (S3_PUT, 500, "InternalError", ServiceUnavailableError),
        (S3_PUT, 503, "ServiceUnavailable", ServiceUnavailableError),
        (S3_PUT, 502, "", ServiceUnavailableError),
        (S3_PUT, 404, "NoSuchBucket", BucketNotFoundError),
        (AwsCall("s3", "HeadBucket", resource="bkt"), 404, "404", BucketNotFoundError),
        (S3_PUT, 403, "AccessDenied", AccessDeniedError),
        (S3_PUT, 403, "", AccessDeniedError),
        (S3_PUT, 404, "NoSuchKey", StorageError),
        (S3_PUT, 412, "PreconditionFailed", StorageError),
        (S3_PUT, 403, "InvalidObjectState", StorageError),
        (DYNAMODB_SCAN, 500, "InternalServerError", ServiceUnavailableError),
        (DYNAMODB_SCAN, 400, "ResourceNotFoundException", TableNotFoundError),
        (DYNAMODB_SCAN, 400, "AccessDeniedException", AccessDeniedError),
        (DYNAMODB_SCAN, 400, "ValidationException", AwsRequestError),
    ],
)
def test_error_codes_map_to_the_tree(
    call: AwsCall, status: int, code: str, expected: type[DdbpipeError]
) -> None:
    error = error_from_reply(call, status, code, "it happened\non two lines")
    assert type(error) is expected
    message = str(error)
    assert "\n" not in message
    assert call.action in message
    if isinstance(error, AwsRequestError):
        assert (error.service, error.action, error.code) == (call.service, call.action, code)


def test_messages_name_the_place_and_the_fix() -> None:
    missing = error_from_reply(DYNAMODB_SCAN, 400, "ResourceNotFoundException")
    assert str(missing) == (
        "table 'orders' not found in region eu-west-1 (dynamodb:Scan): check the name, "
        "--region and --profile"
    )
    gone = error_from_reply(S3_PUT, 404, "NoSuchKey")
    assert str(gone).startswith("s3://bkt/pre/data/k not found (s3:PutObject on s3://bkt/pre/")


@pytest.mark.parametrize(
    ("call", "permission"),
    [
        (AwsCall("s3", "UploadPart", resource="bkt"), "s3:PutObject on bucket 'bkt'"),
        (AwsCall("s3", "HeadObject", resource="bkt"), "s3:GetObject on bucket 'bkt'"),
        (AwsCall("s3", "ListObjectsV2", resource="bkt"), "s3:ListBucket on bucket 'bkt'"),
        (AwsCall("s3", "GetObjectLockConfiguration", resource="bkt"),
         "s3:GetBucketObjectLockConfiguration on bucket 'bkt'"),
        (AwsCall("dynamodb", "BatchWriteItem", resource="t"), "dynamodb:BatchWriteItem;"),
    ],
)
def test_access_denied_names_the_permission_to_grant(call: AwsCall, permission: str) -> None:
    assert f"need {permission}" in str(error_from_reply(call, 403, "AccessDenied"))


@pytest.mark.parametrize(("operation", "action"), sorted(aws.OPERATION_PERMISSIONS.items()))
def test_access_denied_names_the_action_the_iam_policy_grants(operation: str, action: str) -> None:
    assert iam_policy.OPERATION_PERMISSIONS is aws.OPERATION_PERMISSIONS  # one map for both
    service, _, name = operation.partition(":")
    denied = error_from_reply(AwsCall(service, name, resource="r"), 403, "AccessDenied")
    assert f"need {action}" in str(denied)


def test_botocore_client_errors_go_through_the_same_map() -> None:
    reply: Any = {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                  "ResponseMetadata": {"HTTPStatusCode": 503}}
    error = error_from_exception(S3_PUT, ClientError(reply, "PutObject"), "http://s3.local")
    assert type(error) is ThrottledError and "reduce your request rate" in str(error)


def test_a_connection_failure_is_transient_and_names_the_endpoint() -> None:
    failure = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    error = error_from_exception(S3_PUT, failure, "http://127.0.0.1:9")
    assert type(error) is ServiceUnavailableError and error.transient
    assert "could not reach http://127.0.0.1:9" in str(error)


# --- where ------------------------------------------------------------------------------------


def test_endpoints_follow_the_aws_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB", raising=False)
    options = AwsOptions()
    assert aws.dynamodb_endpoint(options, "eu-west-1") == "https://dynamodb.eu-west-1.amazonaws.com"
    assert aws.s3_endpoint(options) is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://both:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3:2")
    assert aws.dynamodb_endpoint(options, "eu-west-1") == "http://both:1"
    assert aws.s3_endpoint(options) == "http://s3:2"
    given = AwsOptions(endpoint_url="http://ddb:3", s3_endpoint_url="http://s3:4")
    assert (aws.dynamodb_endpoint(given, "x"), aws.s3_endpoint(given)) == (
        "http://ddb:3", "http://s3:4")


def test_request_logs_lose_the_session_token_and_signature_in_every_shape() -> None:
    token = "FwoGZXIvYXdzEJr//token+value="
    signature = "AWS4-HMAC-SHA256 Credential=AK/x, Signature=ab"
    headers = (f"{{'X-Amz-Security-Token': b'{token}', 'Authorization': b'{signature}', "
               "'Host': 'h'}")
    canonical = f"PUT\n/b/k\n\nhost:h\nx-amz-security-token:{token}\n\nhost;x-amz-security-token"
    presigned = f"https://b.s3.amazonaws.com/k?X-Amz-Security-Token={token}&X-Amz-Expires=60"
    for text in (headers, canonical, presigned):
        hidden = aws.hide_credentials(text)
        assert token not in hidden and "<hidden>" in hidden, hidden
    assert "Signature=ab" not in aws.hide_credentials(headers)
    assert "'Host': 'h'" in aws.hide_credentials(headers)  # the rest stays readable
    assert "X-Amz-Expires=60" in aws.hide_credentials(presigned)


def test_botocore_request_loggers_hide_credentials_whoever_turns_them_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="botocore.endpoint"):
        logging.getLogger("botocore.endpoint").debug(
            "Sending http request: %s", "{'X-Amz-Security-Token': b'secret-token'}")
    assert "secret-token" not in caplog.text and "<hidden>" in caplog.text
