"""Which engine runs prepare and export (`--runner`), and the Apache Beam pipeline options for it.

inprocess is the numpy path (prepare.py, export.py); beam runs the same stages as Beam pipelines
on the DirectRunner (beam_prepare.py, beam_export.py); dataflow submits those pipelines to Google
Cloud Dataflow with the `beam:` section's options; auto picks beam above `beam.auto_threshold_mb`
of input. Apache Beam (the `sbrjob[beam]` extra) is imported only when a pipeline is built, and
nothing here imports TensorFlow.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from typing import Optional

from sbrjob import storage
from sbrjob.config import JobConfig, join
from sbrjob.errors import SbrjobError

RUNNERS = ("inprocess", "beam", "dataflow", "auto")
log = logging.getLogger("sbrjob.beam")


def beam_installed() -> bool:
    return importlib.util.find_spec("apache_beam") is not None


def require_beam(runner: str) -> None:
    if not beam_installed():
        raise SbrjobError(f"--runner {runner} needs Apache Beam, which is not installed: pip install 'sbrjob[beam]' "
                          "(or use --runner inprocess)")


def choose(cfg: JobConfig, runner: Optional[str], input_bytes: Optional[int] = None, installed: bool = True) -> str:
    """The engine to use: `runner` (the --runner flag) or `beam.runner`; `auto` resolved by input size.
    `installed=False` (a dry run) does not ask for Apache Beam."""
    runner = runner or cfg.beam.runner
    if runner not in RUNNERS:
        raise SbrjobError(f"--runner {runner!r}: use one of {', '.join(RUNNERS)}")
    if runner != "auto":
        if runner != "inprocess" and installed:
            require_beam(runner)
        return runner
    threshold = cfg.beam.auto_threshold_mb * 1e6
    if input_bytes is None or input_bytes <= threshold:
        return "inprocess"
    if not beam_installed():
        log.info("runner auto: %.0f MB of input is above beam.auto_threshold_mb but Apache Beam is not installed "
                 "(pip install 'sbrjob[beam]'): in-process", input_bytes / 1e6)
        return "inprocess"
    log.info("runner auto: %.0f MB of input > beam.auto_threshold_mb %.0f: Beam (DirectRunner)", input_bytes / 1e6,
             cfg.beam.auto_threshold_mb)
    return "beam"


def dry_run(cfg: JobConfig, runner: Optional[str], stage: str) -> dict:
    """What `--dry-run` prints: the engine `runner` resolves to and its Beam pipeline options."""
    from sbrjob.runs import input_files

    size = 0
    for _, path in input_files(cfg):
        try:
            size += int(storage.content_id(path).get("size") or 0)
        except (OSError, SbrjobError):  # a missing input is reported by the real run
            pass
    engine = choose(cfg, runner, size, installed=False)
    out = {"stage": stage, "runner": engine, "input_mb": round(size / 1e6, 1)}
    if engine != "inprocess":
        out["pipeline_options"] = pipeline_options(cfg, engine, stage)
    return out


def _job_name(cfg: JobConfig, stage: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", f"sbrjob-{cfg.name}-{stage}".lower()).strip("-")
    return name[:63].rstrip("-")


def pipeline_options(cfg: JobConfig, runner: str, stage: str) -> dict:
    """The Beam pipeline options (as `PipelineOptions(**options)` takes them) for `runner`."""
    b = cfg.beam
    if runner == "beam":
        workers = b.direct_num_workers or os.cpu_count() or 1
        return {"runner": "DirectRunner", "direct_num_workers": workers, "direct_running_mode": b.direct_running_mode}
    if runner != "dataflow":
        raise ValueError(runner)
    problems = []
    if not b.project:
        problems.append("beam.project: set the Google Cloud project that runs the Dataflow job")
    if not b.temp_location:
        problems.append("beam.temp_location: set a gs:// folder for Dataflow's staging and temporary files")
    if not storage.is_remote(cfg.output_dir):
        problems.append(f"output_dir {cfg.output_dir!r}: Dataflow workers write there, so it must be gs://")
    for key in ("path", "valid_path", "test_path", "items_path"):
        value = getattr(cfg.data, key)
        if value and not storage.is_remote(value):
            problems.append(f"data.{key} {value!r}: Dataflow workers read it, so it must be gs://")
    if problems:
        raise SbrjobError("--runner dataflow: " + "; ".join(problems))
    options = {
        "runner": "DataflowRunner", "project": b.project, "region": b.region,
        "temp_location": b.temp_location, "staging_location": join(b.temp_location, "staging"),
        "job_name": _job_name(cfg, stage), "machine_type": b.machine_type, "max_num_workers": b.max_workers,
        "disk_size_gb": b.disk_size_gb, "autoscaling_algorithm": "THROUGHPUT_BASED",
    }
    if b.sdk_container_image:
        options["sdk_container_image"] = b.sdk_container_image
    if b.service_account:
        options["service_account_email"] = b.service_account
    return options


def work_dir(cfg: JobConfig, runner: str, local_tmp: str) -> str:
    """Where a pipeline keeps its intermediate files: a local temp dir here, gs:// on Dataflow."""
    if runner == "dataflow":
        return join(cfg.beam.temp_location, "sbrjob-work", os.path.basename(local_tmp))
    return local_tmp


def make_options(options: dict):
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(flags=[], **options)
