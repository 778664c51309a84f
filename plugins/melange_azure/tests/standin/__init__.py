"""Local stand-ins for Azure Service Bus, for tests: the SDK talks to them over real sockets.

:class:`ServiceBusStandIn` runs both on one :class:`~.namespace.Namespace`: the
management API (ATOM/XML over HTTP, :mod:`.management`) and the AMQP 1.0 data
plane (:mod:`.amqp`). Its connection string carries ``UseDevelopmentEmulator=true``,
which makes the unmodified SDK connect over plain TCP to the given port.
"""

from __future__ import annotations

import secrets

from melange.testing.server_process import StartStop

from .amqp import AMQPBroker
from .management import ManagementServer
from .namespace import Namespace

KEY_NAME = "RootManageSharedAccessKey"


class ServiceBusStandIn(StartStop):
    """Both stand-ins on one namespace, with a random SharedAccessKey per instance.

    Args:
        host: Interface both servers listen on.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.namespace = Namespace()
        self.key = secrets.token_urlsafe(32)
        self.key_name = KEY_NAME
        self.amqp = AMQPBroker(self.namespace, host, key_name=KEY_NAME, key=self.key)
        self.management = ManagementServer(self.namespace, host, key=self.key)
        self.amqp_port = 0
        self.management_url = ""
        self.connection_string = ""

    def start(self) -> None:
        """Start both servers (daemon threads) and fill in the addresses."""
        self.amqp.start()
        self.management.start()
        self.amqp_port = self.amqp.port
        self.management_url = self.management.url
        self.connection_string = (
            f"Endpoint=sb://{self.host}:{self.amqp_port};SharedAccessKeyName={self.key_name};"
            f"SharedAccessKey={self.key};UseDevelopmentEmulator=true"
        )

    def connection_string_at(self, address: str) -> str:
        """The connection string with the AMQP endpoint at ``address`` ("host:port")."""
        return self.connection_string.replace(
            f"Endpoint=sb://{self.host}:{self.amqp_port};", f"Endpoint=sb://{address};"
        )

    def stop(self) -> None:
        """Stop both servers."""
        self.management.stop()
        self.amqp.stop()

    def __repr__(self) -> str:
        # Never show the key.
        return (
            f"ServiceBusStandIn(amqp_port={self.amqp_port}, management_url={self.management_url!r})"
        )
