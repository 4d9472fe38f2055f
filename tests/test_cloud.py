"""`sbrjob submit`: the exact Vertex AI CustomJob spec per topology, checks before submitting, and the
REST submission itself against a local HTTP server standing in for the API."""

import http.server
import json
import threading

import pytest
from typer.testing import CliRunner

from sbrjob import cloud
from sbrjob.cli import app
from sbrjob.errors import SbrjobError

GS = ["--set", "output_dir=gs://bkt/runs/tiny"]


def dry_run(*args: str) -> dict:
    res = CliRunner().invoke(app, ["submit", "--config", "tiny", "--image", "eu.gcr.io/p/sbrjob:1", "--dry-run", *GS, *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def container_args(pool: dict) -> list[str]:
    return pool["containerSpec"]["args"]


def test_one_gpu():
    job = dry_run()
    assert job["displayName"] == "sbrjob-tiny"
    (pool,) = job["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "n1-standard-8", "acceleratorType": "NVIDIA_TESLA_T4", "acceleratorCount": 1}
    assert pool["replicaCount"] == "1"
    assert pool["containerSpec"]["imageUri"] == "eu.gcr.io/p/sbrjob:1"
    assert "command" not in pool["containerSpec"]  # the image's ENTRYPOINT is sbrjob
    # the packaged config by name, the user's --set passed on, no strategy forced on one device
    assert container_args(pool) == ["train", "--config", "tiny", "--set", "output_dir=gs://bkt/runs/tiny"]
    assert job["jobSpec"]["baseOutputDirectory"] == {"outputUriPrefix": "gs://bkt/runs/tiny/vertex"}


def test_several_gpus_use_mirrored():
    (pool,) = dry_run("--replicas", "4", "--accelerator-type", "NVIDIA_L4")["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "g2-standard-48", "acceleratorType": "NVIDIA_L4", "acceleratorCount": 4}
    assert container_args(pool)[3:5] == ["--set", "train.strategy=mirrored"]


def test_several_workers_chief_and_worker_pools():
    job = dry_run("--workers", "3", "--replicas", "2", "--set", "export.batch_size=24", "--set", "export.shards=3")
    chief, workers = job["jobSpec"]["workerPoolSpecs"]
    assert chief["replicaCount"] == "1" and workers["replicaCount"] == "2"
    assert chief["machineSpec"] == workers["machineSpec"] == {
        "machineType": "n1-standard-16", "acceleratorType": "NVIDIA_TESLA_T4", "acceleratorCount": 2}
    assert container_args(chief) == container_args(workers)
    assert "train.strategy=multi_worker" in container_args(chief)
    # TF_CONFIG comes from the platform: we must not set it
    assert all(e["name"] != "TF_CONFIG" for e in chief["containerSpec"]["env"])


def test_tpu_vm():
    (pool,) = dry_run("--accelerator", "tpu", "--replicas", "8")["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "cloud-tpu", "acceleratorType": "TPU_V3", "acceleratorCount": 8}
    assert "train.strategy=tpu" in container_args(pool)
    assert {"name": "TPU_NAME", "value": "local"} in pool["containerSpec"]["env"]


def test_cpu_workers():
    job = dry_run("--accelerator", "cpu", "--workers", "2")
    chief, worker = job["jobSpec"]["workerPoolSpecs"]
    assert chief["machineSpec"] == {"machineType": "n1-standard-8"}
    assert worker["replicaCount"] == "1"


def test_user_set_comes_after_the_topology_default():
    (pool,) = dry_run("--replicas", "2", "--set", "train.strategy=default")["jobSpec"]["workerPoolSpecs"]
    args = container_args(pool)
    assert args.index("train.strategy=mirrored") < args.index("train.strategy=default")


@pytest.mark.parametrize("args, message", [
    ([], "output_dir 'runs/tiny' is local"),
    (["--set", "output_dir=gs://b/r", "--set", "data.format=movielens", "--set", "data.path=data/ratings.dat"],
     "data.path 'data/ratings.dat' is local"),
    (["--set", "output_dir=gs://b/r", "--replicas", "3", "--accelerator-type", "NVIDIA_TESLA_A100"], "no default machine type"),
    (["--set", "output_dir=gs://b/r", "--replicas", "4", "--set", "export.batch_size=18", "--set", "export.shards=2"],
     "export.batch_size 18"),
    (["--set", "output_dir=gs://b/r", "--workers", "3", "--set", "export.batch_size=18"], "export.shards 2: 3 workers"),
    (["--set", "output_dir=gs://b/r", "--accelerator", "tpu"], "use --replicas 8"),
    (["--set", "output_dir=gs://b/r", "--accelerator", "tpu", "--replicas", "8", "--workers", "2"], "one TPU VM"),
    (["--set", "output_dir=gs://b/r", "--accelerator", "fpga"], "use cpu, gpu or tpu"),
])
def test_refused_before_submitting(args, message):
    res = CliRunner().invoke(app, ["submit", "--config", "tiny", "--image", "img", "--dry-run", *args])
    assert res.exit_code != 0
    assert isinstance(res.exception, SbrjobError) and message in str(res.exception)


def test_local_config_file_is_uploaded_next_to_outputs(tmp_path):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("name: mine\noutput_dir: gs://bkt/runs/mine\ndata:\n  format: sample\n")
    res = CliRunner().invoke(app, ["submit", "--config", str(cfg), "--image", "img", "--dry-run"])
    assert res.exit_code == 0, res.output
    (pool,) = json.loads(res.stdout)["jobSpec"]["workerPoolSpecs"]
    assert container_args(pool) == ["train", "--config", "gs://bkt/runs/mine/submit/my.yaml"]
    assert f"uploads {cfg} to gs://bkt/runs/mine/submit/my.yaml" in res.stderr


def test_tuning_job_wraps_the_same_trial_spec():
    trial = cloud.job_spec(image="img", command=["python", "-m", "sbrjob.tune_vertex"], args=["--config", "tiny"])
    study = {"metrics": [{"metricId": "mrr_at_20", "goal": "MAXIMIZE"}], "parameters": []}
    job = cloud.tuning_job_spec(trial, display_name="t", study_spec=study, max_trials=8, parallel_trials=2)
    assert job["trialJobSpec"] is trial and job["maxTrialCount"] == 8 and job["parallelTrialCount"] == 2
    assert trial["workerPoolSpecs"][0]["containerSpec"]["command"] == ["python", "-m", "sbrjob.tune_vertex"]


@pytest.fixture
def fake_vertex(monkeypatch):
    """A local HTTP server standing in for the Vertex AI REST API; records requests."""
    seen = []
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if status["code"] == 200:
                out = {**body, "name": "projects/123/locations/europe-west4/customJobs/987", "state": "JOB_STATE_PENDING"}
            else:
                out = {"error": {"code": status["code"], "message": "Permission denied; token ya29.SECRET-TOKEN rejected"}}
            data = json.dumps(out).encode()
            self.send_response(status["code"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(cloud, "API", f"http://127.0.0.1:{httpd.server_address[1]}/v1/{{region}}")

    import google.auth
    from google.oauth2.credentials import Credentials

    monkeypatch.setattr(google.auth, "default", lambda scopes=None: (Credentials(token="ya29.SECRET-TOKEN"), "my-project"))
    yield seen, status
    httpd.shutdown()
    httpd.server_close()


def test_real_submission_posts_the_spec(fake_vertex):
    seen, _ = fake_vertex
    res = CliRunner().invoke(app, ["submit", "--config", "tiny", "--image", "img", "--region", "europe-west4",
                                   "--replicas", "2", *GS])
    assert res.exit_code == 0, res.output
    (req,) = seen
    assert req["path"] == "/v1/europe-west4/projects/my-project/locations/europe-west4/customJobs"
    assert req["auth"] == "Bearer ya29.SECRET-TOKEN"  # credentials are sent ...
    assert "SECRET" not in res.output  # ... never printed
    assert req["body"]["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]["acceleratorCount"] == 2
    assert "customJobs/987" in res.stdout and "training/987?project=123" in res.stdout


def test_refused_submission_is_one_line_without_secrets(fake_vertex):
    _, status = fake_vertex
    status["code"] = 403
    with pytest.raises(SbrjobError) as err:
        cloud.submit("tiny", image="img", overrides=["output_dir=gs://b/r"], region="us-central1")
    msg = str(err.value)
    assert "HTTP 403" in msg and "Permission denied" in msg
    assert "SECRET" not in msg and "\n" not in msg
