"""Time to the tutorial's accuracy: every epoch's batches placed on the device by the engine
before the clock starts, the engine's `train_steps` over the epoch (one host synchronisation),
training seconds until test accuracy >= 98.5 % (evaluation not timed)."""

import time

from benchmarks.environment import memory
from benchmarks.timing import OtherLoad, status
from benchmarks.variants import BACKENDS, TUTORIAL, default_variant
from mnist_common import loaders

TARGET_ACCURACY = 0.985  # the tutorial reports 98.53 % after 10 epochs


def placed_epoch(backend, placement, split, config, epoch):
    """The loader's batches of one epoch, placed on the device."""
    return [backend.place_batch(placement, x, y) for x, y in loaders.train_batches(
        split, seed=config.seed, epoch=epoch, batch_size=config.batch_size)]


def warm_up(backend, state, batches):
    """Compile every batch shape, then put the initial weights back into the state the steps
    returned (the steps consume `state`). A fresh state would compile again (Flax's jit cache
    is keyed on the state's module)."""
    params, optimizer = backend.state_to_arrays(state)
    start = time.perf_counter()
    warmed, _ = backend.train_steps(state, batches)
    seconds = time.perf_counter() - start
    return backend.state_from_arrays(warmed, params, optimizer), seconds


def train_to_target(device, framework, splits, config):
    """One framework's run: per-epoch training seconds and accuracy until the target."""
    backend, placement = BACKENDS[framework], getattr(device, framework)
    train_split, test_split = splits
    test = [backend.place_batch(placement, x, y) for x, y in loaders.eval_batches(test_split)]
    batches = placed_epoch(backend, placement, train_split, config, 0)
    state, warmup = warm_up(backend, backend.create_train_state(config, placement),
                            [batches[0], batches[-1]])  # full and (maybe) partial last batch
    seconds, epochs, reached = 0.0, [], None
    other_load = OtherLoad()
    for epoch in range(config.epochs):
        if epoch:
            batches = placed_epoch(backend, placement, train_split, config, epoch)
        start = time.perf_counter()
        state, _ = backend.train_steps(state, batches)
        seconds += time.perf_counter() - start
        accuracy = backend.evaluate(state, test)["accuracy"]  # not timed
        epochs.append({"epoch": epoch + 1, "train_seconds": seconds, "test_accuracy": accuracy})
        status(f"[{device.kind}]   epoch {epoch + 1}: {seconds:.1f} s, "
               f"test accuracy {100 * accuracy:.2f} %")
        if accuracy >= TARGET_ACCURACY:
            reached = epoch + 1
            break
    return {"framework": framework, "target_accuracy": TARGET_ACCURACY,
            "reached": reached is not None, "epochs_to_target": reached,
            "seconds_to_target": seconds if reached else None, "epochs": epochs,
            "max_epochs": config.epochs, "warmup_seconds": warmup,
            "other_load": other_load.stop(), "memory": memory(device)}


def measure_time_to_accuracy(device, splits, config=TUTORIAL):
    """{variant: run} for each framework this device can run; splits = (train, test) arrays."""
    out = {}
    for framework in ("torch", "flax"):
        if getattr(device, framework) is None:
            continue
        status(f"[{device.kind}] time to {100 * TARGET_ACCURACY:.1f} %, {framework}")
        variant = default_variant(framework, getattr(device, framework))
        out[variant] = train_to_target(device, framework, splits, config)
    return out
