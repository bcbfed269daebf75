"""Batches streamed from user shards against the batches of the whole dataset in memory."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from recmodel.core.columns import Window
from recmodel.core.config import EvalConfig, QConfig, TrainConfig
from recmodel.core.dataset_io import load_dataset
from recmodel.core.user_shards import UserShards, open_user_shards
from recmodel.retriever.batches import WindowBatcher, concat_batches, make_batch, make_windows
from recmodel.retriever.distributed import DistContext
from recmodel.retriever.model import Retriever
from recmodel.retriever.shard_batches import ShardBatcher, gather_global_targets
from recmodel.retriever.train import pretrain
from recmodel.retriever.validation import (
    evaluate_retriever,
    shard_validation_set,
    validation_set,
)
from tests.helpers.retriever_data import one_thread, small_model
from tests.helpers.shard_tables import random_dataset, write_tables

MAX_LEN = 6
BATCH = 16


@pytest.fixture(scope="module", params=[0, 1])
def tables(request, tmp_path_factory):
    dataset = random_dataset(request.param, n_users=60, longest=120)
    return write_tables(dataset, tmp_path_factory.mktemp("tables"), row_group_size=41)


def open_shards(paths, n_shards: int, min_shards: int = 1) -> UserShards:
    events = load_dataset(paths["events"], paths["items"], paths["users"]).user_idx.size
    per_shard = -(-events // n_shards)
    return open_user_shards(paths["events"], paths["items"], paths["users"], per_shard, min_shards)


def window_keys(windows, ids) -> list[tuple]:
    """Each window as (user, first item's offset in the user's row, length): one identity for
    the windows of a shard and of the whole dataset."""
    return [
        (int(windows.users[i]), int(windows.starts[i] - windows.row_starts[i]), int(windows.lengths[i]))
        for i in ids
    ]  # fmt: skip


def assert_same_batch(got, expected):
    for name in ("inputs", "targets", "positions", "users"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)
    if expected.profile is None:
        assert got.profile is None
    else:
        np.testing.assert_array_equal(got.profile.items, expected.profile.items)
        np.testing.assert_array_equal(got.profile.features, expected.profile.features)


@pytest.mark.parametrize("profile_size", [0, 4])
def test_one_shard_gives_exactly_the_in_memory_batches(tables, profile_size):
    whole = load_dataset(tables["events"], tables["items"], tables["users"])
    windows = make_windows(whole.train(), MAX_LEN, profile_size, profile_history=30)
    memory = WindowBatcher(windows, BATCH, seed=3)
    streamed = ShardBatcher(
        open_shards(tables, 1), MAX_LEN, BATCH, seed=3, profile_size=profile_size,
        profile_history=30,
    )  # fmt: skip
    assert (len(streamed), streamed.n_windows, streamed.n_targets) == (
        len(memory),
        memory.n_windows,
        memory.n_targets,
    )
    for epoch in range(2):
        pairs = list(zip(streamed.epoch(epoch), memory.epoch(epoch), strict=True))
        for got, expected in pairs:
            assert_same_batch(got.local, expected.local)
            np.testing.assert_array_equal(got.global_targets, expected.global_targets)
            assert got.n_global == expected.n_global


@pytest.mark.parametrize("n_shards", [2, 3, 8])
@pytest.mark.parametrize("profile_size", [0, 4])
def test_every_window_once_per_epoch_in_full_batches(tables, n_shards, profile_size):
    whole = load_dataset(tables["events"], tables["items"], tables["users"])
    windows = make_windows(whole.train(), MAX_LEN, profile_size, profile_history=30)
    index = {key: i for i, key in enumerate(window_keys(windows, range(len(windows))))}
    shards = open_shards(tables, n_shards)
    assert shards.n_shards > 1
    batcher = ShardBatcher(
        shards, MAX_LEN, BATCH, seed=5, profile_size=profile_size, profile_history=30
    )
    shard_windows = [make_windows(shards.shard(s).train(), MAX_LEN) for s in range(shards.n_shards)]
    assert len(batcher) == len(WindowBatcher(windows, BATCH, seed=5))
    for epoch in range(2):
        steps = list(batcher.epoch(epoch))
        assert len(steps) == len(batcher)
        assert [len(s.local.windows) for s in steps[:-1]] == [BATCH] * (len(steps) - 1)
        trained = []
        for step in steps:
            # The same rows as make_batch over the in-memory windows of the same users.
            local = step.local
            ids = np.array([index[k] for k in keys_of(local, shards, shard_windows)])
            assert_same_batch(local, make_batch(windows, ids))
            np.testing.assert_array_equal(
                step.global_targets, local.targets.reshape(-1)[local.positions]
            )
            trained.extend(ids.tolist())
        assert sorted(trained) == list(range(len(windows)))  # each window exactly once


def keys_of(batch, shards, shard_windows) -> list[tuple]:
    """The (user, offset, length) of each window of a streamed batch: its id is local to the
    windows of its user's shard."""
    keys = []
    for window, user in zip(batch.windows, batch.users, strict=True):
        shard = int(np.searchsorted(shards.bounds, user, side="right") - 1)
        (local_user, *rest) = window_keys(shard_windows[shard], [window])[0]
        assert local_user + shards.users(shard)[0] == user
        keys.append((int(user), *rest))
    return keys


@pytest.mark.parametrize("world_size", [2, 3])
def test_each_rank_reads_only_its_shards(tables, world_size, monkeypatch):
    shards = open_shards(tables, 2 * world_size, min_shards=world_size)
    read: list[tuple[int, int]] = []
    per_rank = []
    for rank in range(world_size):
        batcher = ShardBatcher(shards, MAX_LEN, BATCH, seed=1, rank=rank, world_size=world_size)
        original = UserShards.shard

        def spy(self, shard, rank=rank, original=original):
            read.append((rank, shard))
            return original(self, shard)

        monkeypatch.setattr(UserShards, "shard", spy)
        steps = list(batcher.epoch(0))
        monkeypatch.setattr(UserShards, "shard", original)
        assert len(steps) == len(batcher)
        assert all(s.global_targets is None for s in steps)  # gathered by the trainer
        share = BATCH * (rank + 1) // world_size - BATCH * rank // world_size
        assert all(len(s.local.windows) == share for s in steps[:-1])
        per_rank.append(np.concatenate([s.local.users for s in steps]))
    assert read and all(shard % world_size == rank for rank, shard in read)
    # Ranks' users are disjoint: each user lives in one shard, each shard in one rank.
    users = [set(u.tolist()) for u in per_rank]
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not users[a] & users[b]


def test_too_many_ranks_for_the_windows_is_a_clear_error(tables):
    shards = open_shards(tables, 1)
    with pytest.raises(ValueError, match="rank 1 of 2 has no training window"):
        ShardBatcher(shards, MAX_LEN, BATCH, seed=0, rank=0, world_size=2)


def test_concat_batches_equals_one_make_batch():
    dataset = random_dataset(4, n_users=30)
    windows = make_windows(dataset.train(), MAX_LEN, profile_size=3, profile_history=20)
    ids = np.random.default_rng(0).permutation(len(windows))[:20]
    parts = [
        make_batch(windows, ids[:7]),
        make_batch(windows, ids[7:8]),
        make_batch(windows, ids[8:]),
    ]
    assert_same_batch(concat_batches(parts), make_batch(windows, ids))


def test_gathering_targets_in_a_group_of_one_keeps_the_step(tables):
    batcher = ShardBatcher(open_shards(tables, 2), MAX_LEN, BATCH, seed=0)
    step = next(iter(batcher.epoch(0)))
    assert gather_global_targets(step, DistContext()) is step
    unset = dataclasses.replace(step, global_targets=None, n_global=0)
    again = gather_global_targets(unset, DistContext())
    np.testing.assert_array_equal(again.global_targets, step.global_targets)
    assert again.n_global == step.n_global


@pytest.mark.parametrize("filter_seen", [False, True])
@pytest.mark.parametrize("max_users", [0, 9])
def test_the_validation_set_read_by_shard_scores_as_in_memory(tables, filter_seen, max_users):
    whole = load_dataset(tables["events"], tables["items"], tables["users"])
    memory = validation_set(whole, max_users, seed=2, filter_seen=filter_seen)
    streamed = shard_validation_set(
        open_shards(tables, 3), max_users, seed=2, filter_seen=filter_seen
    )
    np.testing.assert_array_equal(streamed.targets.items, memory.targets.items)
    np.testing.assert_array_equal(streamed.targets.indptr, memory.targets.indptr)
    rows = memory.histories.take(memory.users)
    np.testing.assert_array_equal(streamed.histories.items, rows.items)
    np.testing.assert_array_equal(streamed.histories.indptr, rows.indptr)
    torch.manual_seed(0)
    model = Retriever(whole.items, small_model(MAX_LEN, profile_size=0)).eval()
    got = evaluate_retriever(model, streamed, (5, 10), chunk_items=7)
    expected = evaluate_retriever(model, memory, (5, 10), chunk_items=7)
    assert got == expected and got["n_users"] == len(memory.users)


@pytest.mark.parametrize("filter_seen", [False, True])
def test_validation_queries_cut_to_the_plays_a_retriever_reads_score_the_same(tables, filter_seen):
    whole = load_dataset(tables["events"], tables["items"], tables["users"])
    cfg = dataclasses.replace(small_model(MAX_LEN, profile_size=3), profile_history=5)
    torch.manual_seed(1)
    model = Retriever(whole.items, cfg).eval()
    with torch.no_grad():  # every bonus on: the window's repeats and the long-term profile
        for param in model.parameters():
            param.normal_(0.0, 0.5)
    shards, read = open_shards(tables, 3), cfg.max_len + cfg.profile_history
    full = shard_validation_set(shards, 0, seed=2, filter_seen=filter_seen)
    cut = shard_validation_set(shards, 0, seed=2, filter_seen=filter_seen, keep_last=read)
    if filter_seen:  # the filter needs every played track: nothing is cut
        np.testing.assert_array_equal(cut.histories.items, full.histories.items)
    else:
        assert cut.histories.lengths.max() == read < full.histories.lengths.max()
    got = evaluate_retriever(model, cut, (5, 10), chunk_items=7)
    assert got == evaluate_retriever(model, full, (5, 10), chunk_items=7)
    assert got["n_users"] > 0


@pytest.mark.parametrize("seed", range(4))
def test_tails_keep_each_rows_last_plays_as_a_plain_loop(seed):
    whole = random_dataset(seed)
    history = whole.history(Window.TEST)
    for n in (0, 1, 7, 1_000):
        tails = history.tails(n)
        assert tails.n_users == history.n_users
        for u in range(history.n_users):
            row, ts = history.row(u), history.row_ts(u)
            keep = len(row) - min(n, len(row))
            assert tails.row(u).tolist() == row[keep:].tolist()
            assert tails.row_ts(u).tolist() == ts[keep:].tolist()


@pytest.mark.usefixtures(one_thread.__name__)
def test_pretraining_on_one_shard_trains_the_same_weights_as_in_memory(tables):
    whole = load_dataset(tables["events"], tables["items"], tables["users"])
    model = small_model(MAX_LEN, profile_size=0)
    train = TrainConfig(epochs=2, batch_size=BATCH, warmup_steps=2, n_negatives=8, device="cpu",
                        eval_users=20, patience=5)  # fmt: skip
    args = (whole.item_counts, model, train, QConfig(), EvalConfig(ks=(10,)))
    memory = pretrain(whole, *args)
    streamed = pretrain(open_shards(tables, 1), *args)
    assert [h["loss"] for h in streamed.history] == [h["loss"] for h in memory.history]
    for name, value in memory.model.state_dict().items():
        assert torch.equal(streamed.model.state_dict()[name], value), name


@pytest.mark.usefixtures(one_thread.__name__)
def test_pretraining_over_several_shards_learns(tables):
    shards = open_shards(tables, 4)
    model = small_model(MAX_LEN, profile_size=0)
    train = TrainConfig(epochs=2, batch_size=BATCH, warmup_steps=2, n_negatives=8, device="cpu")
    result = pretrain(shards, shards.item_counts, model, train, QConfig(), EvalConfig(ks=(10,)))
    losses = [h["loss"] for h in result.history]
    assert all(np.isfinite(losses)) and losses[1] < losses[0]
    assert "ndcg@10" in result.history[0]


class UnionBatcher:
    """One process's batches made of every rank's share, in rank order: what the ranks of a
    group train on together in one step."""

    def __init__(self, shards: UserShards, world_size: int, batch_size: int, seed: int):
        self.ranks = [
            ShardBatcher(shards, MAX_LEN, batch_size, seed, rank, world_size)
            for rank in range(world_size)
        ]
        self.n_windows, self.n_targets = self.ranks[0].n_windows, self.ranks[0].n_targets

    def __len__(self) -> int:
        return len(self.ranks[0])

    def epoch(self, epoch: int):
        for steps in zip(*(r.epoch(epoch) for r in self.ranks), strict=True):
            local = concat_batches([s.local for s in steps])
            targets = local.targets.reshape(-1)[local.positions]
            yield dataclasses.replace(steps[0], local=local, global_targets=targets,
                                      n_global=len(targets))  # fmt: skip


DDP_TRAIN = TrainConfig(
    epochs=2, batch_size=BATCH, lr=1e-2, sparse_lr=3e-2, warmup_steps=2, n_negatives=8,
    negatives="both", device="cpu", eval_users=20, patience=5,
)  # fmt: skip
DDP_SHARDS = 4


def ddp_state(paths: dict, world_size: int) -> dict[str, torch.Tensor]:
    shards = open_shards(paths, DDP_SHARDS, min_shards=world_size)
    model = small_model(MAX_LEN, profile_size=0)
    args = (shards.item_counts, model, DDP_TRAIN, QConfig(), EvalConfig(ks=(10,)))
    result = pretrain(shards, *args)
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def shard_rank_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import json
    import os

    import torch.distributed as dist
    from safetensors.torch import save_file

    from tests.helpers.gloo_group import join_gloo_group

    paths = {k: Path(v) for k, v in json.loads(Path(out_dir, "paths.json").read_text()).items()}
    join_gloo_group(rank, world_size, port)
    try:
        save_file(ddp_state(paths, world_size), os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_on_their_own_shards_train_as_one_process_on_both(tmp_path, monkeypatch):
    import json

    from safetensors.torch import load_file

    import recmodel.retriever.train as train_module
    from tests.helpers.gloo_group import spawn_ranks

    torch.set_num_threads(1)
    paths = write_tables(random_dataset(7, n_users=60, longest=120), tmp_path / "tables", 41)
    (tmp_path / "paths.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    spawn_ranks(shard_rank_worker, 2, str(tmp_path), monkeypatch)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]

    shards = open_shards(paths, DDP_SHARDS, min_shards=2)
    union = UnionBatcher(shards, 2, BATCH, DDP_TRAIN.seed)
    monkeypatch.setattr(train_module, "_batcher", lambda *args: union)
    monkeypatch.setattr(train_module, "validation_set_of", lambda dataset, cfg, cfg_eval, read:
                        shard_validation_set(dataset, cfg.eval_users, cfg.seed))  # fmt: skip
    single = ddp_state(paths, world_size=1)
    for name, expected in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.allclose(ranks[0][name], expected, rtol=1e-4, atol=1e-5), name
