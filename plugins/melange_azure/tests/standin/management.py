"""A local stand-in for the Service Bus management API: ATOM/XML over HTTP.

It serves what ``azure.servicebus.management.ServiceBusAdministrationClient``
(azure-servicebus 7.15) sends, the way the service answers it:

- ``PUT /<entity>`` creates a queue or a topic (the body's ``QueueDescription``
  or ``TopicDescription`` says which): 201 and the entry, with every property
  the request left out set to the service's default; 409 when the name is taken
  (queues and topics share one name space). With ``If-Match: *`` it updates:
  200, 404 when missing, 400 when a property Service Bus fixes at creation
  (``RequiresSession``, ``RequiresDuplicateDetection``, ``EnablePartitioning``)
  would change.
- ``PUT /<topic>/subscriptions/<name>`` and ``.../rules/<name>`` likewise; a new
  subscription gets the ``$Default`` rule (a TrueFilter), as on the service.
- ``GET`` of one entity returns its entry. A queue or topic that does not exist
  answers 200 with an empty feed, like the service (the SDK turns that into
  ``ResourceNotFoundError``); a missing subscription or rule answers 404.
- ``GET /$Resources/queues``, ``/$Resources/topics``, ``/<topic>/subscriptions``
  and ``.../rules`` return ATOM feeds, paged by ``$skip``/``$top`` with a
  ``next`` link.
- ``DELETE`` removes an entity (and what it holds); 404 when missing. For
  ``Namespace.conflict_after_delete`` seconds after, creating the same name answers
  409 SubCode 40901 "Another conflicting operation is in progress" (off by default).
- Names are case-insensitive; the casing given at creation is kept.
- ``ForwardTo`` and ``ForwardDeadLetteredMessagesTo`` arrive as
  ``sb://host:port/<entity>`` URLs and are stored as sent; the target must exist
  and cannot be the entity itself (400, as on the service).
- Every request needs an unexpired ``Authorization: SharedAccessSignature
  sr=&sig=&se=&skn=`` (401 otherwise); given the namespace key, the signature is
  verified too, and so are the supplementary tokens the SDK sends for
  forwarding targets.
- ``GET /$namespaceinfo`` describes a Standard namespace.

Stand-in limits, by design: authorization rules are accepted and ignored; the
runtime counts (``MessageCount``, ``CountDetails``) are always 0; a rule must be
a TrueFilter, a FalseFilter or a SqlFilter in the subset the AMQP stand-in
evaluates (``user.[p] IN ('a', 'b') AND ...``, see :mod:`.amqp_filters`), with
no action: anything else is a 400 that names this limit. Response elements
come in the service's order, though the SDK's deserializer finds them by name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar
from urllib.parse import parse_qs, quote_plus, unquote, urlsplit
from xml.sax.saxutils import escape, quoteattr

from . import amqp_filters
from .namespace import (
    Entity,
    Namespace,
    Queue,
    Rule,
    Subscription,
    Topic,
    entity_name_from_forward_to,
)

E = TypeVar("E", Queue, Topic, Subscription, Rule)

ATOM = "http://www.w3.org/2005/Atom"
SB = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
COUNTS = "http://schemas.microsoft.com/netservices/2011/06/servicebus"

MAX_TIMESPAN = "P10675199DT2H48M5.4775807S"
""".NET ``TimeSpan.MaxValue``: the service's "never" for TTL and auto-delete."""
NEVER = "0001-01-01T00:00:00Z"
""".NET ``DateTime.MinValue``: ``AccessedAt`` of an entity nobody used yet."""
HELP = "To know more visit https://aka.ms/sbResourceMgrExceptions."


# --- the entity kinds: element order, defaults, value types, immutables -------------------------


@dataclass(frozen=True)
class Field:
    """One element of a description: its name, default text and value type.

    ``default`` ``None`` means the element is absent unless the client sets it.
    ``kind`` is how a request's value is checked: ``bool``, ``int``,
    ``duration``, ``text``, ``forward`` (an ``sb://`` URL to another entity), or
    ``server`` / ``auth`` / ``counts`` / ``computed`` for what the service
    owns, which a request cannot set.
    """

    name: str
    default: str | None
    kind: str


@dataclass(frozen=True)
class Kind:
    """A queue, topic or subscription: its XML element and its fields in wire order."""

    label: str
    element: str
    fields: tuple[Field, ...]
    immutable: tuple[str, ...]

    def defaults(self) -> dict[str, str]:
        """The stored description of a new entity, before the request's values."""
        return {
            f.name: f.default
            for f in self.fields
            if f.default is not None and f.kind not in ("auth", "counts", "computed")
        }


def _fields(*rows: tuple[str, str | None, str]) -> tuple[Field, ...]:
    return tuple(Field(*row) for row in rows)


QUEUE = Kind(
    "Queue",
    "QueueDescription",
    _fields(
        ("LockDuration", "PT1M", "duration"),
        ("MaxSizeInMegabytes", "1024", "int"),
        ("RequiresDuplicateDetection", "false", "bool"),
        ("RequiresSession", "false", "bool"),
        ("DefaultMessageTimeToLive", MAX_TIMESPAN, "duration"),
        ("DeadLetteringOnMessageExpiration", "false", "bool"),
        ("DuplicateDetectionHistoryTimeWindow", "PT10M", "duration"),
        ("MaxDeliveryCount", "10", "int"),
        ("EnableBatchedOperations", "true", "bool"),
        ("SizeInBytes", "0", "server"),
        ("MessageCount", "0", "server"),
        ("IsAnonymousAccessible", "false", "bool"),
        ("AuthorizationRules", "", "auth"),
        ("Status", "Active", "text"),
        ("ForwardTo", None, "forward"),
        ("UserMetadata", None, "text"),
        ("CreatedAt", None, "server"),
        ("UpdatedAt", None, "server"),
        ("AccessedAt", NEVER, "server"),
        ("SupportOrdering", "true", "bool"),
        ("CountDetails", "", "counts"),
        ("AutoDeleteOnIdle", MAX_TIMESPAN, "duration"),
        ("EnablePartitioning", "false", "bool"),
        ("EntityAvailabilityStatus", "Available", "server"),
        ("ForwardDeadLetteredMessagesTo", None, "forward"),
        ("EnableExpress", "false", "bool"),
        ("MaxMessageSizeInKilobytes", "256", "int"),
    ),
    immutable=("RequiresSession", "RequiresDuplicateDetection", "EnablePartitioning"),
)

TOPIC = Kind(
    "Topic",
    "TopicDescription",
    _fields(
        ("DefaultMessageTimeToLive", MAX_TIMESPAN, "duration"),
        ("MaxSizeInMegabytes", "1024", "int"),
        ("RequiresDuplicateDetection", "false", "bool"),
        ("DuplicateDetectionHistoryTimeWindow", "PT10M", "duration"),
        ("EnableBatchedOperations", "true", "bool"),
        ("SizeInBytes", "0", "server"),
        ("FilteringMessagesBeforePublishing", "false", "bool"),
        ("IsAnonymousAccessible", "false", "bool"),
        ("AuthorizationRules", "", "auth"),
        ("Status", "Active", "text"),
        ("UserMetadata", None, "text"),
        ("CreatedAt", None, "server"),
        ("UpdatedAt", None, "server"),
        ("AccessedAt", NEVER, "server"),
        ("SupportOrdering", "true", "bool"),
        ("CountDetails", "", "counts"),
        ("SubscriptionCount", "0", "computed"),
        ("AutoDeleteOnIdle", MAX_TIMESPAN, "duration"),
        ("EnablePartitioning", "false", "bool"),
        ("EntityAvailabilityStatus", "Available", "server"),
        ("EnableSubscriptionPartitioning", "false", "bool"),
        ("EnableExpress", "false", "bool"),
        ("MaxMessageSizeInKilobytes", "256", "int"),
    ),
    immutable=("RequiresDuplicateDetection", "EnablePartitioning"),
)

SUBSCRIPTION = Kind(
    "Subscription",
    "SubscriptionDescription",
    _fields(
        ("LockDuration", "PT1M", "duration"),
        ("RequiresSession", "false", "bool"),
        ("DefaultMessageTimeToLive", MAX_TIMESPAN, "duration"),
        ("DeadLetteringOnMessageExpiration", "false", "bool"),
        ("DeadLetteringOnFilterEvaluationExceptions", "true", "bool"),
        ("MessageCount", "0", "server"),
        ("MaxDeliveryCount", "10", "int"),
        ("EnableBatchedOperations", "true", "bool"),
        ("Status", "Active", "text"),
        ("ForwardTo", None, "forward"),
        ("CreatedAt", None, "server"),
        ("UpdatedAt", None, "server"),
        ("AccessedAt", NEVER, "server"),
        ("CountDetails", "", "counts"),
        ("UserMetadata", None, "text"),
        ("ForwardDeadLetteredMessagesTo", None, "forward"),
        ("AutoDeleteOnIdle", MAX_TIMESPAN, "duration"),
        ("EntityAvailabilityStatus", "Available", "server"),
    ),
    immutable=("RequiresSession",),
)

# The service words the immutable-property error with these names (observed messages).
_IMMUTABLE_WORDING = {
    "RequiresSession": "RequiresSession",
    "RequiresDuplicateDetection": "requires duplicate detection",
    "EnablePartitioning": "EnablePartitioning",
}

# Documented limits the service checks (ISO 8601 durations in seconds).
_DURATION_LIMITS = {
    "LockDuration": (Decimal(5), Decimal(300)),
    "DuplicateDetectionHistoryTimeWindow": (Decimal(20), Decimal(7 * 24 * 3600)),
    "AutoDeleteOnIdle": (Decimal(300), None),
}

_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_SUBSCRIPTION_PATH = re.compile(
    r"^(?P<topic>.+?)/subscriptions(?:/(?P<sub>[^/]+)(?P<rules>/rules(?:/(?P<rule>[^/]+))?)?)?$",
    re.IGNORECASE,
)
_DURATION = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


class ServiceError(Exception):
    """An error answer: HTTP status and the ``Detail`` text of the service's ``<Error>``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# --- value checks ---------------------------------------------------------------------------


def duration_seconds(text: str) -> Decimal:
    """The length of an ISO 8601 duration (days to seconds) in seconds.

    Raises:
        ValueError: the text is not such a duration.
    """
    match = _DURATION.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(text)
    return (
        Decimal(match["d"] or 0) * 86400
        + Decimal(match["h"] or 0) * 3600
        + Decimal(match["m"] or 0) * 60
        + Decimal(match["s"] or 0)
    )


def canonical_duration(text: str) -> str:
    """Rewrite an ISO 8601 duration the way .NET ``XmlConvert`` writes a ``TimeSpan``.

    ``PT60S`` comes back ``PT1M``, like from the service; 7 fractional digits
    are kept so ``TimeSpan.MaxValue`` round-trips exactly.

    Raises:
        ValueError: the text is not an ISO 8601 duration of days to seconds.
    """
    return format_duration(duration_seconds(text))


def format_duration(total: Decimal) -> str:
    """Write ``total`` seconds as .NET writes a ``TimeSpan`` (``P1DT2H``, ``PT0.5S``)."""
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    text = "P" + (f"{int(days)}D" if days else "")
    clock = (f"{int(hours)}H" if hours else "") + (f"{int(minutes)}M" if minutes else "")
    if seconds:
        clock += f"{seconds.quantize(Decimal('0.0000001')).normalize():f}S"
    if clock or not days:
        text += "T" + (clock or "0S")
    return text


def _checked(field: Field, text: str) -> str:
    """The stored text for ``field`` from a request's ``text``, or a 400."""
    value = text.strip()
    if field.kind == "bool":
        if value.lower() not in ("true", "false"):
            raise _bad_request(f"The value '{value}' is not a valid boolean for {field.name}.")
        return value.lower()
    if field.kind == "int":
        if not re.fullmatch(r"-?\d+", value):
            raise _bad_request(f"The value '{value}' is not a valid integer for {field.name}.")
        if field.name == "MaxDeliveryCount" and int(value) < 1:
            raise _bad_request(
                f"The value supplied for MaxDeliveryCount must be at least 1; got {value}."
            )
        return str(int(value))
    if field.kind == "duration":
        try:
            canonical = canonical_duration(value)
        except ValueError:
            raise _bad_request(
                f"The value '{value}' is not a valid ISO 8601 duration for {field.name}."
            ) from None
        low, high = _DURATION_LIMITS.get(field.name, (None, None))
        seconds = duration_seconds(canonical)
        if (low is not None and seconds < low) or (high is not None and seconds > high):
            bounds = f"between {format_duration(low or Decimal(0))} and " + (
                format_duration(high) if high is not None else MAX_TIMESPAN
            )
            raise _bad_request(f"The value supplied for {field.name} must be {bounds}.")
        return canonical
    return value


# --- errors, in the service's words ------------------------------------------------------------


def _tracking(tracker: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"TrackingId:{uuid.uuid4()}, SystemTracker:{tracker}, Timestamp:{stamp}"


def _bad_request(message: str, tracker: str = "NoSystemTracker") -> ServiceError:
    return ServiceError(400, f"SubCode=40000. {message} {HELP} {_tracking(tracker)}")


def _not_found(tracker: str) -> ServiceError:
    return ServiceError(
        404, f"The messaging entity '{tracker}' could not be found. {HELP} {_tracking(tracker)}"
    )


def _conflict(tracker: str) -> ServiceError:
    return ServiceError(
        409,
        "SubCode=40900. Conflict. You're requesting an operation that isn't allowed in the "
        f"resource's current state. {HELP} {_tracking(tracker)}",
    )


def _conflicting_operation(tracker: str) -> ServiceError:
    return ServiceError(
        409,
        f"SubCode=40901. Another conflicting operation is in progress. {HELP} {_tracking(tracker)}",
    )


def _unauthorized(message: str) -> ServiceError:
    return ServiceError(401, f"{message} {_tracking('NoSystemTracker')}")


# --- the server ---------------------------------------------------------------------------------


class ManagementServer:
    """The management stand-in: an HTTP server over one :class:`Namespace`.

    Args:
        namespace: the entities it creates, reads, updates and deletes (shared
            with the AMQP stand-in).
        host: the interface to listen on.
        port: the port, 0 for a free one.
        key: the namespace's SharedAccessKey; when given, SAS signatures are
            verified, else only the header's shape and expiry are checked.
        key_name: when given, the token's ``skn`` must name it.

    Attributes:
        url: ``http://<host>:<port>`` once started.
        requests: ``(method, path)`` of every request served, path unquoted and
            without the query string (``("GET", "/$Resources/queues")``).
    """

    def __init__(
        self,
        namespace: Namespace,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        key: str | None = None,
        key_name: str | None = None,
    ) -> None:
        self.namespace = namespace
        self.key = key
        self.key_name = key_name
        self.url = ""
        self.requests: list[tuple[str, str]] = []
        self._address = (host, port)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._requests_lock = threading.Lock()
        self._started = _now()

    def start(self) -> None:
        """Listen and serve in a daemon thread."""
        handler = type("Handler", (_Handler,), {"stand_in": self})
        self._httpd = ThreadingHTTPServer(self._address, handler)
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        # A short poll interval: stop() waits up to one interval for the loop.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="sb-management", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ManagementServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, method: str, path: str) -> None:
        """Note one served request."""
        with self._requests_lock:
            self.requests.append((method, path))

    # --- authorization ---

    def check_token(self, header: str | None, what: str = "authorization header") -> None:
        """Refuse (401) a missing, malformed, expired or wrongly signed SAS token."""
        if not header:
            raise _unauthorized(f"MissingToken: The {what} was not found.")
        scheme, _, rest = header.partition(" ")
        fields = {k: v[0] for k, v in parse_qs(rest, keep_blank_values=True).items()}
        if scheme != "SharedAccessSignature" or not {"sr", "sig", "se", "skn"} <= set(fields):
            raise _unauthorized(
                f"InvalidSignature: The {what} is not a SharedAccessSignature sr=&sig=&se=&skn=."
            )
        if not fields["se"].isdigit() or int(fields["se"]) < time.time():
            raise _unauthorized(f"ExpiredToken: The token is expired. Expiry: {fields['se']}.")
        if self.key_name is not None and fields["skn"] != self.key_name:
            raise _unauthorized(
                f"InvalidSignature: The token names the unknown policy '{fields['skn']}'."
            )
        if self.key is not None:
            signed = f"{quote_plus(fields['sr'])}\n{fields['se']}".encode()
            digest = hmac.new(self.key.encode(), signed, hashlib.sha256).digest()
            expected = base64.b64encode(digest).decode()
            if not hmac.compare_digest(expected, fields["sig"]):
                raise _unauthorized("InvalidSignature: The token has an invalid signature.")

    # --- the operations; each runs with the namespace lock held ---

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        """Serve one authorized request; raises :class:`ServiceError` for error answers."""
        if method == "GET" and path.lower() == "$namespaceinfo":
            return self._namespace_info(headers)
        listing = path.lower() in ("$resources/queues", "$resources/topics")
        if method == "GET" and listing:
            kind = QUEUE if path.lower().endswith("queues") else TOPIC
            return self._list(kind, path, headers)
        match = _SUBSCRIPTION_PATH.match(path)
        with self.namespace.lock:
            if match is None:
                return self._entity(method, path, headers, body)
            topic, sub, rule = match["topic"], match["sub"], match["rule"]
            if sub is None:
                if method != "GET":
                    raise _bad_request(f"{method} is not supported on a subscriptions collection.")
                return self._list(SUBSCRIPTION, path, headers, topic=topic)
            if rule is None and match["rules"]:
                if method != "GET":
                    raise _bad_request(f"{method} is not supported on a rules collection.")
                return self._list_rules(topic, sub, path, headers)
            if rule is None:
                return self._subscription(method, topic, sub, path, headers, body)
            return self._rule(method, topic, sub, rule, path, headers, body)

    def _entity(self, method: str, name: str, headers: dict[str, str], body: bytes) -> Response:
        ns = self.namespace
        existing: Queue | Topic | None = _find(ns.queues, name) or _find(ns.topics, name)
        kind = QUEUE if isinstance(existing, Queue) else TOPIC
        tracker = f"{self._host(headers)}:{name}"
        if method == "GET":
            if existing is None:
                return self._empty_feed()
            return self._entry(kind, existing, name, headers)
        if method == "DELETE":
            if existing is None:
                raise _not_found(tracker)
            _remove(ns.queues, name)
            _remove(ns.topics, name)
            ns.deleted_at[name.lower()] = time.monotonic()
            return Response(200, "", "")
        if method != "PUT":
            raise _bad_request(f"{method} is not supported.")
        element, values = _read_description(body, (QUEUE.element, TOPIC.element))
        kind = QUEUE if element == QUEUE.element else TOPIC
        tracker = f"{self._host(headers)}:{kind.label}:{name}"
        if headers.get("if-match") == "*":
            if existing is None or (kind is QUEUE) != isinstance(existing, Queue):
                raise _not_found(tracker)
            description = self._updated(kind, existing, values, tracker)
            self._check_forwarding(kind, description, name, headers)
            existing.description = description
            return self._entry(kind, existing, name, headers)
        if existing is not None:
            raise _conflict(tracker)
        self._check_recently_deleted(name, tracker)
        _check_name(name, 260, tracker, allow_slashes=True)
        description = self._new_description(kind, values, tracker)
        if kind is QUEUE:
            self._check_forwarding(kind, description, name, headers)
            queue = Queue(name, description)
            ns.queues[name] = queue
            return self._entry(kind, queue, name, headers, status=201)
        topic = Topic(name, description)
        ns.topics[name] = topic
        return self._entry(kind, topic, name, headers, status=201)

    def _subscription(
        self,
        method: str,
        topic_name: str,
        name: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
    ) -> Response:
        tracker = f"{self._host(headers)}:Topic:{topic_name}|{name}"
        topic = self._topic(topic_name, headers)
        existing = _find(topic.subscriptions, name)
        if method == "GET":
            if existing is None:
                raise _not_found(tracker)
            return self._entry(SUBSCRIPTION, existing, path, headers)
        if method == "DELETE":
            if existing is None:
                raise _not_found(tracker)
            _remove(topic.subscriptions, name)
            self.namespace.deleted_at[f"{topic.name}/{name}".lower()] = time.monotonic()
            return Response(200, "", "")
        if method != "PUT":
            raise _bad_request(f"{method} is not supported.")
        _, values = _read_description(body, (SUBSCRIPTION.element,))
        if headers.get("if-match") == "*":
            if existing is None:
                raise _not_found(tracker)
            description = self._updated(SUBSCRIPTION, existing, values, tracker)
            self._check_forwarding(SUBSCRIPTION, description, None, headers)
            existing.description = description
            return self._entry(SUBSCRIPTION, existing, path, headers)
        if existing is not None:
            raise _conflict(tracker)
        self._check_recently_deleted(f"{topic.name}/{name}", tracker)
        _check_name(name, 50, tracker)
        description = self._new_description(SUBSCRIPTION, values, tracker)
        self._check_forwarding(SUBSCRIPTION, description, None, headers)
        subscription = Subscription(name, description)
        # The service gives every new subscription a rule that lets everything in.
        subscription.rules["$Default"] = Rule("$Default", {"CreatedAt": _now()}, None)
        topic.subscriptions[name] = subscription
        return self._entry(SUBSCRIPTION, subscription, path, headers, status=201)

    def _rule(
        self,
        method: str,
        topic_name: str,
        sub_name: str,
        name: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
    ) -> Response:
        tracker = f"{self._host(headers)}:Topic:{topic_name}|{sub_name}|{name}"
        subscription = _find(self._topic(topic_name, headers).subscriptions, sub_name)
        if subscription is None:
            raise _not_found(f"{self._host(headers)}:Topic:{topic_name}|{sub_name}")
        existing = _find(subscription.rules, name)
        if method == "GET":
            if existing is None:
                raise _not_found(tracker)
            return self._rule_entry(existing, path, headers)
        if method == "DELETE":
            if existing is None:
                raise _not_found(tracker)
            _remove(subscription.rules, name)
            return Response(200, "", "")
        if method != "PUT":
            raise _bad_request(f"{method} is not supported.")
        expression = _read_rule(body, tracker)
        if headers.get("if-match") == "*":
            if existing is None:
                raise _not_found(tracker)
            existing.sql_expression = expression
            existing.description["UpdatedAt"] = _now()
            return self._rule_entry(existing, path, headers)
        if existing is not None:
            raise _conflict(tracker)
        if name != "$Default":
            _check_name(name, 50, tracker)
        rule = Rule(name, {"CreatedAt": _now()}, expression)
        subscription.rules[name] = rule
        return self._rule_entry(rule, path, headers, status=201)

    def _check_recently_deleted(self, path: str, tracker: str) -> None:
        """409 while a delete of the same name is still "in progress" (see Namespace)."""
        deleted = self.namespace.deleted_at.get(path.lower())
        window = self.namespace.conflict_after_delete
        if deleted is not None and time.monotonic() < deleted + window:
            raise _conflicting_operation(tracker)

    def _topic(self, name: str, headers: dict[str, str]) -> Topic:
        topic = _find(self.namespace.topics, name)
        if topic is None:
            raise _not_found(f"{self._host(headers)}:Topic:{name}")
        return topic

    # --- descriptions ---

    def _new_description(self, kind: Kind, values: dict[str, str], tracker: str) -> dict[str, str]:
        description = kind.defaults()
        description.update(_checked_values(kind, values, tracker))
        now = _now()
        description["CreatedAt"] = description["UpdatedAt"] = now
        return {f.name: description[f.name] for f in kind.fields if f.name in description}

    def _updated(
        self, kind: Kind, entity: Entity, values: dict[str, str], tracker: str
    ) -> dict[str, str]:
        """Replace the description, like the service: what a request omits is reset."""
        checked = _checked_values(kind, values, tracker)
        for name in kind.immutable:
            if name in checked and checked[name] != entity.description.get(name):
                raise _bad_request(
                    f"The value for the {_IMMUTABLE_WORDING[name]} property of an existing "
                    f"{kind.label} cannot be changed.",
                    tracker,
                )
        description = kind.defaults()
        for f in kind.fields:
            kept = f.kind == "server" or f.name in kind.immutable
            if kept and f.name in entity.description:
                description[f.name] = entity.description[f.name]
        description.update({k: v for k, v in checked.items() if k not in kind.immutable})
        description["UpdatedAt"] = _now()
        return {f.name: description[f.name] for f in kind.fields if f.name in description}

    def _check_forwarding(
        self, kind: Kind, description: dict[str, str], own_name: str | None, headers: dict[str, str]
    ) -> None:
        """Refuse (400) forwarding to a missing entity or to itself; check forwarding tokens."""
        supplementary = {
            "ForwardTo": "servicebussupplementaryauthorization",
            "ForwardDeadLetteredMessagesTo": "servicebusdlqsupplementaryauthorization",
        }
        for element, header in supplementary.items():
            url = description.get(element)
            if not url:
                continue
            target = entity_name_from_forward_to(url)
            if own_name is not None and target.lower() == own_name.lower():
                raise _bad_request(
                    f"The auto forwarding destination entity '{target}' cannot be the "
                    f"{kind.label.lower()} itself."
                )
            ns = self.namespace
            if _find(ns.queues, target) is None and _find(ns.topics, target) is None:
                raise ServiceError(
                    400,
                    f"SubCode=40400. The auto forwarding destination entity '{target}' does not "
                    f"exist. {HELP} {_tracking(target)}",
                )
            if header in headers:
                self.check_token(headers[header], f"{element} supplementary authorization")

    # --- rendering ---

    def _host(self, headers: dict[str, str]) -> str:
        return headers.get("host", "localhost")

    def _self_link(self, path: str, headers: dict[str, str]) -> str:
        return f"https://{self._host(headers)}/{path}?api-version=2024-05"

    def _entry(
        self,
        kind: Kind,
        entity: Entity,
        path: str,
        headers: dict[str, str],
        status: int = 200,
    ) -> Response:
        body = self._entry_xml(entity.name, self._description_xml(kind, entity), path, headers)
        return Response(status, _XML_DECLARATION + body, "application/atom+xml;type=entry")

    def _rule_entry(
        self, rule: Rule, path: str, headers: dict[str, str], status: int = 200
    ) -> Response:
        body = self._entry_xml(rule.name, _rule_xml(rule), path, headers)
        return Response(status, _XML_DECLARATION + body, "application/atom+xml;type=entry")

    def _entry_xml(self, title: str, content: str, path: str, headers: dict[str, str]) -> str:
        link = self._self_link(path, headers)
        now = _now()
        return (
            f'<entry xmlns="{ATOM}"><id>{escape(link)}</id>'
            f'<title type="text">{escape(title)}</title>'
            f"<published>{now}</published><updated>{now}</updated>"
            f"<author><name>{escape(self._host(headers))}</name></author>"
            f'<link rel="self" href={quoteattr(link)}/>'
            f'<content type="application/xml">{content}</content></entry>'
        )

    def _description_xml(self, kind: Kind, entity: Entity) -> str:
        parts = []
        for f in kind.fields:
            if f.kind == "auth":
                parts.append("<AuthorizationRules/>")
            elif f.kind == "counts":
                counts = "".join(
                    f"<d2p1:{name}>0</d2p1:{name}>"
                    for name in (
                        "ActiveMessageCount",
                        "DeadLetterMessageCount",
                        "ScheduledMessageCount",
                        "TransferDeadLetterMessageCount",
                        "TransferMessageCount",
                    )
                )
                parts.append(f'<CountDetails xmlns:d2p1="{COUNTS}">{counts}</CountDetails>')
            elif f.kind == "computed" and isinstance(entity, Topic):
                parts.append(f"<{f.name}>{len(entity.subscriptions)}</{f.name}>")
            elif f.name in entity.description:
                parts.append(f"<{f.name}>{escape(entity.description[f.name])}</{f.name}>")
        return f'<{kind.element} xmlns="{SB}" xmlns:i="{XSI}">{"".join(parts)}</{kind.element}>'

    def _namespace_info(self, headers: dict[str, str]) -> Response:
        # A Standard namespace, the tier whose behaviour the stand-in follows.
        info = (
            f'<NamespaceInfo xmlns="{SB}" xmlns:i="{XSI}"><CreatedTime>{self._started}'
            f"</CreatedTime><MessagingSKU>Standard</MessagingSKU><ModifiedTime>{self._started}"
            f"</ModifiedTime><Name>{escape(self._host(headers))}</Name>"
            "<NamespaceType>Messaging</NamespaceType></NamespaceInfo>"
        )
        body = self._entry_xml(self._host(headers), info, "$namespaceinfo", headers)
        return Response(200, _XML_DECLARATION + body, "application/atom+xml;type=entry")

    def _empty_feed(self) -> Response:
        # What the service answers for a GET on a name no entity has.
        body = (
            f'<feed xmlns="{ATOM}"><title type="text">Publicly Listed Services</title>'
            '<subtitle type="text">This is the list of publicly-listed services currently '
            "available.</subtitle>"
            f"<id>uuid:{uuid.uuid4()};id=1</id><updated>{_now()}</updated>"
            "<generator>Service Bus 1.1</generator></feed>"
        )
        return Response(200, _XML_DECLARATION + body, "application/atom+xml;type=feed")

    def _list(
        self, kind: Kind, path: str, headers: dict[str, str], topic: str | None = None
    ) -> Response:
        with self.namespace.lock:
            if topic is not None:
                owner = _find(self.namespace.topics, topic)
                if owner is None:
                    return self._empty_feed()
                entities: Iterable[Entity] = owner.subscriptions.values()
            else:
                entities = (
                    self.namespace.queues if kind is QUEUE else self.namespace.topics
                ).values()
            items = [
                (
                    e.name,
                    self._description_xml(kind, e),
                    f"{topic}/subscriptions/{e.name}" if topic else e.name,
                )
                for e in sorted(entities, key=lambda e: e.name.lower())
            ]
        title = {QUEUE: "Queues", TOPIC: "Topics", SUBSCRIPTION: "Subscriptions"}[kind]
        return self._feed(title, items, path, headers)

    def _list_rules(self, topic: str, sub: str, path: str, headers: dict[str, str]) -> Response:
        subscription = _find(self._topic(topic, headers).subscriptions, sub)
        if subscription is None:
            raise _not_found(f"{self._host(headers)}:Topic:{topic}|{sub}")
        items = [
            (r.name, _rule_xml(r), f"{path}/{r.name}")
            for r in sorted(subscription.rules.values(), key=lambda r: r.name.lower())
        ]
        return self._feed("Rules", items, path, headers)

    def _feed(
        self,
        title: str,
        items: list[tuple[str, str, str]],
        path: str,
        headers: dict[str, str],
    ) -> Response:
        query = parse_qs(headers.get(":query", ""))
        skip = int(query.get("$skip", ["0"])[0])
        top = int(query.get("$top", ["100"])[0])
        link = self._self_link(path, headers)
        links = [f'<link rel="self" href={quoteattr(link)}/>']
        if skip + top < len(items):
            following = f"https://{self._host(headers)}/{path}?$skip={skip + top}&$top={top}"
            links.append(f'<link rel="next" href={quoteattr(following + "&api-version=2024-05")}/>')
        entries = "".join(
            self._entry_xml(name, content, entry_path, headers)
            for name, content, entry_path in items[skip : skip + top]
        )
        body = (
            f'<feed xmlns="{ATOM}"><title type="text">{title}</title>'
            f"<id>{escape(link)}</id><updated>{_now()}</updated>{''.join(links)}{entries}</feed>"
        )
        return Response(200, _XML_DECLARATION + body, "application/atom+xml;type=feed")


@dataclass
class Response:
    """An answer: status, body text and content type (empty body: no type)."""

    status: int
    body: str
    content_type: str


_XML_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>'


def _find(entities: dict[str, E], name: str) -> E | None:
    """The entity named ``name`` in any casing: Service Bus names are case-insensitive."""
    found = entities.get(name)
    if found is not None:
        return found
    lowered = name.lower()
    return next((e for key, e in entities.items() if key.lower() == lowered), None)


def _remove(entities: dict[str, E], name: str) -> None:
    for key in [k for k in entities if k.lower() == name.lower()]:
        del entities[key]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_name(name: str, limit: int, tracker: str, allow_slashes: bool = False) -> None:
    segments = name.split("/") if allow_slashes else [name]
    if len(name) > limit:
        raise _bad_request(
            f"The entity name '{name}' is {len(name)} characters long; the limit is {limit}.",
            tracker,
        )
    if not all(_SEGMENT.match(s) for s in segments):
        raise _bad_request(
            f"'{name}' contains character(s) that is not allowed by Service Bus. Entity "
            "segments can contain only letters, numbers, periods (.), hyphens (-), and "
            "underscores (_).",
            tracker,
        )


def _checked_values(kind: Kind, values: dict[str, str], tracker: str) -> dict[str, str]:
    """The request's settable values, checked and canonical; service-owned ones dropped."""
    fields = {f.name: f for f in kind.fields}
    checked = {}
    for name, text in values.items():
        field = fields.get(name)
        if field is None:
            raise _bad_request(
                f"The entity description of type '{kind.element}' has an unsupported property "
                f"'{name}'.",
                tracker,
            )
        if field.kind in ("server", "auth", "counts", "computed"):
            continue
        if field.kind == "forward" and not text.strip():
            continue
        checked[name] = _checked(field, text)
    return checked


def _read_xml(body: bytes) -> ET.Element:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as error:
        raise _bad_request(f"The request body is not well-formed XML: {error}.") from None
    if root.tag != f"{{{ATOM}}}entry":
        raise _bad_request("The request body must be an ATOM entry.")
    return root


def _read_description(body: bytes, elements: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """The description element's name and its children (local name to text), in order."""
    root = _read_xml(body)
    content = root.find(f"{{{ATOM}}}content")
    description = None if content is None else next(iter(content), None)
    local = "" if description is None else description.tag.rpartition("}")[2]
    if description is None or local not in elements or not description.tag.startswith(f"{{{SB}}}"):
        raise _bad_request(f"The request body must hold one of {', '.join(elements)}.")
    values = {child.tag.rpartition("}")[2]: (child.text or "") for child in description}
    return local, values


def _read_rule(body: bytes, tracker: str) -> str | None:
    """The rule's SqlFilter expression (``None`` for a TrueFilter), or a 400."""
    root = _read_xml(body)
    rule = root.find(f"{{{ATOM}}}content/{{{SB}}}RuleDescription")
    if rule is None:
        raise _bad_request("The request body must hold a RuleDescription.", tracker)
    xsi_type = f"{{{XSI}}}type"
    rule_filter = rule.find(f"{{{SB}}}Filter")
    action = rule.find(f"{{{SB}}}Action")
    filter_type = "TrueFilter" if rule_filter is None else rule_filter.get(xsi_type, "")
    if action is not None and action.get(xsi_type, "EmptyRuleAction") != "EmptyRuleAction":
        raise _bad_request(
            "This stand-in supports rules without actions only (EmptyRuleAction).", tracker
        )
    if filter_type == "TrueFilter":
        return None
    if filter_type == "FalseFilter":
        return "1=0"
    if filter_type != "SqlFilter" or rule_filter is None:
        raise _bad_request(
            f"This stand-in supports TrueFilter, FalseFilter and SqlFilter rules only, not "
            f"'{filter_type}'.",
            tracker,
        )
    parameters = rule_filter.find(f"{{{SB}}}Parameters")
    if parameters is not None and len(parameters):
        raise _bad_request(
            "This stand-in supports SqlFilter rules without parameters only.", tracker
        )
    expression = (rule_filter.findtext(f"{{{SB}}}SqlExpression") or "").strip()
    if expression not in ("1=1", "1=0"):
        try:
            amqp_filters.parse(expression)
        except amqp_filters.UnsupportedFilterError as error:
            raise _bad_request(
                f"The SqlFilter expression is outside the subset this stand-in evaluates: {error}",
                tracker,
            ) from None
    return expression


def _rule_xml(rule: Rule) -> str:
    named = {None: ("TrueFilter", "1=1"), "1=0": ("FalseFilter", "1=0")}
    filter_type, expression = named.get(rule.sql_expression, ("SqlFilter", rule.sql_expression))
    filter_xml = (
        f'<Filter i:type="{filter_type}"><SqlExpression>{escape(expression or "")}'
        "</SqlExpression><CompatibilityLevel>20</CompatibilityLevel></Filter>"
    )
    created = rule.description.get("CreatedAt", NEVER)
    return (
        f'<RuleDescription xmlns="{SB}" xmlns:i="{XSI}">{filter_xml}'
        f'<Action i:type="EmptyRuleAction"/><CreatedAt>{created}</CreatedAt>'
        f"<Name>{escape(rule.name)}</Name></RuleDescription>"
    )


class _Handler(BaseHTTPRequestHandler):
    """Turns HTTP requests into :meth:`ManagementServer.handle` calls."""

    stand_in: ManagementServer
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path).strip("/")
        self.stand_in.record(self.command, "/" + path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        headers[":query"] = split.query
        try:
            self.stand_in.check_token(headers.get("authorization"))
            response = self.stand_in.handle(self.command, path, headers, body)
        except ServiceError as error:
            response = Response(
                error.status,
                f"<Error><Code>{error.status}</Code><Detail>{escape(error.detail)}</Detail></Error>",
                "application/xml; charset=utf-8",
            )
        data = response.body.encode()
        self.send_response(response.status)
        if data:
            self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: object) -> None:
        # Quiet: pytest shows failures; a line per request would drown them.
        pass
