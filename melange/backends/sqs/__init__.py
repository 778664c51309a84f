"""melange 7.x's SQS backend modules (deprecated): ``localsqs`` and ``sqs_backend``.

The backends are melange 8's, from the ``melange-aws`` and ``melange-localsqs``
plugins; import them with ``from melange.backends import AWSBackend, LocalSQSBackend``.
"""
