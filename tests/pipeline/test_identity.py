"""The one resume-identity rule: digests are canonical and stable across versions (outputs made earlier keep
resuming), identities chain through what work was made from, differences name the exact setting, and decide
gives the four verdicts."""

from __future__ import annotations

import hashlib
import json

import pytest

from isovol.pipeline.identity import Decision, Verdict, decide, describe, differences, digest, identity, short

COMPONENTS = {
    "input": {"url": "/d/in.zarr", "shape": [33, 64, 64], "dtype": "uint8", "voxel_size": [32.0, 8.0, 8.0],
              "translation": [0.0, 0.0, 0.0], "region": None},
    "factor": 4, "method": {"name": "cubic"}, "model": None, "isovol": "0.1.0",
}


def old_run_hash(components: dict) -> str:
    """The executor's run hash as isovol computed it before the identity module: run records on disk hold it."""
    blob = json.dumps(components, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def test_digest_is_the_run_hash_outputs_were_recorded_with():
    assert digest(COMPONENTS) == old_run_hash(COMPONENTS)
    assert digest(COMPONENTS) == "1250d23c4a5170e71b878d2394661a83cf9af73834df34d49443eada12a86339", \
        "a changed digest would make every existing output refuse --resume"


def test_digest_is_canonical():
    reordered = dict(reversed(list(COMPONENTS.items())))
    assert digest(reordered) == digest(COMPONENTS), "key order does not matter"
    assert digest({"a": (1, 2)}) == digest({"a": [1, 2]}), "a tuple and the list JSON reads back are one setting"
    assert digest({"a": 1}) != digest({"a": 1.5}) and digest({"a": 1}) != digest({"a": "1"})
    assert digest({"a": {"b": 1}}) != digest({"a.b": 1})
    assert len(digest({})) == 64 and int(digest({}), 16) >= 0


def test_identity_chains_through_upstream():
    settings = {"lr": 1e-3, "steps": 10}
    first = identity({"input": "x"})
    assert identity(settings, first) == identity(dict(settings), first), "deterministic"
    assert identity(settings, first) != identity(settings, identity({"input": "y"})), "another upstream"
    assert identity(settings, first) != identity({**settings, "lr": 2e-3}, first), "another setting"
    assert identity(settings) == identity(settings, ""), "no upstream is the empty one"


def chain(head: dict) -> str:
    """The identity of the last of three stages, the first made with ``head``."""
    prev = ""
    for settings in (head, {"stage": 1}, {"stage": 2}):
        prev = identity(settings, prev)
    return prev


def test_a_change_at_the_head_of_a_chain_reaches_its_end():
    assert chain({"stage": 0}) == chain({"stage": 0})
    assert chain({"stage": 0}) != chain({"stage": 0, "seed": 1})


def test_differences_name_nested_keys():
    old = {"factor": 4, "method": {"name": "d2r", "config": {"steps": 10, "tile": 64}}, "gone": 1}
    new = {"factor": 8, "method": {"name": "d2r", "config": {"steps": 20, "tile": 64}}, "added": [1]}
    assert differences(old, new) == [("added", None, [1]), ("factor", 4, 8), ("gone", 1, None),
                                      ("method.config.steps", 10, 20)]
    assert differences(old, old) == []
    assert differences({"a": {"b": 1}}, {"a": 5}) == [("a", {"b": 1}, 5)], "a mapping replaced is named whole"
    assert differences(1, 2) == [("", 1, 2)]


def test_differences_leave_out_ignored_keys():
    old, new = {"train": {"steps": 10, "lr": 1}, "steps": 1}, {"train": {"steps": 20, "lr": 2}, "steps": 2}
    assert differences(old, new, ignore=("train.steps",)) == [("steps", 1, 2), ("train.lr", 1, 2)]
    assert differences(old, new, ignore=("train", "steps")) == []


def test_describe_and_short():
    changes = [("a.b", 1, 2), ("c", "x", None)]
    assert describe(changes) == 'a.b: 1 -> 2; c: "x" -> null'
    assert describe(changes, values=False) == "a.b, c"
    many = [(f"k{i}", i, i + 1) for i in range(8)]
    assert describe(many, values=False, limit=3) == "k0, k1, k2, and 5 more"
    assert short(list(range(100))).endswith("...") and len(short(list(range(100)))) == 80
    assert short({"b": 1, "a": 2}) == '{"a": 2, "b": 1}'


def test_decide_gives_four_verdicts():
    settings = {"factor": 4, "train": {"steps": 10, "lr": 1}}
    ident = digest(settings)
    assert decide(None, None, False, ident, settings) == Decision(Verdict.FRESH)
    assert decide(ident, settings, True, ident, settings).verdict is Verdict.SKIP
    assert decide(ident, settings, False, ident, settings).verdict is Verdict.RESUME
    other = {**settings, "factor": 8}
    refused = decide(ident, settings, True, digest(other), other)
    assert refused.verdict is Verdict.REFUSE and refused.changes == (("factor", 4, 8),)
    assert refused.reason == "factor: 4 -> 8"


def test_decide_ignores_only_the_keys_it_is_told_to():
    settings = {"factor": 4, "train": {"steps": 10, "lr": 1}}
    longer = {"factor": 4, "train": {"steps": 50, "lr": 1}}
    ignore = ("train.steps",)
    assert decide(digest(settings), settings, False, digest(longer), longer, ignore).verdict is Verdict.RESUME
    assert decide(digest(settings), settings, False, digest(longer), longer).verdict is Verdict.REFUSE
    faster = {"factor": 4, "train": {"steps": 50, "lr": 2}}
    refused = decide(digest(settings), settings, False, digest(faster), faster, ignore)
    assert refused.verdict is Verdict.REFUSE and [k for k, _, _ in refused.changes] == ["train.lr"]


@pytest.mark.parametrize("recorded", [None, {}])
def test_an_identity_that_differs_without_settings_to_show_is_refused(recorded):
    """A record whose settings are lost (or were never kept) cannot show that it matches: its identity decides."""
    decision = decide("0" * 64, recorded, False, digest({"a": 1}), {})
    assert decision.verdict is Verdict.REFUSE and decision.changes == ()
    assert decision.reason == "the recorded identity differs"
