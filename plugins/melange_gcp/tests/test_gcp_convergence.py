"""Re-init restores every subscription a queue owns, fan-out ones included, on the emulator.

The suite's convergence test with :class:`~melange_gcp.testing.PubSubHandChanges`
is a known deviation on Google's emulator (test_gcp_conformance.py): the
emulator refuses UpdateSubscription of ``labels`` and ``expiration_policy``, so
those hand changes cannot be made there. Here:

- the same test with every other hand change, on the emulator;
- the fan-out case of the issue on its own (before this work, re-init reported
  nothing to do and left both changes in place);
- what counts as drift of a fan-out subscription, labels and expiration
  included, on Pub/Sub's own objects.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from google.pubsub_v1 import types
from melange_gcp import GCPPubSubBackend
from melange_gcp.resources import VISIBILITY_LABEL, Desired
from melange_gcp.testing import PubSubHandChanges

from melange import MessagingBackendFactory
from melange.testing.conformance.convergence import ConvergenceConformance
from melange.topology import DeadLetterPolicy, QueueSpec


class TestConvergenceOnTheEmulator(ConvergenceConformance):
    """Every hand change the emulator accepts (all but labels and expiration), restored by init."""

    @pytest.fixture
    def melange_backend(self, emulator_host: str, gcp_project: str) -> Iterator[GCPPubSubBackend]:
        backend = GCPPubSubBackend(project=gcp_project, emulator_host=emulator_host)
        yield backend
        backend.close()

    @pytest.fixture
    def melange_hand_changes(self, melange_backend: GCPPubSubBackend) -> PubSubHandChanges:
        return PubSubHandChanges.of(melange_backend, labels=False, expiration=False)


def _subscription(backend: GCPPubSubBackend, name: str) -> types.Subscription:
    path = f"projects/{backend.project}/subscriptions/{name}"
    subscription: types.Subscription = backend.subscriber_client.get_subscription(
        request={"subscription": path}
    )
    return subscription


def test_hand_changes_to_a_fan_out_subscription_are_restored_by_a_fresh_backend(
    backend: GCPPubSubBackend, emulator_host: str, gcp_project: str, unique: str
) -> None:
    queue, topic = f"{unique}-orders", f"{unique}-events"
    MessagingBackendFactory(backend).init_queue(queue, [topic])
    fan_out = f"{queue}~{topic}"
    backend.subscriber_client.update_subscription(
        request={
            "subscription": {
                "name": f"projects/{gcp_project}/subscriptions/{fan_out}",
                "ack_deadline_seconds": 333,
                "retry_policy": {"minimum_backoff": {"seconds": 5}},
            },
            "update_mask": field_mask_pb2.FieldMask(paths=["ack_deadline_seconds", "retry_policy"]),
        }
    )
    with GCPPubSubBackend(project=gcp_project, emulator_host=emulator_host) as fresh:
        factory = MessagingBackendFactory(fresh)
        preview = factory.plan_queue(queue, [topic])
        assert [(action.kind, action.target) for action in preview] == [
            ("update_subscription", f"{topic} -> {queue}")
        ], preview.describe()
        changed = sorted(change.setting for change in preview.actions[0].changes)
        assert changed == ["ack_deadline_seconds", "retry_policy"], preview.describe()
        assert _subscription(fresh, fan_out).ack_deadline_seconds == 333  # a plan changes nothing

        plan = factory.init_queue(queue, [topic])
        assert len(plan) == 1, plan.describe()
        restored = _subscription(fresh, fan_out)
        assert restored.ack_deadline_seconds == 30
        assert "retry_policy" not in restored
        assert len(factory.init_queue(queue, [topic])) == 0


def test_a_queue_setting_changed_by_hand_on_its_own_subscription_reaches_every_fan_out(
    backend: GCPPubSubBackend, unique: str
) -> None:
    queue, dlq, topics = f"{unique}-q", f"{unique}-dlq", [f"{unique}-a", f"{unique}-b"]
    factory = MessagingBackendFactory(backend)
    factory.init_queue(queue, topics, dead_letter_queue_name=dlq, max_receive_count=6)
    for topic in topics:
        backend.subscriber_client.update_subscription(
            request={
                # In the mask but not in the subscription: removed.
                "subscription": {
                    "name": f"projects/{backend.project}/subscriptions/{queue}~{topic}"
                },
                "update_mask": field_mask_pb2.FieldMask(paths=["dead_letter_policy"]),
            }
        )
    plan = factory.init_queue(queue, topics, dead_letter_queue_name=dlq, max_receive_count=6)
    assert [action.kind for action in plan] == ["update_subscription"] * 2, plan.describe()
    for topic in topics:
        policy = _subscription(backend, f"{queue}~{topic}").dead_letter_policy
        assert (policy.dead_letter_topic.rsplit("/", 1)[-1], policy.max_delivery_attempts) == (
            dlq,
            6,
        )


# ------------------------------------------------- what counts as drift, on Pub/Sub's objects
PROJECT = "melange-test"


def _as_made(**fields: object) -> types.Subscription:
    """A fan-out subscription as melange makes it for a queue with a 1 s visibility timeout."""
    spec = QueueSpec("q", visibility_timeout=1.0, dead_letter=DeadLetterPolicy("dlq", 5))
    made = types.Subscription(
        Desired.of(PROJECT, spec).subscription(PROJECT, "q~t", "t", 'attributes.k = "v"')
    )
    for name, value in fields.items():
        setattr(made, name, value)
    return made


@pytest.mark.parametrize(
    ("fields", "drift"),
    [
        ({}, []),
        ({"filter": "attributes.k = 'other'"}, []),  # the subscription's own, not drift
        ({"ack_deadline_seconds": 333}, ["ack_deadline_seconds"]),
        ({"labels": {VISIBILITY_LABEL: "4321"}}, ["labels"]),
        ({"labels": {}}, ["labels"]),
        (
            {"message_retention_duration": duration_pb2.Duration(seconds=7200)},
            ["message_retention_duration"],
        ),
        (
            {
                "dead_letter_policy": types.DeadLetterPolicy(
                    dead_letter_topic="", max_delivery_attempts=0
                )
            },
            ["dead_letter_policy"],
        ),
        (
            {"retry_policy": types.RetryPolicy(minimum_backoff=duration_pb2.Duration(seconds=5))},
            ["retry_policy"],
        ),
        (
            {"expiration_policy": types.ExpirationPolicy(ttl=duration_pb2.Duration(seconds=86400))},
            ["expiration_policy"],
        ),
        ({"enable_message_ordering": True}, ["enable_message_ordering"]),
    ],
)
def test_a_fan_out_subscription_drifts_in_every_setting_the_queue_gives_it(
    fields: dict[str, object], drift: list[str]
) -> None:
    spec = QueueSpec("q", visibility_timeout=1.0, dead_letter=DeadLetterPolicy("dlq", 5))
    assert Desired.of(PROJECT, spec).drift(_as_made(**fields)) == drift
