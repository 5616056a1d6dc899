"""The recipe registry, settings resolution and bad input."""

from __future__ import annotations

import pytest

from calib.recipes import effective, get, registry
from qsim.calib_settings import CalibSettings
from qsim.cli import main
from qsim.errors import QsimError


def test_the_recipes_of_the_papers_are_registered():
    assert set(registry()) == {"rtn", "smoothquant", "quarot", "quamba", "quamba-rot", "mambaquant",
                                "quamba2"}


def test_features_per_recipe():
    base = CalibSettings()
    rtn, quarot, quamba = (effective(CalibSettings(method=m)) for m in ("rtn", "quarot", "quamba"))
    assert (rtn.percentile, rtn.hadamard, rtn.gptq) == (False, False, False)
    assert (quarot.percentile, quarot.hadamard) == (False, True)
    assert (quamba.percentile, quamba.hadamard, quamba.gptq) == (base.percentile, base.hadamard, base.gptq)


def test_user_ablations_only_turn_features_off():
    s = effective(CalibSettings(method="quarot", hadamard=False))
    assert not s.hadamard
    assert not effective(CalibSettings(method="rtn", percentile=True)).percentile


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(QsimError, match="--method nope: unknown recipe; valid: .*rtn.*smoothquant"):
        get("nope")


def test_a_recipe_refuses_a_model_of_another_family():
    from qsim.weights import resolve

    assert get("quamba2").families == ("mamba2",)
    with pytest.raises(QsimError, match="--method quamba2: does not apply to mamba-tiny .a Mamba-1 model; it is for "
                                        "Mamba-2."):
        get("quamba2").apply(resolve("mamba-tiny"), CalibSettings(), [])


@pytest.mark.parametrize("argv,msg", [
    (["--method", "bogus"], "--method bogus: unknown recipe"),
    (["--smooth-alpha", "1.5"], "--smooth-alpha 1.5: must be in (0, 1)"),
    (["--alpha", "0"], "--alpha 0.0: must be in (0, 1]"),
])
def test_bad_recipe_options_one_line_exit_2(tmp_path, capsys, argv, msg):
    rc = main(["calibrate", "--model", "mamba-tiny", "--out", str(tmp_path / "a"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and msg in err
    assert not (tmp_path / "a").exists()
