"""Training checkpoints: orbax CheckpointManager with the data-iterator state saved beside the state.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-save leaves nothing that `latest_step` would pick up. Saves are asynchronous: training goes on
while the arrays are written, and `close()` waits for the last one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
    def __init__(self, directory: str | Path | epath.Path, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        path = epath.Path(directory)  # local or gs:// (shared by all hosts of a pod)
        self.manager = ocp.CheckpointManager(path if str(path).startswith("gs://") else path.absolute(),
                                             options=options,
                                             item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data_state)), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore onto the shardings carried by `abstract_state` (any mesh shape)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored.state, restored.data

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs that tell orbax where each restored array goes."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
