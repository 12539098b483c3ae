"""A run's three outputs (model.safetensors, metrics.json, loss.png) published as one set.

They are written whole into a staging folder beside them (a recorded temp, `STAGING_PREFIX`),
marked complete by a last file (`READY`), then renamed into place in a fixed order. A run
stopped while it writes them (the slow part: the figure) leaves the earlier set and no staging
folder; one killed between the renames leaves a complete staged set that the next run of the
out-dir moves into place first (`finish_interrupted`). Either way the out-dir never keeps a mix.
"""

from pathlib import Path

from mnist_common.ownership import adopt_file, make_temp_dir, may_replace, remove_owned, write_owned
from mnist_common.reporting import OUTPUTS, write_outputs

STAGING_PREFIX = ".outputs.tmp-"
READY = "complete"  # written last into a staging folder: the set in it is whole


def stage(out_dir, params, metrics):
    """Write the outputs into a new staging folder of `out_dir`; returns it (removed again if
    the writing fails or is interrupted)."""
    staging = make_temp_dir(out_dir, STAGING_PREFIX)
    try:
        write_outputs(staging, params, metrics)
        write_owned(staging / READY, "")
    except BaseException:
        remove_owned(staging)
        raise
    return staging


def swap_in(out_dir, staging):
    """Rename a complete staged set into `out_dir`, in the order of OUTPUTS, then drop the
    staging folder."""
    for name in OUTPUTS:
        if (staging / name).is_file():  # moved already by a run killed half-way
            adopt_file(staging / name, Path(out_dir) / name)
    remove_owned(staging)


def finish_interrupted(out_dir):
    """Move into place the complete set a killed run staged in `out_dir` (only a staging folder
    the project recorded, marked complete); an incomplete one is left to `remove_leftovers`."""
    for staging in sorted(Path(out_dir).glob(f"{STAGING_PREFIX}*")):
        if may_replace(staging) and staging.is_dir() and may_replace(staging / READY) \
                and (staging / READY).is_file():
            swap_in(out_dir, staging)
