"""Upsampling methods: the interface (``base``), the registry that names them all (``registry``), and one module or
package per method (docs/architecture.md)."""

from __future__ import annotations

from .base import Halo, Method, upsample_array
from .registry import Kind, MethodEntry, get, get_method, names

__all__ = ["Halo", "Kind", "Method", "MethodEntry", "get", "get_method", "names", "upsample_array"]
