"""TwoStageFlow: a two-stage transformer retriever for music recommendations.

Run ``python flows/two_stage.py run`` (built-in synthetic data, ``default`` preset) or
``python flows/two_stage.py run --preset tiny --events PATH [--items PATH] [--source KIND]``.
Every step is one call into :mod:`recmodel.steps`; see README.md for the protocol. Each step
stores a ``summary`` artifact (a small JSON text for the Metaflow UI) and a card with an id.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Metaflow's local @parallel starts the other nodes' tasks with `python` from PATH: make that
# this interpreter, so that a virtual environment need not be activated (train.nodes > 1).
_BIN, _PATH = os.path.dirname(sys.executable), os.environ.get("PATH", "")
if _PATH.split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = os.pathsep.join([_BIN, _PATH])

from metaflow import (  # noqa: E402
    Config,
    FlowSpec,
    JSONType,
    Parameter,
    card,
    current,
    package_sources,
    parallel,
    project,
    resources,
    retry,
    schedule,
    step,
    timeout,
)

from recmodel.core.logs import setup_logging  # noqa: E402 (after the path above)
from recmodel.core.presets import parse_resources  # noqa: E402

setup_logging()  # progress and results on the tasks' stdout, errors on their stderr


@project(name="music_retriever")
@schedule(daily=True)
# Remote steps (Argo, Step Functions, --with kubernetes) unpack the code package: it must
# carry the package, the SQL files and the presets, not only this file.
@package_sources(["../recmodel", "../sql", "../configs"], suffixes=[".py", ".sql", ".toml"])
class TwoStageFlow(FlowSpec):
    """Extract sessions, pretrain with logQ-corrected sampled softmax, distil a ranker, compare.

    ::

                              start
                                |
                         partition_events           the raw events, a folder per user shard
                                |   foreach user shard (extract.shards, 1 by default),
                                |   each round's shards gathered, then merged:
             shard_sessions -> gather_sessions -> split_times     (sessions | split times)
                shard_split -> gather_split    -> kept_items      (windows  | kept tracks)
               shard_filter -> gather_filter   -> vocabularies    (filter   | vocabularies)
                shard_final -> extract_sessions                   (events   | tables, summary)
                                |
                            estimate_q
                 /              |               \\
          pretrain_nodes    no_logq_nodes        |      on train.nodes machines (1 by default)
                |               |                |      (@parallel: one data-parallel rank each)
            pretrain     pretrain_no_logq     baselines
                |               |                |
          pretrain_gather  no_logq_gather        |      the first node's checkpoint and results
                |               |                |
     materialize_ranker_scores  |                |
                |               |                |
            finetune            |                |
                 \\              |               /
                               join
                                |
                              report
                                |
                               end
    """

    # The pods of every step (CPUs, memory, disk, GPUs) from a preset's [resources] table,
    # fixed when the run starts or the flow is deployed: the default preset's, or another's with
    # ``python flows/two_stage.py --config-value resources large run --preset large``.
    pods = Config(
        "resources",
        default_value="default",
        parser=parse_resources,
        help="Preset whose [resources] size the steps' pods (a name in configs/ or a path).",
    )

    preset = Parameter(
        "preset",
        default="default",
        help="Preset name in configs/ (tiny, default, large) or a TOML path.",
    )
    events = Parameter(
        "events",
        default="",
        help="Events file, glob or directory; empty = built-in synthetic data.",
    )
    items = Parameter("items", default="", help="Optional item metadata table.")
    source = Parameter(
        "source",
        default="canonical",
        help="Input layout: canonical, yambda, lastfm1k or movielens.",
    )
    ranker_scores_path = Parameter(
        "ranker-scores",
        default="",
        help="A production ranker's scores (user_id, item_id, "
        "request_ts, score) used instead of the built-in ranker.",
    )
    overrides = Parameter(
        "overrides",
        type=JSONType,
        default="{}",
        help='Preset overrides as JSON, e.g. \'{"train": {"epochs": 2}}\'.',
    )
    warm_start = Parameter(
        "warm-start",
        default="",
        help="Start pretraining from a past run: latest, champion or a run "
        "id (known tracks keep their vectors); empty = from scratch.",
    )

    @card(type="blank", id="inputs")
    @resources(**pods.steps.start)
    @step
    def start(self):
        """Resolve the configuration and validate the input before anything expensive."""
        from recmodel.steps.cards import inputs_card
        from recmodel.steps.data import resolve_warm_start, run_tags, start, tag_run
        from recmodel.steps.summaries import start_summary

        resolved = start(
            self.preset,
            self.overrides,
            self.source,
            self.events,
            self.items,
            self.ranker_scores_path,
            pods=json.loads(json.dumps(self.pods)),  # a plain dict of the Config's value
        )
        self.config, self.inputs, self.input_checks = resolved
        self.warm_start_run = resolve_warm_start(self.warm_start, current.flow_name)
        tags = tag_run(current.flow_name, current.run_id, run_tags(self.config, self.inputs))
        described = (self.config, self.inputs, self.input_checks)
        self.summary = start_summary(*described, self.warm_start_run, tags)
        inputs_card(current.card["inputs"], *described, tags, self.warm_start_run)
        self.next(self.partition_events)

    @retry(times=2)
    @resources(**pods.steps.extract_sessions)
    @step
    def partition_events(self):
        """Plan the extraction: the built-in log generated once, the log's end, and the raw
        events written once into a folder per user shard (extract.shards)."""
        from recmodel.steps.common import RunTables, record_queries
        from recmodel.steps.data import plan_extraction
        from recmodel.steps.summaries import shards_summary

        tables = RunTables(self)
        self.extract_plan, queries = plan_extraction(self.config, self.inputs, tables)
        self.extract_queries = record_queries(None, queries, tables)
        self.extract_shards = self.extract_plan["shards"]
        self.summary = shards_summary(-1, queries)
        self.next(self.shard_sessions, foreach="extract_shards")

    # Extraction over user shards (recmodel.ingest.sharded): four rounds of per-user SQL, one
    # foreach task per shard; after each, a join gathers the shards and the next step runs the
    # round's global SQL over every shard's tables (Metaflow lets no join fan out again).
    # Every task of it gets extract_sessions's pod.

    @retry(times=2)
    @resources(**pods.steps.extract_sessions)
    @step
    def shard_sessions(self):
        """Round 1 on one user shard: clean the events and cut them into sessions."""
        self._extract_shard(0)
        self.next(self.gather_sessions)

    @step
    def gather_sessions(self, inputs):
        """The shards of round 1, gathered."""
        self._gather_shards(inputs, 0)
        self.next(self.split_times)

    @resources(**pods.steps.extract_sessions)
    @step
    def split_times(self):
        """Round 1's merge: the split times, from every shard's sessions."""
        self._merge_shards(0)
        self.next(self.shard_split, foreach="extract_shards")

    @retry(times=2)
    @resources(**pods.steps.extract_sessions)
    @step
    def shard_split(self):
        """Round 2 on one user shard: label each event with its split window."""
        self._extract_shard(1)
        self.next(self.gather_split)

    @step
    def gather_split(self, inputs):
        """The shards of round 2, gathered."""
        self._gather_shards(inputs, 1)
        self.next(self.kept_items)

    @resources(**pods.steps.extract_sessions)
    @step
    def kept_items(self):
        """Round 2's merge: the tracks frequent enough to be modelled."""
        self._merge_shards(1)
        self.next(self.shard_filter, foreach="extract_shards")

    @retry(times=2)
    @resources(**pods.steps.extract_sessions)
    @step
    def shard_filter(self):
        """Round 3 on one user shard: the users with enough history, their kept events."""
        self._extract_shard(2)
        self.next(self.gather_filter)

    @step
    def gather_filter(self, inputs):
        """The shards of round 3, gathered."""
        self._gather_shards(inputs, 2)
        self.next(self.vocabularies)

    @resources(**pods.steps.extract_sessions)
    @step
    def vocabularies(self):
        """Round 3's merge: the track and user vocabularies."""
        self._merge_shards(2)
        self.next(self.shard_final, foreach="extract_shards")

    @retry(times=2)
    @resources(**pods.steps.extract_sessions)
    @step
    def shard_final(self):
        """Round 4 on one user shard: final events, test targets and summary counts."""
        self._extract_shard(3)
        self.next(self.extract_sessions)

    def _extract_shard(self, round_index):
        from recmodel.steps.common import RunTables
        from recmodel.steps.data import extract_shard
        from recmodel.steps.summaries import shards_summary

        queries = extract_shard(self.config, self.extract_plan, round_index, self.input)
        self.shard_queries = RunTables(self).write_json(queries, f"sql_queries_{self.input}")
        self.summary = shards_summary(round_index, queries, self.input)

    def _gather_shards(self, inputs, round_index):
        """Carry the run's artifacts through a shards' join, with every shard's queries."""
        from recmodel.core.files import read_json
        from recmodel.steps.common import RunTables, record_queries
        from recmodel.steps.summaries import shards_summary

        self.merge_artifacts(inputs, exclude=["shard_queries", "summary"])
        gathered = [query for task in inputs for query in read_json(task.shard_queries)]
        self.extract_queries = record_queries(self.extract_queries, gathered, RunTables(self))
        self.summary = shards_summary(round_index, gathered)

    def _merge_shards(self, round_index):
        from recmodel.steps.common import RunTables, record_queries
        from recmodel.steps.data import merge_shards
        from recmodel.steps.summaries import shards_summary

        merged = merge_shards(self.config, self.extract_plan, round_index)
        self.extract_queries = record_queries(self.extract_queries, merged, RunTables(self))
        self.summary = shards_summary(round_index, merged)

    @card(type="blank", id="data")
    @retry(times=2)
    @timeout(hours=4)
    @resources(**pods.steps.extract_sessions)
    @step
    def extract_sessions(self, inputs):
        """DuckDB SQL, last merge: the summary and the Dataset's tables from every shard."""
        from recmodel.steps.cards import data_card
        from recmodel.steps.common import RunTables, record_queries
        from recmodel.steps.data import finish_extraction
        from recmodel.steps.summaries import extract_summary

        self._gather_shards(inputs, 3)
        tables = RunTables(self)
        self.tables, queries, self.data_summary = finish_extraction(
            self.config, self.inputs, self.extract_plan, tables
        )
        self.sql_queries = record_queries(self.extract_queries, queries, tables)
        self.test_targets = self.tables["test_targets"]
        self.summary = extract_summary(self.data_summary, self.tables)
        data_card(current.card["data"], self.data_summary)
        self.next(self.estimate_q)

    @card(type="blank", id="q")
    @resources(**pods.steps.estimate_q)
    @step
    def estimate_q(self):
        """The Q table: smoothed item frequencies that negatives are drawn from."""
        from recmodel.steps.common import RunTables, record_queries
        from recmodel.steps.data import estimate_q
        from recmodel.steps.summaries import q_summary

        tables = RunTables(self)
        self.item_frequency, self.q_summary, q_queries = estimate_q(
            self.config, self.tables, tables, current.card["q"]
        )
        self.sql_queries = record_queries(self.sql_queries, q_queries, tables)
        self.summary = q_summary(self.q_summary)
        self.next(self.pretrain_nodes, self.no_logq_nodes, self.baselines)

    @step
    def pretrain_nodes(self):
        """Start ``pretrain`` on ``train.nodes`` machines, one data-parallel group."""
        self._start_nodes("pretrain")
        self.next(self.pretrain, num_parallel=self.nodes)

    @card(type="blank", id="training", refresh_interval=5)
    @parallel
    @retry(times=1)
    @timeout(hours=12)
    @resources(**pods.steps.pretrain)
    @step
    def pretrain(self):
        """Pretrain the retriever on next-item prediction, sampled softmax with logQ correction."""
        from recmodel.steps.common import RunTables
        from recmodel.steps.models import SASREC, node_of, pretrain
        from recmodel.steps.summaries import training_summary

        node = node_of(current.parallel)
        self.node = node.index
        self.pretrain_checkpoint, self.pretrain_results = pretrain(
            self.config,
            self.tables,
            self.item_frequency,
            RunTables(self),
            current.card["training"],
            self.warm_start_run,
            model=SASREC,
            node=node,
        )
        self.summary = training_summary(self.pretrain_results, node=node)
        self.next(self.pretrain_gather)

    @step
    def pretrain_gather(self, inputs):
        """The group's checkpoint and results: the first node's (every node trained them)."""
        self._first_node(inputs, "pretrain_checkpoint", "pretrain_results")
        self.next(self.materialize_ranker_scores)

    def _start_nodes(self, step_name):
        from recmodel.steps.models import training_nodes
        from recmodel.steps.summaries import nodes_summary

        self.nodes = training_nodes(self.config)
        self.summary = nodes_summary(step_name, self.nodes)

    def _first_node(self, inputs, checkpoint, results):
        from recmodel.steps.models import first_node

        self.merge_artifacts(inputs, exclude=[checkpoint, results, "summary", "node"])
        first = first_node(inputs)
        for name in (checkpoint, results, "summary"):
            setattr(self, name, getattr(first, name))

    @step
    def no_logq_nodes(self):
        """Start ``pretrain_no_logq`` on ``train.nodes`` machines, one data-parallel group."""
        self._start_nodes("pretrain_no_logq")
        self.next(self.pretrain_no_logq, num_parallel=self.nodes)

    @card(type="blank", id="training", refresh_interval=5)
    @parallel
    @retry(times=1)
    @timeout(hours=12)
    @resources(**pods.steps.pretrain_no_logq)
    @step
    def pretrain_no_logq(self):
        """The single-stage baseline: the same model and budget without logQ correction."""
        from recmodel.steps.common import RunTables
        from recmodel.steps.models import NO_LOGQ, node_of, pretrain
        from recmodel.steps.summaries import training_summary

        node = node_of(current.parallel)
        self.node = node.index
        self.no_logq_checkpoint, self.no_logq_results = pretrain(
            self.config,
            self.tables,
            self.item_frequency,
            RunTables(self),
            current.card["training"],
            self.warm_start_run,
            model=NO_LOGQ,
            node=node,
        )
        self.summary = training_summary(self.no_logq_results, node=node)
        self.next(self.no_logq_gather)

    @step
    def no_logq_gather(self, inputs):
        """The group's checkpoint and results: the first node's (every node trained them)."""
        self._first_node(inputs, "no_logq_checkpoint", "no_logq_results")
        self.next(self.join)

    @card(type="blank", id="baselines")
    @timeout(hours=6)
    @resources(**pods.steps.baselines)
    @step
    def baselines(self):
        """Popularity, the user's own favourites, item-kNN and implicit ALS."""
        from recmodel.steps.cards import results_card
        from recmodel.steps.common import RunTables
        from recmodel.steps.models import baselines
        from recmodel.steps.summaries import STEP_METRICS, models_summary

        self.baseline_results = baselines(self.config, self.tables, RunTables(self))
        self.summary = models_summary(self.baseline_results, STEP_METRICS)
        results_card(current.card["baselines"], "Baselines", self.baseline_results)
        self.next(self.join)

    @card(type="blank", id="ranker")
    @resources(**pods.steps.materialize_ranker_scores)
    @step
    def materialize_ranker_scores(self):
        """Score the retriever's candidates with the ranker (or import a production table)."""
        from recmodel.steps.cards import ranker_card
        from recmodel.steps.common import RunTables, record_queries
        from recmodel.steps.distill import materialize_ranker_scores
        from recmodel.steps.summaries import ranker_summary

        tables = RunTables(self)
        self.ranker_scores, self.ranker_quality, self.ranker, queries = materialize_ranker_scores(
            self.config, self.inputs, self.tables, self.pretrain_checkpoint, tables
        )
        self.sql_queries = record_queries(self.sql_queries, queries, tables)
        self.summary = ranker_summary(self.ranker_quality, self.ranker_scores)
        ranker_card(current.card["ranker"], self.ranker_quality)
        self.next(self.finetune)

    @card(type="blank", id="training", refresh_interval=5)
    @retry(times=1)
    @timeout(hours=6)
    @resources(**pods.steps.finetune)
    @step
    def finetune(self):
        """Distil the ranker into the retriever with the pairwise logit loss."""
        from recmodel.steps.common import RunTables
        from recmodel.steps.distill import finetune
        from recmodel.steps.summaries import training_summary

        self.finetune_checkpoint, self.finetune_results, self.distillation = finetune(
            self.config,
            self.tables,
            self.item_frequency,
            self.pretrain_checkpoint,
            self.ranker_scores,
            self.ranker,
            RunTables(self),
            current.card["training"],
        )
        self.summary = training_summary(self.finetune_results, {"distillation": self.distillation})
        self.next(self.join)

    @card(type="blank", id="results")
    @resources(**pods.steps.join)
    @step
    def join(self, inputs):
        """Gather every branch's results into one dict and one recommendations table."""
        from recmodel.steps.cards import results_card
        from recmodel.steps.common import RunTables
        from recmodel.steps.join import join_recommendations, merge_results, train_history
        from recmodel.steps.summaries import STEP_METRICS, models_summary

        self.merge_artifacts(
            inputs,
            include=[
                "config",
                "inputs",
                "input_checks",
                "tables",
                "data_summary",
                "test_targets",
                "item_frequency",
                "q_summary",
                "warm_start_run",
            ],
        )
        second_stage = inputs.finetune
        self.sql_queries = second_stage.sql_queries  # the branch that ran every query
        self.pretrain_checkpoint = second_stage.pretrain_checkpoint
        self.finetune_checkpoint = second_stage.finetune_checkpoint
        self.no_logq_checkpoint = inputs.no_logq_gather.no_logq_checkpoint
        self.ranker_scores = second_stage.ranker_scores
        self.ranker_quality = second_stage.ranker_quality
        self.distillation = second_stage.distillation
        self.model_results = merge_results(
            inputs.baselines.baseline_results,
            inputs.no_logq_gather.no_logq_results,
            second_stage.pretrain_results,
            second_stage.finetune_results,
        )
        self.train_history = train_history(self.model_results)
        self.recommendations = join_recommendations(self.model_results, RunTables(self))
        self.summary = models_summary(self.model_results, STEP_METRICS)
        results_card(current.card["results"], "Every model", self.model_results)
        self.next(self.report)

    @card(type="blank", id="report")
    @resources(**pods.steps.report)
    @step
    def report(self):
        """Recall@k and NDCG@k of every model on the same test users, with intervals."""
        from recmodel.steps.common import RunTables
        from recmodel.steps.report import report
        from recmodel.steps.summaries import report_summary

        # The artifact shares its name with this step (DESIGN.md §4): later steps read it through
        # the Client API, where ``task["report"]`` is the artifact, not the method.
        self.report, self.report_files = report(
            self.config,
            self.tables,
            self.recommendations,
            self.model_results,
            self.data_summary,
            self.distillation,
            self.ranker_quality,
            RunTables(self),
            current.card["report"],
        )
        self.summary = report_summary(self.report, self.report_files)
        self.next(self.end)

    @card(type="blank", id="champion")
    @resources(**pods.steps.end)
    @step
    def end(self):
        """Export the retriever for serving, then gate it against the branch's champion."""
        from recmodel.steps.cards import champion_card
        from recmodel.steps.common import RunTables
        from recmodel.steps.data import run_tags, tag_run
        from recmodel.steps.publish import export_serving, gate_champion
        from recmodel.steps.report import log_summary
        from recmodel.steps.summaries import end_summary

        # Again here: a resumed run reuses the start of the run it resumes, tags not included.
        tag_run(current.flow_name, current.run_id, run_tags(self.config, self.inputs))
        headline = self.summary  # the report step's summary, before this step's own
        self.serving = export_serving(self.finetune_checkpoint, self.tables, RunTables(self))
        # Both models on this run's test users; ``self.report`` is the step method here, so the
        # report artifact is read through the Client API.
        self.champion_decision = gate_champion(
            self.config, self.tables, self.recommendations, current.flow_name, current.run_id
        )
        self.summary = end_summary(self.serving, self.champion_decision, self.report_files)
        champion_card(
            current.card["champion"], self.champion_decision, self.serving, self.report_files
        )
        log_summary(self.report_files, headline)


if __name__ == "__main__":
    TwoStageFlow()
