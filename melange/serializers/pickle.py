"""melange 7.x's import path of ``PickleSerializer``; deprecated, use ``melange.serializers``.

``PickleSerializer`` is melange 8's, which a registry refuses unless created
with ``allow_pickle=True`` (a 7.x configuration dict that names it allows it).
"""

from melange.compat import deprecated
from melange.serializers import PickleSerializer

__all__ = ["PickleSerializer"]

deprecated(
    "melange.serializers.pickle",
    "from melange.serializers import PickleSerializer, with SerializerRegistry(PickleSerializer(), "
    "allow_pickle=True)",
)
