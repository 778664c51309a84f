"""Pub/Sub's own permissions for dead-lettering: read, granted when the caller may, or spelled out.

To move a message to a dead-letter topic, Pub/Sub's service agent
(``service-<project number>@gcp-sa-pubsub.iam.gserviceaccount.com``) publishes it
there and acknowledges it on the source subscription, so it needs
``roles/pubsub.publisher`` on the dead-letter topic and ``roles/pubsub.subscriber``
on the subscription
(https://cloud.google.com/pubsub/docs/handling-failures#grant_forwarding_permissions).
Without them Pub/Sub keeps redelivering and nothing ever reaches the dead-letter
queue; the emulator, which has no IAM, does not show it.

Whether the agent may do it cannot be asked as the agent (TestIamPermissions
answers for the caller), so the two resources' IAM policies are read: a binding
of the role that names the agent, without a condition, counts. A missing one is
added with SetIamPolicy (``roles/pubsub.admin`` on the resource allows it) unless
the backend only checks; what is still missing then is a
:class:`~melange.exceptions.ConfigurationError` that prints the ``gcloud``
commands to run. Bindings inherited from the project, folder or organisation do
not show in a resource's policy: ``dead_letter_permissions="skip"`` is for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from google.api_core import exceptions as api_exceptions
from google.iam.v1 import policy_pb2  # type: ignore[import-untyped]

from melange.exceptions import ConfigurationError
from melange_gcp.errors import status_name

__all__ = [
    "MODES",
    "PUBLISHER_ROLE",
    "SUBSCRIBER_ROLE",
    "Binding",
    "DeadLetterPermissions",
    "IamCalls",
    "Mode",
    "ResourceKind",
    "grants",
    "service_agent",
    "with_binding",
]

logger = logging.getLogger("melange.gcp.permissions")

Mode = Literal["grant", "check", "skip"]
MODES: tuple[Mode, ...] = ("grant", "check", "skip")
"""``dead_letter_permissions`` values: grant what is missing, only check, or neither."""

PUBLISHER_ROLE = "roles/pubsub.publisher"
SUBSCRIBER_ROLE = "roles/pubsub.subscriber"

SET_ATTEMPTS = 3
"""SetIamPolicy attempts when another writer changed the policy in between (its etag)."""

ResourceKind = Literal["topic", "subscription"]


def service_agent(project_number: str) -> str:
    """Return the IAM member naming Pub/Sub's service agent of the project ``project_number``."""
    return f"serviceAccount:service-{project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"


@dataclass(frozen=True)
class Binding:
    """A role the service agent needs on one Pub/Sub resource.

    Attributes:
        kind: ``"topic"`` or ``"subscription"``.
        name: The resource's id (not its path).
        role: The role, e.g. ``roles/pubsub.publisher``.
    """

    kind: ResourceKind
    name: str
    role: str

    def command(self, project: str, member: str) -> str:
        """Return the ``gcloud`` command that grants it."""
        return (
            f"gcloud pubsub {self.kind}s add-iam-policy-binding {self.name} "
            f"--project={project} --member={member} --role={self.role}"
        )

    def __str__(self) -> str:
        return f"{self.role} on {self.kind} {self.name!r}"


def grants(policy: policy_pb2.Policy, member: str, role: str) -> bool:
    """Whether ``policy`` binds ``role`` to ``member`` unconditionally."""
    return any(
        binding.role == role and member in binding.members and not binding.HasField("condition")
        for binding in policy.bindings
    )


def with_binding(policy: policy_pb2.Policy, member: str, role: str) -> policy_pb2.Policy:
    """Return a copy of ``policy`` (etag and version kept) binding ``role`` to ``member`` too."""
    updated = policy_pb2.Policy()
    updated.CopyFrom(policy)
    for binding in updated.bindings:
        if binding.role == role and not binding.HasField("condition"):
            if member not in binding.members:
                binding.members.append(member)
            return updated
    updated.bindings.add(role=role, members=[member])
    return updated


class IamCalls(Protocol):
    """GetIamPolicy and SetIamPolicy on Pub/Sub topics and subscriptions (the client boundary)."""

    def get_policy(self, kind: ResourceKind, name: str) -> policy_pb2.Policy:
        """Return the IAM policy of the topic or subscription ``name``."""
        ...

    def set_policy(
        self, kind: ResourceKind, name: str, policy: policy_pb2.Policy
    ) -> policy_pb2.Policy:
        """Replace the IAM policy of ``name`` (refused if its etag is stale); return the new one."""
        ...


@dataclass
class _Outcome:
    missing: list[tuple[Binding, str]] = field(default_factory=list)
    granted: list[Binding] = field(default_factory=list)


class DeadLetterPermissions:
    """Makes sure Pub/Sub's service agent may move a queue's dead letters.

    Args:
        project: The project id (for the commands).
        project_number: Returns the project's number (asked only when needed);
            raises ConfigurationError when it cannot be found.
        calls: The IAM calls.
        grant: Add missing bindings (``True``), or only report them.

    Each binding found or granted is remembered for the life of this object,
    so a converged init reads no policy twice.
    """

    def __init__(
        self,
        project: str,
        project_number: Callable[[], str],
        calls: IamCalls,
        *,
        grant: bool,
    ) -> None:
        self._project = project
        self._number = project_number
        self._calls = calls
        self._grant = grant
        self._verified: set[Binding] = set()

    def forget(self, kind: ResourceKind, name: str) -> None:
        """Forget what was found on a resource that was deleted (its policy went with it)."""
        self._verified = {b for b in self._verified if (b.kind, b.name) != (kind, name)}

    def ensure(self, queue: str, dead_letter_topic: str, subscription: str) -> list[Binding]:
        """Make sure the agent may move ``subscription``'s dead letters to ``dead_letter_topic``.

        Args:
            queue: The queue the subscription belongs to (for the message).
            dead_letter_topic: The dead-letter queue's topic id.
            subscription: The subscription id that has (or gets) the dead-letter policy.

        Returns:
            The bindings granted now.

        Raises:
            ConfigurationError: A binding is missing and could not be granted (or
                only checking), or a policy could not be read; the message holds
                the gcloud commands. Also when the project number is unknown.
            google.api_core.exceptions.GoogleAPIError: Any other failure of a call.
        """
        needed = [
            Binding("topic", dead_letter_topic, PUBLISHER_ROLE),
            Binding("subscription", subscription, SUBSCRIBER_ROLE),
        ]
        needed = [binding for binding in needed if binding not in self._verified]
        if not needed:
            return []
        member = service_agent(self._number())
        outcome = _Outcome()
        for binding in needed:
            self._ensure_one(binding, member, outcome)
        if outcome.missing:
            raise ConfigurationError(
                missing_message(self._project, queue, dead_letter_topic, member, outcome.missing)
            )
        return outcome.granted

    def _ensure_one(self, binding: Binding, member: str, outcome: _Outcome) -> None:
        for _ in range(SET_ATTEMPTS):
            try:
                policy = self._calls.get_policy(binding.kind, binding.name)
            except api_exceptions.PermissionDenied as error:
                outcome.missing.append(
                    (binding, f"its IAM policy cannot be read here: {status_name(error)}")
                )
                return
            if grants(policy, member, binding.role):
                self._verified.add(binding)
                return
            if not self._grant:
                outcome.missing.append((binding, 'not granted; dead_letter_permissions="check"'))
                return
            try:
                self._calls.set_policy(
                    binding.kind, binding.name, with_binding(policy, member, binding.role)
                )
            except (api_exceptions.Aborted, api_exceptions.FailedPrecondition):
                continue  # changed by another writer since it was read: read it again
            except (api_exceptions.PermissionDenied, api_exceptions.InvalidArgument) as error:
                why = f"not granted, and this caller may not grant it: {status_name(error)}"
                outcome.missing.append((binding, why))
                return
            logger.info(
                "granted %s to Pub/Sub's service agent %s, so that dead letters can move",
                binding,
                member.removeprefix("serviceAccount:"),
            )
            self._verified.add(binding)
            outcome.granted.append(binding)
            return
        outcome.missing.append((binding, "its IAM policy kept changing while being granted"))


def missing_message(
    project: str,
    queue: str,
    dead_letter_topic: str,
    member: str,
    missing: list[tuple[Binding, str]],
) -> str:
    """The ConfigurationError text: what is missing, why, and the gcloud commands that fix it."""
    agent = member.removeprefix("serviceAccount:")
    needs = "; ".join(f"{binding} ({why})" for binding, why in missing)
    commands = "\n".join(f"  {binding.command(project, member)}" for binding, _ in missing)
    return (
        f"dead letters of queue {queue!r} cannot reach dead-letter queue {dead_letter_topic!r}: "
        f"Pub/Sub's service agent {agent} needs {needs} "
        "(https://cloud.google.com/pubsub/docs/handling-failures#grant_forwarding_permissions). "
        f"Grant {'it' if len(missing) == 1 else 'them'} with:\n{commands}\n"
        "then init again, which sets the dead-letter policy once the roles are in place. If "
        "they are granted elsewhere (on the project or by your infrastructure tooling), pass "
        'dead_letter_permissions="skip"'
    )
