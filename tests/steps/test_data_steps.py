"""The data steps stop a run on bad input before any training, and say where it is."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recmodel.core.errors import InputError
from recmodel.core.presets import load_preset, with_overrides
from recmodel.steps.common import RunTables
from recmodel.steps.data import extract_sessions, start
from recmodel.synthetic.generator import generate

SMALL = {"synthetic": {"n_users": 120, "n_tracks": 500, "n_artists": 50}}


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    cfg = with_overrides(load_preset("tiny"), SMALL).synthetic
    return generate(cfg, tmp_path_factory.mktemp("log"))


def test_ranker_scores_of_users_not_in_the_data_stop_extraction(tmp_path, log):
    item = pq.read_table(log.items, columns=["item_id"])["item_id"][0].as_py()
    scores = tmp_path / "scores.parquet"
    pq.write_table(
        pa.table({"user_id": [10**9], "item_id": [item], "request_ts": [0], "score": [1.0]}), scores
    )
    config, inputs, checks = start(
        "tiny", {}, "canonical", str(log.events), str(log.items), str(scores)
    )
    assert checks["ranker_scores"]["rows"] == 1  # the file itself is well formed
    with pytest.raises(InputError) as info:
        extract_sessions(config, inputs, RunTables(root=str(tmp_path / "run")))
    message = str(info.value)
    assert f"ranker scores {str(scores)!r}, column 'user_id': 1 of 1 rows" in message
    assert "not in the extracted data (e.g. '1000000000')" in message
    assert not (tmp_path / "run").exists()  # nothing published


def test_a_bad_setting_stops_start_with_its_key(log):
    with pytest.raises(Exception, match=r"train.epochs must be an integer, got '3'"):
        start("tiny", {"train": {"epochs": "3"}}, "canonical", str(log.events), "", "")


def test_extraction_over_user_shards_publishes_the_same_tables(tmp_path, log):
    """``extract.shards`` changes how the step runs, not what it publishes."""
    published = {}
    for shards in (1, 3):
        config, inputs, _ = start(
            "tiny",
            {"extract": {"shards": shards}},
            "canonical",
            str(log.events),
            str(log.items),
            "",
        )
        root = tmp_path / f"shards-{shards}"
        refs, queries, summary = extract_sessions(config, inputs, RunTables(root=str(root)))
        published[shards] = {name: pq.read_table(ref["uri"]) for name, ref in refs.items()}
        assert summary.get("shards", 1) == shards
        assert {q.get("shard") for q in queries} == ({None} if shards == 1 else {None, 0, 1, 2})
    for name, table in published[1].items():
        assert published[3][name].cast(table.schema).equals(table), name
