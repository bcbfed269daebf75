"""The baselines over user shards: the same play counts, settings, recommendations and targets
as with every event in memory, and the plays' stacking against a direct count."""

import numpy as np
import pytest

from recmodel.baselines.plays import plays_of, stack_plays, training_plays
from recmodel.baselines.registry import BASELINES, BuildOptions, run_baselines
from recmodel.core.columns import Window
from recmodel.core.config import BaselinesConfig
from recmodel.core.dataset_io import load_dataset
from recmodel.core.user_shards import open_user_shards
from tests.helpers.shard_tables import random_dataset, write_tables

# Two values on each tuned axis, so that every searched model scores settings.
CFG = BaselinesConfig(
    user_recent_tau_days=(0.5, 30.0),
    itemknn_neighbours=(5, 20),
    itemknn_weighting=("bm25",),
    als_factors=(4, 8),
    als_regularization=(0.01,),
    als_alpha=(1.0,),
    als_iterations=3,
    tune_users=12,
)


@pytest.fixture(scope="module", params=[0, 1])
def written(request, tmp_path_factory):
    dataset = random_dataset(request.param, n_users=60, n_items=40)
    paths = write_tables(dataset, tmp_path_factory.mktemp("tables"), row_group_size=41)
    whole = load_dataset(paths["events"], paths["items"], paths["users"])
    return whole, paths


def shards_of(paths, n_events, n_shards):
    shards = open_user_shards(paths["events"], paths["items"], paths["users"], n_events // n_shards)
    assert shards.n_shards > 1 or n_shards == 1
    return shards


def plain_recent(dataset, before):
    """Each track's plays decayed from the last play before ``before``, by a loop."""
    mask = dataset.window < before
    end = dataset.ts[mask].max() + 1
    out = np.zeros(dataset.n_items + 1)
    for item, ts in zip(dataset.item_idx[mask], dataset.ts[mask], strict=True):
        out[item] += 2.0 ** (-(end - ts) / (7 * 86_400))
    return out, end


@pytest.mark.parametrize("n_shards", [1, 2, 3, 8])
@pytest.mark.parametrize("before", [Window.FINETUNE, Window.VAL, Window.TEST])
def test_plays_read_by_shard_equal_the_plays_of_every_event(written, n_shards, before):
    whole, paths = written
    shards = shards_of(paths, len(whole.ts), n_shards)
    expected, got = training_plays(whole, before), training_plays(shards, before)
    history = whole.history(before)
    dense = np.zeros((whole.n_users, whole.n_items + 1))
    np.add.at(dense, (np.repeat(np.arange(whole.n_users), history.lengths), history.items), 1)
    np.testing.assert_array_equal(expected.matrix.toarray(), dense)
    np.testing.assert_array_equal(got.matrix.toarray(), dense)
    assert got.matrix.has_sorted_indices and got.n_pairs == int((dense > 0).sum())
    np.testing.assert_array_equal(got.item_counts, dense.sum(axis=0).astype(np.int64))
    recent, end = plain_recent(whole, before)
    assert got.end == expected.end == end == whole.end_before(before)
    np.testing.assert_allclose(expected.recent, recent, rtol=1e-12)
    np.testing.assert_allclose(got.recent, recent, rtol=1e-12)


def test_stacking_carries_each_parts_decay_to_the_latest_end(written):
    whole, _ = written
    history = whole.history(Window.TEST)
    cut = whole.n_users // 3
    parts = [history.take(np.arange(cut)), history.take(np.arange(cut, whole.n_users))]
    stacked = stack_plays([plays_of(part, whole.n_items) for part in parts])
    direct = plays_of(history, whole.n_items)
    assert stacked.end == direct.end
    np.testing.assert_array_equal(stacked.matrix.toarray(), direct.matrix.toarray())
    np.testing.assert_allclose(stacked.recent, direct.recent, rtol=1e-12)
    with pytest.raises(ValueError, match="at least one part"):
        stack_plays([])


@pytest.mark.parametrize("n_shards", [2, 5])
def test_every_baseline_over_shards_equals_the_run_in_memory(written, n_shards):
    whole, paths = written
    shards = shards_of(paths, len(whole.ts), n_shards)
    users = whole.users_with_events(Window.TEST)
    users = np.random.default_rng(n_shards).permutation(users)  # rows follow the caller's order
    baselines, options = list(BASELINES.values()), BuildOptions(num_threads=1)
    memory, memory_targets = run_baselines(baselines, CFG, options, whole, users, 10, False)
    streamed, targets = run_baselines(baselines, CFG, options, shards, users, 10, False)
    expected = whole.events_in(Window.TEST).take(users)
    for got in (memory_targets, targets):
        np.testing.assert_array_equal(got.indptr, expected.indptr)
        np.testing.assert_array_equal(got.items, expected.items)
    assert list(streamed) == list(memory) == list(BASELINES)
    for name, out in streamed.items():
        want = memory[name]
        assert out["status"] == want["status"] == "ok", (name, out.get("error"))
        assert out["params"] == want["params"], name
        assert [r["ndcg@10"] for r in out["tuning"]] == pytest.approx(
            [r["ndcg@10"] for r in want["tuning"]]
        )
        assert out["tuned_on"] == want["tuned_on"]
        np.testing.assert_array_equal(out["items"], want["items"], err_msg=name)
        np.testing.assert_allclose(out["scores"], want["scores"], rtol=1e-5, err_msg=name)
    assert len(streamed["als"]["tuning"]) >= 2 and len(streamed["user_recent"]["tuning"]) == 2


def test_user_recent_answers_every_shard_at_the_tests_request_time(written):
    whole, paths = written
    shards = shards_of(paths, len(whole.ts), 4)
    users = whole.users_with_events(Window.TEST)
    model = BASELINES["user_recent"]
    outputs, _ = run_baselines([model], CFG, BuildOptions(1), shards, users, 5, False)
    fitted = model.build({"tau_days": outputs["user_recent"]["params"]["tau_days"]}, CFG, None)
    fitted.fit(whole, before=Window.TEST)
    # In memory the request time is the end of every user's history: the same for all rows.
    items, scores = fitted.recommend(whole.history(Window.TEST), users, 5)
    np.testing.assert_array_equal(outputs["user_recent"]["items"], items)
    np.testing.assert_allclose(outputs["user_recent"]["scores"], scores, rtol=1e-5)
