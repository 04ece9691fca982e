"""Settings are declared once: ranges are checked where values enter, CLI flags and widget rows follow."""

import argparse
from dataclasses import dataclass, fields

import pytest

from napari_cellunet.settings import (
    AUTO,
    AugmentConfig,
    InstanceParams,
    PredictOptions,
    SettingError,
    TrainConfig,
    add_arguments,
    from_args,
    setting,
    specs,
)


@pytest.mark.parametrize("cls, name, bad", [
    (InstanceParams, "prob_threshold", 1.5), (InstanceParams, "seed_threshold", -0.1),
    (InstanceParams, "min_size", -1), (InstanceParams, "min_size", 2.5), (InstanceParams, "merge_over_time", "maybe"),
    (PredictOptions, "diameter", -5), (PredictOptions, "diameter", float("inf")), (PredictOptions, "diameter", 1e9),
    (PredictOptions, "diameter", float("nan")), (PredictOptions, "diameter", "abc"), (PredictOptions, "tile", 0),
    (PredictOptions, "tile", -64), (PredictOptions, "precision", "fp8"), (TrainConfig, "minutes", 0),
    (TrainConfig, "minutes", -1), (AugmentConfig, "crop", 0), (AugmentConfig, "paste_prob", 2),
])
def test_out_of_range_values_are_refused_with_the_setting_named(cls, name, bad):
    with pytest.raises(SettingError, match=name):
        cls(**{name: bad})


def test_diameter_words_and_zero():
    assert PredictOptions(diameter="auto").diameter == AUTO and PredictOptions(diameter=0).diameter == AUTO
    assert PredictOptions(diameter="none").diameter is None and PredictOptions(diameter="30").diameter == 30.0
    assert TrainConfig(diameter=0).diameter is None


def test_dict_round_trip_ignores_unknown_keys():
    p = InstanceParams(prob_threshold=0.6, join_weak_borders=0.3)
    assert InstanceParams.from_dict({**p.to_dict(), "from_a_newer_version": 1}) == p
    cfg = TrainConfig(minutes=3, augment=AugmentConfig(crop=(32, 96, 96), paste_prob=0.3))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_cli_flags_come_from_the_fields():
    parser = argparse.ArgumentParser()
    add_arguments(parser, InstanceParams, keep_none=True, none_means="the model's")
    flags = {a.dest for a in parser._actions}
    assert {n for n, s in specs(InstanceParams).items() if s.cli} <= flags
    args = parser.parse_args(["--prob-threshold", "0.3", "--no-merge-over-time"])
    p = from_args(InstanceParams, args, InstanceParams(seed_threshold=0.7))
    assert (p.prob_threshold, p.merge_over_time, p.seed_threshold) == (0.3, False, 0.7)  # unset: the base's
    with pytest.raises(SystemExit):
        parser.parse_args(["--prob-threshold", "1.5"])


def test_a_new_threshold_is_one_field(monkeypatch):
    """What adding a threshold takes: one field. The CLI flag, the validation and the metadata follow."""
    @dataclass
    class WithNew(InstanceParams):
        max_elongation: float = setting(0.0, "max elongation", "drop objects longer than this × their width",
                                        low=0.0, high=100.0, group="post-processing")

    parser = argparse.ArgumentParser()
    add_arguments(parser, WithNew, keep_none=True)
    assert from_args(WithNew, parser.parse_args(["--max-elongation", "3"])).max_elongation == 3.0
    assert WithNew().to_dict()["max_elongation"] == 0.0
    with pytest.raises(SettingError, match="max elongation"):
        WithNew(max_elongation=-1)
    assert [f.name for f in fields(WithNew)][-1] == "max_elongation"
