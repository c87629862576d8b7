"""How training runs on the hardware: precision, and more than one device or machine.

`--precision` picks one of PRECISIONS (`precision_policy`); `--strategy` picks one of STRATEGIES
(TensorFlow's own `tf.distribute`). The batch size is always the global batch (split across
replicas); learning rates are not rescaled unless the user asks (`--scale_lr_with_replicas`).
Only the chief writes artifacts; every worker trains.

Keras 3 (checked up to 3.15.1) cannot run `fit` under `MultiWorkerMirroredStrategy`: the
TensorFlow multi-worker tutorial fails since TF 2.16 (keras-team/keras#20585,
tensorflow/tensorflow#72388). Two places in Keras's TensorFlow trainer reduce values across
workers in ways the collective implementation rejects:

1. `_maybe_symbolic_build` all-reduces the first *data batch* eagerly only to learn its shapes
   ("Attempt to convert a value (PerReplica...) to a Tensor");
2. `reduce_per_replica` reduces scalar metric values with `axis=0` ("Invalid reduction dimension
   0 for input with 0 dimensions").

`enable_multi_worker_fit(model)` works around both, narrowly: the shapes are taken from the
local replica's batch (only shapes are used), and scalars are reduced with `axis=None`. Both are
applied only under a multi-worker strategy and are checked end to end by a two-process test.
"""

from __future__ import annotations

import json
import logging
import os
import types
from typing import TYPE_CHECKING

from tl_keras.errors import ConfigError

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger("tl_keras")

# --logical_cpus: at most this many logical CPU devices. They stand in for a machine's GPUs
# (8 is the usual most); beyond that `mirrored` over them stops being a test: over 8, a tiny
# model's first epoch took 6 s on 2 shared cores, over 16 and 32 it had not ended after 5
# minutes, and over 100000 a run went no further than its data (docs/reliability.md).
MAX_LOGICAL_CPUS = 8

# --strategy: the names `make_strategy` builds; --precision: the dtype policies (see
# `precision_policy`). TensorFlow is imported inside the functions, so `tl_keras.config`
# validates both against these names without it.
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed", "mixed_float16", "mixed_bfloat16")


def split_cpu(n: int) -> None:
    """Makes the CPU appear as `n` logical devices (before TensorFlow has run anything).

    Raises:
      ConfigError: TensorFlow already initialised its devices with another split.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * n
        )
    except RuntimeError:
        raise ConfigError(
            f"logical_cpus={n} must be set before TensorFlow starts; this process already runs "
            f"TensorFlow with {len(tf.config.list_logical_devices('CPU'))} CPU device(s). Start a new process"
        ) from None


def precision_policy(name: str) -> str:
    """The Keras dtype policy for a `precision` value ('mixed' picks float16 on a GPU)."""
    import tensorflow as tf

    if name == "mixed":
        return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    return name


def describe(strategy: tf.distribute.Strategy) -> str:
    if is_multi_worker(strategy):
        r = strategy.cluster_resolver
        return f"worker {r.task_id} of {len(r.cluster_spec().as_dict().get('worker', []))}"
    return f"{type(strategy).__name__} over {strategy.num_replicas_in_sync} replica(s)"


def make_strategy(name: str, *, logical_cpus: int = 0) -> tf.distribute.Strategy:
    """Returns the `tf.distribute` strategy for a `--strategy` name.

    Args:
      name: 'default' (one device), 'mirrored' (every local GPU, or the logical CPU devices),
        'multi_worker' (the cluster in TF_CONFIG) or 'tpu' (a TPU from the environment).
      logical_cpus: split the CPU into this many devices first (0 = leave it whole).

    Raises:
      ConfigError: an unknown name, or 'multi_worker' without a usable TF_CONFIG.
    """
    import tensorflow as tf

    if logical_cpus:
        split_cpu(logical_cpus)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise ConfigError(
                "--strategy=multi_worker needs TF_CONFIG describing the cluster and this worker, "
                'e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
            )
        try:
            json.loads(config)
        except ValueError as e:
            raise ConfigError(f"TF_CONFIG is not valid JSON ({e})") from None
        _patch_reduce_per_replica()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:  # no TPU here
            raise ConfigError(
                f"--strategy=tpu found no TPU to connect to ({' '.join(str(e).split())}); run "
                "where one is attached (TPU_NAME names it), or use --strategy=default"
            ) from None
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"strategy={name!r} is unknown; use one of {', '.join(STRATEGIES)}")


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    import tensorflow as tf

    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Processes training together (1 unless multi-worker)."""
    if not is_multi_worker(strategy):
        return 1
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(spec.get("worker", [])) + len(spec.get("chief", []))


def check_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    """Refuses a global batch the workers cannot share evenly (before anything is written).

    Raises:
      ConfigError: batch_size is not a multiple of the number of workers.
    """
    workers = num_workers(strategy)
    if workers > 1 and batch_size % workers:
        raise ConfigError(
            f"batch_size={batch_size} is the global batch and must split evenly over the "
            f"{workers} workers; use a multiple of {workers}"
        )


def shard_data(data, strategy: tf.distribute.Strategy):
    """The data bundle each worker trains on: under multi-worker training, its own part of every
    epoch (by file where the source has files, see `DataBundle.sharded`).

    Left to tf.distribute's own sharding (every worker reads everything and keeps its part) when
    the bundle cannot be split (built by hand) or a worker has several replicas.

    Raises:
      DataError: a batch size the workers cannot share, or fewer images than workers.
    """
    workers = num_workers(strategy)
    if workers == 1:
        return data
    if data.make_shard_epoch is None or strategy.num_replicas_in_sync != workers:
        log.info(
            "multi_worker: every worker reads the whole data and keeps its part (%s)",
            "a data bundle built by hand"
            if data.make_shard_epoch is None
            else f"{strategy.num_replicas_in_sync} replicas on {workers} workers",
        )
        return data
    log.info(
        "multi_worker: worker %d of %d reads its own part of each epoch (%d images a step)",
        strategy.cluster_resolver.task_id,
        workers,
        data.batch_size // workers,
    )
    return data.sharded(workers)


def train_input(data, first_epoch: int, num_epochs: int):
    """What `fit` trains on: the bundle's epochs, or under a sharded bundle each worker's part,
    built on that worker (`distribute_datasets_from_function`: nothing is sharded again)."""
    import tensorflow as tf

    if data.workers == 1:
        return data.train_epochs(first_epoch, num_epochs)
    strategy = tf.distribute.get_strategy()
    return strategy.distribute_datasets_from_function(
        lambda context: data.train_epochs(first_epoch, num_epochs, worker=context.input_pipeline_id)
    )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one process that writes artifacts (worker 0, or the only process)."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )


def _local_symbolic_build(self, iterator=None, data_batch=None):
    """Keras's _maybe_symbolic_build with the batch taken from the local replica."""
    import tensorflow as tf

    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tf.nest.map_structure(
                lambda x: (
                    self.distribute_strategy.experimental_local_results(x)[0]
                    if isinstance(x, tf.distribute.DistributedValues)
                    else x
                ),
                batch,
            )
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def enable_multi_worker_fit(model, strategy: tf.distribute.Strategy) -> None:
    """Lets `model.fit` run under MultiWorkerMirroredStrategy (see the module docstring)."""
    if is_multi_worker(strategy):
        model._maybe_symbolic_build = types.MethodType(_local_symbolic_build, model)


_PATCHED = False


def _patch_reduce_per_replica() -> None:
    global _PATCHED
    if _PATCHED:
        return
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if not (
            tf_trainer._collective_all_reduce_multi_worker(strategy)
            and reduction in ("auto", "mean")
        ):
            return original(values, strategy, reduction)

        def reduce(v):
            local = (
                strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues)
                else v
            )
            if not tf.is_tensor(local):
                return v
            return strategy.reduce("MEAN", v, axis=0 if local.shape.rank else None)

        return tf.nest.map_structure(reduce, values)

    tf_trainer.reduce_per_replica = reduce_per_replica
    _PATCHED = True
    log.info(
        "multi_worker: applied the Keras MultiWorkerMirroredStrategy workaround (keras-team/keras#20585)"
    )
