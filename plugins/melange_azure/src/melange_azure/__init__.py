"""melange's ``azure`` backend: queues and topics on Azure Service Bus.

Installed as the ``azure`` entry point of ``melange.backends``, so
``load_backend("azure")`` and ``from melange.backends import AzureServiceBusBackend``
find it.
"""

from melange_azure.backend import AzureReceipt, AzureServiceBusBackend

__all__ = ["AzureReceipt", "AzureServiceBusBackend"]
