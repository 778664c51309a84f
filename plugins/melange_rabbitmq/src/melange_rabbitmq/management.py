"""A small client of RabbitMQ's management HTTP API: what the backend reads and converges.

Only the standard library (``urllib``): the API is plain JSON over HTTP. The
client counts its calls by HTTP method, so tests can prove that a converged
re-init changes nothing (``mutating_calls``). The password never appears in an
error, a repr or a log line: errors name the user and the endpoint only.
"""

from __future__ import annotations

import base64
import collections
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from melange.exceptions import BackendUnavailable, BrokerError, ConfigurationError

__all__ = ["ManagementAPI", "ManagementError"]

MUTATING = frozenset({"PUT", "POST", "DELETE"})
"""HTTP methods that change the broker's state."""


class ManagementError(BrokerError):
    """The management API answered with an error status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, broker_code=str(status))
        self.status = status


class ManagementAPI:
    """RabbitMQ's management HTTP API for one virtual host.

    Args:
        url: ``http(s)://[user:password@]host:port[/prefix]``; credentials missing
            from it are taken from ``username``/``password``.
        vhost: The virtual host every call is about.
        username: User when the URL has none.
        password: Password when the URL has none.
        timeout: Seconds per HTTP request.
    """

    def __init__(
        self,
        url: str,
        *,
        vhost: str,
        username: str,
        password: str,
        timeout: float = 10.0,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                "management_url must be an http:// or https:// URL of RabbitMQ's management "
                f"plugin, e.g. http://localhost:15672; got scheme {parts.scheme!r}"
            )
        user = urllib.parse.unquote(parts.username) if parts.username else username
        secret = urllib.parse.unquote(parts.password) if parts.password else password
        port = f":{parts.port}" if parts.port else ""
        self.endpoint = f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"
        self.user = user
        self.vhost = vhost
        self.timeout = timeout
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        self._authorization = f"Basic {token}"
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ManagementAPI {self.endpoint} user={self.user!r} vhost={self.vhost!r}>"

    @property
    def mutating_calls(self) -> int:
        """How many PUT, POST and DELETE requests this client has sent."""
        return sum(count for method, count in self.calls.items() if method in MUTATING)

    def path(self, *segments: str) -> str:
        """Join ``segments`` into an API path, each percent-encoded (``/`` too)."""
        return "/api/" + "/".join(urllib.parse.quote(segment, safe="") for segment in segments)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the decoded JSON answer, or ``None`` when absent (404).

        Raises:
            BackendUnavailable: The endpoint cannot be reached.
            ConfigurationError: The credentials are refused (401) or lack a permission (403).
            ManagementError: Any other error status.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.endpoint + path, data=data, method=method)
        request.add_header("Authorization", self._authorization)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with self._lock:
            self.calls[method] += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as error:
            detail = _reason(error)
            if error.code == 404 and method == "GET":
                return None
            if error.code in (401, 403):
                raise ConfigurationError(
                    f"RabbitMQ's management API at {self.endpoint} refused {method} {path} for "
                    f"user {self.user!r} ({error.code}: {detail}); the user needs the "
                    "'policymaker' tag (or 'administrator') and configure permission on the "
                    f"virtual host {self.vhost!r}"
                ) from None
            raise ManagementError(
                f"RabbitMQ's management API at {self.endpoint} answered {method} {path} with "
                f"{error.code}: {detail}",
                status=error.code,
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise BackendUnavailable(
                f"cannot reach RabbitMQ's management API at {self.endpoint}: {reason}; check "
                "management_url and that the rabbitmq_management plugin is enabled"
            ) from None
        return json.loads(raw) if raw.strip() else None

    # ------------------------------------------------------------- resources
    def queue(self, name: str) -> dict[str, Any] | None:
        """The queue's description, or ``None``."""
        found: dict[str, Any] | None = self.request("GET", self.path("queues", self.vhost, name))
        return found

    def exchange(self, name: str) -> dict[str, Any] | None:
        """The exchange's description, or ``None``."""
        found: dict[str, Any] | None = self.request("GET", self.path("exchanges", self.vhost, name))
        return found

    def bindings(self, exchange: str, queue: str) -> list[dict[str, Any]]:
        """The bindings from ``exchange`` to ``queue`` (empty when either is missing)."""
        found = self.request("GET", self.path("bindings", self.vhost, "e", exchange, "q", queue))
        return list(found or [])

    def bind(self, exchange: str, queue: str, arguments: dict[str, Any]) -> None:
        """Bind ``queue`` to ``exchange`` with ``arguments`` (empty routing key)."""
        path = self.path("bindings", self.vhost, "e", exchange, "q", queue)
        self.request("POST", path, {"routing_key": "", "arguments": arguments})

    def unbind(self, exchange: str, queue: str, properties_key: str) -> None:
        """Remove the binding ``properties_key`` (from :meth:`bindings`) of ``queue``."""
        self._delete(self.path("bindings", self.vhost, "e", exchange, "q", queue, properties_key))

    def policy(self, name: str) -> dict[str, Any] | None:
        """The policy ``name`` of the virtual host, or ``None``."""
        found: dict[str, Any] | None = self.request("GET", self.path("policies", self.vhost, name))
        return found

    def put_policy(
        self, name: str, pattern: str, definition: dict[str, Any], priority: int
    ) -> None:
        """Create or replace the queue policy ``name``."""
        body = {
            "pattern": pattern,
            "definition": definition,
            "priority": priority,
            "apply-to": "queues",
        }
        self.request("PUT", self.path("policies", self.vhost, name), body)

    def delete_policy(self, name: str) -> None:
        """Delete the policy ``name``; nothing when it is gone already."""
        self._delete(self.path("policies", self.vhost, name))

    def parameter(self, name: str) -> Any:
        """The value of the global runtime parameter ``name``, or ``None``."""
        found = self.request("GET", self.path("global-parameters", name))
        return None if found is None else found.get("value")

    def put_parameter(self, name: str, value: Any) -> None:
        """Set the global runtime parameter ``name`` to the JSON ``value``."""
        self.request("PUT", self.path("global-parameters", name), {"name": name, "value": value})

    def delete_parameter(self, name: str) -> None:
        """Delete the global runtime parameter ``name``; nothing when it is gone already."""
        self._delete(self.path("global-parameters", name))

    def _delete(self, path: str) -> None:
        try:
            self.request("DELETE", path)
        except ManagementError as error:
            if error.status != 404:
                raise


def _reason(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read() or b"{}")
    except (ValueError, OSError):
        return str(error.reason)
    if isinstance(body, dict):
        return str(body.get("reason") or body.get("error") or error.reason).strip()
    return str(error.reason)
