"""`python -m capnas_tf.genotype`: show a genotype as a PNG, derive one from a search's A."""
import json
import os
import subprocess
import sys

import numpy as np

from capnas_tf.search_space.genotypes import DARTS_V2, Genotype, derive_genotype
from capnas_tf.search_space.ops import PRIMITIVES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "capnas_tf.genotype", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_show_writes_a_png_of_a_known_genotype(tmp_path):
    out = tmp_path / "cell.png"
    result = run_cli("show", "DARTS_V2", "--out", str(out), "--print")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert Genotype.from_json(result.stdout) == DARTS_V2


def test_show_reports_a_bad_genotype_file_and_fails(tmp_path):
    path = tmp_path / "genotype.json"
    data = json.loads(DARTS_V2.to_json())
    data["reduce"][3] = ["max_pool_3x3", 7]
    path.write_text(json.dumps(data))
    result = run_cli("show", str(path), "--out", str(tmp_path / "x.png"))
    assert result.returncode == 1
    assert "reduce[3] (node 1): input index 7 out of range" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_derive_reads_the_last_record_of_an_alpha_history(tmp_path):
    rng = np.random.default_rng(0)
    records = [{"epoch": e, "step": 10 * e, "alpha_normal": rng.normal(size=(14, 8)).tolist(),
                "alpha_reduce": rng.normal(size=(14, 8)).tolist()} for e in (1, 2)]
    history = tmp_path / "alpha_history.jsonl"
    history.write_text("".join(json.dumps(r) + "\n" for r in records))
    out, png = tmp_path / "genotype.json", tmp_path / "cell.png"
    result = run_cli("derive", str(history), "--out", str(out), "--png", str(png), "--max_skip_connect", "1")
    assert result.returncode == 0, result.stderr
    expected = derive_genotype(records[-1]["alpha_normal"], records[-1]["alpha_reduce"], PRIMITIVES,
                               max_skip_connect=1)
    assert Genotype.load(str(out)) == expected
    assert png.read_bytes().startswith(PNG_MAGIC)
