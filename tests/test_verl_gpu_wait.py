"""verl on a Ray cluster whose GPU workers scale from zero: the rl-stage3 step asks the autoscaler for
verl's GPUs and waits until the cluster has them available, with a stand-in resource view and a fake
clock. Ray is never started (ray.init is replaced wherever the production wiring would call it)."""

from __future__ import annotations

import logging

import pytest

from sidreasoner import config
from sidreasoner.rl import verl_backend
from sidreasoner.rl.verl_backend import ClusterGPUTimeout, wait_for_gpus

LOGGER = "sidreasoner.rl.verl_backend"


class FakeCluster:
    """Available resources whose GPUs appear at the `appear_at`-th look (never when None); a clock that
    only the recorded sleeps move."""

    def __init__(self, gpus: float, appear_at: int | None, before: float = 0):
        self.gpus, self.appear_at, self.before = gpus, appear_at, before
        self.looks, self.requests, self.sleeps, self.now = 0, [], [], 100.0

    def available(self) -> dict:
        self.looks += 1
        shown = self.appear_at is not None and self.looks >= self.appear_at
        return {"CPU": 32.0, "memory": 1e9, "GPU": self.gpus if shown else self.before}

    def request(self, bundles: list[dict]) -> None:
        self.requests.append(bundles)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def wait(cluster: FakeCluster, nnodes: int, gpus_per_node: int, timeout_s: float) -> float:
    return wait_for_gpus(
        nnodes,
        gpus_per_node,
        timeout_s,
        cluster.available,
        cluster.request,
        clock=cluster.clock,
        sleep=cluster.sleep,
        poll_s=10,
    )


def timeout_message(have: str, waited: str, timeout: str) -> str:
    return (
        f"stage3 (verl): the Ray cluster (stage3.verl.ray_address) had {have} GPU(s) available after waiting "
        f"{waited} s (stage3.verl.gpu_wait_s={timeout}); verl needs 8 (stage3.verl.nnodes=2 x "
        "stage3.verl.n_gpus_per_node=4) and fails without them. Check that the RayCluster can run 2 worker(s) "
        "of 4 GPU(s): the chart's rayCluster.workers.maxReplicas (>= 2) and rayCluster.workers.gpus (>= 4), "
        "rayCluster.enableInTreeAutoscaling (without the autoscaler, rayCluster.workers.replicas), and that "
        "Kubernetes has GPU nodes for the workers (pending ray-worker pods, the autoscaler container's log on "
        "the Ray head); or raise stage3.verl.gpu_wait_s"
    )


def test_waits_until_the_requested_gpus_appear_and_logs_progress(caplog):
    cluster = FakeCluster(gpus=8, appear_at=3)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert wait(cluster, nnodes=2, gpus_per_node=4, timeout_s=1800) == 8.0
    assert cluster.requests == [[{"GPU": 4.0}, {"GPU": 4.0}]]  # one bundle per node, asked for once
    assert (cluster.looks, cluster.sleeps) == (3, [10, 10])
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        "stage3 (verl): waiting for the Ray cluster's GPUs: 0 available, 8 needed, 0 s of 1800 s",
        "stage3 (verl): waiting for the Ray cluster's GPUs: 0 available, 8 needed, 10 s of 1800 s",
        "stage3 (verl): the Ray cluster has 8 GPU(s) available, 8 needed (after 20 s)",
    ]


def test_gpus_that_never_come_fail_at_the_timeout_with_what_to_check():
    cluster = FakeCluster(gpus=8, appear_at=None, before=4)  # one of the two workers came up
    with pytest.raises(ClusterGPUTimeout) as err:
        wait(cluster, nnodes=2, gpus_per_node=4, timeout_s=25)
    assert str(err.value) == timeout_message("4", "25", "25")
    # Looks at 0, 10, 20 and 25 s: the last sleep is cut to end at the timeout, and nothing sleeps after it.
    assert (cluster.looks, cluster.sleeps, cluster.now) == (4, [10, 10, 5], 125.0)
    assert cluster.requests == [[{"GPU": 4.0}, {"GPU": 4.0}]]


def test_zero_wait_checks_once():
    enough = FakeCluster(gpus=8, appear_at=1)
    assert wait(enough, nnodes=2, gpus_per_node=4, timeout_s=0) == 8.0
    assert (enough.looks, enough.sleeps, enough.requests) == (1, [], [[{"GPU": 4.0}, {"GPU": 4.0}]])
    short = FakeCluster(gpus=8, appear_at=2)  # they would come on the second look, which never happens
    with pytest.raises(ClusterGPUTimeout) as err:
        wait(short, nnodes=2, gpus_per_node=4, timeout_s=0)
    assert str(err.value) == timeout_message("0", "0", "0")
    assert (short.looks, short.sleeps) == (1, [])


def test_more_gpus_than_needed_and_a_cluster_without_gpu_key():
    assert wait(FakeCluster(gpus=16, appear_at=1), nnodes=1, gpus_per_node=8, timeout_s=60) == 16.0
    no_gpu_key = FakeCluster(gpus=8, appear_at=None)
    no_gpu_key.available = lambda: {"CPU": 4.0}  # a head without GPUs lists no GPU resource at all
    with pytest.raises(ClusterGPUTimeout, match=r"had 0 GPU\(s\) available after waiting 0 s"):
        wait(no_gpu_key, nnodes=2, gpus_per_node=4, timeout_s=0)


# ---------------------------------------------------------------- the config


def test_gpu_wait_setting_defaults_and_bounds():
    assert config.load("demo").stage3.verl.gpu_wait_s == 1800
    assert config.load("demo", ["stage3.verl.gpu_wait_s=0"]).stage3.verl.gpu_wait_s == 0
    with pytest.raises(config.ConfigError) as err:
        config.load("demo", ["stage3.verl.gpu_wait_s=-1"])
    assert str(err.value) == (
        "invalid config:\n  stage3.verl.gpu_wait_s: Input should be greater than or equal to 0 (got -1)"
    )


def test_ray_cluster_with_gpus_on_the_rl_pod_is_refused():
    address = "stage3.verl.ray_address=ray://sidreasoner-ray-head-svc.kubeflow.svc.cluster.local:10001"
    with pytest.raises(config.ConfigError) as err:
        config.load("office", [address])  # verl, and rl-stage3 asks for 4 GPUs
    assert str(err.value) == (
        "invalid config:\n  cluster.resources.rl-stage3.gpus: stage3.verl.ray_address is set, so verl trains on "
        "that Ray cluster's GPUs and the rl-stage3 pod's own GPUs would sit idle: drop "
        "cluster.resources.rl-stage3.gpus (--set cluster.resources.rl-stage3.gpus=0), or drop "
        "stage3.verl.ray_address to train on the pod's GPUs (got 4)"
    )
    assert config.load("office", [address, "cluster.resources.rl-stage3.gpus=0"]).stage3.verl.ray_address
    assert config.load("office").cluster.resources["rl-stage3"].gpus == 4  # a local Ray head uses the pod's GPUs
    assert config.load("office", [address, "stage3.backend=trl", "stage3.reward=rule"]).stage3.backend == "trl"
    assert config.load("demo", ["stage3.backend=verl", address]).stage3.verl.ray_address  # no rl-stage3 resources


# ---------------------------------------------------------------- the production wiring, without Ray


@pytest.fixture
def fake_ray(monkeypatch):
    """ray.init/shutdown recorded instead of connecting; `events` is the order of what happened."""
    ray = pytest.importorskip("ray")
    events: list = []
    monkeypatch.setattr(ray, "init", lambda address=None, **kw: events.append(("init", address, kw)))
    monkeypatch.setattr(ray, "shutdown", lambda: events.append("shutdown"))
    monkeypatch.setattr(verl_backend, "_request_on_cluster", lambda bundles: events.append(("request", bundles)))
    return ray, events


def cluster_config(*extra: str):
    return config.load(
        "demo",
        [
            "stage3.backend=verl",
            "stage3.verl.ray_address=ray://head:10001",
            "stage3.verl.nnodes=2",
            "stage3.verl.n_gpus_per_node=4",
            *extra,
        ],
    )


def test_cluster_gpus_waits_with_rays_resource_view_then_withdraws_the_request(fake_ray, monkeypatch):
    ray, events = fake_ray
    calls = []
    monkeypatch.setattr(verl_backend, "wait_for_gpus", lambda *args: calls.append(args) or events.append("wait"))
    with verl_backend.cluster_gpus(cluster_config("stage3.verl.gpu_wait_s=600")):
        events.append("verl")
    assert len(calls) == 1
    nnodes, per_node, timeout, available, request = calls[0]
    assert (nnodes, per_node, timeout) == (2, 4, 600)
    assert available is ray.available_resources  # looked up, never called here
    assert request is verl_backend._request_on_cluster
    assert events == [
        ("init", "ray://head:10001", {}),
        "wait",
        "shutdown",
        "verl",
        ("init", "ray://head:10001", {}),
        ("request", []),
        "shutdown",
    ]


def test_a_failed_wait_still_withdraws_the_request_and_verl_never_starts(fake_ray, monkeypatch):
    _, events = fake_ray

    def times_out(*args):
        raise ClusterGPUTimeout("no GPUs")

    monkeypatch.setattr(verl_backend, "wait_for_gpus", times_out)
    with pytest.raises(ClusterGPUTimeout, match="^no GPUs$"):
        with verl_backend.cluster_gpus(cluster_config()):
            events.append("verl")
    assert events == [
        ("init", "ray://head:10001", {}),
        "shutdown",
        ("init", "ray://head:10001", {}),
        ("request", []),
        "shutdown",
    ]


def test_an_unreachable_cluster_names_the_setting(fake_ray, monkeypatch):
    ray, events = fake_ray

    def refuse(address=None, **kw):
        events.append(("init", address))
        raise ConnectionError("ray client connection timeout")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConnectionError) as err:
        with verl_backend.cluster_gpus(cluster_config()):
            events.append("verl")
    assert str(err.value) == (
        "stage3.verl.ray_address=ray://head:10001: cannot connect to the Ray cluster (ray client connection timeout)"
    )
    assert events == [("init", "ray://head:10001")]  # nothing was requested, so nothing to withdraw


def test_a_failed_withdrawal_only_warns(fake_ray, monkeypatch, caplog):
    _, events = fake_ray

    def broken(bundles):
        raise RuntimeError("head gone")

    monkeypatch.setattr(verl_backend, "wait_for_gpus", lambda *args: events.append("wait"))
    monkeypatch.setattr(verl_backend, "_request_on_cluster", broken)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        with verl_backend.cluster_gpus(cluster_config()):
            events.append("verl")
    assert events[-2:] == [("init", "ray://head:10001", {}), "shutdown"]
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        "stage3 (verl): could not withdraw the GPU request from the Ray cluster at ray://head:10001 (head gone): "
        "its autoscaler keeps the GPU workers until another request replaces it"
    ]


def test_without_a_ray_address_nothing_connects(fake_ray, monkeypatch):
    _, events = fake_ray
    monkeypatch.setattr(verl_backend, "wait_for_gpus", lambda *args: events.append("wait"))
    with verl_backend.cluster_gpus(config.load("demo", ["stage3.backend=verl"])):
        events.append("verl")
    assert events == ["verl"]


def test_the_request_runs_rays_request_resources_as_a_task_on_the_cluster(monkeypatch):
    ray = pytest.importorskip("ray")
    from ray.autoscaler.sdk import request_resources

    seen = {}

    class Task:
        def remote(self, **kwargs):
            seen["kwargs"] = kwargs
            return "object-ref"

    def remote(**options):
        seen["options"] = options

        def wrap(fn):
            seen["fn"] = fn
            return Task()

        return wrap

    monkeypatch.setattr(ray, "remote", remote)
    monkeypatch.setattr(ray, "get", lambda ref: seen.setdefault("got", ref))
    monkeypatch.setattr(ray, "init", lambda *a, **kw: pytest.fail("Ray must not start in tests"))
    verl_backend._request_on_cluster([{"GPU": 4.0}, {"GPU": 4.0}])
    assert seen == {
        "options": {"num_cpus": 0},
        "fn": request_resources,
        "kwargs": {"bundles": [{"GPU": 4.0}, {"GPU": 4.0}]},
        "got": "object-ref",
    }
