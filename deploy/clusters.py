"""``--cluster {local,local-gpu,slurm,pbs,kubernetes}``: one dask Client, whatever the machines.

Each kind has a commented YAML of defaults next to this file (``deploy/<kind>.yaml``); ``--cluster-config FILE``
overrides some of its keys (an unknown key is refused, so a typo never silently falls back to a default).  The
engines are the usual ones: distributed's LocalCluster, dask-cuda's LocalCUDACluster, dask-jobqueue's
SLURMCluster / PBSCluster and the dask-kubernetes operator.  The heavy optional ones are imported only when used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import yaml

from ..pipeline.errors import InputError, yaml_problem
from .local import WORKER_MALLOC_ENV, cluster_client, quiet_dask_logs, worker_malloc_config

log = logging.getLogger(__name__)

KINDS = ("local", "local-gpu", "slurm", "pbs", "kubernetes")
CONFIG_DIR = Path(__file__).resolve().parent


# --------------------------------------------------------------------------------------------------- config
def default_config(kind: str) -> dict[str, Any]:
    """The documented defaults of ``kind``, read from ``deploy/<kind>.yaml``."""
    if kind not in KINDS:
        raise InputError(f"unknown cluster kind {kind!r}; choose one of {', '.join(KINDS)}")
    with open(CONFIG_DIR / f"{kind}.yaml") as f:
        return yaml.safe_load(f) or {}


def load_config(kind: str, config_path: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of ``kind`` updated by the YAML file ``config_path`` and then by ``overrides``."""
    cfg = default_config(kind)
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_path is not None:
        try:
            with open(config_path) as f:
                user = yaml.safe_load(f)
        except FileNotFoundError:
            raise InputError(f"cluster config not found: {config_path}") from None
        except yaml.YAMLError as e:
            raise InputError(f"cluster config {config_path} is not valid YAML: {yaml_problem(e)}") from None
        if user is None:
            user = {}
        if not isinstance(user, dict):
            raise InputError(f"cluster config {config_path} must be a mapping of keys to values, "
                             f"got {type(user).__name__}")
        layers.append((str(config_path), user))
    if overrides:
        layers.append(("the command line", overrides))
    for source, layer in layers:
        unknown = sorted(set(layer) - set(cfg))
        if unknown:
            raise InputError(f"unknown key(s) {', '.join(map(repr, unknown))} in {source} for --cluster {kind}; "
                             f"known keys: {', '.join(sorted(cfg))} (documented in deploy/{kind}.yaml)")
        for key, value in layer.items():
            _check_type(kind, key, cfg[key], value, source)
            cfg[key] = value
    return cfg


def _check_type(kind: str, key: str, default: Any, value: Any, source: str) -> None:
    if key in COUNTS and value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputError(f"{key} in {source} for --cluster {kind} must be a whole number of at least 1 (or null "
                         f"for the default), got {value!r}")
    if default is None or value is None:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = number
    elif isinstance(default, str):  # "8" or 8 cpus alike; times must stay strings (YAML reads 12:00:00 as 43200)
        ok = isinstance(value, str) or (number and key not in TIME_KEYS)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        hint = " (quote times like \"02:00:00\": unquoted YAML reads them as a number)" if ":" in str(default) else ""
        raise InputError(f"{key} in {source} for --cluster {kind} must be a {type(default).__name__}, got "
                         f"{value!r}{hint}")


TIME_KEYS = {"walltime", "lifetime", "lifetime_margin", "lifetime_stagger"}
#: keys that count something (their default may be null: "pick one"), checked as whole numbers >= 1
COUNTS = {"workers"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: Any, what: str) -> float:
    """``"02:00:00"``, ``"1-12:00:00"`` (SLURM days), ``"90:00"``, ``"55m"``, ``"3300s"`` or a number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    s = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", s)
    if m:
        return float(m.group(1)) * _UNITS[m.group(2)]
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if m:
        days = int(m.group(1) or 0)
        parts = [int(p) for p in m.group(2, 3, 4) if p is not None]
        while len(parts) < 3:  # "MM", "HH:MM" reads as SLURM's "MM" / "MM:SS" except with days
            parts.insert(0, 0)
        h, mi, se = parts
        return float(days * 86400 + h * 3600 + mi * 60 + se)
    raise InputError(f"{what}: cannot read the duration {text!r} (e.g. \"02:00:00\", \"55m\", \"3300s\")")


def worker_lifetime_args(cfg: dict[str, Any]) -> list[str]:
    """``--lifetime``/``--lifetime-stagger`` so that every worker retires (and hands its blocks back) before the
    batch system kills its job at the walltime."""
    wall = seconds(cfg["walltime"], "walltime")
    stagger = seconds(cfg["lifetime_stagger"], "lifetime_stagger")
    life = (seconds(cfg["lifetime"], "lifetime") if cfg["lifetime"] is not None
            else wall - seconds(cfg["lifetime_margin"], "lifetime_margin"))
    if life <= 0 or life + stagger >= wall:
        raise InputError(f"worker lifetime {life:.0f} s + stagger {stagger:.0f} s must be positive and end before "
                         f"the walltime {cfg['walltime']} ({wall:.0f} s); shorten lifetime or lifetime_stagger")
    return ["--lifetime", f"{int(life)}s", "--lifetime-stagger", f"{int(stagger)}s"]


# ------------------------------------------------------------------------------------------------ local-gpu
def check_no_client_cuda() -> None:
    """Refuse to start GPU workers from a process that already holds a CUDA context.

    Only looks at torch if something already imported it, and never initialises CUDA itself.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        initialised = bool(torch.cuda.is_initialized())
    except Exception:  # a torch without CUDA support, or a stub
        return
    if initialised:
        raise InputError("this process already created a CUDA context (torch.cuda was used before the cluster "
                         "started): GPU workers would inherit it and every model would land on GPU 0. Start the "
                         "cluster before touching the GPU in the client, or use a fresh process")


def local_gpu_cluster(cfg: dict[str, Any]) -> Any:
    check_no_client_cuda()
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise InputError("--cluster local-gpu needs dask-cuda: install dask-cuda "
                         "(pip install 'isovol[gpu]')") from None
    kwargs: dict[str, Any] = {
        "threads_per_worker": 1,  # one worker and one thread per GPU: the model is not shared between threads
        "memory_limit": cfg["memory_limit"],
        "dashboard_address": cfg["dashboard_address"],
        "silence_logs": logging.ERROR,
    }
    if cfg["devices"] is not None:
        kwargs["CUDA_VISIBLE_DEVICES"] = str(cfg["devices"])
    for key in ("device_memory_limit", "rmm_pool_size", "local_directory"):
        if cfg[key] is not None:
            kwargs[key] = cfg[key]
    with dask.config.set(worker_malloc_config()):  # the nannies spawn their workers now
        return LocalCUDACluster(**kwargs)


# ------------------------------------------------------------------------------------------------ slurm/pbs
def jobqueue_cluster(kind: str, cfg: dict[str, Any]) -> Any:
    """A dask-jobqueue SLURMCluster/PBSCluster (no jobs submitted yet: ``scale``/``adapt`` do that)."""
    from dask_jobqueue import PBSCluster, SLURMCluster

    gpus = int(cfg["gpus_per_job"])
    if gpus not in (0, 1):
        raise InputError(f"gpus_per_job must be 0 or 1 (one worker per GPU, each in its own job), got {gpus}; "
                         "ask for more jobs instead")
    threads = int(cfg["threads"])
    cpus = int(cfg["cpus"])
    if threads < 1 or cpus < threads:
        raise InputError(f"threads ({threads}) must be >= 1 and <= cpus ({cpus})")
    prologue = [f"export {v}={max(1, cpus // threads)}"
                for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")]
    prologue += [f"export {k}={v}" for k, v in WORKER_MALLOC_ENV.items()]  # see deploy/local.py
    prologue += list(cfg["job_script_prologue"])
    kwargs: dict[str, Any] = {
        "cores": threads,  # threads of the one worker process in each job
        "processes": 1,
        "memory": cfg["memory"],
        "walltime": cfg["walltime"],
        "queue": cfg["queue"],
        "account": cfg["account"],
        "job_name": cfg["job_name"],
        "local_directory": cfg["local_directory"],
        "log_directory": cfg["log_directory"],
        "interface": cfg["interface"],
        "death_timeout": cfg["death_timeout"],
        "worker_extra_args": worker_lifetime_args(cfg) + list(cfg["worker_extra_args"]),
        "job_script_prologue": prologue,
        "job_directives_skip": list(cfg["job_directives_skip"]),
        "scheduler_options": {"dashboard_address": cfg["dashboard_address"]},
        "silence_logs": "error",
    }
    if cfg["python"] is not None:
        kwargs["python"] = cfg["python"]
    extra = list(cfg["job_extra_directives"])
    if kind == "slurm":
        kwargs["job_cpu"] = cpus
        if gpus:
            extra.insert(0, f"--gres=gpu:{gpus}")
        return SLURMCluster(job_extra_directives=extra, **kwargs)
    if kind == "pbs":
        spec = cfg["resource_spec"]
        if spec is None:
            spec = f"select=1:ncpus={cpus}" + (f":ngpus={gpus}" if gpus else "") + f":mem={_pbs_mem(cfg['memory'])}"
        return PBSCluster(resource_spec=spec, job_extra_directives=extra, **kwargs)
    raise InputError(f"not a batch-queue cluster kind: {kind}")


def _pbs_mem(memory: str) -> str:
    """PBS wants "64gb", not "64GB" or "64GiB"."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT])i?[bB]?\s*", str(memory))
    return f"{m.group(1)}{m.group(2).lower()}b" if m else str(memory)


def scale_jobqueue(cluster: Any, cfg: dict[str, Any], jobs: int) -> None:
    if cfg["adaptive"]:
        # adaptive replaces the workers that retire at their lifetime with fresh jobs
        cluster.adapt(minimum_jobs=min(int(cfg["minimum_jobs"]), jobs), maximum_jobs=jobs)
    else:
        cluster.scale(jobs=jobs)


# ----------------------------------------------------------------------------------------------- kubernetes
def kubernetes_spec(cfg: dict[str, Any], workers: int | None = None) -> dict[str, Any]:
    """A ``DaskCluster`` resource (kubernetes.dask.org/v1) for the dask-kubernetes operator.

    The layout follows ``dask_kubernetes.operator.make_cluster_spec``, with GPU and CPU resources, the worker
    thread count and node placement added from the config.
    """
    name = str(cfg["name"])
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 50:
        raise InputError(f"kubernetes cluster name {name!r} must be lower-case letters, digits and '-' "
                         "(a DNS label, at most 50 characters)")
    user_env = {str(k): str(v) for k, v in (cfg["env"] or {}).items()}
    env = [{"name": k, "value": v} for k, v in {**WORKER_MALLOC_ENV, **user_env}.items()]  # see deploy/local.py
    gpus = int(cfg["gpus_per_worker"])
    threads = int(cfg["threads"])
    requests = {"cpu": str(cfg["cpu"]), "memory": str(cfg["memory"])}
    limits = {"cpu": str(cfg["cpu"]), "memory": str(cfg["memory"])}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)  # extended resources go in limits (requests default to them)
        env.append({"name": "ISOVOL_GPUS_PER_WORKER", "value": str(gpus)})
    worker_pod: dict[str, Any] = {
        "containers": [{
            "name": "worker",
            "image": cfg["image"],
            "imagePullPolicy": cfg["image_pull_policy"],
            "args": ["dask-worker", "--name", "$(DASK_WORKER_NAME)", "--nthreads", str(threads),
                     "--memory-limit", str(cfg["worker_memory_limit"]),
                     "--dashboard", "--dashboard-address", "8788", *map(str, cfg["worker_extra_args"])],
            "env": env,
            "resources": {"requests": requests, "limits": limits},
            "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
        }],
    }
    if cfg["node_selector"]:
        worker_pod["nodeSelector"] = dict(cfg["node_selector"])
    if cfg["tolerations"]:
        worker_pod["tolerations"] = list(cfg["tolerations"])
    scheduler_pod = {
        "containers": [{
            "name": "scheduler",
            "image": cfg["image"],
            "imagePullPolicy": cfg["image_pull_policy"],
            "args": ["dask-scheduler", "--host", "0.0.0.0"],
            "env": [e for e in env if e["name"] != "ISOVOL_GPUS_PER_WORKER"],
            "resources": {"requests": {"cpu": str(cfg["scheduler_cpu"]), "memory": str(cfg["scheduler_memory"])},
                          "limits": {"cpu": str(cfg["scheduler_cpu"]), "memory": str(cfg["scheduler_memory"])}},
            "ports": [{"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
                      {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"},
                               "initialDelaySeconds": 0, "periodSeconds": 1, "timeoutSeconds": 300},
            "livenessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"},
                              "initialDelaySeconds": 15, "periodSeconds": 20},
        }],
    }
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name},
        "spec": {
            "idleTimeout": int(cfg["idle_timeout"]),
            "worker": {"replicas": int(workers if workers is not None else cfg["workers"]), "spec": worker_pod},
            "scheduler": {
                "spec": scheduler_pod,
                "service": {
                    "type": cfg["scheduler_service_type"],
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [{"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
                              {"name": "http-dashboard", "protocol": "TCP", "port": 8787,
                               "targetPort": "http-dashboard"}],
                },
            },
        },
    }


def kubernetes_cluster(cfg: dict[str, Any], workers: int | None) -> Any:
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError:
        raise InputError("--cluster kubernetes needs dask-kubernetes: install dask-kubernetes "
                         "(pip install 'isovol[kubernetes]') and the Dask operator in the cluster") from None
    kwargs: dict[str, Any] = {"custom_cluster_spec": kubernetes_spec(cfg, workers),
                              "shutdown_on_close": bool(cfg["shutdown_on_close"])}
    if cfg["namespace"] is not None:
        kwargs["namespace"] = cfg["namespace"]
    return KubeCluster(**kwargs)


# ------------------------------------------------------------------------------------------------- the door
def check_cluster(kind: str, config_path: str | os.PathLike | None = None, scheduler: str | None = None) -> None:
    """Refuse a bad kind, config file or combination before anything is written."""
    load_config(kind or "local", config_path)
    if scheduler and (kind or "local") != "local":
        raise InputError(f"--scheduler joins a running cluster; it excludes --cluster {kind}")


@contextlib.contextmanager
def open_cluster(kind: str = "local", config_path: str | os.PathLike | None = None, workers: int | None = None,
                 scheduler: str | None = None, *, processes: bool = True) -> Iterator[Any]:
    """A dask Client on a cluster of ``kind`` configured by ``deploy/<kind>.yaml`` and ``config_path``.

    ``workers`` (``--workers``) overrides the config's worker count (jobs for slurm/pbs, pods for kubernetes).
    ``scheduler`` joins a running cluster instead; it goes only with the default kind.  The cluster is closed on
    exit (a joined one is left running).
    """
    kind = kind or "local"
    cfg = load_config(kind, config_path)
    if scheduler:
        if kind != "local":
            raise InputError(f"--scheduler joins a running cluster; it excludes --cluster {kind}")
        with cluster_client(scheduler=scheduler) as client:
            yield client
        return
    if kind == "local":
        with cluster_client(workers or cfg["workers"], processes=processes and bool(cfg["processes"]),
                            threads_per_worker=int(cfg["threads_per_worker"])) as client:
            yield client
        return

    from distributed import Client

    quiet_dask_logs()
    if kind == "local-gpu":
        cluster = local_gpu_cluster(cfg)
    elif kind in ("slurm", "pbs"):
        cluster = jobqueue_cluster(kind, cfg)
        jobs = int(workers or cfg["jobs"])
        scale_jobqueue(cluster, cfg, jobs)
        log.info("%s: asked for %d job(s); blocks start as workers join", kind, jobs)
    elif kind == "kubernetes":
        cluster = kubernetes_cluster(cfg, workers)
    else:  # load_config refused it already
        raise InputError(f"unknown cluster kind {kind!r}")
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()
