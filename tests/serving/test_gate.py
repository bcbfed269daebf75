"""Scoring a champion on another run's listeners: catalogs matched by id, the serving recipe
against brute force and the eager model, popular tracks for listeners it cannot embed, and the
loading of its export or checkpoint."""

import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from recmodel.core.tables import write_table
from recmodel.evaluation.topk import EMPTY
from recmodel.retriever.batches import last_items
from recmodel.retriever.checkpoint import model_config_dict, state_bytes
from recmodel.retriever.model import Retriever
from recmodel.serving.catalog import index_map, remap_histories
from recmodel.serving.export import QueryEncoder, export_retriever, item_vectors, load_export
from recmodel.serving.gate import (
    CandidateWeek,
    champion_recommendations,
    served_top_k,
    unreachable_targets,
)
from recmodel.serving.served import ModelUnavailable, ServedModel, load_served
from tests.helpers.retriever_data import item_features, one_thread, small_model, user_items

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

# The champion knows 10, 20, 30, 40, 60; this run's catalog is 30, 50, 10, 20, 70.
CHAMPION_IDS = pa.table(
    {"item_idx": pa.array([1, 2, 3, 4, 5], pa.int32()), "item_id": [10, 20, 30, 40, 60]}
)
CANDIDATE_ITEMS = pa.table(
    {
        "item_idx": [1, 2, 3, 4, 5],
        "item_id": [30, 50, 10, 20, 70],
        "count": [9, 8, 7, 6, 5],
    }
)
TO_CHAMPION = [0, 3, 0, 1, 2, 0]  # candidate item_idx -> champion item_idx (0: unknown)
BONUS = 10.0


class ToyEncoder(torch.nn.Module):
    """Everyone's query is 1, so a track scores its champion item_idx; a window track + BONUS."""

    def __init__(self, vectors: np.ndarray):
        super().__init__()
        self.vectors = torch.from_numpy(vectors)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return torch.ones(window.shape[0], 1)  # [B, 1]

    def score(self, window: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        dots = self.vectors[candidates][..., 0]  # [B, C]
        in_window = (candidates[:, :, None] == window[:, None, :]).any(-1) & (candidates > 0)
        return dots + BONUS * in_window


def toy_champion(repeat_aware: bool = True) -> ServedModel:
    vectors = np.arange(6, dtype=np.float32)[:, None]  # [N + 1, 1]: item i scores i
    return ServedModel(ToyEncoder(vectors), vectors, CHAMPION_IDS, 3, repeat_aware, "toy")


def toy_week(filter_seen: bool = False) -> CandidateWeek:
    """Listeners a (50, 30), b (50, 70: nothing the champion knows) and c (20, 10, 20)."""
    return CandidateWeek(
        targets=pa.table(
            {"user_id": ["a", "a", "b", "b", "b", "c"], "item_id": [30, 50, 70, 70, 20, 10]}
        ),
        items=CANDIDATE_ITEMS,
        user_ids=pa.array(["a", "b", "c"]),
        histories=user_items([[2, 1], [2, 5], [4, 3, 4]]),
        popular=np.array([5, 2, 4, 1, 3]),  # 70, 50, 20, 30, 10
        filter_seen=filter_seen,
    )


def ranked(table: pa.Table) -> dict[str, list[int]]:
    """user_id -> item_ids by rank."""
    columns = (table.column(c).to_pylist() for c in ("user_id", "rank", "item_id"))
    rows = sorted(zip(*columns, strict=True))
    out: dict[str, list[int]] = {}
    for user, _, item in rows:
        out.setdefault(user, []).append(item)
    return out


def test_index_map_and_remapped_histories_exact():
    assert index_map(CHAMPION_IDS, CANDIDATE_ITEMS).tolist() == TO_CHAMPION
    remapped = remap_histories(user_items([[2, 1], [2, 5], [4, 3, 4]]), np.array(TO_CHAMPION))
    assert remapped.indptr.tolist() == [0, 1, 1, 4]
    assert remapped.items.tolist() == [3, 2, 1, 2]  # 30 | - | 20, 10, 20
    assert remapped.ts.tolist() == [1, 4, 5, 6]  # each kept event keeps its time


def test_ids_of_another_type_match_nothing():
    strings = CANDIDATE_ITEMS.set_column(1, "item_id", pa.array(["30", "50", "10", "20", "70"]))
    with pytest.raises(ValueError, match="item_id is int64 in the old catalog and string"):
        index_map(CHAMPION_IDS, strings)
    week = CandidateWeek(**{**toy_week().__dict__, "items": strings})
    with pytest.raises(ModelUnavailable, match="tracks cannot be matched"):
        champion_recommendations(toy_champion(), week, 3)


def test_unreachable_targets_count_distinct_pairs_on_unknown_tracks():
    assert unreachable_targets(toy_week().targets, CHAMPION_IDS) == 2  # (a, 50), (b, 70) twice


@pytest.mark.parametrize(
    "repeat_aware, filter_seen, expected",
    [
        # no bonus: 30 > 20 > 10 by item_idx; 40 and 60 are not in this catalog
        (False, False, {"a": [30, 20, 10], "c": [30, 20, 10]}),
        # c's window holds 20 and 10: 12 and 11 beat 30's 3
        (True, False, {"a": [30, 20, 10], "c": [20, 10, 30]}),
        # seen tracks filtered (no bonus can apply): a loses 30, c loses 20 and 10
        (True, True, {"a": [20, 10], "c": [30]}),
    ],
)
def test_champion_recommendations_exact(repeat_aware, filter_seen, expected):
    table, reach = champion_recommendations(toy_champion(repeat_aware), toy_week(filter_seen), 4)
    # b knows nothing the champion knows: the most played tracks it knows (20, 30, 10)
    assert ranked(table) == {**expected, "b": [20, 30, 10]}
    assert set(table.column("model").to_pylist()) == {"champion"}
    assert reach == {"unknown_tracks": 2, "fallback_users": 1, "unreachable_targets": 2}
    fallback = table.filter(pa.compute.equal(table.column("user_id"), "b"))
    assert fallback.column("score").to_pylist() == [-1.0, -2.0, -3.0]


def test_a_champion_that_knows_no_track_cannot_be_scored():
    strangers = CANDIDATE_ITEMS.set_column(1, "item_id", pa.array([50, 51, 52, 53, 70]))
    week = CandidateWeek(**{**toy_week().__dict__, "items": strangers})
    with pytest.raises(ModelUnavailable, match="knows none of this run's tracks"):
        champion_recommendations(toy_champion(), week, 3)


N_ITEMS, MAX_LEN = 25, 6
CFG = small_model(MAX_LEN, profile_size=4)


@pytest.fixture(scope="module")
def retriever():
    torch.manual_seed(0)
    model = Retriever(item_features(N_ITEMS), CFG).eval()
    generator = torch.Generator().manual_seed(1)  # live bonuses (they start at zero)
    with torch.no_grad():
        for param in [*model.repeat.parameters(), *model.long_term.parameters()]:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model


def items_table(n_items: int) -> pa.Table:
    """The items table as extraction writes it (codes, acoustic vectors) for item_features."""
    feats = item_features(n_items)
    idx = np.arange(1, n_items + 1)
    vectors = [feats.acoustic[i].tolist() if feats.has_acoustic[i] else None for i in idx]
    return pa.table(
        {
            "item_idx": pa.array(idx, pa.int32()),
            "item_id": pa.array(idx * 7, pa.int64()),
            "count": pa.array(np.arange(n_items, 0, -1), pa.int64()),
            "artist_idx": pa.array(feats.artist[1:], pa.int32()),
            "album_idx": pa.array(feats.album[1:], pa.int32()),
            "genre_idx": pa.array(feats.genre[1:], pa.int32()),
            "tempo_bucket": pa.array(feats.tempo_bucket[1:], pa.int32()),
            "track_length_seconds": pa.array(feats.track_length[1:], pa.float64()),
            "embedding": pa.array(vectors, pa.list_(pa.float32())),
        }
    )


@pytest.fixture(scope="module")
def run_artifacts(retriever, tmp_path_factory):
    """What the champion's run stores: its export, checkpoint and items table."""
    root = tmp_path_factory.mktemp("champion_run")
    items = items_table(N_ITEMS)
    manifest = export_retriever(retriever, items, root / "serving")
    return {
        "serving": {**manifest, "files": manifest.pop("paths")},
        "finetune_checkpoint": {
            "safetensors": state_bytes(retriever),
            "model_config": model_config_dict(CFG, item_features(N_ITEMS)),
        },
        "tables": {"items": write_table(items, str(root / "items.parquet"))},
    }


@pytest.fixture(scope="module")
def exported(run_artifacts):
    return load_served(run_artifacts.__getitem__)


def random_rows(seed: int, n_users: int = 12) -> list[list[int]]:
    """Histories of 1 to 15 plays: the longer ones have a long-term profile (MAX_LEN is 6)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, N_ITEMS + 1, rng.integers(1, 16)).tolist() for _ in range(n_users)]


def brute_force(model: ServedModel, histories, allowed, k, exclude=None):
    """Every allowed track scored by ``score`` (or the dot product when filtering), sorted."""
    windows = last_items(histories, np.arange(histories.n_users), MAX_LEN)
    profiles = model.profiles(histories)
    ids = np.full((len(windows), k), EMPTY)
    for u, window in enumerate(torch.from_numpy(windows)):
        cand = [i for i in allowed if exclude is None or i not in set(exclude[u])]
        with torch.no_grad():
            if exclude is None:
                logits = model.score(window[None], torch.tensor([cand]), profiles, [u])[0]
            else:
                query = model.encoder(window[None])[0]
                logits = torch.from_numpy(model.item_vectors[cand]) @ query
        best = [cand[i] for i in np.argsort(-logits.numpy(), kind="stable")[:k]]
        ids[u, : len(best)] = best
    return ids


@pytest.mark.parametrize("filter_seen", [False, True])
def test_served_top_k_equals_brute_force_on_a_catalog_subset(exported, filter_seen):
    rng = np.random.default_rng(3)
    allowed = np.sort(rng.choice(np.arange(1, N_ITEMS + 1), 15, replace=False))
    rows = [[i for i in row if i in set(allowed)] or [int(allowed[0])] for row in random_rows(4)]
    histories = user_items(rows)
    assert exported.profiles(histories).items.any()  # the profile is part of the check
    ids, scores = served_top_k(exported, histories, allowed, 8, filter_seen)
    assert (
        ids.tolist()
        == brute_force(exported, histories, allowed, 8, rows if filter_seen else None).tolist()
    )
    assert np.isin(ids, allowed).all() and (np.diff(scores, axis=1) <= 0).all()


def test_served_top_k_on_the_whole_catalog_equals_the_models_own_ranking(retriever, exported):
    """Same model, same catalog: the champion's list is the candidate's list (a gate tie)."""
    rows = random_rows(5)
    ids, scores = served_top_k(exported, user_items(rows), np.arange(1, N_ITEMS + 1), 10)
    expected, expected_scores = retriever.recommend(user_items(rows), np.arange(len(rows)), 10)
    assert ids.tolist() == expected.tolist()
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_a_window_track_outside_the_allowed_catalog_is_never_returned(exported):
    allowed = np.arange(1, 11)
    histories = user_items([[20, 21, 20, 3]])  # 20 and 21 inform the query only
    ids, _ = served_top_k(exported, histories, allowed, 10)
    assert sorted(ids[0].tolist()) == allowed.tolist()


def test_load_served_reads_the_export(exported, retriever):
    assert exported.source == "serving" and exported.max_len == MAX_LEN and exported.repeat_aware
    assert exported.profile == {"size": 4, "history": CFG.profile_history}
    np.testing.assert_array_equal(exported.item_vectors, item_vectors(retriever))
    assert exported.item_ids.column("item_id").to_pylist() == list(range(7, 7 * N_ITEMS + 1, 7))


def test_without_its_export_the_checkpoint_serves_the_same_ranking(run_artifacts, exported):
    missing = {
        **run_artifacts,
        "serving": {"files": {"manifest.json": "/nonexistent/manifest.json"}},
    }
    rebuilt = load_served(missing.__getitem__)
    assert rebuilt.source == "finetune_checkpoint" and isinstance(rebuilt.encoder, QueryEncoder)
    histories, allowed = user_items(random_rows(6)), np.arange(1, N_ITEMS + 1)
    ids, scores = served_top_k(rebuilt, histories, allowed, 10)
    expected, expected_scores = served_top_k(exported, histories, allowed, 10)
    assert ids.tolist() == expected.tolist()
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_a_changed_export_is_not_used(run_artifacts, tmp_path):
    copy = tmp_path / "serving"
    shutil.copytree(run_artifacts["serving"]["files"]["manifest.json"].rsplit("/", 1)[0], copy)
    (copy / "item_vectors.npy").write_bytes(b"not the vectors")
    files = {name: str(copy / name) for name in run_artifacts["serving"]["files"]}
    served = load_served({**run_artifacts, "serving": {"files": files}}.__getitem__)
    assert served.source == "finetune_checkpoint"
    vectors, *_ = load_export(run_artifacts["serving"]["files"]["manifest.json"].rsplit("/", 1)[0])
    np.testing.assert_allclose(served.item_vectors, vectors, rtol=1e-6, atol=1e-6)


def test_nothing_loadable_says_why_for_each_source():
    with pytest.raises(ModelUnavailable) as err:
        load_served({"serving": {"files": {}}}.__getitem__)
    message = str(err.value)
    assert message.startswith("serving: KeyError: 'manifest.json'; finetune_checkpoint: KeyError")


def test_an_export_on_an_object_store_is_fetched_and_verified(run_artifacts, exported):
    """``file://`` URIs take the object-store path: every file copied, then hashes checked."""
    files = {k: f"file://{v}" for k, v in run_artifacts["serving"]["files"].items()}
    served = load_served({**run_artifacts, "serving": {"files": files}}.__getitem__)
    assert served.source == "serving"
    np.testing.assert_array_equal(served.item_vectors, exported.item_vectors)
