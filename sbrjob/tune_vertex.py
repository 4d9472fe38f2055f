"""`sbrjob tune --vertex`: the same search as a Vertex AI HyperparameterTuningJob, and its trials.

The search space, trial configs and metric summaries are `sbrjob.tune`'s; the CustomJob part and
the cloud checks are `sbrjob submit`'s (`sbrjob.cloud`). Each trial runs
`python -m sbrjob.tune_vertex --config ... --<key>=<value>` in the image (`cloud_trial`) and reports
its validation metric per epoch through the cloudml-hypertune file.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from sbrjob import TF_ENV, storage
from sbrjob.config import JobConfig, join
from sbrjob.errors import SbrjobError
from sbrjob.tune import (Param, _field_type, _get, _kind, _to_config_value, _train_fn, _with_values,
                         resolve_space, summarize_metrics, trial_config)

HYPERTUNE_FILE = "/tmp/hypertune/output.metrics"  # where Vertex AI's trial agent reads metrics


def report_hypertune(metric_id: str, value: float, step: int | None = None) -> str:
    """Append a measurement the way cloudml-hypertune does (Vertex AI reads this file).

    One JSON object per line; the whole file is rewritten keeping the last 100 entries.
    """
    path = Path(os.environ.get("CLOUD_ML_HP_METRIC_FILE", HYPERTUNE_FILE))
    lines = path.read_text().splitlines() if path.exists() else []
    entry = {"timestamp": time.time(), "trial": str(os.environ.get("CLOUD_ML_TRIAL_ID", 0)),
             metric_id: str(float(value)), "global_step": str(int(step or 0)), "checkpoint_path": ""}
    lines = (lines + [json.dumps(entry, sort_keys=True)])[-100:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def hypertune_metric_id(metric: str) -> str:
    """A metric id without '@' for the tuning service: mrr@20 -> valid_mrr_at_20."""
    return "valid_" + metric.replace("@", "_at_")


def _vertex_param(p: Param) -> dict:
    spec: dict[str, Any] = {"parameterId": p.key}
    numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p.choices)
    if p.kind == "categorical" and not (p.choices and numeric):
        spec["categoricalValueSpec"] = {"values": [str(c) for c in p.choices]}
        return spec
    if p.choices:
        spec["discreteValueSpec"] = {"values": sorted(float(c) for c in p.choices)}
    elif p.step is not None:
        spec["discreteValueSpec"] = {"values": [float(v) for v in p.grid()]}
    elif p.kind == "int":
        spec["integerValueSpec"] = {"minValue": str(int(p.low)), "maxValue": str(int(p.high))}  # int64 as JSON string
    else:
        spec["doubleValueSpec"] = {"minValue": p.low, "maxValue": p.high}
    spec["scaleType"] = "UNIT_LOG_SCALE" if p.log else "UNIT_LINEAR_SCALE"
    return spec


def vertex_study_parameters(cfg: JobConfig, params: list[Param], pinned: dict[str, Any]) -> list[dict]:
    """The space as StudySpec.parameters; `when` on a searched key becomes a conditional child spec,
    `when` on a fixed key is decided here from the config."""
    by_key = {p.key: p for p in params}
    raw = _with_values(cfg.to_dict(), pinned)
    top: dict[str, dict] = {}
    for p in params:
        searched = [(k, allowed) for k, allowed in p.when if k in by_key]
        if any(_get(raw, k) not in allowed for k, allowed in p.when if k not in by_key):
            continue  # inactive for this config (e.g. bpreg when the loss is xe)
        if not searched:
            top[p.key] = _vertex_param(p)
            continue
        if len(searched) > 1:
            raise SbrjobError(f"{p.key}: Vertex AI allows one parent per conditional parameter")
        parent_key, allowed = searched[0]
        parent = top[parent_key]
        if "categoricalValueSpec" in parent:
            cond = {"parentCategoricalValues": {"values": [str(a) for a in allowed]}}
        elif "discreteValueSpec" in parent:
            cond = {"parentDiscreteValues": {"values": [float(a) for a in allowed]}}
        elif "integerValueSpec" in parent:
            cond = {"parentIntValues": {"values": [str(int(a)) for a in allowed]}}
        else:
            raise SbrjobError(f"{p.key}: Vertex AI cannot condition on a continuous parameter ({parent_key})")
        parent.setdefault("conditionalParameterSpecs", []).append({"parameterSpec": _vertex_param(p), **cond})
    return list(top.values())


def trial_command(config: str, overrides: list[str]) -> tuple[list[str], list[str]]:
    """Container command and args of one cloud trial; Vertex AI appends --<parameterId>=<value>."""
    args = ["--config", config]
    for o in overrides:
        args += ["--set", o]
    return ["python", "-m", "sbrjob.tune_vertex"], args


def vertex_tuning_job(config: str, trials: int, *, space: Optional[str] = None,
                      overrides: Optional[list[str]] = None, parallel: int = 1, max_failed: int = 0,
                      image: str, accelerator: str = "gpu", replicas: int = 1,
                      **machine: Any) -> tuple[dict, Optional[tuple[str, str]]]:
    """The same search as a Vertex AI HyperparameterTuningJob.

    Returns (job body, (local config, gs:// destination) to upload first, or None). Trials run
    `python -m sbrjob.tune_vertex` (`cloud_trial`) in the image; the CustomJob part and the cloud checks
    are `sbrjob submit`'s (sbrjob.cloud); `machine` takes its accelerator_type, machine_type,
    service_account.
    """
    from sbrjob import cloud
    from sbrjob.config import load_config

    overrides = list(overrides or [])
    strategy = cloud.strategy_for(accelerator, replicas, 1)
    if strategy:
        overrides = [f"train.strategy={strategy}", *overrides]
    cfg = load_config(config, overrides)
    params, pinned = resolve_space(cfg, space)
    cloud.check_cloud_ready(cfg, replicas, 1)
    ref, upload = cloud.config_ref(config, cfg)
    pinned_sets = [f"{k}={json.dumps(_to_config_value(k, v))}" for k, v in pinned.items()]
    command, args = trial_command(ref, overrides + pinned_sets)
    service_account = machine.pop("service_account", None)
    trial_spec = cloud.job_spec(image=image, args=args, command=command, accelerator=accelerator,
                                replicas=replicas, env={"PYTHONUNBUFFERED": "1", **TF_ENV},
                                output_uri=join(cfg.output_dir, "tune", "vertex"),
                                service_account=service_account, **machine)
    study_spec = {
        "metrics": [{"metricId": hypertune_metric_id(cfg.eval.metric), "goal": "MAXIMIZE"}],
        "parameters": vertex_study_parameters(cfg, params, pinned),
        "algorithm": "ALGORITHM_UNSPECIFIED",  # Vertex AI's default Bayesian optimisation
        "measurementSelectionType": "BEST_MEASUREMENT",  # best epoch, as the local study
        # the service's counterpart of pruning: stop trials below the median at the same epoch
        "medianAutomatedStoppingSpec": {"useElapsedDuration": False},
    }
    body = cloud.tuning_job_spec(trial_spec, display_name=f"sbrjob-tune-{cfg.name}", study_spec=study_spec,
                                 max_trials=trials, parallel_trials=parallel, max_failed_trials=max_failed)
    return body, ((upload, ref) if upload else None)


def submit_tuning_job(body: dict, upload: Optional[tuple[str, str]], *, region: str,
                      project: Optional[str] = None) -> dict:
    """Upload a local config and create the HyperparameterTuningJob (application-default credentials)."""
    from sbrjob import cloud

    if upload:
        storage.write_bytes(upload[1], Path(upload[0]).read_bytes())
    return cloud.create("hyperparameterTuningJobs", body, region=region, project=project)


def _parse_trial_args(argv: list[str]) -> tuple[str, list[str], dict[str, str]]:
    """--config X, --set k=v (repeatable) and the service's --section.key=value / --section.key value."""
    config, overrides, values = None, [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise SbrjobError(f"unexpected argument {arg!r}")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise SbrjobError(f"{arg}: missing value")
            value, i = argv[i + 1], i + 1
        if name == "config":
            config = value
        elif name == "set":
            overrides.append(value)
        elif _field_type(name) is not None:
            values[name] = value
        else:
            raise SbrjobError(f"--{name}: unknown option; expected --config, --set or a config key such as --train.lr")
        i += 1
    if not config:
        raise SbrjobError("--config is required")
    return config, overrides, values


def _typed(key: str, text: str) -> Any:
    if _field_type(key) is bool:  # categorical values arrive as strings
        return text.strip().lower() in ("true", "1", "yes")
    kind = _kind(_field_type(key))
    if kind == "int":
        return int(float(text))  # discrete values arrive as "128.0"
    if kind == "float":
        return float(text)
    return text


def cloud_trial(argv: list[str], train_fn: Optional[Callable] = None) -> dict:
    """One Vertex AI trial: train with the service's values, report the validation metric per epoch
    and the best one at the end (cloudml-hypertune file convention)."""
    from sbrjob.config import load_config

    config, overrides, values = _parse_trial_args(argv)
    cfg = load_config(config, overrides)
    # Vertex AI names each trial; its model dir is BASE/<trial id>/model
    trial_id = os.environ.get("CLOUD_ML_TRIAL_ID") or Path(os.environ.get("AIP_MODEL_DIR", "0/model")).parent.name
    tcfg = trial_config(cfg, {k: _typed(k, v) for k, v in values.items()},
                        join(cfg.output_dir, "tune", f"trial-{int(trial_id):03d}" if trial_id.isdigit() else f"trial-{trial_id}"))
    metric, metric_id = cfg.eval.metric, hypertune_metric_id(cfg.eval.metric)

    def on_epoch_end(epoch: int, epoch_metrics: dict) -> bool:
        value = (epoch_metrics.get("valid") or epoch_metrics).get(metric)
        if value is not None:
            report_hypertune(metric_id, value, epoch)
        return False  # the service stops trials itself

    s = summarize_metrics((train_fn or _train_fn())(tcfg, on_epoch_end=on_epoch_end), metric)
    report_hypertune(metric_id, s["value"], (s["best_epoch"] or s["epochs"] or 0))
    return {"trial": trial_id, "output_dir": tcfg.output_dir, metric_id: s["value"]}


def _main(argv: list[str]) -> int:
    try:
        print(json.dumps(cloud_trial(argv)))
    except SbrjobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
