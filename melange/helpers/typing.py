"""melange 7.x's ``T`` type variable; deprecated, declare your own with ``typing.TypeVar``."""

from typing import TypeVar

from melange.compat import deprecated

__all__ = ["T"]

T = TypeVar("T")

deprecated("melange.helpers.typing", 'a TypeVar of your own: T = typing.TypeVar("T")')
