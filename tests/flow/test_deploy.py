"""The production deployment compiles: the Argo Workflows template of the scheduled retrain.

``argo-workflows create --only-json`` needs an object-store datastore (it uploads the code
package) but no cluster. An S3 emulator (moto) on the loopback interface stands in for the
bucket; nothing leaves the machine.
"""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from recmodel.core.presets import parse_resources
from recmodel.core.resources import STEPS
from recmodel.retriever.train_state import TrainStateStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FLOW = ROOT / "flows" / "two_stage.py"
BUCKET = "recmodel-ci"
DATASTORE_ROOT = f"s3://{BUCKET}/metaflow"
IMAGE = "registry.example/recmodel:test"  # never pulled: only written into the template
NAMESPACE = "ml-retrain"
GPU_STEPS = ("pretrain", "pretrain-no-logq", "materialize-ranker-scores", "finetune")
COMPILE_SECONDS = 300
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3 emulator on 127.0.0.1 (a free port) holding an empty bucket; stopped afterwards."""
    pytest.importorskip("moto.server", reason="moto[server] (dev extra) emulates S3")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **CREDENTIALS)
        s3.create_bucket(Bucket=BUCKET)
        yield endpoint, s3
    finally:
        server.stop()


def compile_template(s3_endpoint, *options: str) -> dict:
    """The WorkflowTemplate of a production deployment with retries on every step."""
    pytest.importorskip("kubernetes", reason="metaflow's Argo Workflows plugin imports it")
    endpoint, _ = s3_endpoint
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": DATASTORE_ROOT,
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
        "METAFLOW_DEFAULT_METADATA": "local",  # --only-json contacts no metadata service
        "METAFLOW_KUBERNETES_NAMESPACE": NAMESPACE,
        "METAFLOW_KUBERNETES_CONTAINER_IMAGE": IMAGE,
    }
    cmd = [
        sys.executable,
        str(FLOW),
        *options,
        "--production",
        "--with",
        "retry",
        "argo-workflows",
        "create",
        "--only-json",
    ]
    out = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=COMPILE_SECONDS
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def template(s3_endpoint):
    return compile_template(s3_endpoint)


@pytest.fixture(scope="module")
def large_template(s3_endpoint):
    """Deployed with the large preset's pods."""
    return compile_template(s3_endpoint, "--config-value", "resources", "large")


def step_templates(template):
    """Each step's template by name; a @parallel step's is a JobSet, whose control pod stands
    in for the container (its workers run the same pod)."""
    steps = {}
    for t in template["spec"]["templates"]:
        if "container" in t:
            steps[t["name"]] = t
        elif "JobSet" in t.get("resource", {}).get("manifest", ""):
            steps[t["name"]] = {**t, **jobset_pod(t["resource"]["manifest"])}
    return steps


def jobset_pod(manifest: str) -> dict:
    """The container and deadline of a JobSet's control pod (Argo's {{...}} left out)."""
    jobset = yaml.safe_load(re.sub(r"\{\{.*?\}\}", "argo", manifest))
    jobs = {job["name"]: job for job in jobset["spec"]["replicatedJobs"]}
    assert set(jobs) == {"control", "worker"}
    pod = jobs["control"]["template"]["spec"]["template"]["spec"]
    worker = jobs["worker"]["template"]["spec"]["template"]["spec"]
    assert worker["containers"][0]["resources"] == pod["containers"][0]["resources"]
    return {
        "container": pod["containers"][0],
        "activeDeadlineSeconds": pod["activeDeadlineSeconds"],
    }


def test_the_retrain_runs_daily(template):
    cron = json.loads(template["metadata"]["annotations"]["metaflow/cron"])
    minute, hour, *rest = cron["schedule"].split()
    assert (minute, hour) == ("0", "0")
    assert rest and all(field in ("*", "?") for field in rest)


def test_project_and_branch_name_the_deployment(template):
    meta = template["metadata"]
    assert meta["name"] == "musicretriever.prod.twostageflow"
    assert meta["namespace"] == NAMESPACE
    annotations = meta["annotations"]
    assert annotations["metaflow/project_name"] == "music_retriever"
    assert annotations["metaflow/branch_name"] == "prod"
    assert annotations["metaflow/project_flow_name"] == "music_retriever.prod.TwoStageFlow"


def test_the_pretraining_steps_run_on_a_group_of_pods(template):
    steps = step_templates(template)
    for name in ("pretrain", "pretrain-no-logq"):
        assert "JobSet" in steps[name]["resource"]["manifest"], name
        env = {e["name"] for e in steps[name]["container"]["env"]}
        assert {"MF_MASTER_ADDR", "MF_MASTER_PORT", "MF_WORLD_SIZE"} <= env, name


def test_training_steps_request_a_gpu_and_the_rest_do_not(template):
    steps = step_templates(template)
    for name, step in steps.items():
        resources = step["container"]["resources"]
        gpus = {**resources.get("requests", {}), **resources.get("limits", {})}
        assert gpus.get("nvidia.com/gpu") == ("1" if name in GPU_STEPS else None), name
        assert step["container"]["image"] == IMAGE, name
    assert steps["pretrain"]["container"]["resources"]["requests"]["memory"].startswith("16000")


def pods(template) -> dict[str, dict[str, float]]:
    """Each step's requests by its flow name, in CPUs and MB (Argo writes "2" or "4096.0M")."""
    return {
        name.replace("-", "_"): {
            key: float(value.removesuffix("M"))
            for key, value in step["container"]["resources"]["requests"].items()
        }
        for name, step in step_templates(template).items()
        if name.replace("-", "_") in STEPS  # not Argo's own hooks
    }


@pytest.mark.parametrize("preset", ["default", "large"])
def test_every_pod_is_sized_by_the_presets_resources(preset, template, large_template):
    deployed = pods(template if preset == "default" else large_template)
    assert set(deployed) == set(STEPS)
    for name, args in parse_resources(preset)["steps"].items():
        assert deployed[name]["cpu"] == args["cpu"], name
        assert deployed[name]["memory"] == args["memory"], name
        assert deployed[name]["ephemeral-storage"] == args["disk"], name
    if preset == "large":  # not the default preset's pods
        assert deployed["extract_sessions"]["memory"] == 16_000
        assert deployed["extract_sessions"]["cpu"] == 8


def test_retries_and_timeouts(template):
    steps = step_templates(template)
    limits = {
        name: step["retryStrategy"]["limit"]
        for name, step in steps.items()
        if name in ("extract-sessions", "pretrain", "finetune", "report")
    }
    # Explicit @retry counts stay; --with retry gives the other steps Metaflow's default (3).
    assert limits == {"extract-sessions": 2, "pretrain": 1, "finetune": 1, "report": 3}
    assert steps["pretrain"]["activeDeadlineSeconds"] == 12 * 3600
    assert steps["extract-sessions"]["activeDeadlineSeconds"] == 4 * 3600


def test_the_code_package_is_in_the_bucket(template, s3_endpoint):
    _, s3 = s3_endpoint
    env = {
        e["name"]: e.get("value") for e in step_templates(template)["pretrain"]["container"]["env"]
    }
    assert env["METAFLOW_DATASTORE_SYSROOT_S3"] == DATASTORE_ROOT
    key = env["METAFLOW_CODE_URL"].removeprefix(f"s3://{BUCKET}/")
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] > 0


def test_flow_parameters_are_workflow_arguments(template):
    names = {p["name"] for p in template["spec"]["arguments"]["parameters"]}
    assert {"preset", "events", "overrides", "warm-start"} <= names


# Metaflow packages only the flow's own directory (flows/); the flow's @package_sources adds
# recmodel/, sql/ (with its subdirectories) and configs/: pods do not need them in the image.
def test_the_code_package_holds_the_library_sql_and_presets(template, s3_endpoint, tmp_path):
    _, s3 = s3_endpoint
    env = {e["name"]: e.get("value") for e in step_templates(template)["start"]["container"]["env"]}
    local = tmp_path / "job.tar"
    s3.download_file(BUCKET, env["METAFLOW_CODE_URL"].removeprefix(f"s3://{BUCKET}/"), local)
    with tarfile.open(local) as archive:
        names = set(archive.getnames())
    assert {
        "recmodel/retriever/train.py",
        "sql/01_clean_events.sql",
        "sql/counts/sessions.sql",
        "configs/tiny.toml",
    } <= names


def test_training_state_round_trips_through_the_object_store(s3_endpoint, monkeypatch):
    endpoint, s3 = s3_endpoint
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    prefix = "metaflow/TwoStageFlow/1/_tables/pretrain/train_state"
    store = TrainStateStore(f"s3://{BUCKET}/{prefix}/sasrec_pretrain.pt")
    assert store.load() is None
    store.write({"epoch": 2, "weights": torch.arange(4.0)})
    state = store.load()
    assert state["epoch"] == 2 and torch.equal(state["weights"], torch.arange(4.0))
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    assert [o["Key"] for o in listed] == [f"{prefix}/sasrec_pretrain.pt"]  # no directory markers
