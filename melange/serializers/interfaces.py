"""melange 7.x's import path of the ``Serializer`` base class; deprecated.

``Serializer`` here is 7.x's base (:class:`melange.compat.serialization.LegacySerializer`):
a subclass written the 7.x way (``identifier()`` returning an int, ``str``
bodies) runs when it is named in a 7.x configuration dict. New serializers
subclass :class:`melange.serializers.Serializer`.
"""

from melange.compat import deprecated
from melange.compat.serialization import LegacySerializer as Serializer

__all__ = ["Serializer"]

deprecated(
    "melange.serializers.interfaces",
    "from melange.serializers import Serializer (identifier a str attribute, serialize() "
    "returning bytes)",
)
