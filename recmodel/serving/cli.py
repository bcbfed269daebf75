"""Command line over any past run, through the Metaflow Client API.

::

    python -m recmodel recommend --run latest --user U -k 20 [--flow TwoStageFlow]
    python -m recmodel report --run latest
    python -m recmodel export --run champion --out serving/
    python -m recmodel champion [--promote RUN | --revoke RUN]

``--run`` takes ``latest`` (latest successful run), ``champion``, a run id or a pathspec; every
artifact a command reads comes from that one run. Runs are looked up in the current Metaflow
namespace (``--namespace global`` searches all of them). ``champion`` shows the current champion
and its gate's decision; ``--promote`` and ``--revoke`` change it by hand.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recmodel.core.columns import Columns, Window

Artifacts = Callable[[str], Any]  # artifact name -> its value in the chosen run
CHECKPOINTS = {
    "finetune": "finetune_checkpoint",
    "pretrain": "pretrain_checkpoint",
    "no_logq": "no_logq_checkpoint",
}
AS_OF = {
    "end": max(Window.NAMES) + 1,
    **{name: code for code, name in Window.NAMES.items() if code > Window.PRETRAIN},
}
REPORT_METRICS = ("ndcg@10", "recall@10", "recall@100", "coverage@100")
RECOMMEND_HEADERS = (
    "rank",
    "item_id",
    "score",
    "heard",
    "plays",
    "artist",
    "album",
    "genre",
    "tempo",
)
USAGE_ERRORS = (LookupError, ValueError)  # reported as one line, exit status 1


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recmodel", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    flow = argparse.ArgumentParser(add_help=False)
    flow.add_argument("--flow", default="TwoStageFlow", help="flow name (default TwoStageFlow)")
    flow.add_argument(
        "--namespace",
        default=None,
        help="Metaflow namespace to search ('global' for every namespace)",
    )
    run = argparse.ArgumentParser(add_help=False, parents=[flow])
    run.add_argument(
        "--run", default="latest", help="latest, champion, a run id or a Flow/run_id pathspec"
    )
    rec = commands.add_parser("recommend", parents=[run], help="a listener's recommendations")
    rec.add_argument("--user", required=True, help="original user_id")
    rec.add_argument("-k", type=positive_int, default=20, help="tracks to list (default 20)")
    rec.add_argument(
        "--model",
        choices=sorted(CHECKPOINTS),
        default="finetune",
        help="which checkpoint of the run (default finetune)",
    )
    rec.add_argument(
        "--as-of",
        choices=list(AS_OF),
        default="end",
        help="history: every event (end) or the events before a window",
    )
    rec.add_argument("--filter-seen", action="store_true", help="skip tracks already heard")
    commands.add_parser("report", parents=[run], help="where the report is, and its headline")
    exp = commands.add_parser("export", parents=[run], help="write the serving files")
    exp.add_argument("--out", required=True, help="output directory")
    exp.add_argument("--model", choices=sorted(CHECKPOINTS), default="finetune")
    champ = commands.add_parser(
        "champion", parents=[flow], help="the current champion; promote or revoke a run by hand"
    )
    by_hand = champ.add_mutually_exclusive_group()
    by_hand.add_argument("--promote", metavar="RUN", help="make RUN the champion by hand")
    by_hand.add_argument(
        "--revoke", metavar="RUN", help="RUN stops being champion (the one before it is current)"
    )
    return parser


def use_namespace(args: argparse.Namespace) -> None:
    import metaflow

    if args.namespace is not None:
        metaflow.namespace(None if args.namespace == "global" else args.namespace)


def open_run(args: argparse.Namespace) -> tuple[str, Artifacts]:
    """Resolve ``--run`` once; return its pathspec and a loader of its artifacts."""
    from recmodel.core.tables import load_artifact
    from recmodel.serving.champion import resolve_run

    use_namespace(args)
    run = resolve_run(args.run, args.flow)
    return run.pathspec, lambda name: load_artifact(name, run, flow=args.flow, as_table=False)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: numbers right-aligned (floats with 4 decimals), text left-aligned."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def find_user(users: pa.Table, user: str) -> int:
    """``user_idx`` of the original id ``user`` (parsed to the table's id type).

    Raises:
        LookupError: the run has no such user.
    """
    ids = users.column(Columns.USER)
    value: Any = user
    if pa.types.is_integer(ids.type):
        try:
            value = int(user)
        except ValueError:
            raise LookupError(f"user ids of this run are integers, got {user!r}") from None
    hit = users.filter(pc.equal(ids, pa.scalar(value, ids.type)))
    if hit.num_rows == 0:
        raise LookupError(f"user {user!r} is not among the run's {users.num_rows} users")
    return int(hit.column(Columns.USER_IDX)[0].as_py())


def user_history(events_uri: str, user_idx: int, before: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 ``(items [L], ts [L])`` of one user's events in windows ``< before``, in time order.

    Reads only the user's rows (a Parquet filter), not the whole events table.
    """
    table = pq.read_table(
        events_uri,
        columns=[Columns.ITEM_IDX, Columns.TS, Columns.WINDOW],
        filters=[(Columns.USER_IDX, "=", user_idx)],
    )
    keep = table.column(Columns.WINDOW).to_numpy() < before  # rows stay in (user, ts) order
    return (
        table.column(Columns.ITEM_IDX).to_numpy()[keep].astype(np.int64),
        table.column(Columns.TS).to_numpy()[keep].astype(np.int64),
    )


def recommend_rows(
    model: Any, items: pa.Table, history: np.ndarray, k: int, filter_seen: bool
) -> list[tuple]:
    """Rows of :data:`RECOMMEND_HEADERS` for one listener with ``history`` (item_idx, in order)."""
    from recmodel.core.dataset import UserItems

    histories = UserItems(
        np.array([0, len(history)]),
        history.astype(np.int32),
        np.zeros(len(history), dtype=np.int64),
    )
    ids, scores = model.recommend(
        histories, np.array([0]), k, exclude=histories if filter_seen else None
    )
    by_idx = items.sort_by(Columns.ITEM_IDX).to_pydict()  # row i describes item_idx i + 1
    heard = np.bincount(history, minlength=len(by_idx[Columns.ITEM_IDX]) + 1)
    rows = []
    for rank, (item, score) in enumerate(zip(ids[0], scores[0], strict=True), start=1):
        if item < 1:  # k above the eligible catalog
            continue
        row = int(item) - 1
        rows.append(
            (
                rank,
                by_idx[Columns.ITEM][row],
                float(score),
                int(heard[item]),
                by_idx[Columns.COUNT][row],
                by_idx[Columns.ARTIST_IDX][row],
                by_idx[Columns.ALBUM_IDX][row],
                by_idx[Columns.GENRE_IDX][row],
                by_idx[Columns.TEMPO_BUCKET][row],
            )
        )
    return rows


def cmd_recommend(
    args: argparse.Namespace, pathspec: str, artifacts: Artifacts, out: TextIO
) -> int:
    from recmodel.core.dataset_io import item_features
    from recmodel.core.tables import TableRef, local_path, read_table
    from recmodel.retriever.checkpoint import load_retriever

    refs, checkpoint = artifacts("tables"), artifacts(CHECKPOINTS[args.model])
    user_idx = find_user(read_table(refs["users"]), args.user)
    items = read_table(refs["items"])
    model = load_retriever(
        checkpoint["safetensors"],
        checkpoint["model_config"],
        item_features(items, source=TableRef.of(refs["items"]).uri),
    )
    history, ts = user_history(local_path(refs["events"]), user_idx, AS_OF[args.as_of])
    last = (
        datetime.fromtimestamp(int(ts[-1]), tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
        if len(ts)
        else "-"
    )
    out.write(
        f"{pathspec} · {CHECKPOINTS[args.model]} · user {args.user} (user_idx "
        f"{user_idx}) · {len(history)} listens, last {last} (as of {args.as_of})\n"
    )
    rows = recommend_rows(model, items, history, args.k, args.filter_seen)
    out.write(format_table(RECOMMEND_HEADERS, rows) + "\n")
    out.write(
        "heard: plays in this history; plays: pre-test listen+ events of all users; "
        "artist..tempo: the run's metadata codes (0 = unknown)\n"
    )
    return 0


def report_lines(
    pathspec: str, report: dict[str, Any], files: dict[str, str], metric: str = REPORT_METRICS[0]
) -> list[str]:
    """The report's location, protocol, headline and a metric table (best first)."""
    protocol, metrics = report.get("protocol", {}), report.get("metrics", {})
    ranked = sorted(metrics, key=lambda m: -metrics[m].get(metric, float("-inf")))
    filtering = "seen filtered" if protocol.get("filter_seen") else "seen kept"
    lines = [
        f"{pathspec} report: {files.get('markdown', '-')}",
        f"protocol: {protocol.get('split', '?')} split, {filtering}, "
        f"{protocol.get('n_test_users', '?')} test users",
    ]
    if ranked:
        lines.append(f"best {metric}: {ranked[0]} {metrics[ranked[0]][metric]:.4f}")
    rows = [(m, *(metrics[m].get(name) for name in REPORT_METRICS)) for m in ranked]
    lines.append(format_table(("model", *REPORT_METRICS), rows))
    lines += [
        f"failed: {name}: {error}" for name, error in sorted(report.get("failed", {}).items())
    ]
    return lines


def cmd_report(args: argparse.Namespace, pathspec: str, artifacts: Artifacts, out: TextIO) -> int:
    lines = report_lines(pathspec, artifacts("report"), artifacts("report_files"))
    out.write("\n".join(lines) + "\n")
    return 0


def cmd_export(args: argparse.Namespace, pathspec: str, artifacts: Artifacts, out: TextIO) -> int:
    from recmodel.core.tables import read_table
    from recmodel.serving.export import MANIFEST, export_checkpoint

    items = read_table(artifacts("tables")["items"])
    manifest = export_checkpoint(artifacts(CHECKPOINTS[args.model]), items, args.out)
    out.write(
        f"{pathspec} · {CHECKPOINTS[args.model]}: {manifest['n_items']} item vectors of "
        f"width {manifest['dim']}; manifest {manifest['paths'][MANIFEST]}\n"
    )
    return 0


def cmd_champion(args: argparse.Namespace, out: TextIO) -> int:
    """Show the current champion and why; or promote or revoke a run by hand."""
    from recmodel.core.tables import load_artifact
    from recmodel.serving import champion

    use_namespace(args)
    if args.promote:
        run = champion.resolve_run(args.promote, args.flow)
        champion.promote_by_hand(run, args.flow)
        out.write(f"{run.pathspec} is the champion (promoted by hand)\n")
        return 0
    if args.revoke:
        run = champion.resolve_run(args.revoke, args.flow)
        if champion.CHAMPION_TAG not in run.tags:
            raise LookupError(f"{run.pathspec} is not a champion")
        champion.revoke(run)
        now = champion.current_champion(args.flow)
        out.write(f"{run.pathspec} revoked; champion now: {now.pathspec if now else 'none'}\n")
        return 0
    run = champion.resolve_run(champion.CHAMPION_TAG, args.flow)
    decision = load_artifact("champion_decision", run, flow=args.flow)
    how = decision["reason"]
    if champion.BY_HAND_TAG in run.tags:
        how = f"promoted by hand (its gate: {how})"
    out.write(f"{run.pathspec} is the champion: {how}\n")
    return 0


COMMANDS = {"recommend": cmd_recommend, "report": cmd_report, "export": cmd_export}


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run one command; returns the exit status (0, 1 for a usage error)."""
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from metaflow.exception import MetaflowNotFound

    try:
        if args.command == "champion":  # acts on the flow's champion, not on one --run
            return cmd_champion(args, out)
        pathspec, artifacts = open_run(args)
        return COMMANDS[args.command](args, pathspec, artifacts, out)
    except (*USAGE_ERRORS, MetaflowNotFound) as exc:
        err.write(f"error: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
