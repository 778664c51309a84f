"""The ``aws`` backend: topics on Amazon SNS, queues on Amazon SQS.

How each part of melange's contract maps to AWS (details in docs/backends/aws.md):

- queue: an SQS queue (``.fifo`` names are FIFO queues); settings are queue
  attributes, the dead-letter queue a ``RedrivePolicy``;
- topic: an SNS topic (``.fifo`` names are FIFO topics);
- subscription: an SNS subscription of protocol ``sqs`` with raw message
  delivery, its filter an SNS filter policy, plus one statement in the queue's
  access policy admitting the subscribed topics;
- publish: SendMessageBatch / PublishBatch in chunks of 10 within 256 KiB; a
  failure after the request went out is an unknown outcome
  (:mod:`~melange_aws.outcomes`);
- receive: ReceiveMessage with long polling, on a client of its own whose read
  timeout outlasts the poll; ack: DeleteMessageBatch; nack and lease
  extension: ChangeMessageVisibilityBatch;
- forward (dead-lettering): SendMessage of the message's wire form as received
  (:mod:`~melange_aws.forwarding`).

The helpers live next to this module, one idea each: :mod:`~melange_aws.clients`
(boto3 configuration), :mod:`~melange_aws.resources` (cached URLs and ARNs,
read-only lookups), :mod:`~melange_aws.names` and :mod:`~melange_aws.validation`
(what AWS refuses), :mod:`~melange_aws.wire` (bodies and attributes on the
wire), :mod:`~melange_aws.policy` (the queue policy), :mod:`~melange_aws.filters`
(filter policies), :mod:`~melange_aws.receipts`, :mod:`~melange_aws.errors`,
:mod:`~melange_aws.outcomes` and :mod:`~melange_aws.forwarding`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from melange.backends.base import (
    Capabilities,
    MessagingBackend,
    OutgoingMessage,
    PublishResult,
    ReceivedMessage,
)
from melange.exceptions import (
    BackendClosed,
    BackendUnavailable,
    ConfigurationError,
    InvalidArgument,
    InvalidMessage,
    InvalidName,
    InvalidTopology,
    LeaseLost,
    MelangeError,
    MessageTooLarge,
    OutcomeUnknown,
    QueueNotFound,
    TopicNotFound,
    raise_unchained,
    require_number,
    require_str,
)
from melange.message import PRODUCER_ID_ATTRIBUTE
from melange.topology import (
    DEFAULT_MAX_RECEIVE_COUNT,
    Action,
    Change,
    DeadLetterPolicy,
    QueueSpec,
    SubscriptionSpec,
    TopicSpec,
    is_fifo_name,
)
from melange_aws import filters, moves, policy, receipts, redrive
from melange_aws.clients import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    LONG_POLL_SECONDS,
    ClientSettings,
    client_config,
    long_poll_config,
    make_client,
    make_session,
)
from melange_aws.errors import (
    DEFAULT_UNREACHABLE_HINT,
    QUEUE_MISSING,
    TOPIC_MISSING,
    ErrorContext,
    entry_error,
    error_code,
    is_sensitive,
    raise_translated,
    safe_endpoint,
    url_secrets,
)
from melange_aws.forwarding import send_message_params
from melange_aws.names import (
    QUEUE_NAME_RULE,
    TOPIC_NAME_RULE,
    arn_prefix,
    deduplication_id,
    name_from_arn,
)
from melange_aws.outcomes import SendTracker, may_have_reached, outcome_unknown
from melange_aws.receipts import AWSReceipt
from melange_aws.resources import BOTO_ERRORS, ResourceIndex
from melange_aws.validation import check_destination, check_message
from melange_aws.wire import (
    DEFAULT_GROUP_ID,
    MAX_ATTRIBUTES,
    MAX_MESSAGE_SIZE,
    MESSAGE_LIMIT,
    STRING_TYPE,
    decode_message,
    encode_body,
    message_attributes,
    wire_size,
)
from melange_aws.wire7 import ATTRIBUTES_7X, MAX_RECEIVE_COUNT_7X, write_7x

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from melange.compat.sqs_options import SQSOptions7x

__all__ = ["AWSBackend", "AWSReceipt"]

logger = logging.getLogger("melange.aws.backend")

_SubscriptionState = tuple[dict[str, str], str | None, bool] | None
"""A subscription's SNS attributes, its queue's policy, whether that admits the topic."""

BATCH_SIZE = 10
"""Entries per SendMessageBatch and PublishBatch call, and messages per ReceiveMessage."""

QUEUE_EXISTS = frozenset(
    {"QueueAlreadyExists", "QueueNameExists", "AWS.SimpleQueueService.QueueNameExists"}
)

SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "MessageGroupId"]
"""The system attributes a receive asks for: the receive count and the FIFO group."""


class AWSBackend(MessagingBackend):
    """Topics on Amazon SNS and queues on Amazon SQS, through boto3.

    Every option is optional: with none, boto3's standard configuration chain
    applies (credentials from the environment, profiles, SSO or an instance
    role; region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` or the profile;
    endpoints from ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_SQS`` /
    ``AWS_ENDPOINT_URL_SNS``). An option overrides its link of the chain.

    Subclassing: a subclass (such as ``localsqs``) changes defaults by passing
    options to ``super().__init__``, including a ``session`` of its own making
    (:func:`melange_aws.clients.make_session`, e.g. with
    ``environment_profile=False``). Its extension points are the protected
    methods :meth:`_client_config`, :meth:`_create_client` (override it, or
    call it for extra clients), :meth:`_unreachable_hint` and
    :meth:`_known_secrets`, and :attr:`capabilities` per class or instance.
    Other underscored names are internal and may change.

    Timeouts: every call but ReceiveMessage waits ``connect_timeout`` for a
    connection and ``read_timeout`` for the answer, per attempt; a long poll
    runs on a client of its own per wait (:meth:`receive_client`), whose read
    timeout is the wait plus ``read_timeout``. A silent endpoint thus fails a
    publish after about ``max_attempts`` x ``read_timeout`` plus botocore's
    backoff, not minutes.

    Publish outcomes: a SendMessageBatch / PublishBatch that failed after its
    request may have reached the broker (no answer in time, the connection
    reset or closed, a 5xx answer, on any attempt) raises
    :class:`~melange.exceptions.OutcomeUnknown`, so its messages are reported
    *unknown*; one that failed before anything went out (no connection could
    be made) raises :class:`~melange.exceptions.BackendUnavailable`.

    Args:
        region_name: The AWS region, e.g. ``"eu-west-1"``.
        endpoint_url: One endpoint for SQS, SNS and STS (a local emulator).
        sns_endpoint_url: The SNS endpoint, if different from ``endpoint_url``.
        sqs_endpoint_url: The SQS endpoint, if different from ``endpoint_url``.
        profile_name: A profile of ``~/.aws/config`` / ``~/.aws/credentials``.
        aws_access_key_id: An access key id (with ``aws_secret_access_key``).
        aws_secret_access_key: Its secret key; never shown in errors or ``repr``.
        aws_session_token: A session token for temporary credentials.
        max_attempts: Attempts per call, first one included, of botocore's
            "standard" retry mode; botocore's default (3, or ``AWS_MAX_ATTEMPTS``)
            when ``None``.
        max_pool_connections: HTTP connections kept per client (botocore's
            default is 10); raise it for more concurrent consumers.
        connect_timeout: Seconds to wait for a connection, per attempt (5 by default).
        read_timeout: Seconds to wait for an answer, per attempt (10 by
            default); a long poll waits its wait time plus this.
        session: A ready boto3 session to make the clients from (e.g. with
            assumed-role credentials), instead of a profile or keys. It is
            used as it is; sessions the backend makes itself share only
            botocore's read-only data loader with each other.
        **options_7x: melange 7.x's keywords (``extra_settings``, ``sns_settings``,
            ...): each is turned into the melange 8 keyword it meant, with a
            ``DeprecationWarning`` naming it, or refused naming where it went.
        compatible_with_7x: While melange 7.x consumers still read the queues
            (a rolling upgrade): publish in 7.x's format (which 8.x consumers read
            too), subscribe queues to topics without raw delivery, and leave the
            raw delivery of existing subscriptions as it is. Messages in 7.x's
            format are read whatever this says. See docs/upgrading.md.

    Raises:
        ConfigurationError: Options contradict each other, the profile does not
            exist, or no region is configured.
    """

    name = "aws"
    capabilities = Capabilities(
        topics=True,
        dead_letter=True,
        fifo=True,
        dedup=True,
        delay=True,
        batch=True,
        lease_extension=True,
        nack_delay=True,
        filters=True,
        max_message_size=MAX_MESSAGE_SIZE,
        max_batch_size=BATCH_SIZE,
        max_batch_bytes=MESSAGE_LIMIT,
        max_attributes=MAX_ATTRIBUTES,
        max_delay=900.0,
        max_visibility_timeout=43_200.0,
        max_receive_count_range=(1, 1000),
        retention_range=(60.0, 1_209_600.0),
        max_wait_seconds=20.0,
        immutable_queue_settings=frozenset({"fifo"}),
    )
    queue_name_rule = QUEUE_NAME_RULE
    topic_name_rule = TOPIC_NAME_RULE
    broker_label = "SQS"
    receive_count_setting = "the redrive policy's maxReceiveCount"

    def __init__(
        self,
        *,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        sns_endpoint_url: str | None = None,
        sqs_endpoint_url: str | None = None,
        profile_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        max_attempts: int | None = None,
        max_pool_connections: int | None = None,
        session: boto3.session.Session | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        compatible_with_7x: bool = False,
        **options_7x: Unpack[SQSOptions7x],
    ) -> None:
        if options_7x:  # melange 7.x's keywords: turned into these, with a warning each
            given = {
                "endpoint_url": endpoint_url,
                "sns_endpoint_url": sns_endpoint_url,
                "sqs_endpoint_url": sqs_endpoint_url,
                "region_name": region_name,
                "aws_access_key_id": aws_access_key_id,
                "aws_secret_access_key": aws_secret_access_key,
                "aws_session_token": aws_session_token,
            }
            given.update(options_from_7x(self.name, dict(options_7x), given))
            endpoint_url, sns_endpoint_url = given["endpoint_url"], given["sns_endpoint_url"]
            sqs_endpoint_url, region_name = given["sqs_endpoint_url"], given["region_name"]
            aws_access_key_id = given["aws_access_key_id"]
            aws_secret_access_key = given["aws_secret_access_key"]
            aws_session_token = given["aws_session_token"]
        if not isinstance(compatible_with_7x, bool):
            raise ConfigurationError(
                f"compatible_with_7x must be True or False, got {compatible_with_7x!r}"
            )
        self.compatible_with_7x = compatible_with_7x
        settings = ClientSettings(
            region_name=region_name,
            endpoint_url=endpoint_url,
            sns_endpoint_url=sns_endpoint_url,
            sqs_endpoint_url=sqs_endpoint_url,
            profile_name=profile_name,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
            max_attempts=max_attempts,
            max_pool_connections=max_pool_connections,
            session=session,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        settings.validate()
        super().__init__()
        self._settings = settings
        self._secrets = settings.secrets()
        self._session = make_session(settings)
        self._session_lock = threading.Lock()  # boto3 sessions are not thread-safe
        self._config = self._client_config()
        self._sqs: Any = self._create_client("sqs")
        self._sns: Any = self._create_client("sns")
        # Long polls on clients of their own, one per wait (botocore's timeouts are per
        # client): a read timeout that fits a publish would cut them.
        self._receivers: dict[int, Any] = {}
        self._sts: Any = None  # made on first need: only topic lookups use it
        self._sends = SendTracker()
        self._sends.watch(self._sqs)
        self._sends.watch(self._sns)
        # The user info of an endpoint URL is a secret, wherever the URL came from.
        self._url_secrets = tuple(
            secret
            for url in (
                settings.endpoint_url,
                settings.sqs_endpoint_url,
                settings.sns_endpoint_url,
                self._sqs.meta.endpoint_url,
                self._sns.meta.endpoint_url,
            )
            for secret in url_secrets(url)
        )
        self._lock = threading.Lock()
        self._policy_locks: dict[str, threading.Lock] = {}
        # (topic, queue) -> (monotonic time, state): see _subscription_state.
        self._recent_subscriptions: dict[tuple[str, str], tuple[float, _SubscriptionState]] = {}
        self._index = ResourceIndex(
            self._sqs, self._sns, self._sts_client, self._fail, self._valid_name
        )

    # ------------------------------------------------------ extension points
    def _client_config(self) -> Config:
        """Return the botocore Config of every client.

        Extension point: override to add timeouts, proxies...; called once, by
        ``__init__``.
        """
        return client_config(self._settings)

    def _create_client(
        self, service: str, *, endpoint_url: str | None = None, config: Config | None = None
    ) -> Any:
        """Return a new boto3 client for ``"sqs"``, ``"sns"`` or ``"sts"`` from the session.

        Extension point: override to adjust every client the backend makes
        (e.g. register botocore event hooks), or call it to make an extra client
        with the backend's session, region and configuration; the caller closes
        such a client. Thread-safe.

        Args:
            service: The boto3 service name.
            endpoint_url: The endpoint; by default the one configured for ``service``.
            config: Settings merged over :meth:`_client_config`'s, e.g. shorter timeouts.

        Raises:
            ConfigurationError: No region is configured.
        """
        merged = self._config if config is None else self._config.merge(config)
        with self._session_lock:
            return make_client(
                self._session,
                service,
                endpoint_url=endpoint_url or self._settings.endpoint_for(service),
                region_name=self._settings.region_name,
                config=merged,
            )

    def _unreachable_hint(self) -> str:
        """Return how to fix an endpoint that cannot be reached.

        Extension point: ends the message of every BackendUnavailable raised
        because nothing answered; a subclass for a local endpoint says how to
        start one.
        """
        return DEFAULT_UNREACHABLE_HINT

    def _known_secrets(self) -> tuple[str, ...]:
        """Return the credentials in use, wherever they came from, to keep out of messages.

        Extension point: each string returned is replaced by ``<redacted>`` in
        error messages. A subclass whose credentials are public placeholders
        may leave them out (redacting ``"test"`` would mangle resource names).
        """
        secrets = list(self._secrets)
        try:
            # Resolved (and cached by the session) when the clients were made.
            credentials = self._session.get_credentials()
            if credentials is not None:
                secrets += [credentials.access_key, credentials.secret_key, credentials.token]
        except Exception:  # an error message must not fail on its way out
            logger.debug("could not read the session's credentials to redact them")
        return tuple(secret for secret in secrets if secret)

    @property
    def default_max_receive_count(self) -> int:
        """Receives before dead-lettering when ``init_queue`` is not told.

        7.x's 4 with ``compatible_with_7x``, so that a re-init leaves a 7.x
        queue's redrive policy as it was; melange's default otherwise.
        """
        return MAX_RECEIVE_COUNT_7X if self.compatible_with_7x else DEFAULT_MAX_RECEIVE_COUNT

    @property
    def sqs_client(self) -> Any:
        """The boto3 SQS client (e.g. to register botocore event hooks)."""
        return self._sqs

    def receive_client(self, wait_seconds: float = 20.0) -> Any:
        """Return the boto3 SQS client of long polls of ``wait_seconds`` (whole seconds, <= 20).

        Its read timeout is the wait plus ``read_timeout``. It is made on first
        use, with :meth:`_create_client` like every client of the backend.

        Raises:
            BackendClosed: The backend is closed.
        """
        wait = min(max(int(wait_seconds), 0), int(LONG_POLL_SECONDS))
        client = self._receivers.get(wait)
        if client is None:
            with self._lock:  # one client per wait, whichever thread asks first
                if self.closed:
                    raise BackendClosed(self.name, "receive")
                client = self._receivers.get(wait)
                if client is None:
                    config = long_poll_config(self._settings, wait)
                    client = self._receivers[wait] = self._create_client("sqs", config=config)
        return client

    @property
    def sns_client(self) -> Any:
        """The boto3 SNS client."""
        return self._sns

    @property
    def region_name(self) -> str:
        """The region the clients talk to."""
        return str(self._sqs.meta.region_name)

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return (
            f"<{type(self).__name__} {self.name!r} region={self.region_name!r} "
            f"sqs={safe_endpoint(self._sqs.meta.endpoint_url)!r} "
            f"sns={safe_endpoint(self._sns.meta.endpoint_url)!r}{state}>"
        )

    def _sts_client(self) -> Any:
        with self._lock:  # made once, whichever thread needs it first
            if self._sts is None:
                self._sts = self._create_client("sts")
            return self._sts

    def _valid_name(self, kind: str, name: str) -> bool:
        rule = self.queue_name_rule if kind == "queue" else self.topic_name_rule
        try:
            rule.check(kind, name, is_fifo_name(name))
        except InvalidName:
            return False
        return True

    # ---------------------------------------------------------------- errors
    def _fail(
        self,
        error: Exception,
        action: str,
        client: Any,
        *,
        queue: str | None = None,
        topic: str | None = None,
    ) -> NoReturn:
        """Raise the melange error for ``error``, which happened trying to ``action``."""
        if self.closed:  # the clients were closed under a call in flight
            raise BackendClosed(self.name, action) from None
        raise_translated(error, self._context(action, client, queue=queue, topic=topic))

    def _context(
        self,
        action: str,
        client: Any,
        *,
        queue: str | None = None,
        topic: str | None = None,
        size: int | None = None,
    ) -> ErrorContext:
        endpoint = str(client.meta.endpoint_url)
        return ErrorContext(
            action=action,
            endpoint=endpoint,
            queue=queue,
            topic=topic,
            size=size,
            unreachable_hint=self._unreachable_hint(),
            backend_name=self.name,
            secrets=self._known_secrets() + self._url_secrets + url_secrets(endpoint),
            service=_service_label(client),
            read_timeout=getattr(client.meta.config, "read_timeout", None),
        )

    def _send(
        self,
        call: Callable[..., Any],
        action: str,
        client: Any,
        *,
        queue: str | None = None,
        topic: str | None = None,
        **params: Any,
    ) -> Any:
        """Make a call that stores messages; return its response.

        Raises:
            OutcomeUnknown: The call failed, but an attempt may have reached the
                broker (see :mod:`melange_aws.outcomes`).
            MelangeError: The call failed before anything could be stored.
        """
        self._sends.start()
        try:
            return call(**params)
        except BOTO_ERRORS as error:
            code = error_code(error)
            if code in QUEUE_MISSING and queue is not None:
                self._index.forget_queue(queue)
            if code in TOPIC_MISSING and topic is not None:
                self._index.forget_topic(topic)
            if not (self._sends.reached or may_have_reached(error)):
                self._fail(error, action, client, queue=queue, topic=topic)
            context = self._context(action, client, queue=queue, topic=topic)
            unknown = outcome_unknown(error, context, self._sends.failures)
            if is_sensitive(error, context.secrets):
                raise_unchained(unknown)
            raise unknown from error

    # ------------------------------------------------------------ validation
    def validate_queue(self, spec: QueueSpec) -> None:
        """Refuse what SQS would refuse: names, fractional seconds, dead-letter mismatches."""
        super().validate_queue(spec)
        for setting in ("visibility_timeout", "message_retention_period", "delay_seconds"):
            value = require_number(setting, getattr(spec, setting))
            if not float(value).is_integer():
                raise InvalidTopology(
                    f"{setting}={value!r} on queue {spec.name!r}: SQS takes whole seconds; "
                    f"use e.g. {setting}={math.ceil(value)}"
                )

    def validate_subscription(
        self, topic: TopicSpec, queue: QueueSpec, subscription: SubscriptionSpec
    ) -> None:
        """Refuse what SNS refuses: a FIFO queue on a standard topic, oversized filters.

        A FIFO topic may deliver to a standard queue (SNS supports it, with
        best-effort order and at-least-once delivery there).
        """
        filters.check(subscription)
        if queue.fifo and not topic.fifo:
            raise InvalidTopology(
                f"FIFO queue {queue.name!r} cannot subscribe to standard topic {topic.name!r}: "
                "SNS delivers to FIFO queues only from FIFO topics. Subscribe it to a FIFO "
                f"topic (e.g. {topic.name + '.fifo'!r}) or use a standard queue"
            )

    def validate_message(self, message: OutgoingMessage) -> int:
        """Check ``message`` against SQS/SNS rules; return its size as AWS counts it.

        On top of the common checks: attribute names and values as SQS/SNS accept
        them, group and deduplication id format, and the encoded size (a binary
        body travels as base64, a third larger) within 256 KiB.
        """
        super().validate_message(message)
        size = check_message(message, self.name)
        if self.compatible_with_7x:
            size = self._check_7x_message(message, size)
        return size

    def _check_7x_message(self, message: OutgoingMessage, size: int) -> int:
        """With ``compatible_with_7x``: room for 7.x's two attributes and its queue wrapper."""
        if len(message.attributes) + ATTRIBUTES_7X > MAX_ATTRIBUTES:
            raise InvalidMessage(
                f"{len(message.attributes)} attributes (melange's own included) leave no room "
                f"for the {ATTRIBUTES_7X} that melange 7.x consumers need "
                f"(compatible_with_7x=True): at most {MAX_ATTRIBUTES - ATTRIBUTES_7X}; drop "
                "some, or turn compatible_with_7x off once no 7.x consumer is left"
            )
        text, _ = encode_body(message.body)
        attributes = dict(message.attributes)
        legacy = write_7x(text, attributes, queue=True)  # the larger form: queue messages
        grown = size + len(legacy.encode()) - len(text.encode())
        grown += sum(
            len(name) + len(STRING_TYPE) + len(attributes[name].encode())
            for name in attributes.keys() - message.attributes.keys()
        )
        if grown > MESSAGE_LIMIT:
            raise MessageTooLarge(grown, MESSAGE_LIMIT, self.name)
        return grown

    # --------------------------------------------------------------- queues
    def _get_queue(self, name: str) -> QueueSpec | None:
        attributes = self._index.queue_attributes(name, ["All"])
        if attributes is None:
            return None
        dead_letter = self._dead_letter_policy(attributes)
        return QueueSpec(
            name,
            fifo=attributes.get("FifoQueue") == "true",
            visibility_timeout=float(attributes.get("VisibilityTimeout", 30)),
            message_retention_period=float(attributes.get("MessageRetentionPeriod", 345_600)),
            delay_seconds=float(attributes.get("DelaySeconds", 0)),
            dead_letter=dead_letter,
        )

    def _queue_drift(self, spec: QueueSpec) -> tuple[Change, ...]:
        """A dead-letter queue that no longer admits the queue (its RedriveAllowPolicy)."""
        if spec.dead_letter is None:
            return ()
        attributes = self._index.queue_attributes(spec.name, ["QueueArn", "RedrivePolicy"])
        current = None if attributes is None else self._dead_letter_policy(attributes)
        if attributes is None or current is None:
            return ()  # the queue's own settings show that difference already
        if self._admitted(spec.name, attributes, current):
            return ()
        change = Change(
            "dead_letter_admission",
            f"{current.queue_name} does not admit it (RedriveAllowPolicy)",
            f"{current.queue_name} admits it",
        )
        return (change,)

    def _admitted(
        self, name: str, attributes: Mapping[str, str], dead_letter: DeadLetterPolicy
    ) -> bool:
        """Whether the queue's dead-letter queue admits it (its RedriveAllowPolicy).

        One more read, only for a queue with a dead-letter queue in its own account
        and region; a dead-letter queue that is gone, or elsewhere, counts as admitting
        (the factory creates a missing one; one elsewhere never looks converged anyway).
        """
        try:
            target = self._index.queue_attributes(dead_letter.queue_name, ["All"])
        except MelangeError as error:
            # A consumer's least-privilege role may not read the dead-letter queue: that
            # must not fail get_queue (the dispatcher's start). declare_queue checks for sure.
            logger.debug(
                "could not read dead-letter queue %r to check that it admits %r: %s",
                dead_letter.queue_name,
                name,
                error,
            )
            return True
        if target is None or not attributes.get("QueueArn"):
            return True
        if redrive.admits(target.get("RedriveAllowPolicy"), attributes["QueueArn"]):
            return True
        logger.warning(
            "dead-letter queue %r does not admit queue %r as a source (its RedriveAllowPolicy "
            "is %s); init_queue admits it again",
            dead_letter.queue_name,
            name,
            target.get("RedriveAllowPolicy"),
        )
        return False

    @staticmethod
    def _dead_letter_policy(attributes: Mapping[str, str]) -> DeadLetterPolicy | None:
        redrive_policy = attributes.get("RedrivePolicy")
        if not redrive_policy:
            return None
        try:
            document = json.loads(redrive_policy)
            target = str(document["deadLetterTargetArn"])
            count = int(document["maxReceiveCount"])
        except (ValueError, KeyError, TypeError):
            # Unreadable: report something no declaration equals, so init rewrites it.
            return DeadLetterPolicy(f"<unreadable RedrivePolicy {redrive_policy!r}>", 0)
        own_arn = attributes.get("QueueArn", "")
        # A dead-letter queue in another account or region shows as its ARN, not a name.
        same_place = not own_arn or arn_prefix(own_arn) == arn_prefix(target)
        return DeadLetterPolicy(name_from_arn(target) if same_place else target, count)

    def _settable_attributes(self, spec: QueueSpec) -> dict[str, str]:
        attributes = {
            "VisibilityTimeout": str(int(spec.visibility_timeout)),
            "MessageRetentionPeriod": str(int(spec.message_retention_period)),
            "DelaySeconds": str(int(spec.delay_seconds)),
            "RedrivePolicy": "",  # "" removes a policy nobody declared
        }
        if spec.dead_letter is not None:
            redrive_policy = {
                "deadLetterTargetArn": self._admit_to_dead_letter(spec.name, spec.dead_letter),
                "maxReceiveCount": spec.dead_letter.max_receive_count,
            }
            attributes["RedrivePolicy"] = json.dumps(redrive_policy)
        return attributes

    def _admit_to_dead_letter(self, name: str, dead_letter: DeadLetterPolicy) -> str:
        """Make the dead-letter queue's RedriveAllowPolicy admit queue ``name``; return its ARN.

        Done before the queue's RedrivePolicy names the dead-letter queue, even before
        the queue exists: its ARN is the dead-letter queue's account and region plus
        its name.
        """
        dlq = dead_letter.queue_name
        with self._policy_lock(dlq):  # read-modify-write: one thread at a time
            target = self._index.queue_attributes(dlq, ["All"])
            if target is None:
                raise QueueNotFound(
                    dlq,
                    f"it is the dead-letter queue of {name!r}; create it first "
                    "(MessagingBackendFactory.init_queue creates both)",
                )
            target_arn = target["QueueArn"]
            updated = redrive.admitting(
                target.get("RedriveAllowPolicy"),
                arn_prefix(target_arn) + name,
                queue=name,
                dead_letter_queue=dlq,
            )
            if updated is not None:
                url = self._index.require_queue_url(dlq)
                try:
                    self._sqs.set_queue_attributes(
                        QueueUrl=url, Attributes={"RedriveAllowPolicy": updated}
                    )
                except BOTO_ERRORS as error:
                    action = f"let dead-letter queue {dlq!r} admit queue {name!r}"
                    self._fail(error, action, self._sqs, queue=dlq)
                logger.info("dead-letter queue %r now admits queue %r", dlq, name)
            return target_arn

    def _check_plan(self, actions: tuple[Action, ...]) -> None:
        """Refuse a dead-letter queue that cannot admit its queue before the plan makes anything.

        Its RedriveAllowPolicy is changed only when the queue's turn comes, after
        the plan's topics; one that already admits the most queues SQS allows (or
        is unreadable) would otherwise stop the plan half way.
        """
        created = {a.target for a in actions if a.kind == "create_queue"}
        for action in actions:
            spec = action.spec
            if not isinstance(spec, QueueSpec) or spec.dead_letter is None:
                continue
            dlq = spec.dead_letter.queue_name
            if dlq in created:
                continue  # a new queue has no RedriveAllowPolicy: it admits every queue
            target = self._index.queue_attributes(dlq, ["All"])
            if target is None:
                raise QueueNotFound(
                    dlq,
                    f"it is the dead-letter queue of {spec.name!r}; create it first "
                    "(MessagingBackendFactory.init_queue creates both)",
                )
            redrive.admitting(  # raises what _admit_to_dead_letter would, writes nothing
                target.get("RedriveAllowPolicy"),
                arn_prefix(target["QueueArn"]) + spec.name,
                queue=spec.name,
                dead_letter_queue=dlq,
            )

    def _declare_queue(self, spec: QueueSpec) -> None:
        attributes = self._settable_attributes(spec)
        url = self._index.queue_url(spec.name)
        if url is None:
            created = {key: value for key, value in attributes.items() if value}
            if spec.fifo:
                created["FifoQueue"] = "true"
            try:
                response = self._sqs.create_queue(QueueName=spec.name, Attributes=created)
            except BOTO_ERRORS as error:
                if error_code(error) not in QUEUE_EXISTS:
                    self._fail(error, f"create queue {spec.name!r}", self._sqs, queue=spec.name)
                # Created meanwhile with other settings (a concurrent init): converge it.
                url = self._index.require_queue_url(spec.name)
            else:
                self._index.remember_queue(spec.name, str(response["QueueUrl"]))
                logger.debug("created queue %r", spec.name)
                return
        try:
            self._sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        except BOTO_ERRORS as error:
            if error_code(error) in QUEUE_MISSING:
                self._index.forget_queue(spec.name)
            self._fail(error, f"update queue {spec.name!r}", self._sqs, queue=spec.name)
        logger.debug("set the attributes of queue %r", spec.name)

    def _delete_queue(self, name: str) -> None:
        missing = QueueNotFound(name, "nothing was deleted; check the name")
        url = self._index.queue_url(name)
        if url is None:
            raise missing
        try:
            self._sqs.delete_queue(QueueUrl=url)
        except BOTO_ERRORS as error:
            self._index.forget_queue(name)
            if error_code(error) in QUEUE_MISSING:
                raise missing from None
            self._fail(error, f"delete queue {name!r}", self._sqs, queue=name)
        self._index.forget_queue(name)
        with self._lock:
            self._policy_locks.pop(name, None)

    # --------------------------------------------------------------- topics
    def _get_topic(self, name: str) -> TopicSpec | None:
        attributes = self._index.topic_attributes(name)
        if attributes is None:
            return None
        return TopicSpec(name, fifo=attributes.get("FifoTopic") == "true")

    def _declare_topic(self, spec: TopicSpec) -> None:
        attributes = {"FifoTopic": "true"} if spec.fifo else {}
        try:
            response = self._sns.create_topic(Name=spec.name, Attributes=attributes)
        except BOTO_ERRORS as error:
            self._fail(error, f"create topic {spec.name!r}", self._sns, topic=spec.name)
        self._index.remember_topic(spec.name, str(response["TopicArn"]))
        logger.debug("created topic %r", spec.name)

    def _delete_topic(self, name: str) -> None:
        try:
            arn = self._index.require_topic_arn(name)
        except TopicNotFound:
            raise TopicNotFound(name, "nothing was deleted; check the name") from None
        try:
            self._sns.delete_topic(TopicArn=arn)
        except BOTO_ERRORS as error:
            self._fail(error, f"delete topic {name!r}", self._sns, topic=name)
        finally:
            self._index.forget_topic(name)

    # -------------------------------------------------------- subscriptions
    def _subscription_state(
        self, topic_name: str, queue_name: str, *, fresh: bool = True
    ) -> _SubscriptionState:
        """The subscription's SNS attributes, the queue's policy and whether it admits the topic.

        ``None`` when the queue, the topic or the subscription does not exist. With
        ``fresh=False`` a state read within the last second is reused: the factory
        asks get_subscription and then subscription_drift about the same subscription,
        and ListSubscriptionsByTopic pages through every subscription of the topic.
        """
        key = (topic_name, queue_name)
        if not fresh:
            recent = self._recent_subscriptions.get(key)
            if recent is not None and time.monotonic() - recent[0] < 1.0:
                return recent[1]
        state = self._read_subscription_state(topic_name, queue_name)
        self._recent_subscriptions[key] = (time.monotonic(), state)
        return state

    def _read_subscription_state(self, topic_name: str, queue_name: str) -> _SubscriptionState:
        queue = self._index.queue_attributes(queue_name, ["QueueArn", "Policy"])
        topic_arn = self._index.topic_arn(topic_name)
        if queue is None or topic_arn is None:
            return None
        queue_arn = queue["QueueArn"]
        try:
            subscription_arn = self._index.find_subscription(topic_name, topic_arn, queue_arn)
        except TopicNotFound:
            return None
        if subscription_arn is None:
            return None
        attributes = self._index.subscription_attributes(subscription_arn, topic_name)
        if attributes is None:
            return None
        admitted = topic_arn in policy.admitted_topics(queue.get("Policy"), queue_arn)
        return dict(attributes), queue.get("Policy"), admitted

    def _get_subscription(self, topic_name: str, queue_name: str) -> SubscriptionSpec | None:
        state = self._subscription_state(topic_name, queue_name)
        if state is None:
            return None
        filter_policy = state[0].get("FilterPolicy") or None
        return SubscriptionSpec(topic_name, queue_name, filters.from_policy(filter_policy))

    def _subscription_drift(self, spec: SubscriptionSpec) -> tuple[Change, ...]:
        """Raw delivery, the filter policy's scope and the queue policy: what melange sets."""
        state = self._subscription_state(spec.topic_name, spec.queue_name, fresh=False)
        if state is None:
            return ()
        attributes, _, admitted = state
        changes: list[Change] = []
        raw = attributes.get("RawMessageDelivery", "false")
        if raw != "true" and not self.compatible_with_7x:  # 7.x consumers need the envelope
            changes.append(Change("RawMessageDelivery", raw, "true"))
        scope = attributes.get("FilterPolicyScope") or "MessageAttributes"
        if attributes.get("FilterPolicy") and scope != "MessageAttributes":
            changes.append(Change("FilterPolicyScope", scope, "MessageAttributes"))
        if not admitted:
            changes.append(Change("queue policy", "does not admit the topic", "admits the topic"))
        return tuple(changes)

    def _policy_lock(self, queue_name: str) -> threading.Lock:
        with self._lock:
            return self._policy_locks.setdefault(queue_name, threading.Lock())

    def _admit_topic(self, queue_name: str, topic_arn: str) -> str:
        """Make the queue's policy admit the topic; return the queue's ARN."""
        with self._policy_lock(queue_name):  # read-modify-write: one thread at a time
            queue = self._index.queue_attributes(queue_name, ["QueueArn", "Policy"])
            if queue is None:
                raise QueueNotFound(queue_name)
            queue_arn = queue["QueueArn"]
            updated = policy.with_topic(queue.get("Policy"), queue_arn, topic_arn)
            if updated is not None:
                url = self._index.require_queue_url(queue_name)
                try:
                    self._sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": updated})
                except BOTO_ERRORS as error:
                    action = f"update the access policy of queue {queue_name!r}"
                    self._fail(error, action, self._sqs, queue=queue_name)
                logger.debug("queue %r now admits deliveries from %s", queue_name, topic_arn)
            return queue_arn

    def _subscribe(self, spec: SubscriptionSpec) -> None:
        self._recent_subscriptions.pop((spec.topic_name, spec.queue_name), None)
        topic_arn = self._index.require_topic_arn(spec.topic_name)
        # The policy first: SNS may deliver as soon as the subscription exists.
        queue_arn = self._admit_topic(spec.queue_name, topic_arn)
        action = f"subscribe queue {spec.queue_name!r} to topic {spec.topic_name!r}"
        subscription_arn = self._index.find_subscription(spec.topic_name, topic_arn, queue_arn)
        if subscription_arn is None:
            # 7.x consumers read SNS's envelope, not the raw message.
            attributes = {"RawMessageDelivery": "false" if self.compatible_with_7x else "true"}
            if spec.filter is not None:
                attributes["FilterPolicyScope"] = "MessageAttributes"
                attributes["FilterPolicy"] = filters.to_policy(spec.filter)
            try:
                self._sns.subscribe(
                    TopicArn=topic_arn,
                    Protocol="sqs",
                    Endpoint=queue_arn,
                    Attributes=attributes,
                    ReturnSubscriptionArn=True,
                )
            except BOTO_ERRORS as error:
                # "Already exists with different attributes": made meanwhile; converge it.
                subscription_arn = self._index.find_subscription(
                    spec.topic_name, topic_arn, queue_arn
                )
                if subscription_arn is None:
                    self._fail(error, action, self._sns, topic=spec.topic_name)
            else:
                logger.debug("subscribed queue %r to topic %r", spec.queue_name, spec.topic_name)
                return
        self._converge_subscription(subscription_arn, spec, action)

    def _converge_subscription(self, arn: str, spec: SubscriptionSpec, action: str) -> None:
        """Set the attributes of an existing subscription that differ from ``spec``."""
        current = self._index.subscription_attributes(arn, spec.topic_name) or {}
        changes: list[tuple[str, str]] = []
        if current.get("RawMessageDelivery") != "true" and not self.compatible_with_7x:
            changes.append(("RawMessageDelivery", "true"))
        if filters.from_policy(current.get("FilterPolicy")) != spec.filter:
            changes.append(("FilterPolicy", filters.to_policy(spec.filter)))  # "" removes it
        scope = current.get("FilterPolicyScope") or "MessageAttributes"
        if spec.filter is not None and scope != "MessageAttributes":
            # After the policy: melange's flat policy is valid in either scope.
            changes.append(("FilterPolicyScope", "MessageAttributes"))
        for name, value in changes:
            try:
                self._sns.set_subscription_attributes(
                    SubscriptionArn=arn, AttributeName=name, AttributeValue=value
                )
            except BOTO_ERRORS as error:
                self._fail(error, action, self._sns, topic=spec.topic_name)
        logger.debug("converged the subscription of %r to %r", spec.queue_name, spec.topic_name)

    # ---------------------------------------------------------------- publish
    def validate_batch(
        self, destination: Literal["queue", "topic"], name: str, batch: Sequence[OutgoingMessage]
    ) -> None:
        """Refuse what SQS/SNS refuse per destination, before anything is sent.

        A per-message delay on a FIFO queue or on any topic (SNS has none), and a
        ``dedup_id`` on a standard queue or topic.
        """
        check_destination(
            destination, name, is_fifo_name(require_str(f"{destination}_name", name)), batch
        )

    def _entry(
        self, index: int, message: OutgoingMessage, fifo: bool, body_key: str
    ) -> dict[str, Any]:
        """Return one SendMessageBatch (``"MessageBody"``) or PublishBatch (``"Message"``) entry."""
        text, encoding = encode_body(message.body)
        attributes: Mapping[str, str] = message.attributes
        if self.compatible_with_7x:
            attributes = dict(attributes)
            text = write_7x(text, attributes, queue=body_key == "MessageBody")
        entry: dict[str, Any] = {"Id": str(index), body_key: text}
        if attributes or encoding is not None:
            entry["MessageAttributes"] = message_attributes(attributes, encoding)
        if fifo:
            entry["MessageGroupId"] = message.group_id or DEFAULT_GROUP_ID
            # An explicit dedup_id, else the producer id, which melange's publishers assign
            # once per message: a publish retried after an unknown outcome is then dropped
            # by SQS/SNS. A message without either gets a unique id.
            dedup_id = message.dedup_id or message.attributes.get(PRODUCER_ID_ATTRIBUTE)
            entry["MessageDeduplicationId"] = (
                uuid.uuid4().hex if dedup_id is None else deduplication_id(dedup_id)
            )
        elif message.group_id is not None:
            entry["MessageGroupId"] = message.group_id  # fair queues on standard queues
        if message.delay_seconds:  # publish() lets it through for standard queues only
            entry["DelaySeconds"] = math.ceil(message.delay_seconds)
        return entry

    def _results(
        self,
        batch: list[OutgoingMessage],
        response: Mapping[str, Any],
        error_context: Callable[[], ErrorContext],
    ) -> list[PublishResult]:
        """One result per message of ``batch`` from a batch response, in order.

        A message the answer names neither as successful nor as failed is
        *unknown*: an answer cut short (a proxy, a dropped connection after the
        status line) reads as an empty success, yet SQS may have stored it.

        ``error_context`` is called only when something failed: building it on every
        successful publish showed up in the SQS benchmark's profile.
        """
        accepted = _entries_by_index(response.get("Successful"), len(batch))
        if len(accepted) == len(batch):  # the common case: no error context needed
            return [
                PublishResult(index, str(accepted[index].get("MessageId", "")))
                for index in range(len(batch))
            ]
        results: list[PublishResult | None] = [None] * len(batch)
        for index, entry in accepted.items():
            results[index] = PublishResult(index, str(entry.get("MessageId", "")))
        context = error_context()
        for index, refused in _entries_by_index(response.get("Failed"), len(batch)).items():
            if results[index] is not None:
                continue
            message = batch[index]
            size = wire_size(message.body, message.attributes)
            error = entry_error(
                str(refused.get("Code", "Unknown")),
                str(refused.get("Message", "")),
                dataclasses.replace(context, size=size),
            )
            results[index] = PublishResult(index, error=error)
        if any(result is None for result in results):
            unknown = OutcomeUnknown(
                f"{context.service} answered the request to {context.action} without a result "
                "for some of its messages (an answer cut short?): they may have been stored; "
                "sent again, they may arrive twice (a consumer's deduplication cache handles "
                "that: it keys on the producer id)"
            )
            logger.debug("%s's answer to %s: %r", context.service, context.action, response)
        return [
            PublishResult(index, error=unknown) if result is None else result
            for index, result in enumerate(results)
        ]

    def _publish_batch(self, queue_name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        url = self._index.require_queue_url(queue_name)
        fifo = is_fifo_name(queue_name)
        entries = [self._entry(index, m, fifo, "MessageBody") for index, m in enumerate(batch)]
        action = f"publish to queue {queue_name!r}"
        response = self._send(
            self._sqs.send_message_batch,
            action,
            self._sqs,
            queue=queue_name,
            QueueUrl=url,
            Entries=entries,
        )
        return self._results(
            batch, response, functools.partial(self._context, action, self._sqs, queue=queue_name)
        )

    def _publish_topic_batch(
        self, topic_name: str, batch: list[OutgoingMessage]
    ) -> list[PublishResult]:
        arn = self._index.topic_arn(topic_name)
        if arn is None:
            raise TopicNotFound(topic_name)
        fifo = is_fifo_name(topic_name)
        entries = [self._entry(index, m, fifo, "Message") for index, m in enumerate(batch)]
        action = f"publish to topic {topic_name!r}"
        response = self._send(
            self._sns.publish_batch,
            action,
            self._sns,
            topic=topic_name,
            TopicArn=arn,
            PublishBatchRequestEntries=entries,
        )
        return self._results(
            batch, response, functools.partial(self._context, action, self._sns, topic=topic_name)
        )

    # ---------------------------------------------------------------- receive
    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        if not math.isfinite(wait_seconds):
            raise InvalidArgument("wait_seconds", "a finite number of seconds", wait_seconds)
        url = self._index.require_queue_url(queue_name)
        receiver = self.receive_client(wait_seconds)
        try:
            response = receiver.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=min(max_messages, BATCH_SIZE),
                WaitTimeSeconds=int(wait_seconds),  # whole seconds, never longer than asked
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=SYSTEM_ATTRIBUTES,
            )
        except BOTO_ERRORS as error:
            if error_code(error) in QUEUE_MISSING:
                self._index.forget_queue(queue_name)
            action = f"receive from queue {queue_name!r}"
            self._fail(error, action, receiver, queue=queue_name)
        received: list[ReceivedMessage] = []
        for raw in response.get("Messages", []):
            decoded = decode_message(raw)
            count = (raw.get("Attributes") or {}).get("ApproximateReceiveCount", "1")
            received.append(
                ReceivedMessage(
                    queue_name,
                    decoded.body,
                    decoded.attributes,
                    str(raw.get("MessageId", "")),
                    int(count),
                    decoded.group_id,
                    AWSReceipt(url, str(raw.get("ReceiptHandle", "")), raw),
                )
            )
        return received

    # ------------------------------------------------------------------ settle
    def _settle(
        self, messages: list[ReceivedMessage], operation: str, visibility: int | None
    ) -> list[tuple[ReceivedMessage, str]]:
        """Delete deliveries (``visibility=None``) or change their visibility.

        Returns:
            The deliveries SQS no longer accepts (received again or deleted since,
            or their queue is gone), each with the reason.

        Raises:
            MelangeError: SQS refused for another reason; raised after every
                chunk was tried, so one bad entry does not hold back the others.
        """
        lost: list[tuple[ReceivedMessage, str]] = []
        first_error: MelangeError | None = None
        for url, deliveries in receipts.by_queue(messages).items():
            for chunk in receipts.chunks(deliveries):
                queue_name = chunk[0][0].queue_name
                action = f"{operation} messages of queue {queue_name!r}"
                entries: list[dict[str, Any]] = [
                    {"Id": str(index), "ReceiptHandle": handle}
                    for index, (_, handle) in enumerate(chunk)
                ]
                try:
                    if visibility is None:
                        response = self._sqs.delete_message_batch(QueueUrl=url, Entries=entries)
                    else:
                        for entry in entries:
                            entry["VisibilityTimeout"] = visibility
                        response = self._sqs.change_message_visibility_batch(
                            QueueUrl=url, Entries=entries
                        )
                except BOTO_ERRORS as error:
                    if error_code(error) not in QUEUE_MISSING:
                        self._fail(error, action, self._sqs, queue=queue_name)
                    self._index.forget_queue(queue_name)
                    lost.extend((message, "its queue no longer exists") for message, _ in chunk)
                    continue
                for refused in response.get("Failed", []):
                    message = chunk[int(refused["Id"])][0]
                    code = str(refused.get("Code", "Unknown"))
                    text = str(refused.get("Message", ""))
                    if receipts.receipt_refused(code, text):
                        lost.append((message, f"SQS no longer accepts its receipt ({code})"))
                    elif first_error is None:
                        context = self._context(action, self._sqs, queue=queue_name)
                        first_error = entry_error(code, text, context)
        if first_error is not None:
            raise first_error
        return lost

    def _ack(self, messages: list[ReceivedMessage]) -> None:
        # A receipt SQS no longer accepts settles nothing, as on the memory backend:
        # whoever received the message since holds the current receipt.
        self._settle(messages, "acknowledge", None)

    def _nack(self, messages: list[ReceivedMessage], delay_seconds: float) -> None:
        self._settle(messages, "release", math.ceil(delay_seconds))

    def _extend_lease(self, messages: list[ReceivedMessage], seconds: float) -> None:
        # Whole seconds, rounded up: the lease lasts at least as long as asked.
        lost = self._settle(messages, "extend the lease of", math.ceil(seconds))
        if lost:
            message, reason = lost[0]
            raise LeaseLost(message.message_id, message.queue_name, reason)

    # ---------------------------------------------------------------- forward
    def _forward(
        self, queue_name: str, message: ReceivedMessage, extra_attributes: dict[str, str]
    ) -> PublishResult:
        """Send the message's wire form, exactly as SQS delivered it, to ``queue_name``.

        The body text and every attribute with its data type (Binary values as
        bytes) go back as received, so nothing melange decoded on receipt (a
        ``melange.body-encoding`` body, an SNS envelope, Number and Binary
        attributes) is altered. The group is kept; a FIFO target deduplicates
        the copy by the original's message id. ``extra_attributes`` are added
        only within SQS's 10 attributes and 256 KiB.

        Returns:
            The copy's result; refused (with the error) when SQS refuses the copy.

        Raises:
            QueueNotFound: ``queue_name`` does not exist.
            OutcomeUnknown: The copy may have been stored, but no answer came.
            BackendUnavailable: SQS could not be reached; nothing was sent.
        """
        receipt = message.receipt
        wire = receipt.wire if isinstance(receipt, AWSReceipt) else None
        if not isinstance(wire, Mapping) or not isinstance(wire.get("Body"), str):
            # Not received here as it came (built by hand, or by another backend).
            return super()._forward(queue_name, message, extra_attributes)
        url = self._index.require_queue_url(queue_name)
        params = send_message_params(
            wire,
            extra_attributes,
            fifo=is_fifo_name(queue_name),
            message_id=str(message.message_id),
        )
        action = f"copy message {message.message_id!r} to queue {queue_name!r}"
        try:
            response = self._send(
                self._sqs.send_message, action, self._sqs, queue=queue_name, QueueUrl=url, **params
            )
        except (QueueNotFound, BackendUnavailable, BackendClosed):
            raise
        except MelangeError as refused:  # SQS refused this copy: a result, not a failure
            return PublishResult(0, error=refused)
        return PublishResult(0, str(response["MessageId"]))

    # ------------------------------------------------------------------ moves
    move_task_timeout: float = moves.MOVE_TASK_TIMEOUT
    """Seconds a whole-queue redrive waits for its SQS message move task to end."""

    def _move_all(
        self, source: str, target: str, on_progress: Callable[[int], None] | None
    ) -> int | None:
        """Move all of dead-letter queue ``source`` to ``target`` with an SQS message move task.

        ``None`` (the generic path) when the endpoint cannot start one; see
        :mod:`melange_aws.moves`.
        """
        source_arn, target_arn = self._index.queue_arn(source), self._index.queue_arn(target)
        if source_arn is None:
            raise QueueNotFound(source, "the dead-letter queue to redrive must exist")
        if target_arn is None:
            raise QueueNotFound(target, "the redrive target must exist")
        return moves.move_all(
            self._sqs,
            source=source,
            target=target,
            source_arn=source_arn,
            target_arn=target_arn,
            fail=lambda error, action: self._fail(error, action, self._sqs, queue=source),
            on_progress=on_progress,
            timeout=self.move_task_timeout,
            secrets=self._known_secrets() + self._url_secrets,
        )

    def _close(self) -> None:
        with self._lock:  # no receive client is made after this
            receivers = list(self._receivers.values())
        for client in (self._sqs, self._sns, self._sts, *receivers):
            if client is not None:
                client.close()


def _entries_by_index(entries: object, count: int) -> dict[int, Mapping[str, Any]]:
    """Index the ``Successful`` or ``Failed`` entries of a batch answer by their ``Id``.

    Entries that name no message of the batch (an answer that is not SQS's or
    SNS's, or garbled) are left out, so their messages count as unknown.
    """
    indexed: dict[int, Mapping[str, Any]] = {}
    if not isinstance(entries, list):
        return indexed
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        entry_id = entry.get("Id")
        if isinstance(entry_id, str) and entry_id.isdigit() and int(entry_id) < count:
            indexed.setdefault(int(entry_id), entry)
    return indexed


def _service_label(client: Any) -> str:
    """Return ``"SQS"``, ``"SNS"`` or ``"STS"`` for a boto3 client, as messages name it."""
    service_id = getattr(getattr(client.meta, "service_model", None), "service_id", None)
    return str(service_id) if service_id else "AWS"


def options_from_7x(
    backend: str, options_7x: dict[str, Any], given: Mapping[str, Any]
) -> dict[str, Any]:
    """Turn melange 7.x keywords of a backend's constructor into its melange 8 keywords.

    Raises:
        ConfigurationError: A 7.x keyword is invalid or moved elsewhere (see
            :func:`melange.compat.sqs_options.sqs_options_from_7x`), or sets what a
            melange 8 keyword in ``given`` set already.
    """
    from melange.compat.sqs_options import sqs_options_from_7x  # only for 7.x keywords

    converted = sqs_options_from_7x(backend, options_7x)
    for key in converted:
        if given.get(key) is not None:
            raise ConfigurationError(
                f"{key} is set twice: as {key}= and through melange 7.x's "
                f"{', '.join(sorted(options_7x))}; keep {key}= alone"
            )
    return converted
