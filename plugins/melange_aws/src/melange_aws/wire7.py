"""melange 7.x's message format on SQS and SNS, read always and written on request.

melange 7.x sent a queue message as the JSON document ``{"Message": "<serialized
payload>"}`` and a topic message as the serialized payload itself; either way it
added two attributes: ``manifest`` (``"json"`` for its JSON serializer, the class
name for pickle) and ``serializer_id`` (1 for JSON, 2 for pickle, whose payload
is base64 text of the pickle bytes). It subscribed queues to topics without raw
delivery, so topic messages arrived in SNS's JSON envelope, which
:func:`melange_aws.wire.sns_envelope` unwraps.

:func:`read_7x` turns such a message into melange 8's form, so that an 8.x
consumer gets the payload a 7.x consumer got, whoever sent it.
:func:`write_7x` does the opposite for a backend created with
``compatible_with_7x=True``: while 7.x consumers still read a queue, 8.x
producers write what they understand (and what 8.x consumers read too).
"""

from __future__ import annotations

import json

from melange.message import MANIFEST_ATTRIBUTE, SERIALIZER_ATTRIBUTE

MANIFEST_7X = "manifest"
"""7.x's manifest attribute."""

SERIALIZER_ID_7X = "serializer_id"
"""7.x's serializer attribute: the serializer's number."""

SERIALIZERS_7X = {"1": "json", "2": "pickle"}
"""7.x serializer ids and the melange 8 serializers that read their payloads."""

SERIALIZER_IDS_7X = {name: number for number, name in SERIALIZERS_7X.items()}

JSON_MANIFEST_7X = "json"
"""The manifest 7.x's JSON serializer wrote for every payload."""

MAX_RECEIVE_COUNT_7X = 4
"""The dead-letter maxReceiveCount 7.x's ``init_queue`` always set."""

ATTRIBUTES_7X = 2
"""Attribute slots the 7.x format takes: ``manifest`` and ``serializer_id``."""


def read_7x(text: str, attributes: dict[str, str], *, enveloped: bool) -> tuple[str, bool]:
    """Turn a 7.x message into melange 8's form (``attributes`` is updated in place).

    A message is in 7.x's form when it carries a numeric ``serializer_id``
    attribute; anything else is returned unchanged. The 7.x queue wrapper is
    removed, the serializer named the melange 8 way and the two 7.x attributes
    dropped. The number of a 7.x custom serializer (neither JSON nor pickle) is
    kept: the registry reads the body with the serializer of that 7.x id, or
    refuses it, never with its default.

    Args:
        text: The body as received (an SNS envelope already unwrapped).
        attributes: The message's string attributes; changed in place.
        enveloped: Whether ``text`` came out of an SNS envelope: a topic message,
            which 7.x never wrapped (a payload may look like the wrapper itself).

    Returns:
        The body text, and whether it is base64 text of the payload's bytes (7.x's
        pickle payloads) that melange 8 does not already know to decode.
    """
    number = attributes.get(SERIALIZER_ID_7X, "").strip()
    if not number.isdigit():
        return text, False
    body = text if enveloped else _unwrapped(text)
    serializer = SERIALIZERS_7X.get(str(int(number)))
    base64_text = False
    if serializer is not None and SERIALIZER_ATTRIBUTE not in attributes:
        attributes[SERIALIZER_ATTRIBUTE] = serializer
        base64_text = serializer == "pickle"
    manifest = attributes.pop(MANIFEST_7X, None)
    if manifest and manifest != JSON_MANIFEST_7X and MANIFEST_ATTRIBUTE not in attributes:
        attributes[MANIFEST_ATTRIBUTE] = manifest
    if serializer is not None:
        del attributes[SERIALIZER_ID_7X]
    # else: a 7.x custom serializer's number, kept: the registry reads it with that serializer
    return body, base64_text


def _unwrapped(text: str) -> str:
    """The payload of 7.x's queue wrapper ``{"Message": "..."}``; other text unchanged."""
    if not text.startswith('{"Message": '):  # json.dumps' spelling, as 7.x wrote it
        return text
    try:
        document = json.loads(text)
    except ValueError:
        return text
    if isinstance(document, dict) and len(document) == 1:
        inner = document.get("Message")
        if isinstance(inner, str):
            return inner
    return text


def write_7x(text: str, attributes: dict[str, str], *, queue: bool) -> str:
    """Return the body text a 7.x consumer reads; add 7.x's attributes to ``attributes``.

    Payloads of 7.x's JSON and pickle serializers are rewritten, and those of a
    7.x custom serializer (whose 7.x id a registry built from a 7.x configuration
    dict adds as ``serializer_id``). A melange 8 serializer has no 7.x id: its
    messages are left in melange 8's form, which melange 8 consumers read either way.

    Args:
        text: The body text melange 8 would send (base64 text for pickle).
        attributes: The wire attributes melange 8 would send; changed in place.
        queue: Whether the message goes to a queue (7.x wrapped those) or a topic.
    """
    number = SERIALIZER_IDS_7X.get(attributes.get(SERIALIZER_ATTRIBUTE, ""))
    if number is None:
        # A 7.x custom serializer's body: the registry adds its 7.x id (serializer_id).
        custom = attributes.get(SERIALIZER_ID_7X, "")
        if not custom.isdigit():
            return text
        manifest = attributes.get(MANIFEST_ATTRIBUTE)
        if manifest:
            attributes[MANIFEST_7X] = manifest
        return json.dumps({"Message": text}) if queue else text
    if number == SERIALIZER_IDS_7X["json"]:
        manifest = JSON_MANIFEST_7X
    else:
        manifest = attributes.get(MANIFEST_ATTRIBUTE) or "pickle"
    attributes[MANIFEST_7X] = manifest
    attributes[SERIALIZER_ID_7X] = number
    return json.dumps({"Message": text}) if queue else text
