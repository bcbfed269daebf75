"""The retriever: shapes, causality, padding, metadata, user vectors and top-k vs brute force."""

import dataclasses

import numpy as np
import pytest
import torch

from recmodel.core.config import ModelConfig
from recmodel.retriever.batches import PAD
from recmodel.retriever.model import Retriever, ScoringHead, attention_mask
from tests.helpers.retriever_data import item_features, one_thread, user_items

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
N_ITEMS = 30
CFG = ModelConfig(d_model=16, n_blocks=2, n_heads=2, max_len=8, dropout=0.0, id_dim=8, meta_dim=4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Retriever(item_features(N_ITEMS), CFG).eval()


def random_inputs(batch, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, N_ITEMS + 1, (batch, width), generator=g)


def test_shapes(model):
    inputs = random_inputs(3, 5)
    assert model(inputs).shape == (3, 5, CFG.d_model)
    assert model.item_vectors(inputs).shape == (3, 5, CFG.d_model)
    all_vecs = model.tower.all_item_vectors(chunk=7)
    assert all_vecs.shape == (N_ITEMS + 1, CFG.d_model)
    assert torch.allclose(all_vecs, model.item_vectors(torch.arange(N_ITEMS + 1)), atol=1e-6)
    with pytest.raises(AssertionError):
        model(random_inputs(2, CFG.max_len + 1))


def test_encode_equals_separate_passes_values_and_gradients():
    """One tower pass over distinct ids gives the values and gradients of two separate passes."""
    torch.manual_seed(3)
    model = Retriever(item_features(N_ITEMS), CFG).train()  # dropout is 0: deterministic
    inputs = random_inputs(4, CFG.max_len, seed=4)
    inputs[0, :3] = PAD  # padding goes through the tower in both versions
    ids = torch.cat([inputs[:, -1], random_inputs(1, 9, seed=5)[0]])  # repeats and new ids
    weights = torch.randn(CFG.d_model, generator=torch.Generator().manual_seed(6))

    def loss_and_grads(fn):
        model.zero_grad()
        hidden, vectors = fn()
        ((hidden @ weights).square().sum() + (vectors @ weights).exp().sum()).backward()
        grads = {}
        for name, p in model.named_parameters():
            if p.grad is not None:
                grads[name] = p.grad.to_dense() if p.grad.is_sparse else p.grad.clone()
        return hidden.detach(), vectors.detach(), grads

    fused = loss_and_grads(lambda: model.encode(inputs, ids))
    separate = loss_and_grads(lambda: (model(inputs), model.item_vectors(ids)))
    assert torch.allclose(fused[0], separate[0], atol=1e-5)
    assert torch.allclose(fused[1], separate[1], atol=1e-5)
    assert fused[2].keys() == separate[2].keys() and len(fused[2]) > 10
    for name, grad in separate[2].items():
        assert torch.allclose(fused[2][name], grad, atol=1e-4), name


def test_attention_mask_exact():
    valid = torch.tensor([[False, True, True]])
    expected = [[1, 0, 0], [0, 1, 0], [0, 1, 1]]  # padding query 0 sees only itself
    assert attention_mask(valid)[0, 0].int().tolist() == expected


def test_causal_future_tokens_do_not_change_earlier_states(model):
    inputs = random_inputs(4, CFG.max_len, seed=1)
    changed = inputs.clone()
    changed[:, 5] = changed[:, 5] % N_ITEMS + 1
    before, after = model(inputs), model(changed)
    assert torch.allclose(before[:, :5], after[:, :5], atol=1e-6)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_left_padding_does_not_change_real_positions(model):
    seq = random_inputs(1, 5, seed=2)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], dim=1)  # [1, 8]
    assert torch.allclose(model(seq), model(padded)[:, 3:], atol=1e-5)
    # Another row of padding in the same batch does not change this row either.
    batch = torch.cat([padded, torch.zeros(1, 8, dtype=torch.long)])
    assert torch.allclose(model(batch)[0, 3:], model(seq)[0], atol=1e-5)


def test_all_padding_sequence_is_finite(model):
    hidden = model(torch.zeros(2, CFG.max_len, dtype=torch.long))
    assert torch.isfinite(hidden).all()


def test_item_vector_uses_metadata():
    feats = item_features(N_ITEMS)
    torch.manual_seed(0)
    base = Retriever(feats, CFG).eval()
    other_artist = feats.artist.copy()
    other_artist[3] = (other_artist[3] + 1) % feats.cardinalities["artist"]
    changed = Retriever(dataclasses.replace(feats, artist=other_artist), CFG).eval()
    changed.load_state_dict(base.state_dict())
    ids = torch.arange(N_ITEMS + 1)
    diff = (base.item_vectors(ids) - changed.item_vectors(ids)).abs().sum(1)
    assert diff[3] > 0 and torch.all(diff[torch.arange(N_ITEMS + 1) != 3] == 0)


def test_unknown_acoustic_vector_is_ignored():
    feats = item_features(N_ITEMS)
    unknown = int(np.flatnonzero(~feats.has_acoustic[1:])[0]) + 1
    noisy = feats.acoustic.copy()
    noisy[unknown] = 100.0
    torch.manual_seed(0)
    base = Retriever(feats, CFG).eval()
    changed = Retriever(dataclasses.replace(feats, acoustic=noisy), CFG).eval()
    changed.load_state_dict(base.state_dict())
    ids = torch.tensor([unknown])
    assert torch.equal(base.item_vectors(ids), changed.item_vectors(ids))


def test_metadata_buffers_move_but_are_not_checkpointed(model):
    names = {name for name, _ in model.named_buffers()}
    assert {"tower.artist_codes", "tower.acoustic_values"} <= names
    assert not names & set(model.state_dict())


def test_sparse_and_dense_parameters_partition_the_model(model):
    sparse, dense = model.sparse_parameters(), model.dense_parameters()
    assert len(sparse) == 5  # id + artist, album, genre, tempo
    assert {id(p) for p in sparse}.isdisjoint(id(p) for p in dense)
    assert len(sparse) + len(dense) == len(list(model.parameters()))


def test_scoring_head_exact():
    h = torch.tensor([[3.0, 4.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert ScoringHead(False, 1.0)(h, v).tolist() == [[3.0, 8.0]]
    assert torch.allclose(ScoringHead(True, 0.5)(h, v), torch.tensor([[1.2, 1.6]]))
    assert torch.allclose(ScoringHead(True, 0.5).pairwise(h, v[1:]), torch.tensor([1.6]))


def test_user_vectors_match_one_sequence_at_a_time(model):
    rows = [[1, 2, 3], [], list(range(1, 13)), [7]]
    histories = user_items(rows)
    users = np.array([2, 0, 1, 3, 2])
    got = model.user_vectors(histories, users, batch_size=2)
    assert got.shape == (5, CFG.d_model) and torch.isfinite(got).all()
    for i, user in enumerate(users):
        seq = rows[user][-CFG.max_len :] or [PAD]  # an empty history is one padding token
        expected = model(torch.tensor([seq]))[0, -1]
        assert torch.allclose(got[i], expected, atol=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_recommend_matches_brute_force(normalize):
    cfg = dataclasses.replace(CFG, normalize=normalize, temperature=0.5 if normalize else 1.0)
    torch.manual_seed(1)
    model = Retriever(item_features(N_ITEMS), cfg).eval()
    rng = np.random.default_rng(0)
    histories = user_items(
        [rng.integers(1, N_ITEMS + 1, rng.integers(0, 12)).tolist() for _ in range(9)]
    )
    users = np.array([0, 3, 5, 8])
    exclude = user_items([[1, 2], [], [5], list(range(1, 20))])
    ids, scores = model.recommend(histories, users, k=6, exclude=exclude, chunk_items=7)
    items = model.item_vectors(torch.arange(1, N_ITEMS + 1))  # [N, D]
    with torch.no_grad():
        logits = model.head(model.user_vectors(histories, users), items)  # [U, N]
    for row in range(len(users)):
        order = sorted(
            (i for i in range(1, N_ITEMS + 1) if i not in exclude.row(row)),
            key=lambda i, r=row: -logits[r, i - 1].item(),
        )
        assert ids[row].tolist() == order[:6]
        assert np.allclose(scores[row], logits[row, np.array(order[:6]) - 1].numpy(), atol=1e-5)
