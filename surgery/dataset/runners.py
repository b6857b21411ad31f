"""Three ways to run a per-image `Task` over the jobs: in this process, in local processes, on Ray Data.
(Calibrate's task, the default, is `explain_one`; evaluate brings its own.)

Each runner yields one `ImageOutcome` per job, in completion order (the summary sorts them), and
loads the models once per worker: once here (serial), once per process (`--workers N`, spawned, with
torch's threads split between them), once per actor (`--ray`, an actor pool sized from the cluster's
CPUs and GPUs). Images are read by path and outputs written by the workers themselves, so with Ray
the output folder must be on a filesystem every node sees.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import InputError
from .settings import CalibrationSettings
from .single import ImageJob, ImageOutcome, LoadedModels, explain_one, load_models

RAY_MISSING = "Ray is not installed; install the extra with: pip install .[ray]  (or: pip install 'ray[data]')"
# What one model copy (CLIP ViT-B/16 + SAM vit_b and their activations) needs, for sizing actor pools.
ACTOR_MEMORY_BYTES = 2 * 1024 ** 3


@dataclass(frozen=True)
class Task:
    """What a runner runs: `load(settings)` once per worker, then `run(job, models, settings, out, digest)`
    per image, returning its `ImageOutcome` (never raising for a bad image). Both are module-level
    functions, so a task pickles to spawned processes and Ray actors."""

    load: Callable[[Any], Any]
    run: Callable[[ImageJob, Any, Any, Path, str], ImageOutcome]


CALIBRATE = Task(load_models, explain_one)


def run_serial(jobs: Sequence[ImageJob], settings: CalibrationSettings, out: Path, digest: str,
               models: LoadedModels | None = None, task: Task = CALIBRATE) -> Iterator[ImageOutcome]:
    """Every job in this process, one after another, on `models` (loaded here when not given)."""
    if not jobs:
        return
    models = models or task.load(settings)
    for job in jobs:
        yield task.run(job, models, settings, out, digest)


# --------------------------------------------------------------------------- local processes

_WORKER_MODELS: LoadedModels | None = None


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def _explain_in_worker(job: ImageJob, settings: CalibrationSettings, out: Path, digest: str,
                       task: Task = CALIBRATE) -> ImageOutcome:
    """`task.run` in a worker process; the models are loaded by its first job (a bad option raises
    there and reaches the command, instead of killing the pool in an initializer)."""
    global _WORKER_MODELS
    if _WORKER_MODELS is None:
        _WORKER_MODELS = task.load(settings)
    return task.run(job, _WORKER_MODELS, settings, out, digest)


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """torch threads for each of `workers` processes sharing `cpus` cores (at least 1)."""
    return max(1, (cpus or os.cpu_count() or 1) // workers)


def run_processes(jobs: Sequence[ImageJob], settings: CalibrationSettings, out: Path, digest: str,
                  workers: int, task: Task = CALIBRATE) -> Iterator[ImageOutcome]:
    """The jobs on `workers` spawned processes (never forked: torch's threads do not survive a fork),
    at most two jobs queued per worker so memory stays flat over a long folder."""
    if not jobs:
        return
    workers = max(1, min(workers, len(jobs)))
    context = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker,
                             initargs=(threads_per_worker(workers),)) as pool:
        pending = iter(jobs)
        running = set()
        try:
            for job in pending:
                running.add(pool.submit(_explain_in_worker, job, settings, out, digest, task))
                if len(running) >= 2 * workers:
                    break
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                    following = next(pending, None)
                    if following is not None:
                        running.add(pool.submit(_explain_in_worker, following, settings, out, digest, task))
        finally:
            for future in running:
                future.cancel()


# --------------------------------------------------------------------------- Ray Data

def import_ray():
    """The `ray` module with Ray Data, or an `InputError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class ActorPlan:
    """How many actors, and what each one reserves."""

    actors: int
    cpus: float
    gpus: float
    device: str


def plan_actors(resources: dict, device_setting: str, jobs: int, actors: int | None = None) -> ActorPlan:
    """One model copy per actor: one actor per GPU where the cluster has GPUs (and the device is not
    cpu), else one per CPU, as many as the cluster's memory holds (`ACTOR_MEMORY_BYTES` each); never
    more than the jobs. `actors` overrides the count (`--workers` with `--ray`)."""
    gpus = int(resources.get("GPU", 0))
    use_gpu = gpus > 0 and not str(device_setting).startswith("cpu")
    if use_gpu:
        count = gpus
    else:
        cpus = int(resources.get("CPU", 1))
        by_memory = int(resources.get("memory", ACTOR_MEMORY_BYTES) // ACTOR_MEMORY_BYTES)
        count = max(1, min(cpus, by_memory))
    count = max(1, min(actors or count, jobs))
    if use_gpu:
        return ActorPlan(count, 1.0, 1.0, "cuda")
    cpus_each = max(1.0, float(int(resources.get("CPU", 1)) // count))
    return ActorPlan(count, cpus_each, 0.0, "cpu")


class _ExplainActor:
    """A Ray Data actor: loads the models once, then explains one image path per row."""

    def __init__(self, settings: CalibrationSettings, out: str, digest: str, threads: int,
                 task: Task = CALIBRATE) -> None:
        import torch

        torch.set_num_threads(threads)
        self.settings, self.out, self.digest, self.task = settings, Path(out), digest, task
        self.models = task.load(settings)

    def __call__(self, batch: dict) -> dict:
        outcomes = [self.task.run(ImageJob(str(path), str(stem)), self.models, self.settings, self.out, self.digest)
                    for path, stem in zip(batch["path"], batch["stem"])]
        return {"file": [o.file for o in outcomes], "stem": [o.stem for o in outcomes],
                "error": ["" if o.error is None else o.error for o in outcomes],
                "seconds": [o.seconds for o in outcomes]}


def connect_ray(address: str | None):
    """`ray` connected to `address` ("auto", "ray://host:10001", ...; None: the RAY_ADDRESS cluster or a
    new local one), with this package shipped to the job's workers (`py_modules`), so the cluster needs
    only the dependencies. A connection this process already has is reused as it is (its job must
    make `surgery` importable). Returns (ray, whether this call connected)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    import surgery

    try:
        ray.init(address=address or None, logging_level=logging.ERROR, log_to_driver=False,
                 configure_logging=False, runtime_env={"py_modules": [str(Path(surgery.__file__).parent)]})
    except Exception as exc:  # noqa: BLE001 - unreachable address, no cluster at "auto", ...
        where = f"at {address}" if address else "(local or $RAY_ADDRESS)"
        detail = " ".join(str(exc).split())[:200]
        raise InputError(f"Could not start or join a Ray cluster {where}: {detail}") from None
    return ray, True


def run_ray(jobs: Sequence[ImageJob], settings: CalibrationSettings, out: Path, digest: str,
            plan: ActorPlan, task: Task = CALIBRATE) -> Iterator[ImageOutcome]:
    """The jobs on Ray Data (Ray must already be connected, see `connect_ray`): one row per image path,
    `map_batches` over an actor pool as `plan` says (`plan_actors`). `settings.device` is the plan's
    device."""
    if not jobs:
        return
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command shows its own
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    rows = [{"path": job.path, "stem": job.stem} for job in jobs]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _ExplainActor, batch_size=1, batch_format="numpy",
        fn_constructor_kwargs={"settings": settings, "out": str(out), "digest": digest,
                               "threads": max(1, int(plan.cpus)), "task": task},
        compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.cpus, num_gpus=plan.gpus)
    for row in dataset.iter_rows():
        yield ImageOutcome(str(row["file"]), str(row["stem"]), str(row["error"]) or None, float(row["seconds"]))


# --------------------------------------------------------------------------- a run, start to finish

@dataclass(frozen=True)
class RunnerChoice:
    """Where a run's jobs go: "serial", "processes" (`workers` local processes) or "ray" (`plan`)."""

    kind: str
    workers: int
    plan: ActorPlan | None = None


@contextmanager
def chosen_runner(ray_address: str | None, device_setting: str, jobs: int,
                  workers: int | None) -> Iterator[RunnerChoice]:
    """The runner the options ask for (`--ray [ADDRESS]`, `--workers N`), Ray joined or started for the
    run and shut down after it when this call started it."""
    if ray_address is None:
        workers = workers or 1
        yield RunnerChoice("processes" if workers > 1 else "serial", workers)
        return
    ray, connected = connect_ray(ray_address)
    try:
        plan = plan_actors(ray.cluster_resources(), device_setting, jobs, workers)
        yield RunnerChoice("ray", plan.actors, plan)
    finally:
        if connected:
            ray.shutdown()


def run_device(device_setting: str, runner: RunnerChoice):
    """(the models' device as a string, the device a precision is resolved for here): the local device;
    on a Ray cluster's GPUs ("cuda", None: only the actors see them, and each checks its own)."""
    from ..device import resolve_device

    if runner.plan is None:
        device = resolve_device(device_setting)
        return str(device), device
    if runner.plan.device == "cuda":
        return "cuda", None
    if str(device_setting).strip().lower().startswith("cuda"):
        raise InputError("--device cuda with --ray needs GPUs in the Ray cluster; it has none.")
    return "cpu", "cpu"


def run_with_progress(runner: RunnerChoice, jobs: Sequence[ImageJob], pending: Sequence[ImageJob], settings, out: Path,
                      digest: str, task: Task, desc: str, name: Callable[[ImageOutcome], str]
                      ) -> tuple[dict[str, str], float]:
    """Run `pending` (of `jobs`) on `runner` with a progress bar on stderr (images done, rate, time left);
    returns ({name(outcome): one-line reason} of the failed images, seconds). A failed image is listed and
    never stops the run; a bad option met by a worker, or a worker or the cluster failing, is one
    `UserError` line."""
    from tqdm import tqdm

    from ..errors import UserError
    from .single import one_line

    if runner.kind == "ray":
        outcomes = run_ray(pending, settings, out, digest, runner.plan, task=task)
    elif runner.kind == "processes":
        outcomes = run_processes(pending, settings, out, digest, runner.workers, task=task)
    else:
        outcomes = run_serial(pending, settings, out, digest, task=task)
    failed: dict[str, str] = {}
    start = time.perf_counter()
    with tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc=desc, unit="image", file=sys.stderr,
              disable=None) as progress:
        try:
            for outcome in outcomes:
                if outcome.error is not None:
                    failed[name(outcome)] = outcome.error
                    progress.write(f"error: {name(outcome)}: {outcome.error}", file=sys.stderr)
                progress.update(1)
        except Exception as exc:  # a bad option met by a worker, or a worker / the cluster failing
            cause = getattr(exc, "cause", None)  # Ray wraps a worker's exception
            if isinstance(cause, UserError):
                raise cause from None
            if isinstance(exc, UserError):
                raise
            raise UserError(f"the {runner.kind} run failed: {one_line(exc)}") from None
    return failed, time.perf_counter() - start
