"""The one exception tree of ddbpipe.

Every error says whether retrying can help. Transient errors are retried with jittered
backoff by the code that made the call; terminal errors stop the run, and their message is
the one line the user sees (it names the table, bucket, file or option, and what to do)::

    DdbpipeError                      base; .transient tells retry (True) from stop (False)
    ├── TransientError                retry with backoff
    │   ├── ThrottledError            DynamoDB said ProvisionedThroughputExceeded/Throttling/
    │   │                             RequestLimitExceeded (or S3 SlowDown)
    │   └── ServiceUnavailableError   5xx replies, connection resets, timeouts
    └── TerminalError                 stop and say why
        ├── ConfigError               bad option or combination of options
        ├── CredentialsError          no AWS credentials could be found
        ├── AwsRequestError           an AWS call refused for good (ValidationException, ...)
        │   ├── TableNotFoundError    ResourceNotFoundException on a table
        │   ├── AccessDeniedError     AccessDenied / UnauthorizedOperation
        │   └── BucketNotFoundError   NoSuchBucket
        ├── StorageError              a local path or object is missing or unusable
        │   └── FrozenDataError       shards in GLACIER/DEEP_ARCHIVE not restored: thaw first
        ├── DestinationExistsError    DEST already holds a finished export (archives are write-once)
        ├── ResumeError               --resume with nothing (or something else) to resume
        ├── SchemaMismatchError       the target table's keys are not the source's keys
        ├── PointInTimeError          DynamoDB cannot export the table at the time asked
        ├── CorruptDataError          checksum mismatch, undecodable shard, malformed manifest
        └── FormatVersionError        a manifest written by a newer, unknown format version
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = [
    "first_error",
    "AccessDeniedError",
    "AwsRequestError",
    "BucketNotFoundError",
    "ConfigError",
    "CorruptDataError",
    "CredentialsError",
    "DdbpipeError",
    "DestinationExistsError",
    "FormatVersionError",
    "FrozenDataError",
    "PointInTimeError",
    "ResumeError",
    "SchemaMismatchError",
    "ServiceUnavailableError",
    "StorageError",
    "TableNotFoundError",
    "TerminalError",
    "ThrottledError",
    "TransientError",
]


class DdbpipeError(Exception):
    """Base of every error ddbpipe raises on purpose."""

    transient: bool = False


class TransientError(DdbpipeError):
    """Retrying the same call later may succeed."""

    transient = True


class ThrottledError(TransientError):
    """The service refused the call for capacity; back off and retry."""


class ServiceUnavailableError(TransientError):
    """A 5xx reply, a dropped connection or a timeout."""


class TerminalError(DdbpipeError):
    """Retrying cannot help; the message tells the user what to do."""


class ConfigError(TerminalError):
    """An option, or a combination of options, that cannot work."""


class CredentialsError(TerminalError):
    """No AWS credentials were found for the profile/environment in use."""


class AwsRequestError(TerminalError):
    """An AWS call that the service refused for good.

    ``service`` is e.g. "dynamodb" or "s3", ``action`` the API action (``Scan``,
    ``PutObject``), ``code`` the AWS error code, ``resource`` the table or bucket.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        action: str = "",
        code: str = "",
        resource: str = "",
    ) -> None:
        super().__init__(message)
        self.service = service
        self.action = action
        self.code = code
        self.resource = resource

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only details survive pickling (an error raised in a cluster's worker).
        return (type(self), (str(self),), self.__dict__)


class TableNotFoundError(AwsRequestError):
    """The DynamoDB table does not exist in this account and region."""


class AccessDeniedError(AwsRequestError):
    """The credentials in use may not perform the action."""


class BucketNotFoundError(AwsRequestError):
    """The S3 bucket does not exist (or is not visible to these credentials)."""


class StorageError(TerminalError):
    """A local path or stored object is missing or cannot be used."""


class FrozenDataError(StorageError):
    """Data the job must read is in an archive storage class and not restored (thaw it)."""


class DestinationExistsError(TerminalError):
    """The destination already holds a finished export; exports are write-once."""


class ResumeError(TerminalError):
    """``--resume`` found nothing to resume, or state from a different export."""


class SchemaMismatchError(TerminalError):
    """The target table's key schema differs from the source's; nothing is written."""


class PointInTimeError(TerminalError):
    """DynamoDB cannot export the table at the time asked: point-in-time recovery is off, the
    time is outside its window, or its export failed."""


class CorruptDataError(TerminalError):
    """Stored data does not match its checksum or cannot be decoded."""


class FormatVersionError(TerminalError):
    """A manifest declares a format version this ddbpipe does not know."""


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to show for a task group that failed: a ddbpipe error if one of its tasks
    raised one (its message says what to do), else the first error."""
    errors = list(_leaves(group))
    return next((error for error in errors if isinstance(error, DdbpipeError)), errors[0])


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
