"""The lines a finished run prints about its failed blocks: each distinct failure once, damaged input chunks as
``isovol: error: input chunk ... is damaged (...)`` lines naming the blocks that need them, and what to do."""

from __future__ import annotations

import re

from ..pipeline.io.damage import is_damage_message
from .executor import Summary

#: distinct failures listed at most; the rest are counted
SHOWN = 5


def _grid_order(key: str) -> tuple:
    """Block keys in grid order (0.1.0 before 1.1.0, 2 before 10), whatever order they finished in."""
    return tuple(int(n) for n in re.findall(r"\d+", key)), key


def _blocks(keys: list[str]) -> str:
    keys = sorted(keys, key=_grid_order)
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def failure_lines(summary: Summary) -> list[str]:
    """One line per distinct failure message (blocks that failed alike are named together), damage first."""
    by_message: dict[str, list[str]] = {}
    for key, message in summary.failed.items():
        by_message.setdefault(message, []).append(key)
    ordered = sorted(by_message.items(), key=lambda kv: not is_damage_message(kv[0]))
    lines = []
    for message, keys in ordered[:SHOWN]:
        if is_damage_message(message):
            noun = "block needs" if len(keys) == 1 else "blocks need"
            lines.append(f"isovol: error: {message}; {len(keys)} {noun} it ({_blocks(keys)})")
        else:
            lines.append(f"isovol: block {_blocks(keys)}: {message}")
    if len(ordered) > SHOWN:
        lines.append(f"isovol: ... and {len(ordered) - SHOWN} other failures (see the log above)")
    return lines


def remedy(summary: Summary) -> str:
    """What to do about an incomplete run."""
    if summary.failed and all(is_damage_message(m) for m in summary.failed.values()):
        return ("isovol: run incomplete; repair or replace the damaged input, then rerun the same command with "
                "--resume to finish it")
    return "isovol: run incomplete; rerun the same command with --resume to finish it"
