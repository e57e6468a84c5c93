"""Every bad input or option of the table in ``badcases.py`` ends with ONE stderr line starting ``isovol: error``,
exit 2, and nothing created, changed or marked done in the folder it ran in (a pickled ``.npy`` is never loaded:
its payload would make a folder there).  Cases main does not pass yet are listed in ``faultkit.PENDING``."""

from __future__ import annotations

import pytest
from badcases import BY_NAME, CASES, SECRET, make_base, run_case
from faultkit import PENDING, pending
from zygote import Zygote

#: PENDING names that are tests of the other modules (or a benchmark's scenario), not cases of the table
TESTS = {"frozen-worker-random", "block-layout", "concurrent-runs", "killed-resume-on-complete",
         "status-all-done-not-final", "truncated-input-chunk"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def test_the_table_is_large_and_its_pending_list_names_real_cases():
    refusals = [c for c in CASES if c.mode == "refuse"]
    assert len(refusals) >= 30 and {c.mode for c in CASES} == {"refuse", "refuse-or-warn"}
    assert set(PENDING) <= set(BY_NAME) | TESTS, set(PENDING) - set(BY_NAME) - TESTS


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=pending(c.name)) for c in CASES])
def test_bad_request_is_one_clear_line_and_leaves_nothing(case, base, zygote, tmp_path):
    outcome = run_case(case, base, tmp_path / "case", zygote)
    assert SECRET not in outcome.stderr
    assert outcome.ok, outcome.why
