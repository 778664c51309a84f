"""Conformance tests for backends built on :class:`~melange_azure.AzureServiceBusBackend`.

The shared suite (``melange.testing.conformance``) covers what every backend does;
this mixin adds what only Service Bus meets: messages that other producers put on
a queue with the Azure SDK (a text body in an AMQP value section, typed
application properties, several data sections). A plugin built on the azure
backend adds it to its suite::

    class TestMyBackend(ConformanceSuite, ServiceBusForeignProducerConformance): ...

It needs pytest, like the rest of the conformance suite.
"""

from __future__ import annotations

from azure.servicebus import ServiceBusMessage
from azure.servicebus.amqp import AmqpAnnotatedMessage

from melange.factory import MessagingBackendFactory
from melange.testing.conformance import ResourceNames, assert_empty, drain
from melange_azure.backend import AzureServiceBusBackend

__all__ = ["ServiceBusForeignProducerConformance"]


class ServiceBusForeignProducerConformance:
    """Tests of messages that other Service Bus producers put on a queue."""

    def _send_foreign(self, backend: AzureServiceBusBackend, queue: str, *messages: object) -> None:
        client = backend.settings.data_client()
        try:
            with client.get_queue_sender(queue) as sender:
                for message in messages:
                    sender.send_messages(message)  # type: ignore[arg-type]
        finally:
            client.close()

    def test_messages_of_other_producers_are_read(
        self,
        melange_backend: AzureServiceBusBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """Bodies become bytes and property values text, whatever the producer sent."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=30.0)
        self._send_foreign(
            melange_backend,
            queue,
            ServiceBusMessage(
                "plain text",
                application_properties={"count": 3, "ok": True, "name": "x"},
                message_id="foreign-1",
            ),
            AmqpAnnotatedMessage(value_body="a value"),
        )
        received = {message.body: message for message in drain(melange_backend, queue, 2)}
        assert set(received) == {b"plain text", b"a value"}
        first = received[b"plain text"]
        assert dict(first.attributes) == {"count": "3", "ok": "True", "name": "x"}
        assert (first.message_id, first.receive_count, first.group_id) == ("foreign-1", 1, None)
        assert_empty(melange_backend, queue)

    def test_a_body_of_several_data_sections_is_joined(
        self,
        melange_backend: AzureServiceBusBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """An AMQP body may have several data sections; melange reads them as one body."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=30.0)
        self._send_foreign(
            melange_backend, queue, AmqpAnnotatedMessage(data_body=[b"two ", b"sections"])
        )
        assert [message.body for message in drain(melange_backend, queue, 1)] == [b"two sections"]
