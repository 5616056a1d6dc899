import json

import numpy as np

from qsim.cli import main
from qsim.stats import describe


def test_describe_on_known_distributions():
    x = np.array([-1.0, 1.0] * 500)
    d = describe(x)
    assert d["max_over_std"] == 1.0 and abs(d["kurtosis"] - 1.0) < 1e-12
    g = describe(np.random.default_rng(0).standard_normal(200_000))
    assert abs(g["kurtosis"] - 3.0) < 0.1


def test_stats_command_writes_json_and_plot(hf_checkpoint, tmp_path, capsys):
    j, p = tmp_path / "s.json", tmp_path / "s.png"
    assert main(["stats", "--model", str(hf_checkpoint[0]), "--seq-len", "128", "--layer", "1",
                 "--json", str(j), "--plot", str(p)]) == 0
    r = json.loads(j.read_text())
    assert set(r["per_layer"]) == {"in_proj", "ssm_x", "dt", "B", "C", "scan_out"}
    assert len(r["per_layer"]["dt"]) == 2 and p.stat().st_size > 1000
    assert main(["stats", "--model", str(hf_checkpoint[0]), "--layer", "7"]) == 2
