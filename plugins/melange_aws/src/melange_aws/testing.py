"""Conformance helpers for backends built on :class:`~melange_aws.AWSBackend`.

Two things the shared suite (``melange.testing.conformance``) cannot know about SQS:

- :class:`SQSForeignProducerConformance`, a mixin of tests of messages from other
  producers (raw SQS bodies, SNS envelopes from subscriptions without raw delivery);
- :class:`SQSHandChanges`, the plugin's hands for the suite's convergence test
  (:mod:`melange.testing.conformance.convergence`): it changes, and reads back,
  every setting melange manages on SQS and SNS with plain boto3 calls.

A plugin built on ``AWSBackend`` (``localsqs``, or a third party's) uses both::

    class TestMyBackend(ConformanceSuite, SQSForeignProducerConformance):
        @pytest.fixture
        def melange_hand_changes(self, melange_backend):
            return SQSHandChanges.of(melange_backend)

It needs pytest, like the rest of the conformance suite.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from melange.consumers import consumer
from melange.dispatcher import MessageDispatcher
from melange.factory import MessagingBackendFactory
from melange.message import DEAD_LETTER_REASON_ATTRIBUTE, Message
from melange.serializers import SerializerRegistry
from melange.testing.conformance import (
    POLL_TIMEOUT,
    ResourceNames,
    assert_empty,
    drain,
    requires,
    without_dead_letter_reason,
)
from melange.testing.conformance.convergence import DeclaredTopology
from melange.testing.conformance.runtime import ORDER_MANIFEST, Order
from melange.topology import (
    DEFAULT_MAX_RECEIVE_COUNT,
    DeadLetterPolicy,
    QueueSpec,
    SubscriptionSpec,
)
from melange_aws.backend import AWSBackend

__all__ = ["SQSForeignProducerConformance", "SQSHandChanges"]


MOTO_SQS_DEVIATIONS: dict[str, str] = {
    "test_a_stale_receipt_settles_nothing_and_its_lease_is_lost": (
        "moto deletes a message, and changes its visibility, with any receipt handle it ever "
        "issued for it. SQS documents that only the most recent handle is sure to work: a "
        "delete with an earlier one 'succeeds, but the message might not be deleted' "
        "(DeleteMessage), so on SQS a stale ack may or may not remove the message"
    ),
    "test_a_dead_letter_queue_that_is_gone_swallows_nothing": (
        "moto moves a message past maxReceiveCount into a dead-letter queue that was deleted, "
        "so the message is lost; SQS keeps it in the source queue while the redrive target "
        "does not exist"
    ),
}
"""Conformance tests moto fails the same way in-process and as a server, each with the reason."""


class SQSForeignProducerConformance:
    """Tests of messages that other producers put on an SQS queue."""

    @requires("topics")
    def test_dispatcher_takes_raw_sqs_bodies_and_sns_envelopes(
        self,
        melange_backend: AWSBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """Messages of other producers get the dispatcher's documented outcome.

        A melange message wrapped in an SNS envelope (a subscription without raw
        delivery) is handled; a raw JSON body no consumer takes is unhandled; text
        that is not JSON, raw or enveloped, is undecodable. Both go to the DLQ as
        they were received, and the loop goes on.
        """
        backend = melange_backend
        queue, dlq, topic = melange_names.queue(), melange_names.queue("dlq"), melange_names.topic()
        melange_factory.init_queue(queue, dead_letter_queue_name=dlq)
        melange_factory.init_topic(topic)
        sqs, sns = backend.sqs_client, backend.sns_client
        url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        topic_arn = sns.create_topic(Name=topic)["TopicArn"]
        sns.subscribe(  # someone else's subscription, without raw delivery: envelopes
            TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn["Attributes"]["QueueArn"]
        )
        registry = SerializerRegistry()
        registry.bind(Order, ORDER_MANIFEST)
        order = registry.encode(Message(Order(1, "in an envelope"), attributes={"via": "sns"}))
        sns.publish(
            TopicArn=topic_arn,
            Message=order.body.decode(),
            MessageAttributes={
                name: {"DataType": "String", "StringValue": value}
                for name, value in order.attributes.items()
            },
        )
        sns.publish(TopicArn=topic_arn, Message="enveloped text")
        sqs.send_message(
            QueueUrl=url,
            MessageBody='{"legacy": true}',
            MessageAttributes={"count": {"DataType": "Number", "StringValue": "3"}},
        )
        sqs.send_message(QueueUrl=url, MessageBody="raw text")
        handled: list[tuple[object, dict[str, str]]] = []

        @consumer(Order, name="orders")
        def orders(message: Message) -> None:
            handled.append((message.body, dict(message.attributes)))

        dispatcher = MessageDispatcher(
            backend, queue, [orders], registry, wait_seconds=1.0, close_backend=False
        )
        stats = dispatcher.run_until_idle(idle_seconds=1.0, timeout=POLL_TIMEOUT, stop=True)
        assert handled == [(Order(1, "in an envelope"), {"via": "sns"})]
        assert (stats.undecodable, stats.unhandled, stats.dead_lettered) == (2, 1, 3), stats
        copies = drain(backend, dlq, 3)
        dead = {message.body: without_dead_letter_reason(message.attributes) for message in copies}
        assert dead == {b"enveloped text": {}, b"raw text": {}, b'{"legacy": true}': {"count": "3"}}
        reasons = {
            message.body: message.attributes[DEAD_LETTER_REASON_ATTRIBUTE] for message in copies
        }
        assert reasons[b"raw text"] == "undecodable"  # SQS has room for the reason
        assert_empty(backend, queue)


SNS_PRINCIPAL = "sns.amazonaws.com"
"""The service principal SNS delivers to SQS as."""

MAX_RECEIVE_COUNT = 1000
"""The highest maxReceiveCount SQS takes."""

HAND_FILTER = {"kind": ["changed-by-hand"]}
"""The filter policy the hand changes put on every subscription."""


class SQSHandChanges:
    """Hands on SQS and SNS for the convergence test: plain boto3 calls, not the backend.

    :meth:`change` changes every setting melange manages for a declaration:

    - the queue: ``VisibilityTimeout``, ``MessageRetentionPeriod``, ``DelaySeconds``,
      ``RedrivePolicy`` (its ``maxReceiveCount``) and the access ``Policy`` (the last
      subscribed topic taken out of whichever statement admits it);
    - its dead-letter queue: a ``RedriveAllowPolicy`` of ``denyAll``, so it no
      longer admits the queue;
    - each SNS subscription: ``RawMessageDelivery`` off, another ``FilterPolicy``,
      ``FilterPolicyScope`` ``MessageBody``.

    :meth:`differences` reads them back and checks them against the declaration
    on its own terms (SQS's and SNS's documented semantics), not with the
    backend's code, so a bug there cannot hide here.

    Args:
        sqs: A boto3 SQS client of the account and region under test.
        sns: A boto3 SNS client of the same.
        dead_letter_admission: Whether to change, and check, the dead-letter
            queue's ``RedriveAllowPolicy``. An emulator that does not keep that
            attribute (moto 5.2 accepts it and forgets it) cannot show the check;
            turn it off there to check the rest.
    """

    def __init__(self, sqs: Any, sns: Any, *, dead_letter_admission: bool = True) -> None:
        self.sqs = sqs
        self.sns = sns
        self.dead_letter_admission = dead_letter_admission

    @classmethod
    def of(cls, backend: AWSBackend, *, dead_letter_admission: bool = True) -> SQSHandChanges:
        """Hands on the account and region of ``backend``, through its boto3 clients."""
        return cls(
            backend.sqs_client, backend.sns_client, dead_letter_admission=dead_letter_admission
        )

    # ------------------------------------------------------------------ change
    def change(self, topology: DeclaredTopology) -> list[str]:
        """Change every managed setting of every resource ``topology`` owns; say what."""
        made: list[str] = []
        declared = _declared_queue(topology)
        url = self._queue_url(topology.queue)
        assert url is not None, f"queue {topology.queue!r} does not exist: init it first"
        queue_arn = self._attributes(url, ["QueueArn"])["QueueArn"]
        changed = {
            "VisibilityTimeout": str(_other(int(declared.visibility_timeout), 333, 334)),
            "MessageRetentionPeriod": str(
                _other(int(declared.message_retention_period), 7200, 7201)
            ),
            "DelaySeconds": str(_other(int(declared.delay_seconds), 7, 8)),
        }
        if declared.dead_letter is not None:
            count = declared.dead_letter.max_receive_count
            dead_letter_arn = self._queue_arn(declared.dead_letter.queue_name)
            changed_count = count + 4 if count + 4 <= MAX_RECEIVE_COUNT else count - 4
            redrive = {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": changed_count}
            changed["RedrivePolicy"] = json.dumps(redrive)
        if topology.topics:
            left_out = self._topic_arn(topology.topics[-1])
            policy = self._attributes(url, ["Policy"]).get("Policy")
            changed["Policy"] = _without_source(policy, left_out)  # one call: moto keeps it
        self.sqs.set_queue_attributes(QueueUrl=url, Attributes=changed)
        made.append(f"queue {topology.queue}: {', '.join(sorted(changed))}")

        if self.dead_letter_admission and topology.dead_letter_queue is not None:
            dead_letter_url = self._queue_url(topology.dead_letter_queue)
            self.sqs.set_queue_attributes(
                QueueUrl=dead_letter_url,
                Attributes={"RedriveAllowPolicy": json.dumps({"redrivePermission": "denyAll"})},
            )
            made.append(
                f"dead-letter queue {topology.dead_letter_queue}: RedriveAllowPolicy denyAll"
            )

        for topic in topology.topics:
            for arn in self._subscriptions(topic, queue_arn):
                # FilterPolicy before FilterPolicyScope: SNS checks the policy against the scope.
                for name, value in (
                    ("RawMessageDelivery", "false"),
                    ("FilterPolicy", json.dumps(HAND_FILTER)),
                    ("FilterPolicyScope", "MessageBody"),
                ):
                    self.sns.set_subscription_attributes(
                        SubscriptionArn=arn, AttributeName=name, AttributeValue=value
                    )
                made.append(
                    f"subscription {topic} -> {topology.queue}: raw delivery off, "
                    "another FilterPolicy, FilterPolicyScope MessageBody"
                )
        return made

    # ------------------------------------------------------------- differences
    def differences(self, topology: DeclaredTopology) -> list[str]:
        """Every managed setting that differs from ``topology``; empty when converged."""
        declared = _declared_queue(topology)
        found: list[str] = []
        where = f"queue {topology.queue}"
        url = self._queue_url(topology.queue)
        if url is None:
            return [f"{where}: missing"]
        attributes = self._attributes(url, ["All"])
        queue_arn = attributes["QueueArn"]
        for name, value in (
            ("VisibilityTimeout", declared.visibility_timeout),
            ("MessageRetentionPeriod", declared.message_retention_period),
            ("DelaySeconds", declared.delay_seconds),
        ):
            if attributes.get(name) != str(int(value)):
                found.append(f"{where}: {name}={attributes.get(name)!r}, declared {int(value)}")
        found += self._redrive_differences(where, attributes.get("RedrivePolicy"), declared)
        policy = _policy_document(attributes.get("Policy"))
        for topic in topology.topics:
            topic_arn = self._topic_arn(topic)
            if not any(_admits(statement, queue_arn, topic_arn) for statement in policy):
                found.append(f"{where}: its access Policy does not let topic {topic} deliver")
            found += self._subscription_differences(topic, topology, queue_arn)
        if self.dead_letter_admission and topology.dead_letter_queue is not None:
            found += self._admission_differences(topology.dead_letter_queue, queue_arn)
        return found

    def _redrive_differences(
        self, where: str, redrive: str | None, declared: QueueSpec
    ) -> list[str]:
        if declared.dead_letter is None:
            return [f"{where}: RedrivePolicy {redrive!r}, declared none"] if redrive else []
        wanted = {
            "deadLetterTargetArn": self._queue_arn(declared.dead_letter.queue_name),
            "maxReceiveCount": declared.dead_letter.max_receive_count,
        }
        try:
            document = json.loads(redrive or "{}")
            current = {
                "deadLetterTargetArn": document.get("deadLetterTargetArn"),
                "maxReceiveCount": int(document.get("maxReceiveCount", -1)),
            }
        except (ValueError, TypeError, AttributeError):
            current = {"unreadable": redrive}
        return [] if current == wanted else [f"{where}: RedrivePolicy {current}, declared {wanted}"]

    def _admission_differences(self, dead_letter_queue: str, queue_arn: str) -> list[str]:
        where = f"dead-letter queue {dead_letter_queue}"
        url = self._queue_url(dead_letter_queue)
        if url is None:
            return [f"{where}: missing"]
        try:
            # Asked by name: "All" would not tell a broker that forgets it from one without it.
            allowed = self._attributes(url, ["RedriveAllowPolicy"]).get("RedriveAllowPolicy")
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            return [f"{where}: its RedriveAllowPolicy cannot be read ({code})"]
        if not allowed:
            return []  # none: every queue of the account and region may use it
        try:
            document = json.loads(allowed)
            permission = document.get("redrivePermission")
            sources = document.get("sourceQueueArns") or []
        except (ValueError, AttributeError):
            return [f"{where}: unreadable RedriveAllowPolicy {allowed!r}"]
        if permission == "allowAll" or (permission == "byQueue" and queue_arn in sources):
            return []
        return [f"{where}: RedriveAllowPolicy {allowed} does not admit {queue_arn}"]

    def _subscription_differences(
        self, topic: str, topology: DeclaredTopology, queue_arn: str
    ) -> list[str]:
        where = f"subscription {topic} -> {topology.queue}"
        arns = self._subscriptions(topic, queue_arn)
        if len(arns) != 1:
            return [f"{where}: {len(arns)} subscriptions of the queue, declared 1"]
        attributes = self.sns.get_subscription_attributes(SubscriptionArn=arns[0])["Attributes"]
        found = []
        if attributes.get("RawMessageDelivery") != "true":
            found.append(f"{where}: RawMessageDelivery={attributes.get('RawMessageDelivery')!r}")
        declared = SubscriptionSpec.normalize_filter(topology.settings.get("subscription_filter"))
        current = _filter(attributes.get("FilterPolicy"))
        if current != declared:
            found.append(
                f"{where}: FilterPolicy {attributes.get('FilterPolicy')!r}, declared {declared}"
            )
        scope = attributes.get("FilterPolicyScope") or "MessageAttributes"
        if declared is not None and scope != "MessageAttributes":
            found.append(f"{where}: FilterPolicyScope={scope!r}, declared MessageAttributes")
        return found

    # ------------------------------------------------------------------ lookups
    def _queue_url(self, name: str) -> str | None:
        try:
            return str(self.sqs.get_queue_url(QueueName=name)["QueueUrl"])
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if "NonExistentQueue" in code or code == "QueueDoesNotExist":
                return None
            raise

    def _attributes(self, url: str, names: list[str]) -> dict[str, str]:
        response = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
        attributes: dict[str, str] = response.get("Attributes", {})
        return attributes

    def _queue_arn(self, name: str) -> str | None:
        url = self._queue_url(name)
        return None if url is None else self._attributes(url, ["QueueArn"])["QueueArn"]

    def _topic_arn(self, name: str) -> str:
        for page in self.sns.get_paginator("list_topics").paginate():
            for topic in page.get("Topics", []):
                if str(topic["TopicArn"]).rsplit(":", 1)[-1] == name:
                    return str(topic["TopicArn"])
        raise AssertionError(f"topic {name!r} does not exist")

    def _subscriptions(self, topic: str, queue_arn: str) -> list[str]:
        """The ARNs of the topic's confirmed SQS subscriptions of the queue."""
        paginator = self.sns.get_paginator("list_subscriptions_by_topic")
        return [
            str(subscription["SubscriptionArn"])
            for page in paginator.paginate(TopicArn=self._topic_arn(topic))
            for subscription in page.get("Subscriptions", [])
            if subscription.get("Protocol") == "sqs"
            and subscription.get("Endpoint") == queue_arn
            and str(subscription.get("SubscriptionArn", "")).startswith("arn:")
        ]


def _declared_queue(topology: DeclaredTopology) -> QueueSpec:
    """The queue settings ``topology`` declares, defaults filled in."""
    settings = topology.settings
    default = QueueSpec(topology.queue)
    dead_letter = None
    if topology.dead_letter_queue is not None:
        count = int(settings.get("max_receive_count", DEFAULT_MAX_RECEIVE_COUNT))
        dead_letter = DeadLetterPolicy(topology.dead_letter_queue, count)
    return QueueSpec(
        topology.queue,
        visibility_timeout=float(settings.get("visibility_timeout", default.visibility_timeout)),
        message_retention_period=float(
            settings.get("message_retention_period", default.message_retention_period)
        ),
        delay_seconds=float(settings.get("delay_seconds", default.delay_seconds)),
        dead_letter=dead_letter,
    )


def _other(declared: int, value: int, fallback: int) -> int:
    """``value``, or ``fallback`` when ``value`` is what is declared."""
    return fallback if declared == value else value


def _listed(value: object) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _policy_document(policy: str | None) -> list[dict[str, Any]]:
    """The statements of an access policy (none when there is no readable policy)."""
    try:
        document = json.loads(policy or "{}")
    except ValueError:
        return []
    if not isinstance(document, dict):
        return []
    return [s for s in _listed(document.get("Statement", [])) if isinstance(s, dict)]


def _source_arns(statement: dict[str, Any]) -> list[Any]:
    condition = statement.get("Condition")
    arn_equals = condition.get("ArnEquals") if isinstance(condition, dict) else None
    if not isinstance(arn_equals, dict):
        return []
    return [
        arn
        for key, value in arn_equals.items()
        if key.lower() == "aws:sourcearn"
        for arn in _listed(value)
    ]


def _admits(statement: dict[str, Any], queue_arn: str, topic_arn: str) -> bool:
    """Whether ``statement`` lets SNS deliver from ``topic_arn`` to the queue (IAM's reading)."""
    principal = statement.get("Principal")
    services = _listed(principal.get("Service")) if isinstance(principal, dict) else []
    actions = {str(action).lower() for action in _listed(statement.get("Action"))}
    return (
        statement.get("Effect") == "Allow"
        and SNS_PRINCIPAL in services
        and bool(actions & {"sqs:sendmessage", "sqs:*"})
        and queue_arn in _listed(statement.get("Resource"))
        and topic_arn in _source_arns(statement)
    )


def _without_source(policy: str | None, topic_arn: str) -> str:
    """``policy`` with ``topic_arn`` taken out of every statement that admits it."""
    document = json.loads(policy or "{}")
    kept = []
    for statement in _policy_document(policy):
        condition = statement.get("Condition", {}).get("ArnEquals", {})
        for key, value in list(condition.items()):
            if key.lower() == "aws:sourcearn":
                condition[key] = [arn for arn in _listed(value) if arn != topic_arn]
        if _source_arns(statement) or not condition:
            kept.append(statement)  # a statement left admitting nothing goes
    if not kept:
        return ""  # no statement left: "" removes the policy
    document["Statement"] = kept
    document.setdefault("Version", "2012-10-17")
    return json.dumps(document)


def _filter(policy: str | None) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """A FilterPolicy of exact string matches in melange's form; anything else as itself."""
    if not policy:
        return None
    try:
        document = json.loads(policy)
    except ValueError:
        return (("<unreadable>", (policy,)),)
    if not isinstance(document, dict) or not all(
        isinstance(values, list) and all(isinstance(v, str) for v in values)
        for values in document.values()
    ):
        return (("<not exact string matches>", (policy,)),)
    return SubscriptionSpec.normalize_filter(document)
