"""The failure summary of a run: each distinct failure once, damaged input first and as an error line."""

from isovol.workflows.block_reports import failure_lines, remedy
from isovol.workflows.executor import Summary

DAMAGE = "input chunk c/0/1/0 of in.zarr is damaged (RuntimeError: Zstd decompression error)"


def test_blocks_that_failed_alike_share_one_line_in_grid_order():
    s = Summary(total=20, failed={"10.0.0": "OSError: disk full", "1.1.0": DAMAGE, "0.1.0": DAMAGE,
                                  "2.0.0": "OSError: disk full", "3.0.0": "OSError: disk full",
                                  "0.0.0": "OSError: disk full"})
    assert failure_lines(s) == [
        f"isovol: error: {DAMAGE}; 2 blocks need it (0.1.0, 1.1.0)",
        "isovol: block 0.0.0, 2.0.0, 3.0.0 and 1 more: OSError: disk full",
    ]
    assert "rerun the same command with --resume" in remedy(s) and "repair" not in remedy(s)


def test_only_damage_asks_for_a_repair_first():
    s = Summary(total=2, failed={"0.0.0": DAMAGE})
    assert failure_lines(s) == [f"isovol: error: {DAMAGE}; 1 block needs it (0.0.0)"]
    assert "repair or replace the damaged input" in remedy(s)
