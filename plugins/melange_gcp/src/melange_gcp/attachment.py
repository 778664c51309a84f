"""Subscriptions cut off from the topic their name stands for, and what init does about them.

Pub/Sub keeps a subscription when its topic is deleted: the subscription's
``topic`` becomes ``_deleted-topic_`` and stays so, also once a topic of the same
name exists again, which is "an entirely new topic with none of the old
configuration or subscriptions"
(https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.topics/delete).
Nothing published reaches it any more, its receivers find nothing, and Pub/Sub
cannot attach a subscription to a topic again. A subscription made by hand under
melange's name for it may also sit on another topic. Either way the only repair
is to delete the subscription and create it again, which drops the messages
still unacknowledged in it (a detached subscription may still hold messages
published before its topic was deleted; the emulator lets them be received).

So init refuses with :class:`SubscriptionDetached`, unless the backend was made
with ``recreate_subscriptions=True``; then it recreates the subscription and logs
a WARNING naming it and the messages that were lost.
"""

from __future__ import annotations

from melange.exceptions import ImmutableSettingError
from melange_gcp.names import short_name

__all__ = ["DELETED_TOPIC", "SubscriptionDetached", "lost_messages"]

DELETED_TOPIC = "_deleted-topic_"
"""What Pub/Sub shows as the topic of a subscription whose topic was deleted."""


def _topic_shown(topic: str) -> str:
    return topic if topic == DELETED_TOPIC else short_name(topic)


class SubscriptionDetached(ImmutableSettingError):
    """A queue's subscription is not on the topic its name stands for (deleted, or another one).

    A subscription's topic cannot change on Pub/Sub, so this is an
    :class:`~melange.exceptions.ImmutableSettingError` with ``setting="topic"``.

    Attributes:
        subscription: The subscription's id.
        queue: The queue it delivers to.
        topic: The topic it should be on.
        detached: Whether its topic was deleted (``_deleted-topic_``), rather
            than it being on another topic.
    """

    def __init__(self, subscription: str, current_topic: str, topic: str, queue: str, project: str):
        shown = _topic_shown(current_topic)
        super().__init__(subscription, "topic", shown, topic)
        self.subscription = subscription
        self.queue = queue
        self.topic = topic
        self.detached = current_topic == DELETED_TOPIC
        if self.detached:
            problem = (
                f"subscription {subscription!r} of queue {queue!r} is detached: its topic "
                f"{topic!r} was deleted outside melange (Pub/Sub shows its topic as "
                f"{DELETED_TOPIC!r}, also after {topic!r} is created again)"
            )
        else:
            problem = (
                f"subscription {subscription!r} of queue {queue!r} is on topic {shown!r}, "
                f"not on {topic!r}"
            )
        self.args = (
            f"{problem}, so nothing published to {topic!r} reaches the queue, and Pub/Sub "
            "cannot move a subscription to another topic. Nothing was changed. Let the backend "
            "recreate it (recreate_subscriptions=True), which loses the messages not yet "
            "acknowledged in it (receive them first if they matter), or delete it yourself "
            f"(gcloud pubsub subscriptions delete {subscription} --project={project}) and "
            "init again",
        )


def lost_messages(error: SubscriptionDetached) -> str:
    """Return the WARNING logged when the backend recreates the subscription of ``error``."""
    if error.detached:
        cause = f"detached when its topic {error.topic!r} was deleted outside melange"
        lost = f"published to {error.topic!r} before it was deleted"
    else:
        cause = f"on topic {error.current!r} instead of {error.topic!r}"
        lost = f"published to {error.current!r}"
    return (
        f"recreating subscription {error.subscription!r} of queue {error.queue!r} on topic "
        f"{error.topic!r} (recreate_subscriptions=True): it was {cause}. The messages still "
        f"unacknowledged in it ({lost}) are lost"
    )
