"""Tests deploy/k8s/*.yaml without a cluster: the schema (through the `kubernetes` package's models,
where it is installed), the Indexed Job's wiring, and — for the CPU manifest — every completion
index's container command run here as Kubernetes would run it (JOB_COMPLETION_INDEX and the
manifest's env set, the ConfigMap and PVC mounts mapped to local folders) on a tiny plan, then the
render Job's command; the merged leaderboard must equal an unsharded sweep's (but wall-clock).

Usage: python3 deploy/k8s/check.py HARNESS_BINARY
"""
import csv
import os
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("batch/v1", "Job"): "V1Job",
}


def docs(name):
    with open(os.path.join(HERE, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def check_schema(name, ds):
    try:
        from kubernetes.client import ApiClient
    except ImportError:
        print(f"k8s test: schema of {name} not checked (the kubernetes Python package is not installed)")
        return
    api = ApiClient()
    for d in ds:
        model = KINDS[(d["apiVersion"], d["kind"])]
        obj = api._ApiClient__deserialize(d, model)
        back = api.sanitize_for_serialization(obj)
        # A field the model does not know is dropped on the way in: the round trip shows it.
        assert back == d, f"{name}: {d['kind']} {d['metadata']['name']} has fields the schema lacks:\n{back}\n!=\n{d}"
    print(f"k8s test: {name}: {len(ds)} objects valid against kubernetes {__import__('kubernetes').__version__} models")


def tiny_plan(out):
    """The cluster tests' tiny sweep (deploy/tiny-plan.toml.in), 40 steps, writing to `out`."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "tiny-plan.toml.in")) as f:
        return f.read().replace("@OUT@", out).replace("@STEPS@", "40")


def run_container(c, env_extra, mounts, harness):
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(harness) + os.pathsep + env["PATH"]
    for e in c.get("env", []):
        v = e["value"]
        for path, local in mounts.items():
            v = v.replace(path, local)
        env[e["name"]] = v
    env.update(env_extra)
    r = subprocess.run(c["command"] + c["args"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{c['name']} failed: {r.stderr}"
    return r.stdout


def rows(path):
    with open(path) as f:
        out = []
        for r in csv.DictReader(f):
            r.pop("wall_clock_s")
            out.append(tuple(sorted(r.items())))
    return sorted(out)


def main():
    harness = os.path.abspath(sys.argv[1])
    cpu, gpu = docs("sweep-job.yaml"), docs("sweep-job-gpu.yaml")
    check_schema("sweep-job.yaml", cpu)
    check_schema("sweep-job-gpu.yaml", gpu)
    for name, ds in [("sweep-job.yaml", cpu), ("sweep-job-gpu.yaml", gpu)]:
        sweep = next(d for d in ds if d["kind"] == "Job" and d["metadata"]["name"] == "lime-bench-sweep")
        spec = sweep["spec"]
        assert spec["completionMode"] == "Indexed", name
        c = spec["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert int(env["SHARDS"]) == spec["completions"], f"{name}: SHARDS != completions"
        # Without a CPU limit the container sees every core of the node: threads = the request.
        assert env.get("RAYON_NUM_THREADS") == c["resources"]["requests"]["cpu"], \
            f"{name}: RAYON_NUM_THREADS != the CPU request"
        plan = next(d for d in ds if d["kind"] == "ConfigMap")["data"]["plan.toml"]
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert 'out = "/results"' in plan and "/results" in mounts, f"{name}: plan out is not the PVC"
        assert env["PLAN"].startswith("/config/") and "/config" in mounts, name
        if "gpu" in name:
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and 'device = "cuda"' in plan

    sweep = next(d for d in cpu if d["metadata"]["name"] == "lime-bench-sweep")
    render = next(d for d in cpu if d["metadata"]["name"] == "lime-bench-render")
    with tempfile.TemporaryDirectory() as tmp:
        config, results = os.path.join(tmp, "config"), os.path.join(tmp, "results")
        os.makedirs(config)
        with open(os.path.join(config, "plan.toml"), "w") as f:
            f.write(tiny_plan(results))
        mounts = {"/config": config, "/results": results}
        n = sweep["spec"]["completions"]
        c = sweep["spec"]["template"]["spec"]["containers"][0]
        for i in range(n):
            run_container(c, {"JOB_COMPLETION_INDEX": str(i)}, mounts, harness)
        run_container(render["spec"]["template"]["spec"]["containers"][0], {}, mounts, harness)
        whole = os.path.join(tmp, "whole")
        with open(os.path.join(tmp, "whole.toml"), "w") as f:
            f.write(tiny_plan(whole))
        subprocess.run([harness, "sweep", os.path.join(tmp, "whole.toml"), "--quiet"], check=True, capture_output=True)
        with open(os.path.join(tmp, "whole.csv"), "w") as f:
            subprocess.run([harness, "leaderboard", "--results", whole, "--format", "csv"], check=True, stdout=f)
        a, b = rows(os.path.join(results, "leaderboard.csv")), rows(os.path.join(tmp, "whole.csv"))
        assert a == b, f"merged {a}\n!= unsharded {b}"
        print(f"k8s test: {n} indexed pods' commands run here; merged leaderboard = unsharded ({len(a)} rows)")


if __name__ == "__main__":
    main()
