"""melange 7.x's example applications, which melange 8 does not ship: importing this raises.

7.x's documentation snippets imported their message classes and registry from
here (``melange.examples.shared``, ``melange.examples.doc_examples...``).
"""

from melange.compat import RemovedIn8Error

raise RemovedIn8Error(
    "melange.examples (7.x's example applications and documentation snippets) is not part of "
    "melange 8: define the message classes and the SerializerRegistry the snippets imported from "
    "it in your own module; `melange demo` runs a payments demo on the memory backend",
    name="melange.examples",
)
