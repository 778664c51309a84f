"""melange 7.x's import path of ``JsonSerializer``; deprecated, use ``melange.serializers``.

``JsonSerializer`` is melange 8's :class:`~melange.serializers.JSONSerializer`.
"""

from melange.compat import deprecated
from melange.compat.serialization import JsonSerializer
from melange.serializers import JSONSerializer

__all__ = ["JSONSerializer", "JsonSerializer"]

deprecated("melange.serializers.json", "from melange.serializers import JSONSerializer")
