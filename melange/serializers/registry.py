"""melange 7.x's import path of ``SerializerRegistry``; deprecated, use ``melange.serializers``.

``SerializerRegistry`` is melange 8's; given 7.x's configuration dict it builds
a 7.x-configured registry (see :mod:`melange.compat.serialization`).
"""

from melange.compat import deprecated
from melange.serializers import SerializerRegistry

__all__ = ["SerializerRegistry"]

deprecated("melange.serializers.registry", "from melange.serializers import SerializerRegistry")
