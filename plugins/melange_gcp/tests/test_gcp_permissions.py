"""Dead-letter permissions of Pub/Sub's service agent: read, granted, or spelled out as commands.

No IAM server exists locally (the emulator answers GetIamPolicy with
UNIMPLEMENTED), so the IAM calls are played by :class:`FakeIam`, at the client
boundary: the GAPIC clients' ``get_iam_policy`` / ``set_iam_policy``, with
etags as IAM uses them. Everything else runs on the emulator. The project
number lookup runs against a loopback HTTP server standing in for Cloud
Resource Manager.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.iam.v1 import policy_pb2
from google.type import expr_pb2
from melange_gcp import GCPPubSubBackend
from melange_gcp.backend import _BackendIam
from melange_gcp.permissions import (
    PUBLISHER_ROLE,
    SUBSCRIBER_ROLE,
    Binding,
    DeadLetterPermissions,
    grants,
    service_agent,
    with_binding,
)
from melange_gcp.project_number import ProjectNumber, check_project_number

from melange import MessagingBackendFactory
from melange.exceptions import ConfigurationError

NUMBER = "123456789012"
AGENT = f"serviceAccount:service-{NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"


class FakeIam:
    """IAM policies of topics and subscriptions by resource path, as the IAM API keeps them.

    Args:
        may_set: Whether the caller may call SetIamPolicy (else PERMISSION_DENIED).
        may_get: Whether the caller may call GetIamPolicy (else PERMISSION_DENIED).
    """

    def __init__(self, *, may_set: bool = True, may_get: bool = True) -> None:
        self.may_set = may_set
        self.may_get = may_get
        self.policies: dict[str, policy_pb2.Policy] = {}
        self.conflicts = 0  # the next this many writes find the policy changed meanwhile
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def get(self, request: dict[str, Any], **_: Any) -> policy_pb2.Policy:
        with self._lock:
            self.calls.append(("get", request["resource"]))
            if not self.may_get:
                raise api_exceptions.PermissionDenied("caller lacks getIamPolicy")
            found = policy_pb2.Policy()
            found.CopyFrom(
                self.policies.setdefault(request["resource"], policy_pb2.Policy(etag=b"0"))
            )
            return found

    def set(self, request: dict[str, Any], **_: Any) -> policy_pb2.Policy:
        with self._lock:
            resource, policy = request["resource"], request["policy"]
            self.calls.append(("set", resource))
            if not self.may_set:
                raise api_exceptions.PermissionDenied("caller lacks setIamPolicy")
            current = self.policies.setdefault(resource, policy_pb2.Policy(etag=b"0"))
            if self.conflicts:
                self.conflicts -= 1
                current.etag = str(int(current.etag) + 1).encode()  # another writer
            if policy.etag != current.etag:
                raise api_exceptions.Aborted("There were concurrent policy changes")
            stored = policy_pb2.Policy()
            stored.CopyFrom(policy)
            stored.etag = str(int(current.etag) + 1).encode()
            self.policies[resource] = stored
            return stored

    def grant(self, resource: str, role: str, member: str = AGENT) -> None:
        """What a user's gcloud command does."""
        with self._lock:
            current = self.policies.setdefault(resource, policy_pb2.Policy(etag=b"0"))
            self.policies[resource] = with_binding(current, member, role)

    def has(self, resource: str, role: str) -> bool:
        return grants(self.policies.get(resource, policy_pb2.Policy()), AGENT, role)


class FakeCalls:
    """The IamCalls protocol over a FakeIam, for DeadLetterPermissions on its own."""

    def __init__(self, iam: FakeIam, project: str = "p-1") -> None:
        self.iam = iam
        self.project = project

    def _path(self, kind: str, name: str) -> str:
        return f"projects/{self.project}/{kind}s/{name}"

    def get_policy(self, kind: Any, name: str) -> policy_pb2.Policy:
        return self.iam.get({"resource": self._path(kind, name)})

    def set_policy(self, kind: Any, name: str, policy: policy_pb2.Policy) -> policy_pb2.Policy:
        return self.iam.set({"resource": self._path(kind, name), "policy": policy})


def _permissions(iam: FakeIam, *, grant: bool = True) -> DeadLetterPermissions:
    return DeadLetterPermissions("p-1", lambda: NUMBER, FakeCalls(iam), grant=grant)


# ------------------------------------------------------------------ the policy logic
def test_only_an_unconditional_binding_of_the_role_to_the_agent_counts() -> None:
    policy = policy_pb2.Policy()
    policy.bindings.add(role=PUBLISHER_ROLE, members=["user:someone@example.com"])
    policy.bindings.add(role=SUBSCRIBER_ROLE, members=[AGENT])
    policy.bindings.add(
        role=PUBLISHER_ROLE, members=[AGENT], condition=expr_pb2.Expr(expression="false")
    )
    assert service_agent(NUMBER) == AGENT
    assert grants(policy, AGENT, SUBSCRIBER_ROLE)
    assert not grants(policy, AGENT, PUBLISHER_ROLE)  # only under a condition


def test_a_binding_is_added_to_the_roles_binding_keeping_the_rest_and_the_etag() -> None:
    policy = policy_pb2.Policy(version=3, etag=b"7")
    policy.bindings.add(role=PUBLISHER_ROLE, members=["user:someone@example.com"])
    policy.bindings.add(role="roles/viewer", members=["group:team@example.com"])
    updated = with_binding(policy, AGENT, PUBLISHER_ROLE)
    assert (updated.version, updated.etag) == (3, b"7")
    assert list(updated.bindings[0].members) == ["user:someone@example.com", AGENT]
    assert updated.bindings[1] == policy.bindings[1]
    assert len(policy.bindings[0].members) == 1, "the original was changed"
    fresh = with_binding(policy_pb2.Policy(), AGENT, SUBSCRIBER_ROLE)
    assert [(b.role, list(b.members)) for b in fresh.bindings] == [(SUBSCRIBER_ROLE, [AGENT])]


def test_missing_bindings_are_granted_once_and_remembered() -> None:
    iam = FakeIam()
    permissions = _permissions(iam)
    granted = permissions.ensure("orders", "orders-dlq", "orders")
    assert granted == [
        Binding("topic", "orders-dlq", PUBLISHER_ROLE),
        Binding("subscription", "orders", SUBSCRIBER_ROLE),
    ]
    assert iam.has("projects/p-1/topics/orders-dlq", PUBLISHER_ROLE)
    assert iam.has("projects/p-1/subscriptions/orders", SUBSCRIBER_ROLE)
    calls = len(iam.calls)
    assert permissions.ensure("orders", "orders-dlq", "orders") == []
    assert len(iam.calls) == calls, "a verified binding was read again"
    permissions.forget("subscription", "orders")  # deleted: its policy went with it
    assert permissions.ensure("orders", "orders-dlq", "orders") == []  # still there: read
    assert iam.calls[calls:] == [("get", "projects/p-1/subscriptions/orders")]


def test_bindings_in_place_are_only_read() -> None:
    iam = FakeIam()
    iam.grant("projects/p-1/topics/dlq", PUBLISHER_ROLE)
    iam.grant("projects/p-1/subscriptions/q~t", SUBSCRIBER_ROLE)
    assert _permissions(iam).ensure("q", "dlq", "q~t") == []
    assert [kind for kind, _ in iam.calls] == ["get", "get"]


def test_a_policy_changed_meanwhile_is_read_again_before_granting() -> None:
    iam = FakeIam()
    iam.conflicts = 1
    _permissions(iam).ensure("q", "dlq", "q")
    assert iam.has("projects/p-1/topics/dlq", PUBLISHER_ROLE)
    assert [kind for kind, _ in iam.calls][:4] == ["get", "set", "get", "set"]


def test_what_the_caller_may_not_grant_is_an_error_with_the_gcloud_commands() -> None:
    iam = FakeIam(may_set=False)
    iam.grant("projects/p-1/subscriptions/orders", SUBSCRIBER_ROLE)
    with pytest.raises(ConfigurationError) as caught:
        _permissions(iam).ensure("orders", "orders-dlq", "orders")
    message = str(caught.value)
    agent = f"service-{NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
    assert message.startswith(
        "dead letters of queue 'orders' cannot reach dead-letter queue 'orders-dlq': Pub/Sub's "
        f"service agent {agent} needs roles/pubsub.publisher on topic 'orders-dlq' (not "
        "granted, and this caller may not grant it: PERMISSION_DENIED)"
    )
    lines = message.splitlines()
    assert lines[0].endswith(" Grant it with:")
    assert lines[1:] == [
        "  gcloud pubsub topics add-iam-policy-binding orders-dlq --project=p-1 "
        f"--member=serviceAccount:{agent} --role=roles/pubsub.publisher",
        "then init again, which sets the dead-letter policy once the roles are in place. If "
        "they are granted elsewhere (on the project or by your infrastructure tooling), pass "
        'dead_letter_permissions="skip"',
    ]
    assert "subscriptions add-iam-policy-binding" not in message  # that one is in place


def test_only_checking_grants_nothing_and_lists_both_commands() -> None:
    iam = FakeIam()
    with pytest.raises(ConfigurationError, match='dead_letter_permissions="check"') as caught:
        _permissions(iam, grant=False).ensure("q", "dlq", "q")
    assert [kind for kind, _ in iam.calls] == ["get", "get"]
    commands = [line.strip() for line in str(caught.value).splitlines() if "gcloud" in line]
    assert commands == [
        f"gcloud pubsub topics add-iam-policy-binding dlq --project=p-1 --member={AGENT} "
        "--role=roles/pubsub.publisher",
        f"gcloud pubsub subscriptions add-iam-policy-binding q --project=p-1 --member={AGENT} "
        "--role=roles/pubsub.subscriber",
    ]


def test_a_policy_the_caller_may_not_read_is_reported_with_its_command() -> None:
    with pytest.raises(ConfigurationError, match="cannot be read here: PERMISSION_DENIED"):
        _permissions(FakeIam(may_get=False)).ensure("q", "dlq", "q")


# ------------------------------------------------------------------ the project number
def test_the_project_number_comes_from_the_option_or_a_numeric_project() -> None:
    assert check_project_number(None) is None
    assert check_project_number(123) == "123"
    assert ProjectNumber("my-project", "42", None, 1.0)() == "42"
    assert ProjectNumber("987654", None, None, 1.0)() == "987654"
    for bad in ("12a", -5, True, 1.5, ""):
        with pytest.raises(ConfigurationError, match="project_number must be"):
            check_project_number(bad)


def test_without_credentials_the_number_is_asked_for() -> None:
    with pytest.raises(ConfigurationError, match="pass project_number=") as caught:
        ProjectNumber("my-project", None, None, 1.0)()
    assert "gcloud projects describe my-project --format='value(projectNumber)'" in str(
        caught.value
    )


class _ResourceManager(http.server.BaseHTTPRequestHandler):
    """Cloud Resource Manager's projects.get for 'known' (number 4242); 403 otherwise."""

    def do_GET(self) -> None:
        body: dict[str, object]
        if self.path == "/v1/projects/known":
            status, body = 200, {"projectId": "known", "projectNumber": "4242"}
        else:
            status, body = 403, {"error": {"code": 403, "status": "PERMISSION_DENIED"}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def resource_manager() -> Iterator[str]:
    """The lookup URL template of a loopback stand-in for Cloud Resource Manager."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ResourceManager)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/projects/{{project}}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_number_is_looked_up_once_in_cloud_resource_manager(resource_manager: str) -> None:
    lookup = ProjectNumber("known", None, AnonymousCredentials(), 5.0, url=resource_manager)
    assert lookup() == "4242"
    assert lookup() == "4242"
    refused = ProjectNumber("hidden", None, AnonymousCredentials(), 5.0, url=resource_manager)
    with pytest.raises(ConfigurationError) as caught:
        refused()
    message = str(caught.value)
    assert "HTTP 403" in message and "resourcemanager.projects.get" in message
    assert "pass project_number=" in message


# ------------------------------------------------------------------ the backend
def test_on_the_emulator_the_check_is_skipped_with_a_debug_line(
    backend: GCPPubSubBackend,
    unique: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_iam(**_: Any) -> None:
        raise AssertionError("an IAM call on the emulator")

    for client in (backend.publisher_client, backend.subscriber_client):
        monkeypatch.setattr(client, "get_iam_policy", no_iam)
        monkeypatch.setattr(client, "set_iam_policy", no_iam)
    caplog.set_level(logging.DEBUG, logger="melange.gcp")
    queue = f"{unique}-q"
    MessagingBackendFactory(backend).init_queue(
        queue, [f"{unique}-t"], dead_letter_queue_name=f"{unique}-dlq"
    )
    skipped = [r.getMessage() for r in caplog.records if "not checked" in r.getMessage()]
    assert (
        f"dead-letter permissions of subscription {queue!r} not checked: the emulator has no IAM"
        in skipped
    )
    assert len(skipped) == 2  # the queue's subscription and its fan-out one
    assert all(
        r.levelno == logging.DEBUG for r in caplog.records if "not checked" in r.getMessage()
    )


def test_dead_letter_permissions_option_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="dead_letter_permissions must be one of"):
        GCPPubSubBackend(
            project="p-1",
            emulator_host="127.0.0.1:1",
            dead_letter_permissions="maybe",  # type: ignore[arg-type]
        )
    with pytest.raises(ConfigurationError, match="project_number must be"):
        GCPPubSubBackend(project="p-1", emulator_host="127.0.0.1:1", project_number="n/a")


@pytest.fixture
def iam(backend: GCPPubSubBackend, monkeypatch: pytest.MonkeyPatch) -> FakeIam:
    """IAM for the backend's clients, with the check on as on the service (project NUMBER)."""
    fake = FakeIam()
    for client in (backend.publisher_client, backend.subscriber_client):
        monkeypatch.setattr(client, "get_iam_policy", fake.get)
        monkeypatch.setattr(client, "set_iam_policy", fake.set)
    # The seam: what the backend builds for the service, over its own clients.
    backend._permissions = DeadLetterPermissions(
        backend.project, lambda: NUMBER, _BackendIam(backend), grant=True
    )
    return fake


def _dead_letter_topic(backend: GCPPubSubBackend, subscription: str) -> str:
    path = f"projects/{backend.project}/subscriptions/{subscription}"
    found = backend.subscriber_client.get_subscription(request={"subscription": path})
    return str(found.dead_letter_policy.dead_letter_topic)


def test_init_grants_the_agent_what_dead_letters_need(
    backend: GCPPubSubBackend, iam: FakeIam, unique: str
) -> None:
    queue, topic, dlq = f"{unique}-q", f"{unique}-t", f"{unique}-dlq"
    MessagingBackendFactory(backend).init_queue(queue, [topic], dead_letter_queue_name=dlq)
    project = f"projects/{backend.project}"
    assert iam.has(f"{project}/topics/{dlq}", PUBLISHER_ROLE)
    assert iam.has(f"{project}/subscriptions/{queue}", SUBSCRIBER_ROLE)
    assert iam.has(f"{project}/subscriptions/{queue}~{topic}", SUBSCRIBER_ROLE)
    for subscription in (queue, f"{queue}~{topic}"):
        assert _dead_letter_topic(backend, subscription) == f"{project}/topics/{dlq}"


def test_without_the_right_to_grant_init_prints_the_commands_and_sets_no_dead_letter_policy(
    backend: GCPPubSubBackend, iam: FakeIam, unique: str
) -> None:
    queue, dlq = f"{unique}-q", f"{unique}-dlq"
    iam.may_set = False
    factory = MessagingBackendFactory(backend)
    with pytest.raises(ConfigurationError) as caught:
        factory.init_queue(queue, dead_letter_queue_name=dlq)
    message = str(caught.value)
    assert (
        f"gcloud pubsub topics add-iam-policy-binding {dlq} --project={backend.project}" in message
    )
    assert f"gcloud pubsub subscriptions add-iam-policy-binding {queue} " in message
    # The subscription exists, without the dead-letter policy no dead letter could use.
    current = backend.get_queue(queue)
    assert current is not None and current.dead_letter is None
    assert _dead_letter_topic(backend, queue) == ""

    # The user runs the commands; init then sets the policy.
    project = f"projects/{backend.project}"
    iam.grant(f"{project}/topics/{dlq}", PUBLISHER_ROLE)
    iam.grant(f"{project}/subscriptions/{queue}", SUBSCRIBER_ROLE)
    plan = factory.init_queue(queue, dead_letter_queue_name=dlq)
    assert [(a.kind, [c.setting for c in a.changes]) for a in plan] == [
        ("update_queue", ["dead_letter"])
    ]
    assert _dead_letter_topic(backend, queue) == f"{project}/topics/{dlq}"
