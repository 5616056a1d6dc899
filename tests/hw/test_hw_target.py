"""Target files: the shipped presets, the energy scaling rule, validation errors, the synthesis clock."""

import json
import math
from pathlib import Path

import pytest

from qsim.errors import QsimError
from qsim.hw.measured import with_synth_clock
from qsim.hw.target import MAC_FORMATS, PRESETS_DIR, load_target, preset_names


def test_every_preset_loads_with_positive_resources():
    assert set(preset_names()) >= {"ecp5-85f", "vck190", "asic-28nm"}
    for name in preset_names():
        t = load_target(name)
        assert t.name == name
        assert set(t.mac_rate) == set(MAC_FORMATS)
        assert t.macs_per_cycle("w8a8") == t.mac_rows * t.mac_cols * t.mac_rate["w8a8"]
        assert min(t.scan_lanes, t.hadamard_lanes, t.table_units, t.weight_buffer_bytes) > 0


def test_energy_scales_on_chip_entries_by_node_vdd_and_fabric_but_not_dram():
    asic = load_target("asic-28nm")  # 28 nm, 0.9 V, ASIC
    assert asic.energy["int8_mult"] == pytest.approx(0.2 * 28 / 45)
    assert asic.energy["sram_1mb_64b"] == pytest.approx(100 * 28 / 45)
    assert asic.energy["dram_64b"] == pytest.approx(1300)
    ecp5 = load_target("ecp5-85f")  # 40 nm, 1.1 V, FPGA fabric factor 14
    assert ecp5.energy["int32_add"] == pytest.approx(0.1 * (40 / 45) * (1.1 / 0.9) ** 2 * 14)
    assert ecp5.energy.per_byte("dram_64b") == pytest.approx(1300 / 8)
    assert all(ecp5.energy.sources[k] for k in ecp5.energy.pj)


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    text = (PRESETS_DIR / "asic-28nm.toml").read_text()
    assert old in text
    path = tmp_path / "edited.toml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("old, new, message", [
    ("scan_lanes = 256\n", "", "[units] scan_lanes: missing"),
    ("scan_lanes = 256", "scan_lanes = 0", "[units] scan_lanes: must be a positive integer"),
    ("scan_lanes = 256", "scan_lanes = 2.5", "[units] scan_lanes: must be a positive integer"),
    ("scan_lanes = 256", "scan_lane = 256", "[units]: unknown key(s) scan_lane"),
    ("offchip_gb_per_s = 34.1", "offchip_gb_per_s = -1", "[memory] offchip_gb_per_s: must be a positive number"),
    ('kind = "asic"', 'kind = "gpu"', "kind: must be 'fpga' or 'asic'"),
    (", w4a16 = 0.25 }", " }", "[mac_array.rate] w4a16: missing"),
    ('buffer_access = "sram_1mb_64b"', 'buffer_access = "sram_2mb"', "[energy] buffer_access: 'sram_2mb'"),
    ('table = "horowitz-45nm"', 'table = "nowhere.toml"', "nowhere.toml: unreadable energy table"),
    ("[units]", "[units", "not valid TOML"),
])
def test_validation_errors_name_file_and_key(tmp_path, old, new, message):
    path = _edited(tmp_path, old, new)
    with pytest.raises(QsimError) as err:
        load_target(str(path))
    assert str(path) in str(err.value) or "nowhere.toml" in str(err.value)
    assert message in str(err.value)


def test_unknown_target_lists_presets():
    with pytest.raises(QsimError, match="asic-28nm"):
        load_target("no-such-target")


def test_user_file_with_its_own_energy_table_next_to_it(tmp_path):
    table = (Path(load_target("asic-28nm").path).parent.parent / "energy_tables" / "horowitz-45nm.toml").read_text()
    (tmp_path / "mine.toml").write_text(table.replace("int8_mult = { value = 0.2", "int8_mult = { value = 0.4"))
    t = load_target(str(_edited(tmp_path, 'table = "horowitz-45nm"', 'table = "mine.toml"')))
    assert t.energy["int8_mult"] == pytest.approx(0.4 * 28 / 45)


def _synth(tmp_path, records) -> Path:
    (tmp_path / "rtl").mkdir()
    (tmp_path / "rtl" / "synth.json").write_text(json.dumps(records))
    return tmp_path


def test_fpga_clock_is_the_slowest_synthesized_unit_of_its_part(tmp_path):
    reports = _synth(tmp_path, [{"unit": "scan", "part": "LFE5U-85F", "fmax_mhz": 123.4},
                                {"unit": "hadamard", "part": "lfe5u-85f", "fmax_mhz": 98.7},
                                {"unit": "scan", "part": "LFE5U-25F", "fmax_mhz": 50.0}])
    t = with_synth_clock(load_target("ecp5-85f"), reports)
    assert t.clock_mhz == 98.7
    assert "synthesis Fmax" in t.clock_source


def test_fpga_clock_falls_back_to_the_preset_and_says_so(tmp_path):
    preset = load_target("ecp5-85f")
    absent = with_synth_clock(preset, tmp_path)
    assert absent.clock_mhz == preset.clock_mhz and "absent, preset clock used" in absent.clock_source
    other = with_synth_clock(preset, _synth(tmp_path, {"units": [{"part": "LFE5U-25F", "fmax_mhz": 50.0}]}))
    assert other.clock_mhz == preset.clock_mhz and "no LFE5U-85F entry" in other.clock_source


def test_asic_clock_ignores_synthesis_and_bad_synth_file_is_an_error(tmp_path):
    reports = _synth(tmp_path, [{"part": "LFE5U-85F", "fmax_mhz": 10.0}])
    assert with_synth_clock(load_target("asic-28nm"), reports).clock_mhz == 1000.0
    (reports / "rtl" / "synth.json").write_text("{not json")
    with pytest.raises(QsimError, match="synth.json"):
        with_synth_clock(load_target("ecp5-85f"), reports)


def test_ecp5_preset_fits_the_multipliers_left_by_the_synthesized_units():
    """156 18x18 multipliers on the LFE5U-85F (data sheet FPGA-DS-02012); the MAC array takes 9x9 halves."""
    t = load_target("ecp5-85f")
    synth = json.loads((Path(__file__).parents[2] / "reports" / "rtl" / "synth.json").read_text())
    units: dict[str, int] = {}
    for r in synth:  # the units synthesized on their own (an engine record is checked below)
        if r["unit"] != "engine" and r["part"] == t.part and \
                r["lanes"] == {"scan": t.scan_lanes, "hadamard": t.hadamard_lanes}[r["unit"]]:
            units[r["unit"]] = max(units.get(r["unit"], 0), r["dsp"])
    assert set(units) == {"scan", "hadamard"}
    assert math.ceil(t.mac_rows * t.mac_cols / 2) + units["scan"] + units["hadamard"] <= 156
    for r in synth:  # the decode engine, synthesized whole, on its own
        if r["unit"] == "engine" and r["part"] == t.part:
            assert r["dsp"] <= 156 and r["bram"] <= 208, (r["dsp"], r["bram"])
