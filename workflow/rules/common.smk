# Shared definitions: validated config, results layout, stage command, MLflow parent run.
import json
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
from pipeline_steps import config as et_config
from pipeline_steps import tracking as et_tracking

# The preset is merged over config.yaml; what the command line gives (--configfile files, then --config
# values) wins over both, so `--config preset=smoke --configfile sweep.yaml` keeps sweep.yaml's sweep.
_cli_config = dict(getattr(workflow.config_settings, "overwrite_config", None) or {})

try:
    config.update(et_config.deep_merge(et_config.apply_preset(config), _cli_config))
    validate(config, str(et_config.SCHEMA_PATH))
    et_config.validate(config)
except (WorkflowError, et_config.ConfigError) as exc:
    try:
        et_config.validate(config)  # re-check to name the offending key
    except et_config.ConfigError as named:
        raise WorkflowError(f"invalid configuration: {named}") from None
    raise WorkflowError(f"invalid configuration: {exc}") from None

RUN = config["run_name"]
R = f"results/{RUN}"
LOGS = f"logs/{RUN}"
BENCH = f"benchmarks/{RUN}"
SPARSITIES = [f"{s:g}" for s in config["prune"]["sweep"]]
# The stage command: the interpreter running Snakemake, with this repository importable. OpenMP threads
# sleep instead of spinning while they wait: with --cores above the machine's core count (or other
# load) spinning threads of concurrent stages starve each other (measured: a smoke finetune epoch took
# 40-87 s spinning vs 14-20 s sleeping on 2 loaded cores).
# PYTHONPATH keeps what the caller set (e.g. carried packages on a GPU machine) after the repository.
PY = (f"OMP_WAIT_POLICY=PASSIVE PYTHONPATH={shlex.quote(workflow.basedir)}${{PYTHONPATH:+:$PYTHONPATH}}"
      f" {shlex.quote(sys.executable)} -m pipeline_steps")
# Stage name -> metrics file(s) that the report rule collects; each rule file adds its own.
REPORT_INPUTS = {}

wildcard_constraints:
    sparsity=r"0(\.\d+)?",


def stage_params(*keys):
    """The config slice a stage uses, as canonical JSON (for params: and --params)."""
    return json.dumps({k: config[k] for k in keys}, sort_keys=True)


onstart:
    et_tracking.open_parent(Path(R), RUN, config["mlflow"], config, et_config.config_hash(config))


onsuccess:
    et_tracking.close_parent(Path(R), "FINISHED", Path(LOGS))


onerror:
    et_tracking.close_parent(Path(R), "FAILED", Path(LOGS))
