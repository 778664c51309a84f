"""Where queues, topics and subscriptions are: cached URLs and ARNs, and the read-only lookups.

Publishing and receiving need a queue's URL or a topic's ARN. Looking them up
on every call would double the calls, so they are cached for the backend's
lifetime: a queue's URL and a topic's ARN never change while the resource
exists (a re-created one gets the same). An entry is dropped when AWS says the
resource is gone.

Every call made here is read-only (GetQueueUrl, GetQueueAttributes,
GetTopicAttributes, ListTopics, ListSubscriptionsByTopic,
GetSubscriptionAttributes, STS GetCallerIdentity), so the factory's planning
step never changes anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]
from botocore.parsers import ResponseParserError  # type: ignore[import-untyped]

from melange.exceptions import QueueNotFound, TopicNotFound
from melange_aws.errors import (
    ACCESS_REFUSED,
    QUEUE_MISSING,
    TOPIC_MISSING,
    UNAVAILABLE,
    error_code,
)
from melange_aws.names import arn_prefix, name_from_arn

logger = logging.getLogger("melange.aws.resources")

BOTO_ERRORS = (ClientError, BotoCoreError, ResponseParserError)
"""What a botocore call raises: AWS's refusals, botocore's own errors, an answer it cannot read."""

STS_RETRY_SECONDS = 60.0
"""After a passing STS failure (unreachable, throttled), seconds before STS is asked again."""


def sts_is_missing(error: Exception) -> bool:
    """Whether STS's answer means it is not served there (so asking again is pointless).

    An answer that is not a passing fault counts: ElasticMQ's ``InvalidAction``
    (400), LocalStack's 501 for a service left out of ``SERVICES``, a 404, an
    unknown operation. Passing faults are connection errors, throttling, other
    5xx answers, and refused or missing credentials (temporary credentials are
    refreshed, and SNS would refuse the same ones).
    """
    if not isinstance(error, ClientError):
        return False
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status == 501:  # Not Implemented
        return True
    passing = UNAVAILABLE | ACCESS_REFUSED
    server_fault = isinstance(status, int) and status >= 500
    return not server_fault and error_code(error) not in passing


class Fail(Protocol):
    """Raises the melange error for a botocore error (the backend's ``_fail``)."""

    def __call__(
        self,
        error: Exception,
        action: str,
        client: Any,
        *,
        queue: str | None = None,
        topic: str | None = None,
    ) -> NoReturn:
        """Raise the translated error for ``error``, which happened trying to ``action``."""


class ResourceIndex:
    """Cached queue URLs and ARNs, topic ARNs, and read-only lookups of subscriptions.

    Thread-safe: the caches are plain dicts whose single operations are atomic,
    and a lookup racing another only repeats a read. STS is asked by one thread
    at a time, so concurrent first lookups make one GetCallerIdentity call.

    Args:
        sqs: The SQS client.
        sns: The SNS client.
        sts: Returns the STS client (made on first use).
        fail: Translates and raises a botocore error.
        valid_name: ``valid_name(kind, name)``: whether AWS could have such a queue or topic.
    """

    def __init__(
        self,
        sqs: Any,
        sns: Any,
        sts: Callable[[], Any],
        fail: Fail,
        valid_name: Callable[[str, str], bool],
    ) -> None:
        self._sqs = sqs
        self._sns = sns
        self._sts = sts
        self._fail = fail
        self._valid_name = valid_name
        self._queue_urls: dict[str, str] = {}
        self._queue_arns: dict[str, str] = {}
        self._topic_arns: dict[str, str] = {}
        self._topic_arn_prefix: str | None = None
        self._sts_lock = threading.Lock()
        self._sts_missing = False  # for the index's lifetime, once STS answered it is not there
        self._sts_failed_at: float | None = None  # monotonic time of the last passing fault

    # ----------------------------------------------------------------- queues
    def forget_queue(self, name: str) -> None:
        """Drop what is cached about the queue (it was deleted, or AWS says it is gone)."""
        self._queue_urls.pop(name, None)
        self._queue_arns.pop(name, None)

    def remember_queue(self, name: str, url: str) -> None:
        """Cache a queue's URL (from CreateQueue)."""
        self._queue_urls[name] = url

    def queue_url(self, name: str) -> str | None:
        """Return the queue's URL, or ``None`` if there is no such queue."""
        url = self._queue_urls.get(name)
        if url is not None:
            return url
        if not self._valid_name("queue", name):
            return None  # SQS could not have it
        try:
            url = str(self._sqs.get_queue_url(QueueName=name)["QueueUrl"])
        except BOTO_ERRORS as error:
            if error_code(error) in QUEUE_MISSING:
                return None
            self._fail(error, f"look up queue {name!r}", self._sqs, queue=name)
        self._queue_urls[name] = url
        return url

    def require_queue_url(self, name: str) -> str:
        """Return the queue's URL.

        Raises:
            QueueNotFound: There is no such queue.
        """
        url = self.queue_url(name)
        if url is None:
            raise QueueNotFound(name)
        return url

    def queue_attributes(self, name: str, names: list[str]) -> dict[str, str] | None:
        """Return the queue's attributes ``names``, or ``None`` if it does not exist."""
        for _ in range(2):  # a second time when a cached URL turned out stale
            cached = name in self._queue_urls
            url = self.queue_url(name)
            if url is None:
                return None
            try:
                response = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
            except BOTO_ERRORS as error:
                if error_code(error) not in QUEUE_MISSING:
                    self._fail(error, f"read queue {name!r}", self._sqs, queue=name)
                self.forget_queue(name)
                if cached:
                    continue
                return None
            attributes: dict[str, str] = response.get("Attributes", {})
            if "QueueArn" in attributes:
                self._queue_arns[name] = attributes["QueueArn"]
            return attributes
        return None

    def queue_arn(self, name: str) -> str | None:
        """Return the queue's ARN, or ``None`` if it does not exist."""
        arn = self._queue_arns.get(name)
        if arn is None:
            attributes = self.queue_attributes(name, ["QueueArn"])
            arn = None if attributes is None else attributes.get("QueueArn")
        return arn

    # ----------------------------------------------------------------- topics
    def forget_topic(self, name: str) -> None:
        """Drop the cached ARN of the topic."""
        self._topic_arns.pop(name, None)

    def remember_topic(self, name: str, arn: str) -> None:
        """Cache a topic's ARN (it exists); it also tells the account's ARN prefix."""
        self._topic_arns[name] = arn
        if self._topic_arn_prefix is None:
            self._topic_arn_prefix = arn_prefix(arn)

    def _built_topic_arn(self, name: str) -> str | None:
        """Build the topic's ARN from the caller's account, learnt once with STS.

        GetCallerIdentity needs no IAM permission. Returns ``None`` when the
        account cannot be learnt: STS is not served at the endpoint (remembered
        for the index's lifetime, so it is asked once), or it failed in passing
        (asked again after :data:`STS_RETRY_SECONDS`).
        """
        prefix = self._topic_arn_prefix
        if prefix is None:
            prefix = self._learn_topic_arn_prefix()
        return None if prefix is None else prefix + name

    def _learn_topic_arn_prefix(self) -> str | None:
        with self._sts_lock:
            if self._topic_arn_prefix is not None:  # learnt by another thread meanwhile
                return self._topic_arn_prefix
            failed_at = self._sts_failed_at
            if self._sts_missing or (
                failed_at is not None and time.monotonic() - failed_at < STS_RETRY_SECONDS
            ):
                return None
            try:
                identity = self._sts().get_caller_identity()
            except BOTO_ERRORS as error:
                if sts_is_missing(error):
                    self._sts_missing = True
                    logger.info(
                        "STS GetCallerIdentity is not available (%s); topics are looked up by "
                        "listing them from now on",
                        error_code(error),
                    )
                else:
                    self._sts_failed_at = time.monotonic()
                    logger.debug(
                        "STS GetCallerIdentity failed (%s); topics are looked up by listing "
                        "them for %.0f s",
                        error_code(error) or type(error).__name__,
                        STS_RETRY_SECONDS,
                    )
                return None
            partition = str(identity["Arn"]).split(":")[1]
            region = self._sns.meta.region_name
            self._topic_arn_prefix = f"arn:{partition}:sns:{region}:{identity['Account']}:"
            return self._topic_arn_prefix

    def _listed_topic_arn(self, name: str) -> str | None:
        """Find the topic's ARN by listing topics: the fallback when STS is unavailable."""
        token: str | None = None
        while True:
            kwargs = {"NextToken": token} if token else {}
            try:
                page = self._sns.list_topics(**kwargs)
            except BOTO_ERRORS as error:
                self._fail(error, f"look up topic {name!r}", self._sns, topic=name)
            for topic in page.get("Topics", []):
                arn = str(topic.get("TopicArn", ""))
                if name_from_arn(arn) == name:
                    return arn
            token = page.get("NextToken")
            if not token:
                return None

    def topic_arn(self, name: str) -> str | None:
        """Return the topic's ARN, cached or built, without checking that the topic exists.

        ``None`` only when the name is impossible or, without STS, no topic has it.
        """
        arn = self._topic_arns.get(name)
        if arn is None and self._valid_name("topic", name):
            arn = self._built_topic_arn(name) or self._listed_topic_arn(name)
        return arn

    def topic_attributes(self, name: str) -> dict[str, str] | None:
        """Return the topic's attributes, or ``None`` if it does not exist."""
        arn = self.topic_arn(name)
        if arn is None:
            return None
        try:
            response = self._sns.get_topic_attributes(TopicArn=arn)
        except BOTO_ERRORS as error:
            if error_code(error) in TOPIC_MISSING:
                self.forget_topic(name)
                return None
            self._fail(error, f"read topic {name!r}", self._sns, topic=name)
        self.remember_topic(name, arn)
        attributes: dict[str, str] = response.get("Attributes", {})
        return attributes

    def require_topic_arn(self, name: str) -> str:
        """Return the ARN of a topic that exists (checked with GetTopicAttributes).

        Raises:
            TopicNotFound: There is no such topic.
        """
        if self.topic_attributes(name) is None:
            raise TopicNotFound(name)
        return self._topic_arns[name]

    # ---------------------------------------------------------- subscriptions
    def find_subscription(self, topic_name: str, topic_arn: str, queue_arn: str) -> str | None:
        """Return the ARN of the topic's SQS subscription of ``queue_arn``, if any.

        Raises:
            TopicNotFound: The topic does not exist.
        """
        token: str | None = None
        while True:
            kwargs: dict[str, str] = {"TopicArn": topic_arn}
            if token:
                kwargs["NextToken"] = token
            try:
                page = self._sns.list_subscriptions_by_topic(**kwargs)
            except BOTO_ERRORS as error:
                if error_code(error) in TOPIC_MISSING:
                    self.forget_topic(topic_name)
                action = f"list the subscriptions of topic {topic_name!r}"
                self._fail(error, action, self._sns, topic=topic_name)
            for subscription in page.get("Subscriptions", []):
                arn = str(subscription.get("SubscriptionArn", ""))
                if (
                    subscription.get("Protocol") == "sqs"
                    and subscription.get("Endpoint") == queue_arn
                    and arn.startswith("arn:")  # not "PendingConfirmation" or "Deleted"
                ):
                    return arn
            token = page.get("NextToken")
            if not token:
                return None

    def subscription_attributes(self, arn: str, topic_name: str) -> dict[str, str] | None:
        """Return a subscription's attributes, or ``None`` if it was removed meanwhile."""
        try:
            response = self._sns.get_subscription_attributes(SubscriptionArn=arn)
        except BOTO_ERRORS as error:
            if error_code(error) in TOPIC_MISSING:
                return None
            action = f"read a subscription of topic {topic_name!r}"
            self._fail(error, action, self._sns, topic=topic_name)
        attributes: dict[str, str] = response.get("Attributes", {})
        return attributes
