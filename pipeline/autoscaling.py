"""Application Auto Scaling, as the raised capacity of a job (``provision.py``) uses it: clients
made by ``aws.py``'s rules, the scalable targets of a table and its indexes, one call with its
errors mapped to the error tree."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import botocore.exceptions
from botocore import xform_name

from . import aws
from .config import AwsOptions

__all__ = ["AutoScalingFactory", "Targets", "autoscaling_client_factory",
           "autoscaling_endpoint", "call", "describe_targets"]

#: Makes an async context manager yielding an aiobotocore-like Application Auto Scaling client.
AutoScalingFactory = Callable[[], AbstractAsyncContextManager[Any]]
#: Scalable targets by (resource id, scalable dimension).
Targets = Mapping[tuple[str, str], Mapping[str, Any]]


def autoscaling_endpoint() -> str | None:
    """A custom Application Auto Scaling endpoint (``AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING``,
    as the AWS CLI names it, else ``AWS_ENDPOINT_URL``), or None for AWS's own."""
    return aws.service_endpoint("APPLICATION_AUTO_SCALING")


def autoscaling_client_factory(options: AwsOptions, max_attempts: int = 8) -> AutoScalingFactory:
    """aiobotocore Application Auto Scaling clients for ``options`` (``aws.py``'s rules),
    each call retried up to ``max_attempts`` times by botocore's standard mode."""

    def create_client() -> AbstractAsyncContextManager[Any]:
        # Loaded here: a job that raises nothing never loads aiobotocore for it.
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession

        session = aws.session(options, AioSession)
        config = AioConfig(retries={"mode": "standard", "total_max_attempts": max_attempts},
                           connect_timeout=10, read_timeout=60)
        client: AbstractAsyncContextManager[Any] = session.create_client(
            "application-autoscaling", region_name=aws.region(options, session),
            endpoint_url=autoscaling_endpoint(), config=config,
        )
        return client

    return create_client


async def describe_targets(scaler: Any, resource_ids: list[str], region: str) -> Targets:
    """The scalable targets of these resources, by (resource id, scalable dimension)."""
    found: dict[tuple[str, str], Mapping[str, Any]] = {}
    request: dict[str, Any] = {"ServiceNamespace": "dynamodb", "ResourceIds": resource_ids}
    while True:
        reply = await call(scaler, "DescribeScalableTargets", resource_ids[0],
                                        region, request)
        for target in reply.get("ScalableTargets") or []:
            found[(target["ResourceId"], target["ScalableDimension"])] = target
        if not reply.get("NextToken"):
            return found
        request["NextToken"] = reply["NextToken"]


async def call(
    scaler: Any, action: str, resource: str, region: str, request: Mapping[str, Any]
) -> dict[str, Any]:
    """One call, by its API name; every failure an error of the tree (``aws.py``'s map)."""
    try:
        reply: dict[str, Any] = await getattr(scaler, xform_name(action))(**request)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError,
            *aws.NETWORK_ERRORS) as error:
        call = aws.AwsCall("application-autoscaling", action, resource=resource, region=region)
        where = autoscaling_endpoint() or "AWS Application Auto Scaling"
        raise aws.error_from_exception(call, error, where) from error
    return reply
