"""Serving exports and batch top-k, checked against the eager model and brute-force ranking."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recmodel.retriever.batches import last_items
from recmodel.retriever.model import Retriever
from recmodel.retriever.profile import N_FEATURES
from recmodel.serving.batch import TOPK_SCHEMA, batch_topk, topk_table, write_batch_topk
from recmodel.serving.bundle import MANIFEST
from recmodel.serving.export import ITEM_IDS, ITEM_VECTORS, QUERY_ENCODER, export_retriever
from tests.helpers.retriever_data import (
    item_features,
    one_thread,
    plain_profile,
    small_model,
    timed_user_items,
)

N_ITEMS = 25
MAX_LEN = 6
PROFILE = 4
CFG = small_model(MAX_LEN, PROFILE)


pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    retriever = Retriever(item_features(N_ITEMS), CFG).eval()
    # The bonuses start at zero; random weights make them part of every check.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in [*retriever.repeat.parameters(), *retriever.long_term.parameters()]:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return retriever


@pytest.fixture(scope="module")
def items():
    idx = np.arange(1, N_ITEMS + 1)
    return pa.table(
        {
            "item_idx": pa.array(idx[::-1], pa.int64()),  # unsorted on purpose
            "item_id": pa.array([f"track-{i * 7}" for i in idx[::-1]]),
        }
    )


@pytest.fixture(scope="module")
def exported(model, items, tmp_path_factory):
    return export_retriever(model, items, tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def histories():
    rng = np.random.default_rng(3)
    rows = [rng.integers(1, N_ITEMS + 1, rng.integers(1, 4 * MAX_LEN)).tolist() for _ in range(9)]
    rows[2] = []  # inactive: no history
    rows[5] = [4, 4, 4, 9, 4]  # heavy repeats, shorter than the window
    rows[7] = [3, 8, 3, 3, 8, 11] + rows[7]  # favourites before the window: a long-term profile
    return timed_user_items(rows, seed=3)


def request_profile(histories, user):
    """The manifest's profile recipe by a plain loop: ``[1, F]`` items, ``[1, F, 3]`` features."""
    items, ts = histories.row(user), histories.row_ts(user)
    before = max(len(items) - MAX_LEN, 0)
    profile = plain_profile(items[:before], ts[:before], ts[before], PROFILE) if before else []
    out_items = np.zeros((1, PROFILE), dtype=np.int64)
    out_features = np.zeros((1, PROFILE, N_FEATURES), dtype=np.float32)
    for slot, (track, feats) in enumerate(profile):
        out_items[0, slot], out_features[0, slot] = track, feats
    return torch.from_numpy(out_items), torch.from_numpy(out_features)


def eager_queries(model, window):
    with torch.no_grad():
        return model.head.user_side(model(window)[:, -1]).numpy()


def eager_scores(model, window, candidates, profile=None):
    with torch.no_grad():
        return model.candidate_logits(window, candidates, profile=profile)[1].numpy()


def brute_force_topk(model, histories, users, k, exclude_seen=False):
    """Score every catalog item for each user and sort (ties: lower id first)."""
    everything = torch.arange(1, N_ITEMS + 1)[None, :]  # [1, N]
    rows = []
    for user in users:
        window = torch.from_numpy(last_items(histories, np.array([user]), MAX_LEN))
        scores = eager_scores(model, window, everything, request_profile(histories, user))[0]
        ranked = sorted(range(N_ITEMS), key=lambda j: (-scores[j], j))
        if exclude_seen:
            seen = set(histories.row(user).tolist())
            ranked = [j for j in ranked if j + 1 not in seen]
        rows += [(user, j + 1, r + 1, scores[j]) for r, j in enumerate(ranked[:k])]
    return rows


def test_export_writes_item_vectors_ids_and_manifest(model, exported):
    vectors = np.load(exported["paths"][ITEM_VECTORS])
    assert vectors.dtype == np.float32 and vectors.shape == (N_ITEMS + 1, CFG.d_model)
    with torch.no_grad():
        expected = model.head.item_side(model.tower(torch.arange(N_ITEMS + 1))).numpy()
    np.testing.assert_allclose(vectors, expected, rtol=1e-6, atol=1e-6)
    ids = pq.read_table(exported["paths"][ITEM_IDS])
    assert ids.schema.field("item_idx").type == pa.int32()
    assert ids.column("item_idx").to_pylist() == list(range(1, N_ITEMS + 1))
    assert ids.column("item_id").to_pylist() == [f"track-{i * 7}" for i in range(1, N_ITEMS + 1)]
    manifest = json.loads(Path(exported["paths"][MANIFEST]).read_text())
    assert (manifest["n_items"], manifest["dim"], manifest["max_len"], manifest["pad_id"]) == (
        N_ITEMS,
        CFG.d_model,
        MAX_LEN,
        0,
    )
    assert manifest["repeat_aware"] is True and manifest["profile"]["size"] == PROFILE
    assert manifest["files"] == {
        "item_vectors": ITEM_VECTORS,
        "item_ids": ITEM_IDS,
        "encoder": QUERY_ENCODER,
    }
    assert {k: v for k, v in exported.items() if k != "paths"} == manifest


LOADER = textwrap.dedent("""
    import sys
    sys.modules["recmodel"] = None  # importing the training code now raises ImportError
    import numpy as np
    import torch

    encoder_path, inputs_path, out_path = sys.argv[1:]
    encoder = torch.jit.load(encoder_path)
    data = np.load(inputs_path)
    with torch.no_grad():
        out = {
            "full": encoder(torch.from_numpy(data["full"])).numpy(),
            "short": encoder(torch.from_numpy(data["short"])).numpy(),
            "scores": encoder.score(
                torch.from_numpy(data["full"]),
                torch.from_numpy(data["candidates"]),
                torch.from_numpy(data["profile_items"]),
                torch.from_numpy(data["profile_features"]),
            ).numpy(),
        }
    np.savez(out_path, **out)
""")


def test_query_encoder_loads_without_the_package(model, exported, tmp_path):
    rng = np.random.default_rng(5)
    full = rng.integers(1, N_ITEMS + 1, (5, MAX_LEN))  # batch 5: the trace used 2
    full[0, :3] = 0  # left padding
    full[1, :] = 0  # no history at all
    full[2, :] = 7  # one track on repeat
    short = full[:, 2:]  # T = 4 < max_len
    candidates = np.concatenate([full[:, -3:], rng.integers(1, N_ITEMS + 1, (5, 6))], axis=1)
    candidates[1] = np.arange(1, 10)
    profile_items = np.zeros((5, PROFILE), dtype=np.int64)  # row 1: no profile
    profile_items[0, :2] = candidates[0, 3:5]  # candidates in the profile and not in the window
    profile_items[2:, :] = candidates[2:, :PROFILE] + 0  # some in both
    profile_features = rng.normal(size=(5, PROFILE, N_FEATURES)).astype(np.float32)
    profile_features *= (profile_items > 0)[..., None]
    np.savez(
        tmp_path / "inputs.npz",
        full=full,
        short=short,
        candidates=candidates,
        profile_items=profile_items,
        profile_features=profile_features,
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            LOADER,
            exported["paths"][QUERY_ENCODER],
            str(tmp_path / "inputs.npz"),
            str(tmp_path / "out.npz"),
        ],
        check=True,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    out = np.load(tmp_path / "out.npz")
    full_t, short_t = torch.from_numpy(full), torch.from_numpy(short)
    np.testing.assert_allclose(out["full"], eager_queries(model, full_t), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["short"], eager_queries(model, short_t), rtol=1e-5, atol=1e-5)
    profile = (torch.from_numpy(profile_items), torch.from_numpy(profile_features))
    scores = eager_scores(model, full_t, torch.from_numpy(candidates), profile)
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-5, atol=1e-5)
    assert out["scores"].shape == (5, 9)
    # The bonuses are really in the exported path: window items and profile items score away
    # from their plain dot product, other candidates exactly at it.
    plain = np.einsum(
        "bd,bcd->bc", out["full"], np.load(exported["paths"][ITEM_VECTORS])[candidates]
    )
    moved = np.zeros(candidates.shape, dtype=bool)
    for b in range(5):
        moved[b] = np.isin(candidates[b], full[b][full[b] > 0])
        moved[b] |= np.isin(candidates[b], profile_items[b][profile_items[b] > 0])
    assert (np.abs(out["scores"] - plain)[moved] > 1e-3).all()
    np.testing.assert_allclose(out["scores"][~moved], plain[~moved], rtol=1e-5, atol=1e-5)
    assert moved[0, 3:5].all() and not np.isin(candidates[0, 3:5], full[0]).any()


def serve(encoder, vectors, window, profile, k):
    """The manifest's recipe with torch and numpy only, one request at a time."""
    with torch.no_grad():
        query = encoder(window).numpy()[0]  # [D]
    dots = vectors[1:] @ query  # [N]: row 0 is padding, never a candidate
    t, f = int((window > 0).sum()), int((profile[0] > 0).sum())
    nearest = np.argsort(-dots, kind="stable")[: k + t + f] + 1
    own = np.concatenate([window[0].numpy(), profile[0][0].numpy()])
    candidates = np.unique(np.concatenate([nearest, own[own > 0]]))
    with torch.no_grad():
        scores = encoder.score(window, torch.from_numpy(candidates)[None], *profile).numpy()[0]
    order = sorted(range(len(candidates)), key=lambda j: (-scores[j], candidates[j]))[:k]
    return candidates[order], scores[order]


def test_serving_recipe_reproduces_recommend(model, exported, histories):
    encoder = torch.jit.load(exported["paths"][QUERY_ENCODER])
    vectors = np.load(exported["paths"][ITEM_VECTORS])
    users = np.array([0, 1, 3, 5, 7, 8])
    ids, scores = model.recommend(histories, users, k=5)
    for row, user in enumerate(users):
        window = torch.from_numpy(last_items(histories, np.array([user]), MAX_LEN))
        served_ids, served_scores = serve(
            encoder, vectors, window, request_profile(histories, user), k=5
        )
        np.testing.assert_array_equal(served_ids, ids[row])
        np.testing.assert_allclose(served_scores, scores[row], rtol=1e-5, atol=1e-5)


def test_topk_table_exact():
    ids = np.array([[3, -1, -1], [5, 2, 9]])
    scores = np.array([[0.5, -np.inf, -np.inf], [2.0, 1.5, -0.25]], dtype=np.float32)
    table = topk_table(np.array([4, 9]), ids, scores)
    assert table.schema == TOPK_SCHEMA
    assert table.to_pydict() == {
        "user_idx": [4, 9, 9, 9],
        "item_idx": [3, 5, 2, 9],
        "rank": [1, 1, 2, 3],
        "score": [0.5, 2.0, 1.5, -0.25],
    }


def rows_of(table):
    data = table.to_pydict()
    return list(zip(data["user_idx"], data["item_idx"], data["rank"], data["score"], strict=True))


def assert_same_rows(got, expected):
    assert [r[:3] for r in got] == [r[:3] for r in expected]
    np.testing.assert_allclose([r[3] for r in got], [r[3] for r in expected], rtol=1e-5, atol=1e-5)


def test_batch_topk_matches_brute_force_for_every_active_user(model, histories):
    table = batch_topk(model, histories, k=7, block_users=3)  # blocks of 3, 3, 2 users
    active = [u for u in range(histories.n_users) if len(histories.row(u))]
    assert active == [0, 1, 3, 4, 5, 6, 7, 8]
    assert_same_rows(rows_of(table), brute_force_topk(model, histories, active, k=7))


def test_batch_topk_filter_seen_never_returns_a_heard_track(model, histories):
    users = np.array([5, 0])
    table = batch_topk(model, histories, users, k=N_ITEMS, filter_seen=True)
    expected = brute_force_topk(model, histories, users, k=N_ITEMS, exclude_seen=True)
    assert_same_rows(rows_of(table), expected)
    # user 5 heard two distinct tracks: the rest of the catalog is all that can fill its slots
    assert sum(1 for r in expected if r[0] == 5) == N_ITEMS - 2


def test_batch_topk_of_no_users_is_an_empty_table(model, histories):
    table = batch_topk(model, histories, np.array([], dtype=np.int64), k=3)
    assert table.num_rows == 0 and table.schema == TOPK_SCHEMA


def test_write_batch_topk_streams_the_same_rows(model, histories, tmp_path):
    rows = write_batch_topk(model, histories, tmp_path / "topk.parquet", k=4, block_users=2)
    written = pq.read_table(tmp_path / "topk.parquet")
    assert rows == written.num_rows == 8 * 4
    assert written.equals(batch_topk(model, histories, k=4))


def test_export_rejects_items_of_another_catalog(model, items, tmp_path):
    with pytest.raises(ValueError, match=r"exactly 1\.\.25"):
        export_retriever(model, items.slice(1), tmp_path)
