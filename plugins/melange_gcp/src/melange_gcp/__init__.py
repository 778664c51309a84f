"""Google Cloud Pub/Sub backend for melange: ``load_backend("gcp")``.

See docs/backends/gcp.md for the options, the mapping of queues and topics to
Pub/Sub, and the limits.
"""

from melange_gcp.attachment import SubscriptionDetached
from melange_gcp.backend import GCPPubSubBackend, GCPReceipt

__all__ = ["GCPPubSubBackend", "GCPReceipt", "SubscriptionDetached"]
