"""Reading OME-NGFF multiscales metadata (0.4 on zarr v2, 0.5 on zarr v3) into nanometres."""

from __future__ import annotations

from typing import Any

UNIT_TO_NM = {
    "angstrom": 0.1,
    "nanometer": 1.0,
    "nm": 1.0,
    "micrometer": 1000.0,
    "micron": 1000.0,
    "um": 1000.0,
    "\u00b5m": 1000.0,
    "millimeter": 1e6,
    "mm": 1e6,
    "meter": 1e9,
}


def multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The multiscales list of an OME-Zarr group, whatever its version, or None."""
    if isinstance(attrs.get("ome"), dict) and "multiscales" in attrs["ome"]:
        return attrs["ome"]["multiscales"]
    if "multiscales" in attrs:
        return attrs["multiscales"]
    return None


def _apply(transforms: list[dict[str, Any]], scale: list[float], trans: list[float]) -> None:
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            s = t["scale"]
            for i in range(len(scale)):
                scale[i] *= s[i]
                trans[i] *= s[i]
        elif t.get("type") == "translation" and "translation" in t:
            for i in range(len(trans)):
                trans[i] += t["translation"][i]


def level0(ms: dict[str, Any]) -> tuple[str, list[str], list[float], list[float]]:
    """Path of level 0, axis names, and its scale and translation in nanometres (per axis)."""
    return level(ms, 0)


def level(ms: dict[str, Any], index: int) -> tuple[str, list[str], list[float], list[float]]:
    """Path of the ``index``-th level, axis names, and its scale and translation in nanometres (per axis)."""
    axes = ms.get("axes") or [{"name": n} for n in "zyx"]
    axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
    ds = ms["datasets"][index]
    n = len(axes)
    scale, trans = [1.0] * n, [0.0] * n
    _apply(ds.get("coordinateTransformations", []), scale, trans)
    _apply(ms.get("coordinateTransformations", []), scale, trans)
    for i, a in enumerate(axes):
        if a.get("type", "space") == "space" or a.get("name") in ("z", "y", "x"):
            f = UNIT_TO_NM.get(str(a.get("unit", "nanometer")).lower(), 1.0)
            scale[i] *= f
            trans[i] *= f
    return ds["path"], [a.get("name", "") for a in axes], scale, trans
