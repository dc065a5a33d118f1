"""Genotypes: the record, its JSON with strict validation, the DARTS derivation rule, known genotypes,
and the pictures."""
import json
import os

import numpy as np
import pytest

from capnas_tf.search_space import plots
from capnas_tf.search_space.genotypes import (
    CAPNAS_SHAPES_V1,
    DARTS_V1,
    DARTS_V2,
    KNOWN_GENOTYPES,
    Genotype,
    GenotypeError,
    derive_genotype,
    genotype_op_weights,
    resolve_genotype,
    sample_genotype,
)
from capnas_tf.search_space.ops import PRIMITIVES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
K = len(PRIMITIVES)


def valid_dict():
    return json.loads(DARTS_V2.to_json())


def test_darts_v2_is_the_papers_cell():
    assert DARTS_V2.normal[:2] == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1))
    assert DARTS_V2.normal[-1] == ("dil_conv_3x3", 2)
    assert DARTS_V2.reduce[2] == ("skip_connect", 2)
    assert DARTS_V1.reduce[-1] == ("avg_pool_3x3", 0)
    assert DARTS_V2.normal_concat == DARTS_V2.reduce_concat == (2, 3, 4, 5)
    assert KNOWN_GENOTYPES == {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "CAPNAS_SHAPES_V1": CAPNAS_SHAPES_V1}


def test_genotype_is_frozen_and_hashable():
    with pytest.raises(AttributeError):
        DARTS_V2.normal = ()
    assert len({DARTS_V1, DARTS_V2, Genotype(**valid_dict())}) == 2


def test_json_round_trip():
    for genotype in KNOWN_GENOTYPES.values():
        assert Genotype.from_json(genotype.to_json()) == genotype


def test_save_is_atomic_and_load_reads_it_back(tmp_path):
    path = tmp_path / "runs" / "genotype.json"
    DARTS_V1.save(str(path))
    assert Genotype.load(str(path)) == DARTS_V1
    DARTS_V2.save(str(path))  # overwrite in place
    assert Genotype.load(str(path)) == DARTS_V2
    assert os.listdir(path.parent) == ["genotype.json"]  # no temp file left behind


def _edit(**changes):
    data = valid_dict()
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize("text, message", [
    (_edit(normal=[["sep_conv_3x3", 0], ["conv_9x9", 1]]),
     r"normal\[1\] \(node 0\): unknown op 'conv_9x9'; known ops: \[.*'sep_conv_3x3'.*\]"),
    (_edit(reduce=[["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 4], ["max_pool_3x3", 1]]),
     r"reduce\[2\] \(node 1\): input index 4 out of range; node 1 can read inputs 0\.\.2"),
    (_edit(normal=[["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["skip_connect", 0]]),
     r"field 'normal' has 3 edges; expected 2 per intermediate node"),
    (_edit(reduce_concat=KeyError), r"missing key\(s\) \['reduce_concat'\]"),
    (_edit(normal="sep_conv_3x3"), r"field 'normal' must be a list of \[op_name, input_index\] pairs"),
    (_edit(normal=[["sep_conv_3x3", "0"], ["sep_conv_3x3", 1]]), r"normal\[0\] \(node 0\): input index must be an integer"),
    (_edit(normal=[["sep_conv_3x3", 0, 1], ["sep_conv_3x3", 1]]), r"normal\[0\] \(node 0\) must be a pair"),
    (_edit(normal=[[3, 0], ["sep_conv_3x3", 1]]), r"normal\[0\] \(node 0\): op name must be a string"),
    (_edit(normal_concat=[2, 3, 9]), r"field 'normal_concat': state index 9 out of range"),
    (_edit(normal_concat=[2, 2]), r"field 'normal_concat': repeated state index"),
    (_edit(extra=1), r"unknown key\(s\) \['extra'\]"),
    ("[1, 2]", r"expected a JSON object"),
    ("{'normal': []}", r"not valid JSON"),
])
def test_bad_json_is_rejected_with_the_field_named(text, message):
    with pytest.raises(GenotypeError, match=message):
        Genotype.from_json(text, source="g.json")


def test_load_error_names_the_file(tmp_path):
    path = tmp_path / "genotype.json"
    path.write_text(_edit(normal=[["sep_conv_3x3", 0], ["conv_9x9", 1]]))
    with pytest.raises(GenotypeError, match=f"{path}: normal\\[1\\]"):
        Genotype.load(str(path))


def test_json_is_parsed_never_evaluated():
    with pytest.raises(GenotypeError):
        Genotype.from_json("__import__('os').system('true')")


def test_resolve_genotype_accepts_names_paths_and_genotypes(tmp_path):
    path = str(tmp_path / "g.json")
    DARTS_V1.save(path)
    assert resolve_genotype("DARTS_V2") is DARTS_V2
    assert resolve_genotype(path) == DARTS_V1
    assert resolve_genotype(DARTS_V1) is DARTS_V1
    assert resolve_genotype(valid_dict()) == DARTS_V2
    with pytest.raises(ValueError, match="neither a known genotype.*nor an existing file"):
        resolve_genotype("DARTS_V3")


# --- derive_genotype ---------------------------------------------------------------------------

def hand_built_alpha():
    """A for N = 2 nodes (5 edges) with known winners.

    Node 0 (edges 0, 1): edge 1 is strongest via sep_conv_5x5; edge 0 via max_pool.
    Node 1 (edges 2, 3, 4): edge 2 has the largest weight overall but on 'none', so it must lose;
    edge 3 (dil_conv_3x3) and edge 4 (skip_connect, reading node 0) win.
    """
    a = np.zeros((5, K))
    idx = PRIMITIVES.index
    a[0, idx("max_pool_3x3")] = 1.0
    a[1, idx("sep_conv_5x5")] = 2.0
    a[2, idx("none")] = 9.0
    a[2, idx("avg_pool_3x3")] = 0.5
    a[3, idx("dil_conv_3x3")] = 3.0
    a[4, idx("skip_connect")] = 2.5
    return a


def test_derive_genotype_keeps_two_strongest_edges_per_node_ignoring_none():
    g = derive_genotype(hand_built_alpha(), hand_built_alpha(), PRIMITIVES)
    # Strongest edge first (as DARTS lists them).
    assert g.normal == (("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("skip_connect", 2))
    assert g.reduce == g.normal
    assert g.normal_concat == g.reduce_concat == (2, 3)


def test_derive_genotype_ranks_by_softmax_not_raw_alpha():
    # Edge 0 has the larger raw maximum but it is spread over two ops; edge 1 is more decisive.
    a = np.zeros((2, 3))
    a[0] = [0.0, 5.0, 5.0]
    a[1] = [-50.0, 4.9, -50.0]
    g = derive_genotype(np.vstack([a, np.zeros((3, 3))]), np.zeros((5, 3)), ("none", "max_pool_3x3", "skip_connect"))
    assert g.normal[0] == ("max_pool_3x3", 1)


def test_derive_genotype_caps_skip_connect_in_the_normal_cell():
    a = np.zeros((5, K))
    idx = PRIMITIVES.index
    for edge, skip in [(0, 3.0), (1, 2.0), (3, 4.0), (4, 1.0)]:
        a[edge, idx("skip_connect")] = skip
        a[edge, idx("sep_conv_3x3")] = 0.5 + edge / 10  # the runner-up op of each edge
    a[2, idx("dil_conv_5x5")] = 0.3  # node 1's third edge, weaker than the two skips
    uncapped = derive_genotype(a, a, PRIMITIVES)
    assert [op for op, _ in uncapped.normal].count("skip_connect") == 4
    capped = derive_genotype(a, a, PRIMITIVES, max_skip_connect=2)
    # The two weakest skips (edges 1 and 4) become their edge's best non-skip op; the others stay.
    assert capped.normal == (("skip_connect", 0), ("sep_conv_3x3", 1), ("skip_connect", 1), ("sep_conv_3x3", 2))
    assert capped.reduce == uncapped.reduce  # only the normal cell is capped


def test_derive_genotype_checks_shapes():
    with pytest.raises(ValueError, match=r"alpha_normal must have shape \[E, K=8\]"):
        derive_genotype(np.zeros((14, 7)), np.zeros((14, 8)))
    with pytest.raises(ValueError, match="do not make a DARTS cell"):
        derive_genotype(np.zeros((13, 8)), np.zeros((13, 8)))
    with pytest.raises(ValueError, match="alpha_reduce has 9 rows; 4 nodes need 14"):
        derive_genotype(np.zeros((14, 8)), np.zeros((9, 8)))


def test_derive_genotype_infers_the_number_of_nodes():
    g = derive_genotype(np.random.default_rng(0).normal(size=(14, K)), np.zeros((14, K)))
    assert g.num_nodes() == 4 and len(g.normal) == 8


def test_genotype_op_weights_are_one_hot_on_chosen_edges():
    w_normal, w_reduce = genotype_op_weights(DARTS_V2)
    assert w_normal.shape == (14, K) and w_normal.sum() == 8
    # Node 3 reads input 0 by skip_connect and node 0 (index 2) by dil_conv_3x3: rows 9 and 11.
    assert w_normal[9, PRIMITIVES.index("skip_connect")] == 1
    assert w_normal[11, PRIMITIVES.index("dil_conv_3x3")] == 1
    assert w_normal[10].sum() == 0 and w_normal[12].sum() == 0
    assert set(np.unique(w_reduce)) == {0.0, 1.0}


def test_sample_genotype_is_valid_deterministic_and_never_none():
    draws = [sample_genotype(np.random.default_rng(seed), primitives=PRIMITIVES, num_nodes=4) for seed in range(50)]
    assert sample_genotype(np.random.default_rng(3), primitives=PRIMITIVES, num_nodes=4) == draws[3]
    assert len(set(draws)) == 50  # 50 draws from ~10^13 architectures: collisions would mean a bug
    for g in draws:
        assert g.num_nodes() == 4 and g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
        for cell in (g.normal, g.reduce):
            assert all(name != "none" for name, _ in cell)
            for node in range(4):
                (_, a), (_, b) = cell[2 * node: 2 * node + 2]
                assert a < b  # two distinct inputs, listed ascending
        genotype_op_weights(g)  # a supernet can compute it


def test_sample_genotype_is_uniform_over_input_pairs_and_ops():
    rng = np.random.default_rng(0)
    n = 6000
    pairs, ops = {}, {}
    for _ in range(n):
        g = sample_genotype(rng, primitives=PRIMITIVES, num_nodes=3)
        pair = (g.normal[4][1], g.normal[5][1])  # node 2: one of C(4, 2) = 6 input pairs
        pairs[pair] = pairs.get(pair, 0) + 1
        ops[g.reduce[0][0]] = ops.get(g.reduce[0][0], 0) + 1
    assert sorted(pairs) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert sorted(ops) == sorted(set(PRIMITIVES) - {"none"})
    # Each count is Binomial(n, p); 5 standard deviations is far outside chance, well inside a bias.
    for counts, p in ((pairs, 1 / 6), (ops, 1 / 7)):
        for count in counts.values():
            assert abs(count - n * p) < 5 * np.sqrt(n * p * (1 - p)), counts


def test_sample_genotype_caps_skip_connect_and_validates():
    rng = np.random.default_rng(1)
    primitives = ("none", "skip_connect", "max_pool_3x3")
    for _ in range(30):
        g = sample_genotype(rng, primitives=primitives, num_nodes=3, max_skip_connect=1)
        assert [name for name, _ in g.normal].count("skip_connect") <= 1
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        sample_genotype(0, primitives=PRIMITIVES)
    with pytest.raises(ValueError, match="other than 'none'"):
        sample_genotype(rng, primitives=("none",))
    with pytest.raises(ValueError, match="num_nodes must be an integer >= 1"):
        sample_genotype(rng, primitives=PRIMITIVES, num_nodes=0)


# --- Pictures ---------------------------------------------------------------------------------------

def test_render_genotype_writes_a_png(tmp_path):
    path = tmp_path / "cell.png"
    plots.render_genotype(DARTS_V2, str(path))
    assert path.read_bytes().startswith(PNG_MAGIC)
    image = plots.genotype_image(DARTS_V2)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.std() > 0  # something was drawn


def test_render_alpha_heatmap_writes_a_png(tmp_path):
    path = tmp_path / "alpha.png"
    a = np.random.default_rng(0).normal(size=(14, K))
    plots.render_alpha_heatmap(a, a, PRIMITIVES, str(path))
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert plots.alpha_heatmap_image(a, a, PRIMITIVES).shape[2] == 3
    with pytest.raises(ValueError, match="alpha_normal must have shape"):
        plots.alpha_heatmap_png(a[:, :3], a, PRIMITIVES)
