"""Vertex AI custom jobs: `sbrjob submit` runs `sbrjob train` in the job's container image.

One worker pool for a single machine (CPU, one or several GPUs, a TPU VM); a chief pool plus a
worker pool for several machines, where the platform sets TF_CONFIG on each (chief + workers) and
`train.strategy: multi_worker` picks it up. The spec is plain JSON for the REST API
(projects.locations.customJobs.create), sent with application-default credentials: no
google-cloud-aiplatform dependency (a large package for one POST). `job_spec` and `create` are
reused by `sbrjob tune` for a HyperparameterTuningJob's trialJobSpec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from sbrjob import TF_ENV, storage
from sbrjob.config import JobConfig, join, load_config
from sbrjob.errors import SbrjobError
from sbrjob.shards import check_layout

API = "https://{region}-aiplatform.googleapis.com/v1"
CONSOLE = "https://console.cloud.google.com/vertex-ai/locations/{region}/training/{id}?project={project}"

# Accelerator type -> machine type per accelerators per machine (Vertex AI's valid pairings).
GPU_MACHINES = {
    "NVIDIA_TESLA_T4": {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32"},
    "NVIDIA_L4": {1: "g2-standard-8", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"},
    "NVIDIA_TESLA_A100": {1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g", 8: "a2-highgpu-8g"},
}
DEFAULT_GPU = "NVIDIA_TESLA_T4"
TPU_TYPES = ("TPU_V2", "TPU_V3")  # Cloud TPU VMs on machine type cloud-tpu, 8 cores each
CPU_MACHINE = "n1-standard-8"


def machine_spec(accelerator: str, replicas: int = 1, accelerator_type: Optional[str] = None,
                 machine_type: Optional[str] = None) -> dict:
    """The machineSpec of one replica: `replicas` GPUs (or TPU cores) on one machine."""
    if replicas < 1:
        raise SbrjobError(f"--replicas {replicas}: must be >= 1")
    if accelerator == "cpu":
        if replicas != 1 or accelerator_type:
            raise SbrjobError("--accelerator cpu: use --replicas 1 and no --accelerator-type (CPU jobs scale with --workers)")
        return {"machineType": machine_type or CPU_MACHINE}
    if accelerator == "gpu":
        kind = accelerator_type or DEFAULT_GPU
        by_count = GPU_MACHINES.get(kind, {})
        machine = machine_type or by_count.get(replicas)
        if machine is None:
            known = ", ".join(f"{k} x{sorted(v)}" for k, v in GPU_MACHINES.items())
            raise SbrjobError(f"--accelerator-type {kind} with --replicas {replicas}: no default machine type; "
                              f"give --machine-type or use one of {known}")
        return {"machineType": machine, "acceleratorType": kind, "acceleratorCount": replicas}
    if accelerator == "tpu":
        kind = accelerator_type or "TPU_V3"
        if kind not in TPU_TYPES:
            raise SbrjobError(f"--accelerator-type {kind}: TPU jobs use one of {', '.join(TPU_TYPES)}")
        if replicas != 8:
            raise SbrjobError(f"--replicas {replicas}: a {kind} TPU VM has 8 cores; use --replicas 8")
        return {"machineType": machine_type or "cloud-tpu", "acceleratorType": kind, "acceleratorCount": 8}
    raise SbrjobError(f"--accelerator {accelerator!r}: use cpu, gpu or tpu")


def strategy_for(accelerator: str, replicas: int, workers: int) -> Optional[str]:
    """The train.strategy a topology needs (None: leave the config's choice)."""
    if accelerator == "tpu":
        return "tpu"
    if workers > 1:
        return "multi_worker"
    if replicas > 1:
        return "mirrored"
    return None


def job_spec(*, image: str, args: list[str], command: Optional[list[str]] = None, accelerator: str = "gpu",
             replicas: int = 1, workers: int = 1, accelerator_type: Optional[str] = None,
             machine_type: Optional[str] = None, env: Optional[dict[str, str]] = None,
             output_uri: Optional[str] = None, service_account: Optional[str] = None,
             boot_disk_gb: int = 100) -> dict:
    """A CustomJobSpec (also a HyperparameterTuningJob's trialJobSpec).

    Pool 0 is the chief (one replica); with `workers` > 1 pool 1 holds the other workers on the
    same machine type. Vertex AI sets TF_CONFIG (cluster: chief + worker) in every container.
    """
    if workers < 1:
        raise SbrjobError(f"--workers {workers}: must be >= 1")
    if accelerator == "tpu" and workers != 1:
        raise SbrjobError("--accelerator tpu: one TPU VM per job (--workers 1); multi-host TPU pods are not supported")
    container: dict[str, Any] = {"imageUri": image, "args": list(args)}
    if command:
        container["command"] = list(command)
    env = dict(env or {})
    if accelerator == "tpu":
        env.setdefault("TPU_NAME", "local")  # the TPU is attached to this VM: TPUClusterResolver(tpu="local")
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    pool = {
        "machineSpec": machine_spec(accelerator, replicas, accelerator_type, machine_type),
        "replicaCount": "1",
        "diskSpec": {"bootDiskType": "pd-ssd", "bootDiskSizeGb": boot_disk_gb},
        "containerSpec": container,
    }
    pools = [pool]
    if workers > 1:
        pools.append({**pool, "replicaCount": str(workers - 1)})
    spec: dict[str, Any] = {"workerPoolSpecs": pools}
    if output_uri:
        spec["baseOutputDirectory"] = {"outputUriPrefix": output_uri}
    if service_account:
        spec["serviceAccount"] = service_account
    return spec


def tuning_job_spec(trial_job_spec: dict, *, display_name: str, study_spec: dict, max_trials: int,
                    parallel_trials: int = 1, max_failed_trials: int = 0) -> dict:
    """A HyperparameterTuningJob around a trialJobSpec from `job_spec` (Vertex AI appends
    `--<parameterId>=<value>` to the container args of each trial)."""
    return {
        "displayName": display_name,
        "studySpec": study_spec,
        "maxTrialCount": max_trials,
        "parallelTrialCount": parallel_trials,
        "maxFailedTrialCount": max_failed_trials,
        "trialJobSpec": trial_job_spec,
    }


def check_cloud_ready(cfg: JobConfig, replicas_total: int, workers: int) -> None:
    """Refuse, before paying for machines, a job whose files the cloud cannot reach or whose
    session-parallel layout the replicas cannot share (shards.check_layout)."""
    if not storage.is_remote(cfg.output_dir):
        raise SbrjobError(f"output_dir {cfg.output_dir!r} is local: a cloud job must write to gs://, "
                          f"e.g. --set output_dir=gs://BUCKET/runs/{cfg.name}")
    if cfg.data.format != "sample":
        for key in ("path", "items_path", "valid_path", "test_path"):
            value = getattr(cfg.data, key)
            if value and not storage.is_remote(value):
                raise SbrjobError(f"data.{key} {value!r} is local: upload it (gcloud storage cp) and "
                                  f"--set data.{key}=gs://BUCKET/...")
    # only the train split is distributed (shards.distribute_blocks)
    check_layout(cfg.export.batch_size, cfg.export.shards, replicas_total, workers, then=" with --set")


def config_ref(config: str, cfg: JobConfig) -> tuple[str, Optional[str]]:
    """(what the container passes as --config, local file to upload there or None).

    Packaged names and gs:// URLs work inside the image as they are; a local file is uploaded
    next to the job's outputs."""
    if storage.is_remote(config) or not Path(config).exists():
        return config, None
    return join(cfg.output_dir, "submit", Path(config).name), config


def build_custom_job(config: str, *, image: str, overrides: Optional[list[str]] = None, accelerator: str = "gpu",
                     replicas: int = 1, workers: int = 1, accelerator_type: Optional[str] = None,
                     machine_type: Optional[str] = None, service_account: Optional[str] = None,
                     display_name: Optional[str] = None) -> tuple[dict, Optional[tuple[str, str]]]:
    """(CustomJob body, (local config, gs:// destination) to upload first or None)."""
    machine_spec(accelerator, replicas, accelerator_type, machine_type)  # bad topology: fail before reading anything
    overrides = list(overrides or [])
    strategy = strategy_for(accelerator, replicas, workers)
    if strategy:
        overrides = [f"train.strategy={strategy}", *overrides]  # the user's own --set wins
    cfg = load_config(config, overrides)
    total = replicas * workers
    check_cloud_ready(cfg, total, workers)
    ref, upload = config_ref(config, cfg)
    args = ["train", "--config", ref]
    for o in overrides:
        args += ["--set", o]
    spec = job_spec(image=image, args=args, accelerator=accelerator, replicas=replicas, workers=workers,
                    accelerator_type=accelerator_type, machine_type=machine_type,
                    env={"PYTHONUNBUFFERED": "1", **TF_ENV},
                    output_uri=join(cfg.output_dir, "vertex"), service_account=service_account)
    body = {"displayName": display_name or f"sbrjob-{cfg.name}", "jobSpec": spec}
    return body, ((upload, ref) if upload else None)


def create(resource: str, body: dict, *, region: str, project: Optional[str] = None) -> dict:
    """POST `body` to projects/P/locations/R/<resource> (customJobs, hyperparameterTuningJobs)
    with application-default credentials; returns the created resource."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    try:
        credentials, default_project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except Exception as err:
        raise SbrjobError(f"no Google Cloud credentials ({type(err).__name__}); run "
                          "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS") from None
    project = project or default_project
    if not project:
        raise SbrjobError("no cloud project: pass --project or set GOOGLE_CLOUD_PROJECT")
    url = f"{API.format(region=region)}/projects/{project}/locations/{region}/{resource}"
    try:
        resp = AuthorizedSession(credentials).post(url, json=body, timeout=60)
    except Exception as err:  # network; never echo the request (it carries the token)
        raise SbrjobError(f"{url}: request failed ({type(err).__name__}: {storage.redact(str(err))[:200]})") from None
    if resp.status_code >= 300:
        try:
            message = resp.json().get("error", {}).get("message", "")
        except ValueError:
            message = resp.text
        raise SbrjobError(f"Vertex AI refused the job (HTTP {resp.status_code}): "
                          f"{storage.redact(' '.join(message.split()))[:300]}")
    return resp.json()


def submit(config: str, *, image: str, overrides: Optional[list[str]] = None, accelerator: str = "gpu",
           replicas: int = 1, workers: int = 1, region: str = "us-central1", project: Optional[str] = None,
           dry_run: bool = False, accelerator_type: Optional[str] = None, machine_type: Optional[str] = None,
           service_account: Optional[str] = None, display_name: Optional[str] = None) -> dict:
    """Build the CustomJob; return it (dry run: `{"dry_run": body, "upload": ...}`) or upload a local
    config, create the job and return `{"job": job, "console": url}`."""
    body, upload = build_custom_job(config, image=image, overrides=overrides, accelerator=accelerator,
                                    replicas=replicas, workers=workers, accelerator_type=accelerator_type,
                                    machine_type=machine_type, service_account=service_account,
                                    display_name=display_name)
    if dry_run:
        return {"dry_run": body, "upload": upload}
    if upload:
        storage.write_bytes(upload[1], Path(upload[0]).read_bytes())
    job = create("customJobs", body, region=region, project=project)
    name = job.get("name", "")
    job_id = name.rsplit("/", 1)[-1]
    project_id = name.split("/")[1] if name.startswith("projects/") else project
    return {"job": job, "console": CONSOLE.format(region=region, id=job_id, project=project_id)}
