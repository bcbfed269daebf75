"""Warm start across catalogs: rows follow the original ids, new rows keep their init."""

from collections import Counter

import metaflow
import numpy as np
import pyarrow as pa
import pytest
import torch

from recmodel.core import tables
from recmodel.core.config import ModelConfig
from recmodel.core.dataset import ItemFeatures
from recmodel.retriever.checkpoint import model_config_dict, state_bytes
from recmodel.retriever.model import Retriever
from recmodel.serving.warm_start import (
    ID_KEY,
    META_KEY,
    code_mapping,
    find_warm_start_run,
    item_mapping,
    warm_start,
    warm_start_from_run,
    warm_start_state,
)
from tests.helpers.retriever_data import one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
CFG = ModelConfig(d_model=16, n_blocks=1, n_heads=2, max_len=5, dropout=0.0, id_dim=8, meta_dim=4)
CODES = ("artist", "album", "genre", "tempo_bucket")
COLUMNS = {
    "artist": "artist_idx",
    "album": "album_idx",
    "genre": "genre_idx",
    "tempo_bucket": "tempo_bucket",
}


def features(codes: dict, acoustic: np.ndarray) -> ItemFeatures:
    """ItemFeatures from per-track code lists (row 0, padding, is prepended)."""
    pad = {name: np.r_[0, np.asarray(codes[name])].astype(np.int64) for name in CODES}
    vectors = np.vstack([np.zeros((1, acoustic.shape[1])), acoustic]).astype(np.float32)
    has = np.r_[False, np.ones(len(acoustic), dtype=bool)]
    return ItemFeatures(
        **pad,
        acoustic=vectors,
        has_acoustic=has,
        track_length=np.full(len(has), 180.0, dtype=np.float32),
    )


def items_table(ids: list, codes: dict) -> pa.Table:
    return pa.table(
        {
            "item_idx": pa.array(range(1, len(ids) + 1), pa.int32()),
            "item_id": ids,
            **{COLUMNS[n]: pa.array(codes[n], pa.int32()) for n in CODES},
        }
    )


def build(feats: ItemFeatures, seed: int) -> Retriever:
    torch.manual_seed(seed)
    return Retriever(feats, CFG).eval()


def trained(feats: ItemFeatures, seed: int) -> tuple[Retriever, dict]:
    """A model whose every weight moved away from its init, as training does, and its checkpoint."""
    model = build(feats, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return model, {"safetensors": state_bytes(model), "model_config": model_config_dict(CFG, feats)}


def test_code_mapping_exact_with_majority_and_ties():
    new = np.array([2, 2, 2, 1, 3, 3, 0, 4, 5])
    old = np.array([7, 7, 1, 5, 6, 4, 9, 0, 2])
    # new 2: old 7 twice beats the lower 1; new 3: a tie between 6 and 4 goes to 4; new 4 only met
    # "unknown" and new 0 is "unknown": neither is mapped from a known code.
    new_codes, old_codes = code_mapping(new, old)
    assert new_codes.tolist() == [0, 1, 2, 3, 5] and old_codes.tolist() == [0, 5, 7, 4, 2]


def test_code_mapping_matches_a_counting_reference():
    rng = np.random.default_rng(0)
    new, old = rng.integers(0, 6, 200), rng.integers(0, 9, 200)
    votes: dict = {}
    for n, o in zip(new.tolist(), old.tolist(), strict=True):
        if n and o:
            votes.setdefault(n, Counter())[o] += 1
    expected = {0: 0} | {n: min(c, key=lambda o: (-c[o], o)) for n, c in votes.items()}
    new_codes, old_codes = code_mapping(new, old)
    assert dict(zip(new_codes.tolist(), old_codes.tolist(), strict=True)) == expected


def test_handmade_catalogs_exact():
    acoustic = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    codes_a = {
        "artist": [1, 2, 1, 3],
        "album": [1, 2, 3, 4],
        "genre": [1, 1, 2, 2],
        "tempo_bucket": [1, 2, 3, 4],
    }
    # B = tracks 300, 500 (new), 100. Artists were re-ranked: old artist 1 is now code 2, the
    # new track's artist is new (code 1).
    codes_b = {
        "artist": [2, 1, 2],
        "album": [3, 5, 1],
        "genre": [1, 2, 1],
        "tempo_bucket": [3, 1, 1],
    }
    feats_a, feats_b = features(codes_a, acoustic), features(codes_b, acoustic[[2, 0, 0]])
    model_a, ckpt = trained(feats_a, seed=0)
    model_b = build(feats_b, seed=1)
    fresh = {k: v.clone() for k, v in model_b.state_dict().items()}
    items_a = items_table([100, 200, 300, 400], codes_a)
    items_b = items_table([300, 500, 100], codes_b)

    new_idx, old_idx = item_mapping(items_a, items_b)
    assert new_idx.tolist() == [1, 3] and old_idx.tolist() == [3, 1]
    result = warm_start(ckpt, items_a, model_b, items_b)
    state, old = result.state, model_a.state_dict()
    assert torch.equal(state[ID_KEY][[1, 3]], old[ID_KEY][[3, 1]])
    assert torch.equal(state[ID_KEY][[0, 2]], fresh[ID_KEY][[0, 2]])  # padding and the new track
    artist = META_KEY.format("artist")
    assert torch.equal(state[artist][[0, 2]], old[artist][[0, 1]])
    assert torch.equal(state[artist][1], fresh[artist][1])  # a new artist keeps its init
    assert result.summary == {
        "known_items": 2,
        "new_items": 1,
        "dropped_items": 2,
        "ids_copied": True,
        "meta": {
            "artist": {"mapped_codes": 1, "new_codes": 1},
            "album": {"mapped_codes": 2, "new_codes": 3},
            "genre": {"mapped_codes": 1, "new_codes": 1},
            "tempo_bucket": {"mapped_codes": 2, "new_codes": 1},
        },
        "kept_init": [],
    }
    model_b.load_state_dict(state, strict=True)  # what train.pretrain(init_state=...) does
    assert torch.equal(
        model_b.encoder.blocks[0].attn.qkv.weight, model_a.encoder.blocks[0].attn.qkv.weight
    )


@pytest.fixture(scope="module")
def catalogs():
    """A: 40 tracks. B: 25 of them (new order, re-ranked codes) and 15 new tracks."""
    rng = np.random.default_rng(7)
    n_a, n_shared, n_new = 40, 25, 15
    universe = {"artist": 12, "album": 20, "genre": 5, "tempo_bucket": 6}  # identities 1..K
    tracks_a = {n: rng.integers(1, k + 1, n_a) for n, k in universe.items()}  # identity per track
    acoustic_a = rng.normal(size=(n_a, 3)).astype(np.float32)
    shared = rng.choice(n_a, n_shared, replace=False)  # A positions kept, in B's order
    new_tracks = {n: rng.integers(1, k + 4, n_new) for n, k in universe.items()}  # new artists
    tracks_b = {n: np.r_[tracks_a[n][shared], new_tracks[n]] for n in universe}
    order = rng.permutation(n_shared + n_new)  # B's item_idx order
    ids_a = [f"t{i}" for i in range(n_a)]
    ids_b = np.r_[np.array(ids_a)[shared], [f"n{i}" for i in range(n_new)]][order].tolist()
    acoustic_b = np.vstack([acoustic_a[shared], rng.normal(size=(n_new, 3))])[order]
    recode = {n: rng.permutation(k + 4) + 1 for n, k in universe.items()}  # B re-ranks codes
    codes_a = {n: tracks_a[n].tolist() for n in universe}
    codes_b = {n: recode[n][tracks_b[n][order] - 1].tolist() for n in universe}
    feats_a, feats_b = features(codes_a, acoustic_a), features(codes_b, acoustic_b)
    model_a, ckpt = trained(feats_a, seed=3)
    return {
        "model_a": model_a,
        "ckpt": ckpt,
        "items_a": items_table(ids_a, codes_a),
        "feats_b": feats_b,
        "items_b": items_table(ids_b, codes_b),
        "ids_a": ids_a,
        "ids_b": ids_b,
    }


def test_catalog_b_keeps_known_rows_and_new_rows_at_init(catalogs):
    model_b = build(catalogs["feats_b"], seed=4)
    fresh = model_b.state_dict()[ID_KEY].clone()
    state = warm_start_state(catalogs["ckpt"], catalogs["items_a"], model_b, catalogs["items_b"])
    old_rows = catalogs["model_a"].state_dict()[ID_KEY]
    where_a = {item_id: i + 1 for i, item_id in enumerate(catalogs["ids_a"])}
    for idx, item_id in enumerate(catalogs["ids_b"], start=1):  # one track at a time
        expected = old_rows[where_a[item_id]] if item_id in where_a else fresh[idx]
        assert torch.equal(state[ID_KEY][idx], expected), item_id
    model_b.load_state_dict(state, strict=True)
    known = [(i, where_a[x]) for i, x in enumerate(catalogs["ids_b"], 1) if x in where_a]
    new_idx, old_idx = (torch.tensor(c) for c in zip(*known, strict=True))
    with torch.no_grad():
        vectors_b = model_b.tower(new_idx)
        vectors_a = catalogs["model_a"].tower(old_idx)
        np.testing.assert_allclose(vectors_b.numpy(), vectors_a.numpy(), rtol=1e-6, atol=1e-6)
        # The same listening window in either catalog's ids gives the same query vector.
        window_b, window_a = new_idx[: CFG.max_len][None], old_idx[: CFG.max_len][None]
        np.testing.assert_allclose(
            model_b(window_b).numpy(), catalogs["model_a"](window_a).numpy(), rtol=1e-6, atol=1e-6
        )


def test_changed_shapes_and_missing_code_columns_keep_their_init(catalogs):
    feats_b = catalogs["feats_b"]
    narrow = ItemFeatures(**{**feats_b.__dict__, "acoustic": feats_b.acoustic[:, :2]})
    model_b = build(narrow, seed=5)
    fresh = {k: v.clone() for k, v in model_b.state_dict().items()}
    no_codes = catalogs["items_a"].select(["item_idx", "item_id"])
    result = warm_start(catalogs["ckpt"], no_codes, model_b, catalogs["items_b"])
    assert result.summary["kept_init"] == ["tower.acoustic.weight"]
    assert torch.equal(result.state["tower.acoustic.weight"], fresh["tower.acoustic.weight"])
    for name in CODES:
        assert torch.equal(result.state[META_KEY.format(name)], fresh[META_KEY.format(name)])
        assert result.summary["meta"][name]["mapped_codes"] == 0
    assert result.summary["known_items"] == 25


def test_mismatched_tables_are_rejected(catalogs):
    model_b = build(catalogs["feats_b"], seed=5)
    with pytest.raises(ValueError, match="old items table must list item_idx exactly 1..40"):
        warm_start(catalogs["ckpt"], catalogs["items_a"].slice(1), model_b, catalogs["items_b"])
    numeric = catalogs["items_b"].set_column(1, "item_id", pa.array(range(40)))
    with pytest.raises(ValueError, match="cannot be matched"):
        warm_start(catalogs["ckpt"], catalogs["items_a"], model_b, numeric)


class FakeRun:
    def __init__(self, pathspec, successful=True):
        self.pathspec, self.successful = pathspec, successful


@pytest.fixture
def fake_client(monkeypatch):
    runs = {"F/1": FakeRun("F/1"), "F/2": FakeRun("F/2", successful=False)}

    class Flow:
        def __init__(self, name):
            self.name = name

        @property
        def latest_successful_run(self):
            return runs["F/1"] if self.name == "F" else None

        def runs(self, *tags):
            return []

    def run(pathspec):
        if pathspec not in runs:
            raise metaflow.exception.MetaflowNotFound(pathspec)
        return runs[pathspec]

    monkeypatch.setattr(metaflow, "Flow", Flow)
    monkeypatch.setattr(metaflow, "Run", run)
    return runs


def test_resolve_warm_start(fake_client):
    assert find_warm_start_run("", "F") is None and find_warm_start_run(" None ", "F") is None
    assert find_warm_start_run("latest", "F") is fake_client["F/1"]
    assert find_warm_start_run("1", "F") is fake_client["F/1"]
    assert find_warm_start_run("latest", "G") is None  # the first run of a flow starts cold
    assert find_warm_start_run("champion", "F") is None
    with pytest.raises(ValueError, match="F/2: the run did not succeed"):
        find_warm_start_run("2", "F")
    with pytest.raises(metaflow.exception.MetaflowNotFound):
        find_warm_start_run("F/9", "F")


def test_warm_start_from_run_reads_the_runs_artifacts(catalogs, tmp_path, monkeypatch):
    ref = tables.write_table(catalogs["items_a"], str(tmp_path / "items.parquet"))
    artifacts = {"pretrain_checkpoint": catalogs["ckpt"], "tables": {"items": ref}}
    monkeypatch.setattr(tables, "load_artifact", lambda name, run: artifacts[name])
    model_b = build(catalogs["feats_b"], seed=6)
    result = warm_start_from_run(FakeRun("F/1"), model_b, catalogs["items_b"])
    direct = warm_start(catalogs["ckpt"], catalogs["items_a"], model_b, catalogs["items_b"])
    assert result.summary == {
        **direct.summary,
        "from_run": "F/1",
        "artifact": "pretrain_checkpoint",
    }
    assert all(torch.equal(result.state[k], direct.state[k]) for k in direct.state)
