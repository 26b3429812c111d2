"""Connecting to Ray, and a pool of model-holding actors that survives lost workers.

Every worker first runs `setup()` (check and load the models, report node and device); no work
reaches a worker before its setup succeeded, and a setup that finds a model missing stops the
stage with the worker's node in the message. Tasks are handed to ready workers, at most
`ray.tasks_per_worker` each; a worker that dies (process killed, node lost) has its unfinished
tasks queued again for the others and is replaced while `ray.max_worker_restarts` allows. The
driver only ever receives whole task results, so every task is applied exactly once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from alien_hotels.common import StageError
from alien_hotels.distributed.config import RayConfig

log = logging.getLogger("alien_hotels.distributed")

# Workers start with one string-hash seed: set iteration order (CLIP Interrogator's chain
# iterates a set of phrases, whose order decides exact ties) is then the same on every worker
# and equal to `alien-hotels caption`'s own (`cli.pin_hash_seed`).
HASH_SEED = "0"


def node_name() -> str:
    """`hostname (ip)` of the calling process's node, for messages."""
    import ray.util

    return f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"


class Worker:
    """Base of the actors: `load()` the models once, then `run(payload)` per task."""

    def setup(self) -> dict[str, Any]:
        """Load the models; report where this worker runs, or why it cannot (a StageError)."""
        # `string_hash` tells whether this process iterates sets of strings as the others do
        info = {"node": node_name(), "pid": os.getpid(), "string_hash": hash("alien-hotels")}
        try:
            info.update(self.load())
        except StageError as exc:
            return {**info, "error": str(exc)}
        return info

    def load(self) -> dict[str, Any]:
        raise NotImplementedError


def _check_reachable(address: str, timeout: float) -> None:
    host, port = address.removeprefix("ray://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise StageError(
            f"ray.address={address}: cannot reach the Ray cluster at {host}:{port} "
            f"({exc}); start it (`ray start --head` / `ray up cluster.yaml`) or fix ray.address "
            "(null runs a Ray instance on this machine). Nothing was computed or written."
        ) from None


# How a driver gets a token-auth cluster's token (docs/scale.md, "Authentication").
TOKEN_FIX = (
    "Print the cluster's token on the head node with `ray get-auth-token`, save it in a file on "
    "this machine and set RAY_AUTH_TOKEN_PATH to that file (or export it as RAY_AUTH_TOKEN); "
    'see docs/scale.md, "Authentication".'
)


@contextmanager
def ray_session(cfg: RayConfig | None, what: str) -> Iterator[None]:
    """Connected to the cluster of `ray.address` for the block (an existing connection of this
    process, e.g. a notebook's, is used and left open)."""
    import ray
    from ray.exceptions import AuthenticationError

    if cfg is None:
        raise StageError(
            f"{what}.executor=ray needs the ray section in params.yaml: compose it with "
            "`alien-hotels compose > params.yaml`"
        )
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {
        "namespace": cfg.namespace,
        "runtime_env": cfg.runtime_env or None,
        "log_to_driver": True,
        "logging_level": logging.WARNING,
    }
    if cfg.address is None:
        kwargs.update(num_cpus=cfg.local_num_cpus, include_dashboard=False)
    elif cfg.address != "auto":
        _check_reachable(cfg.address, cfg.connect_timeout_s)
    try:
        # "local": always a new instance here, never a stale /tmp/ray/ray_current_cluster
        ray.init(address=cfg.address or "local", **kwargs)
    except AuthenticationError as exc:
        # RAY_AUTH_MODE=token and no token here. Ray's own advice (`ray get-auth-token
        # --generate`) would make a new token, one the cluster does not accept.
        raise StageError(
            f"ray.address={cfg.address}: {exc.message} (RAY_AUTH_MODE=token). {TOKEN_FIX} "
            "Nothing was computed or written."
        ) from None
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        if cfg.address is None:
            hint = ""
        elif os.environ.get("RAY_AUTH_MODE") != "token":
            hint = (
                " If the cluster uses token authentication, set RAY_AUTH_MODE=token and give "
                f"this machine the cluster's token: {TOKEN_FIX}"
            )
        else:
            hint = (
                " If the log above says `InvalidAuthToken`, this machine's token is not the "
                f"cluster's: {TOKEN_FIX}"
            )
        raise StageError(
            f"ray.address={cfg.address}: cannot connect to the Ray cluster ({exc}).{hint} "
            "Nothing was computed or written."
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


@dataclass
class _Slot:
    actor: Any
    info: dict[str, Any] = field(default_factory=dict)
    busy: int = 0


class ActorPool:
    """`num_workers` actors of `worker_cls`; see the module docstring."""

    def __init__(
        self,
        worker_cls: type[Worker],
        args: tuple,
        cfg: RayConfig,
        what: str,
        agree_on: Sequence[str] = (),
    ):
        import ray

        options: dict[str, Any] = {
            "num_cpus": cfg.num_cpus_per_worker,
            "num_gpus": cfg.num_gpus_per_worker,
            "max_restarts": 0,  # replacements are this pool's job: they must pass setup first
            "max_task_retries": 0,
            # merged into the job's runtime_env per variable (Ray's rule for env_vars)
            "runtime_env": {"env_vars": {"PYTHONHASHSEED": HASH_SEED}},
        }
        if cfg.memory_per_worker:
            options["memory"] = cfg.memory_per_worker
        if cfg.resources_per_worker:
            options["resources"] = dict(cfg.resources_per_worker)
        if cfg.accelerator_type:
            options["accelerator_type"] = cfg.accelerator_type
        self._remote = ray.remote(worker_cls).options(**options)
        self._args = args
        self.cfg = cfg
        self.what = what
        self.agree_on = ("string_hash", *agree_on)
        self.reference: dict[str, Any] | None = None
        self.ready: dict[int, _Slot] = {}
        self.starting: dict[Any, _Slot] = {}  # setup ref -> slot
        self.restarts_left = cfg.max_worker_restarts
        self.workers_lost = 0
        self.tasks_retried = 0
        self.nodes: set[str] = set()
        self._next_id = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        import ray

        for slot in [*self.ready.values(), *self.starting.values()]:
            ray.kill(slot.actor, no_restart=True)
        self.ready.clear()
        self.starting.clear()

    def _spawn(self) -> None:
        slot = _Slot(self._remote.remote(*self._args))
        self.starting[slot.actor.setup.remote()] = slot

    def start(self) -> dict[str, Any]:
        """Start the workers; return once `min_workers` loaded their models (the first one's
        report: node, device, ...). Raises StageError when one cannot, or on timeout."""
        import ray

        for _ in range(self.cfg.num_workers):
            self._spawn()
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while len(self.ready) < self.cfg.min_workers:
            if not self.starting:
                raise StageError(
                    f"{self.what}: Ray workers died while loading the models "
                    f"({self.workers_lost} lost, ray.max_worker_restarts="
                    f"{self.cfg.max_worker_restarts} used up); see the worker logs above "
                    "(out of memory? ray.memory_per_worker)"
                )
            left = deadline - time.monotonic()
            done, _ = ray.wait(list(self.starting), num_returns=1, timeout=max(0.0, left))
            if not done:
                raise StageError(
                    f"{self.what}: only {len(self.ready)} of ray.min_workers="
                    f"{self.cfg.min_workers} workers were ready after {self.cfg.startup_timeout_s}"
                    " s; the cluster lacks the resources one worker asks for (ray.num_cpus_per_"
                    f"worker={self.cfg.num_cpus_per_worker}, ray.num_gpus_per_worker="
                    f"{self.cfg.num_gpus_per_worker}, ray.resources_per_worker, "
                    "ray.accelerator_type) or is still provisioning nodes"
                )
            self._settle(done[0])
        assert self.reference is not None
        return self.reference

    def _settle(self, ref) -> None:
        """A worker's setup finished: make it ready, or fail the stage, or replace it."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        slot = self.starting.pop(ref)
        try:
            info = ray.get(ref)
        except RayActorError as exc:
            self._lost(slot, exc)
            return
        except RayTaskError as exc:
            raise StageError(f"{self.what}: a worker failed to start: {exc}") from None
        if "error" in info:
            raise StageError(
                f"{self.what}: the Ray worker on node {info['node']} cannot run it:\n"
                f"{info['error']}\n(Every node needs the models: in its Hugging Face cache, "
                "HF_HOME on a mounted volume, or local paths valid on the node.)"
            )
        if self.reference is None:
            self.reference = info
        for key in self.agree_on:
            if info.get(key) != self.reference.get(key):
                raise StageError(
                    f"{self.what}: workers disagree on {key}: {info.get(key)!r} on node "
                    f"{info['node']}, {self.reference.get(key)!r} on node "
                    f"{self.reference['node']}; results would differ between nodes. Give every "
                    "worker the same hardware (ray.accelerator_type, ray.num_gpus_per_worker) "
                    "or fix the device and dtype"
                )
        self._next_id += 1
        slot.info = info
        self.ready[self._next_id] = slot
        self.nodes.add(info["node"])
        log.info("%s: worker ready on %s (pid %s)", self.what, info["node"], info["pid"])

    def _lost(self, slot: _Slot, exc: Exception) -> None:
        import ray

        self.workers_lost += 1
        log.warning("%s: lost a worker (%s)", self.what, str(exc).splitlines()[0][:200])
        ray.kill(slot.actor, no_restart=True)
        if self.restarts_left > 0:
            self.restarts_left -= 1
            self._spawn()

    @property
    def alive(self) -> int:
        return len(self.ready)

    # -- work ------------------------------------------------------------------------------------

    def run(
        self,
        tasks: Sequence[Any],
        payload: Callable[[Any], Any],
        on_result: Callable[[Any, Any], None],
    ) -> None:
        """`on_result(task, worker.run(payload(task)))` for every task, in completion order.

        Payloads are built when a task is first handed out (so only the tasks in flight hold
        image bytes) and kept in the object store until their result arrives."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        queue: deque[int] = deque(range(len(tasks)))
        payloads: dict[int, Any] = {}
        inflight: dict[Any, tuple[int, int]] = {}  # result ref -> (worker id, task index)
        while queue or inflight:
            for wid, slot in list(self.ready.items()):
                while queue and slot.busy < self.cfg.tasks_per_worker:
                    index = queue.popleft()
                    if index not in payloads:
                        payloads[index] = ray.put(payload(tasks[index]))
                    inflight[slot.actor.run.remote(payloads[index])] = (wid, index)
                    slot.busy += 1
            waiting = [*inflight, *self.starting]
            if not waiting:
                raise StageError(
                    f"{self.what}: every Ray worker was lost and ray.max_worker_restarts="
                    f"{self.cfg.max_worker_restarts} replacements are used up; "
                    f"{len(queue)} tasks are left (finished ones are kept: rerun to resume)"
                )
            done, _ = ray.wait(waiting, num_returns=1)
            ref = done[0]
            if ref in self.starting:
                self._settle(ref)
                continue
            wid, index = inflight.pop(ref)
            slot = self.ready.get(wid)
            try:
                result = ray.get(ref)
            except RayActorError as exc:
                queue.appendleft(index)  # redone by another worker
                self.tasks_retried += 1
                if slot is not None:
                    del self.ready[wid]
                    self._lost(slot, exc)
                continue
            except RayTaskError as exc:
                node = slot.info["node"] if slot else "?"
                raise StageError(f"{self.what}: the worker on node {node} failed:\n{exc}") from None
            if slot is not None:
                slot.busy -= 1
            del payloads[index]
            on_result(tasks[index], result)

    def metrics(self) -> dict[str, Any]:
        return {
            "executor": "ray",
            "ray_workers": self.cfg.num_workers,
            "ray_nodes": sorted(self.nodes),
            "ray_workers_lost": self.workers_lost,
            "ray_tasks_retried": self.tasks_retried,
            "ray_string_hash": (self.reference or {}).get("string_hash"),
        }
