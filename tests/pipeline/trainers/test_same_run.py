"""A trainer directory resumes only a run with its identity: the step budget may change, anything else is refused
with one line naming the settings a user chose (``factor``, ``sde``, ``train.lr``), not their inner fields."""

from __future__ import annotations

import pytest

from isovol.pipeline.errors import InputError
from isovol.pipeline.trainers.state import check_same_run

SAVED = {"kind": "irsde-prior", "factor": 4, "patch": 33, "sde": {"T": 100, "schedule": "cosine"},
         "source": {"url": "/d/a.zarr", "shape": [33, 96, 128]},
         "train": {"steps": 20, "max_minutes": None, "lr": 1e-4, "patch": 33, "batch": 2}}


def check(identity: dict, saved: dict = SAVED, also: tuple[str, ...] = ()) -> None:
    check_same_run(saved, identity, "/m", "a prior", also)


def changed(**kw) -> dict:
    train = {**SAVED["train"], **kw.pop("train", {})}
    return {**SAVED, **kw, "train": train}


def test_the_same_run_and_another_step_budget_resume():
    check(SAVED)
    check(changed(train={"steps": 500, "max_minutes": 3.0}))


@pytest.mark.parametrize("identity, names", [
    (changed(factor=8), "factor"),
    (changed(train={"lr": 5e-4}), "train.lr"),
    (changed(patch=41, train={"patch": 41}), "patch, train.patch"),
    (changed(sde={"T": 50, "schedule": "cosine"}), "sde"),
    (changed(source={"url": "elsewhere"}), "source"),
    (changed(factor=8, train={"lr": 5e-4, "steps": 99, "batch": 4}), "factor, train.batch, train.lr"),
])
def test_other_settings_are_refused_by_name(identity, names):
    with pytest.raises(InputError, match=rf"^/m holds a prior trained with other settings \({names}\); "
                                         r"use a new directory$"):
        check(identity)


def test_keys_the_checkpoint_has_and_the_run_does_not_ask_about_are_ignored():
    check(SAVED, saved={**SAVED, "retired": 1, "train": {**SAVED["train"], "retired_too": 2}})


def test_a_setting_new_to_the_run_is_compared():
    with pytest.raises(InputError, match=r"other settings \(train.noise\)"):
        check(changed(train={"noise": 0.01}))


def test_also_compares_keys_only_the_checkpoint_has():
    lateral = {**SAVED, "sampling": "lateral"}
    check(SAVED, saved=lateral)
    with pytest.raises(InputError, match=r"other settings \(sampling\)"):
        check(SAVED, saved=lateral, also=("sampling",))
