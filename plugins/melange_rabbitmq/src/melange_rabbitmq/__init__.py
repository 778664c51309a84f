"""RabbitMQ backend for melange: ``load_backend("rabbitmq")``.

See docs/backends/rabbitmq.md for the options, the mapping of queues and topics
to RabbitMQ, and the limits.
"""

from melange_rabbitmq.backend import DEFAULT_URL, RabbitMQBackend, RabbitMQReceipt

__all__ = ["DEFAULT_URL", "RabbitMQBackend", "RabbitMQReceipt"]
