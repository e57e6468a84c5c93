"""Recipes of every learned method (pipeline/methods/recipes.py, each package's recipes.yaml): the presets resolve to
typed recipes, a file overrides fields (of the defaults, or of a preset named by ``base:``), and an unknown key, a
bad value, bad YAML, an unknown preset or a missing file is refused in one line that says what is valid."""

from __future__ import annotations

import os

import pytest

from isovol.pipeline.errors import InputError
from isovol.pipeline.methods import d2r, d2r_prior, dgean, registry
from isovol.pipeline.methods.d2r_prior.irsde import IRSDE
from isovol.pipeline.methods.d2r_prior.nafnet import NAFNetConfig
from isovol.pipeline.methods.d2r_prior.trainer import PriorTrainConfig
from isovol.pipeline.methods.dgean.network import DGEANConfig
from isovol.pipeline.methods.dgean.trainer import TrainConfig

PRESETS = ["cpu-tiny", "cpu-demo", "gpu-default"]
BOOKS = {"dgean": dgean.BOOK, "d2r-prior": d2r_prior.BOOK, "d2r": d2r.BOOK}


@pytest.fixture
def spec(tmp_path):
    """Write a recipe file and return its path."""
    path = tmp_path / "recipe.yaml"

    def write(text: str) -> str:
        path.write_text(text)
        return str(path)

    return write


def test_every_trainable_method_has_the_three_presets_and_they_resolve():
    trainable = {e.name: e for e in registry.entries().values() if e.training is not None}
    assert set(trainable) == {"dgean", "sup-dgean", "naive-lateral", "d2r-prior", "d2r", "lateral-regression",
                              "msdsr", "inr"}
    # the three DGEAN entries differ only in what the network trains on: one book
    assert all(trainable[n].training.book is dgean.BOOK for n in ("dgean", "sup-dgean", "naive-lateral"))
    for name, book in BOOKS.items():
        assert book.names() == PRESETS, name
        for preset in PRESETS:
            label, recipe = book.load(preset)
            assert label == preset and recipe.to_dict(), (name, preset)


def test_dgean_presets_are_typed():
    _, tiny = dgean.BOOK.load("cpu-tiny")
    assert tiny.model == DGEANConfig.preset("tiny") and isinstance(tiny.train, TrainConfig)
    assert (tiny.train.steps, tiny.train.batch, tiny.train.patch) == (30, 4, 32)
    _, gpu = dgean.BOOK.load("gpu-default")
    assert gpu.model == DGEANConfig.preset("default") and (gpu.train.patch, gpu.train.max_minutes) == (128, 10)


def test_a_dgean_file_overrides_fields_of_the_defaults(spec):
    path = spec("model: {widths: [8, 8, 16, 16, 32], blocks: [1, 1, 1, 1], head_width: 4}\n"
                "train: {steps: 7, patch: 32}\n")
    label, recipe = dgean.BOOK.load(path)
    assert label == os.path.abspath(path)
    assert recipe.model.widths == (8, 8, 16, 16, 32) and recipe.model.head_width == 4
    assert recipe.train == TrainConfig(steps=7, patch=32), "everything not in the file is the default"


def test_a_file_with_base_overrides_fields_of_that_preset(spec):
    _, tiny = dgean.BOOK.load("cpu-tiny")
    _, recipe = dgean.BOOK.load(spec("base: cpu-tiny\ntrain: {steps: 7}\n"))
    assert recipe.model == tiny.model and recipe.train.steps == 7
    assert {**recipe.to_dict()["train"], "steps": tiny.train.steps} == tiny.to_dict()["train"]
    _, prior = d2r_prior.BOOK.load(spec("base: cpu-demo\ntrain: {steps: 5}\nsde: {prediction: noise}\n"))
    _, demo = d2r_prior.BOOK.load("cpu-demo")
    assert prior.model == demo.model and prior.train.steps == 5 and prior.train.t_max == demo.train.t_max
    assert demo.sde["prediction"] == "x0" and IRSDE(**prior.sde).prediction == "noise"
    assert prior.sde == {k: v for k, v in demo.sde.items() if k != "prediction"}, "noise is the default"
    with pytest.raises(InputError, match="base 'huge' is not a dgean recipe \\(cpu-tiny, cpu-demo, gpu-default\\)"):
        dgean.BOOK.load(spec("base: huge\n"))


@pytest.mark.parametrize("text, message", [
    ("train: {stepz: 7}\n", "train: unknown key\\(s\\) stepz; valid: batch, beta2, .*steps"),
    ("model: {widthz: [1]}\n", "model: unknown DGEAN config keys"),
    ("modle: {widths: [1]}\n", "unknown key\\(s\\) modle; valid: model, train"),
    ("base: cpu-tiny\ntrain: {stepz: 7}\n", "train: unknown key\\(s\\) stepz"),
    ("train: [1\n", "is not valid YAML"),
    ("- 1\n", "expected a mapping of settings, got list"),
])
def test_dgean_recipe_files_are_refused_in_one_line(spec, text, message):
    with pytest.raises(InputError, match=message):
        dgean.BOOK.load(spec(text))


def test_a_name_that_is_neither_a_preset_nor_a_file_is_refused(tmp_path):
    for name, book in BOOKS.items():
        with pytest.raises(InputError, match=f"neither a {name} recipe \\(cpu-tiny, cpu-demo, gpu-default\\) "
                                             f"nor a file"):
            book.load("huge")
        with pytest.raises(InputError, match="nor a file"):
            book.load(str(tmp_path / "nothing.yaml"))


def test_prior_presets_and_files():
    _, gpu = d2r_prior.BOOK.load("gpu-default")
    assert gpu.model == NAFNetConfig.preset("default") and gpu.sde == {**IRSDE().to_dict(), "prediction": "x0"}
    assert (gpu.train.patch, gpu.train.batch, gpu.train.lr, gpu.train.ema) == (129, 16, 1e-4, 0.999)
    assert gpu.train.t_max == 50 and (129 - 1) % 8 == 0
    _, tiny = d2r_prior.BOOK.load("cpu-tiny")
    assert tiny.model == NAFNetConfig.preset("tiny") and tiny.sde == IRSDE().to_dict()
    assert isinstance(tiny.train, PriorTrainConfig) and tiny.train.steps == 40


def test_a_prior_file_overrides_fields_of_the_defaults(spec):
    _, recipe = d2r_prior.BOOK.load(spec("model: {width: 4, enc_blocks: [1], dec_blocks: [1], time_dim: 8}\n"
                                         "sde: {T: 20}\ntrain: {patch: 17, steps: 3}\n"))
    assert recipe.model.width == 4 and recipe.sde["T"] == 20 and recipe.sde["schedule"] == "cosine"
    assert recipe.train == PriorTrainConfig(patch=17, steps=3)


@pytest.mark.parametrize("text, message", [
    ("train: {stepz: 3}", "train: unknown key\\(s\\) stepz; valid: .*t_max"),
    ("sde: {T: 0}", "SDE settings"),
    ("sde: {Tee: 5}", "SDE settings"),
    ("model: {width: 0}", "model config"),
    ("extra: 1", "unknown key\\(s\\) extra; valid: model, sde, train"),
    ("sde: [1", "is not valid YAML"),
])
def test_prior_recipe_files_are_refused_in_one_line(spec, text, message):
    with pytest.raises(InputError, match=message):
        d2r_prior.BOOK.load(spec(text))


def test_d2r_sections_name_the_other_books_presets(spec):
    _, demo = d2r.BOOK.load("cpu-demo")
    assert demo.prior == d2r_prior.BOOK.load("cpu-demo")[1] and demo.dgean == dgean.BOOK.load("cpu-demo")[1]
    assert demo.recover.t_start <= demo.prior.train.t_max
    # a file mixes names and spelt-out sections; recover falls back to its defaults
    _, mixed = d2r.BOOK.load(spec("prior: cpu-tiny\ndgean: {model: tiny, train: {steps: 3}}\n"))
    assert mixed.prior == d2r_prior.BOOK.load("cpu-tiny")[1]
    assert mixed.dgean.model == DGEANConfig.preset("tiny") and mixed.dgean.train == TrainConfig(steps=3)
    assert mixed.recover.sampler == "fast" and mixed.recover.seed == 0


def test_a_d2r_file_with_base_overrides_single_fields_of_the_named_presets(spec):
    """``base: cpu-tiny`` names ``prior: cpu-tiny``: a file that sets one training field of the prior keeps the
    rest of that preset (not the defaults' published-size network)."""
    _, tiny = d2r.BOOK.load("cpu-tiny")
    _, recipe = d2r.BOOK.load(spec("base: cpu-tiny\nprior: {train: {steps: 6}}\ndgean: {train: {steps: 4}}\n"
                                   "recover: {seed: 1}\n"))
    assert recipe.prior.model == tiny.prior.model and recipe.prior.sde == tiny.prior.sde
    assert recipe.prior.train.steps == 6 and recipe.prior.train.batch == tiny.prior.train.batch
    assert recipe.dgean.model == tiny.dgean.model and recipe.dgean.train.steps == 4
    assert recipe.dgean.train.patch == tiny.dgean.train.patch
    assert recipe.recover.seed == 1 and recipe.recover.tile == tiny.recover.tile == 64
    # a section may also swap the base's preset for another
    _, other = d2r.BOOK.load(spec("base: cpu-tiny\ndgean: cpu-demo\n"))
    assert other.dgean == dgean.BOOK.load("cpu-demo")[1] and other.prior == tiny.prior


@pytest.mark.parametrize("text, message", [
    ("prior: huge\ndgean: cpu-tiny\n", "prior: 'huge' is not a d2r-prior recipe \\(cpu-tiny, cpu-demo, gpu-default\\)"),
    ("prior: cpu-tiny\n", "section 'dgean' is missing"),
    ("base: cpu-tiny\nstage4: {}\n", "unknown key\\(s\\) stage4; valid: dgean, lateral, prior, recover, regression"),
    ("base: cpu-tiny\nprior: {train: {stepz: 1}}\n", "prior: train: unknown key\\(s\\) stepz"),
    ("base: cpu-tiny\nrecover: {sampler: slow}\n", "recover: sampler must be reference\\|posterior\\|fast"),
    ("base: cpu-tiny\nrecover: {seeed: 1}\n", "recover: unknown key\\(s\\) seeed; valid: .*t_start"),
    ("base: cpu-demo\nrecover: {t_start: 80}\n", "recover starts at t=80 but the prior trains on t <= 50"),
    ("base: gpu-small\n", "base 'gpu-small' is not a d2r recipe"),
    ("prior: [cpu-tiny\n", "is not valid YAML"),
])
def test_d2r_recipe_files_are_refused_in_one_line(spec, text, message):
    with pytest.raises(InputError, match=message):
        d2r.BOOK.load(spec(text))


def test_d2r_can_take_its_stages_one_and_two_from_lateral_regression(spec):
    recipe = d2r.BOOK.load(spec("base: cpu-tiny\nlateral: regression\nregression: cpu-tiny\n"))[1]
    stages = d2r.stages(recipe)
    assert [s.name for s in stages] == ["regression", "recover", "dgean"]
    assert stages[1].method == "lateral-regression" and stages[1].model_from == "regression"
    assert stages[1].path == "pseudo.ome.zarr" and stages[2].source == "previous"
    assert recipe.to_dict()["lateral"] == "regression" and "prior" not in recipe.to_dict()
    assert [s.name for s in d2r.stages(d2r.BOOK.load("cpu-tiny")[1])] == ["prior", "recover", "dgean"]
    with pytest.raises(InputError, match="lateral must be one of irsde, regression"):
        d2r.BOOK.load(spec("base: cpu-tiny\nlateral: care\n"))
