"""--cluster: the job scripts and resources isovol would hand to SLURM, PBS and Kubernetes, the config files, the
CUDA pre-flight, and the default local cluster through the CLI. Nothing here needs a batch system, Kubernetes
or a GPU: job scripts are rendered by dask-jobqueue without submitting anything, as its own tests do."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from isovol.deploy.clusters import (
    KINDS,
    check_no_client_cuda,
    default_config,
    jobqueue_cluster,
    kubernetes_spec,
    load_config,
    open_cluster,
    seconds,
)
from isovol.pipeline.errors import InputError

ISOVOL = str(Path(sys.executable).with_name("isovol"))


def job_script(kind: str, **overrides) -> str:
    cfg = load_config(kind, overrides={"dashboard_address": None, **overrides})
    with jobqueue_cluster(kind, cfg) as cluster:
        return cluster.job_script()


def header(script: str, prefix: str) -> list[str]:
    return [line[len(prefix):].strip() for line in script.splitlines() if line.startswith(prefix)]


def worker_line(script: str) -> str:
    (line,) = [ln for ln in script.splitlines() if "distributed.cli.dask_worker" in ln]
    return line


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_documented_defaults(kind):
    text = (Path(__file__).resolve().parents[2] / "deploy" / f"{kind}.yaml").read_text()
    cfg = default_config(kind)
    assert cfg and isinstance(cfg, dict)
    for key in cfg:  # every key is explained by a comment line somewhere above it
        lines = text.splitlines()
        i = next(n for n, ln in enumerate(lines) if ln.startswith(f"{key}:"))
        assert any(ln.startswith("#") for ln in lines[:i]), key


def test_unknown_keys_are_refused_clearly(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("jobs: 3\nwalltim: '01:00:00'\n")
    with pytest.raises(InputError, match=r"unknown key\(s\) 'walltim' in .*c\.yaml for --cluster slurm; known keys"):
        load_config("slurm", f)


def test_invalid_yaml_is_one_line_with_its_place(tmp_path):
    """PyYAML's own message spans three lines; the CLI prints errors as one."""
    f = tmp_path / "bad.yaml"
    f.write_text("workers: 2\ncluster: [\n")
    with pytest.raises(InputError) as info:
        load_config("local", f)
    msg = str(info.value)
    assert "\n" not in msg and "not valid YAML" in msg and "line 3, column 1" in msg, msg


@pytest.mark.parametrize("value", ["many", 0, -2, 1.5, True])
def test_a_count_whose_default_is_null_is_still_checked(tmp_path, value):
    """``workers: null`` means "pick one"; any value given must be a whole number >= 1, or the cluster start-up
    fails later with a traceback."""
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"workers": value}))
    with pytest.raises(InputError, match="workers in .* must be a whole number of at least 1"):
        load_config("local", f)
    f.write_text("workers: 3\n")
    assert load_config("local", f)["workers"] == 3


def test_overrides_apply_and_types_are_checked(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("jobs: 3\nqueue: gpu\njob_extra_directives: ['--qos=high']\n")
    cfg = load_config("slurm", f)
    assert cfg["jobs"] == 3 and cfg["queue"] == "gpu" and cfg["job_extra_directives"] == ["--qos=high"]
    assert cfg["memory"] == default_config("slurm")["memory"]
    f.write_text("walltime: 12:00:00\n")  # unquoted: YAML 1.1 reads a number of seconds
    with pytest.raises(InputError, match="walltime .* must be a str.*quote times"):
        load_config("slurm", f)
    f.write_text("- a list\n")
    with pytest.raises(InputError, match="must be a mapping"):
        load_config("pbs", f)
    with pytest.raises(InputError, match="not found"):
        load_config("pbs", tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="unknown cluster kind"):
        load_config("yarn")


def test_durations():
    assert seconds("02:00:00", "t") == 7200
    assert seconds("1-00:30:00", "t") == 86400 + 1800
    assert seconds("55m", "t") == 3300 and seconds("90s", "t") == 90
    with pytest.raises(InputError, match="cannot read the duration"):
        seconds("soon", "walltime")


# ---------------------------------------------------------------------------------------------- job scripts
def test_slurm_job_script_carries_the_directives():
    script = job_script("slurm", walltime="04:00:00", memory="48GB", cpus=6, gpus_per_job=1, queue="gpu",
                        account="lab", lifetime_margin="10m", lifetime_stagger="3m",
                        job_extra_directives=["--constraint=h100", "--qos=high"],
                        job_script_prologue=["module load cuda"])
    h = header(script, "#SBATCH")
    assert "--gres=gpu:1" in h
    assert "-t 04:00:00" in h
    assert "--cpus-per-task=6" in h
    assert any(d.startswith("--mem=") and d.endswith("G") for d in h)
    assert "-p gpu" in h and "-A lab" in h and "-J isovol" in h
    assert "--constraint=h100" in h and "--qos=high" in h
    w = worker_line(script)
    assert "--lifetime 13800s --lifetime-stagger 180s" in w  # 4 h - 10 min, +/- 3 min: before the walltime
    assert "--nthreads 1" in w and "--local-directory $TMPDIR" in w
    assert "module load cuda" in script and "export OMP_NUM_THREADS=6" in script
    assert "export MALLOC_MMAP_THRESHOLD_=33554432" in script  # before dask worker starts: glibc reads it once
    assert script.index("export MALLOC_MMAP_THRESHOLD_") < script.index(worker_line(script))


def test_slurm_cpu_jobs_ask_for_no_gpu():
    h = header(job_script("slurm", gpus_per_job=0, threads=4, cpus=8), "#SBATCH")
    assert not any("gres" in d for d in h)


def test_pbs_job_script_carries_the_directives():
    script = job_script("pbs", walltime="01:30:00", memory="32GB", cpus=4, gpus_per_job=1,
                        lifetime="70m", lifetime_stagger="5m", job_extra_directives=["-l place=excl"])
    h = header(script, "#PBS")
    assert "-l select=1:ncpus=4:ngpus=1:mem=32gb" in h
    assert "-l walltime=01:30:00" in h
    assert "-l place=excl" in h and "-N isovol" in h
    assert "--lifetime 4200s --lifetime-stagger 300s" in worker_line(script)


def test_pbs_resource_spec_passthrough():
    h = header(job_script("pbs", resource_spec="nodes=1:ppn=8:gpus=1"), "#PBS")
    assert "-l nodes=1:ppn=8:gpus=1" in h


@pytest.mark.parametrize("bad", [{"lifetime": "2h"}, {"lifetime_margin": "1m", "lifetime_stagger": "2m"},
                                 {"gpus_per_job": 2}])
def test_batch_settings_that_would_fail_late_are_refused(bad):
    with pytest.raises(InputError, match="walltime|one worker per GPU"):
        job_script("slurm", walltime="02:00:00", **bad)


# ----------------------------------------------------------------------------------------------- kubernetes
def test_kubernetes_spec_carries_image_workers_gpus_env(tmp_path):
    f = tmp_path / "k.yaml"
    f.write_text(yaml.safe_dump({"image": "registry.example/isovol:1", "workers": 3, "gpus_per_worker": 1,
                                 "env": {"AWS_REGION": "eu-west-1"}, "node_selector": {"gpu": "h100"}}))
    spec = kubernetes_spec(load_config("kubernetes", f))
    assert spec["apiVersion"] == "kubernetes.dask.org/v1" and spec["kind"] == "DaskCluster"
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 3
    (c,) = worker["spec"]["containers"]
    assert c["image"] == "registry.example/isovol:1"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in c["env"]
    assert {"name": "MALLOC_MMAP_THRESHOLD_", "value": "33554432"} in c["env"]
    assert c["args"][:2] == ["dask-worker", "--name"] and "--nthreads" in c["args"]
    assert worker["spec"]["nodeSelector"] == {"gpu": "h100"}
    (s,) = spec["spec"]["scheduler"]["spec"]["containers"]
    assert s["image"] == "registry.example/isovol:1" and "nvidia.com/gpu" not in s["resources"]["limits"]
    assert kubernetes_spec(load_config("kubernetes"), workers=7)["spec"]["worker"]["replicas"] == 7
    cpu = kubernetes_spec(load_config("kubernetes", overrides={"gpus_per_worker": 0}))
    assert "nvidia.com/gpu" not in cpu["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]


def test_kubernetes_spec_follows_the_operator_resource_model():
    """The required fields of the DaskCluster CRD (dask_kubernetes/operator/customresources/templates.yaml:
    spec.{scheduler,worker}; worker.spec; scheduler.{spec,service}) and of the pod specs inside."""
    spec = kubernetes_spec(load_config("kubernetes"))
    assert set(spec) == {"apiVersion", "kind", "metadata", "spec"} and spec["metadata"]["name"] == "isovol"
    body = spec["spec"]
    assert {"scheduler", "worker"} <= set(body) and isinstance(body["idleTimeout"], int)
    assert "spec" in body["worker"] and isinstance(body["worker"]["replicas"], int)
    assert {"spec", "service"} <= set(body["scheduler"])
    for pod in (body["worker"]["spec"], body["scheduler"]["spec"]):
        for c in pod["containers"]:
            assert c["name"] and c["image"] and all(isinstance(a, str) for a in c["args"])
            for q in c["resources"].values():
                assert all(isinstance(v, str) for v in q.values())  # Kubernetes quantities
    svc = body["scheduler"]["service"]
    assert svc["selector"] == {"dask.org/cluster-name": "isovol", "dask.org/component": "scheduler"}
    assert {p["port"] for p in svc["ports"]} == {8786, 8787}
    yaml.safe_dump(spec)  # plain data, ready for kubectl apply -f


def test_kubernetes_spec_matches_dask_kubernetes_where_installed():
    operator = pytest.importorskip("dask_kubernetes.operator")
    ours = kubernetes_spec(load_config("kubernetes", overrides={"gpus_per_worker": 0}))
    theirs = operator.make_cluster_spec(name="isovol", image=ours["spec"]["worker"]["spec"]["containers"][0]["image"],
                                        n_workers=2)
    assert ours["spec"]["scheduler"]["service"] == theirs["spec"]["scheduler"]["service"]
    assert set(theirs["spec"]) <= set(ours["spec"])


def test_bad_kubernetes_name_is_refused():
    with pytest.raises(InputError, match="DNS label"):
        kubernetes_spec(load_config("kubernetes", overrides={"name": "My_Cluster"}))


# -------------------------------------------------------------------------------------------- local-gpu
def test_cuda_preflight_refuses_a_client_with_a_cuda_context(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(InputError, match="CUDA context.*GPU 0"):
        check_no_client_cuda()
    with pytest.raises(InputError, match="CUDA context"), open_cluster("local-gpu"):
        pass


def test_cuda_preflight_passes_and_never_imports_torch(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    check_no_client_cuda()
    assert "torch" not in sys.modules
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: False))
    monkeypatch.setitem(sys.modules, "torch", fake)
    check_no_client_cuda()


def test_local_gpu_without_dask_cuda_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # import fails as if not installed
    with pytest.raises(InputError, match="install dask-cuda"), open_cluster("local-gpu"):
        pass


def test_scheduler_excludes_other_kinds():
    with pytest.raises(InputError, match="excludes --cluster slurm"), open_cluster("slurm", scheduler="tcp://x:1"):
        pass


# ------------------------------------------------------------------------------------------------ local
def test_cli_cluster_local_behaves_as_before(tmp_path):
    from isovol.pipeline.io.omezarr import open_level0
    from isovol.pipeline.methods import get_method, upsample_array

    rng = np.random.default_rng(0)
    vol = rng.integers(0, 255, (6, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "in.npy", vol)
    cfg = tmp_path / "local.yaml"
    cfg.write_text("threads_per_worker: 1\n")
    out = tmp_path / "out.ome.zarr"
    res = subprocess.run([ISOVOL, "upsample", str(tmp_path / "in.npy"), str(out), "--factor", "4", "--voxel-size",
                          "40,10,10", "--cluster", "local", "--cluster-config", str(cfg), "--workers", "1",
                          "--no-progress"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(open_level0(str(out), mode="r")[...],
                                  upsample_array(vol, 4, get_method("cubic")))
    bad = tmp_path / "bad.yaml"
    bad.write_text("wokers: 2\n")
    res = subprocess.run([ISOVOL, "upsample", str(tmp_path / "in.npy"), str(tmp_path / "o2.ome.zarr"), "--factor",
                          "4", "--voxel-size", "40,10,10", "--cluster-config", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "unknown key(s) 'wokers'" in res.stderr
    assert not (tmp_path / "o2.ome.zarr").exists()  # refused before anything was written


def _malloc_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}


def test_local_workers_start_with_the_heap_settings_of_deploy_local():
    """dask's MALLOC_TRIM_THRESHOLD_ removed, the mmap threshold fixed: set in the environment the worker process
    starts with, since glibc reads it only then (a setting made later does not take)."""
    from isovol.deploy.local import cluster_client

    with cluster_client(1) as client:
        (env,) = client.run(_malloc_env).values()
    assert env.get("MALLOC_MMAP_THRESHOLD_") == "33554432"
    assert "MALLOC_TRIM_THRESHOLD_" not in env or os.environ.get("MALLOC_TRIM_THRESHOLD_")  # ours, or inherited

