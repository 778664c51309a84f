"""melange's ``aws`` backend: topics on Amazon SNS, queues on Amazon SQS.

Installed as the ``aws`` entry point of ``melange.backends``, so
``load_backend("aws")`` and ``from melange.backends import AWSBackend`` find it.
"""

from melange_aws.backend import AWSBackend, AWSReceipt
from melange_aws.moves import MessageMoveTaskError

__all__ = ["AWSBackend", "AWSReceipt", "MessageMoveTaskError"]
