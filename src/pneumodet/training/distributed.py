"""Several processes (and nodes) for work other than training, through Lightning Fabric's launcher.

``launch(devices, num_nodes)`` starts the other processes the way ``train`` does (the same command again,
with the rank in the environment; on other nodes, the user starts the same command with NODE_RANK and
MASTER_ADDR set), and returns this process's place among them and a way to gather results on rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Processes:
    rank: int
    world: int
    fabric: object

    def gather(self, value) -> list | None:
        """Return every process's ``value`` on rank 0 (in rank order), None elsewhere."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        everything = [None] * self.world
        dist.all_gather_object(everything, value)
        return everything if self.rank == 0 else None

    def close(self) -> None:
        """Leave the process group once every process is done (gloo's threads otherwise may abort the exit)."""
        import torch.distributed as dist

        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def is_follower() -> bool:
    """Return whether this process is a DDP worker started by rank 0 (or runs on a node other than 0)."""
    return int(os.environ.get("LOCAL_RANK", 0) or 0) > 0 or int(os.environ.get("NODE_RANK", 0) or 0) > 0


def launch(devices: int, num_nodes: int = 1, accelerator: str = "auto") -> Processes:
    """Start (or join) ``devices`` processes per node (one per GPU where there are GPUs: Fabric makes each
    process's GPU the current one); each CPU process gets its share of the cores."""
    import lightning as L

    fabric = L.Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                      strategy="ddp" if devices * num_nodes > 1 else "auto")
    fabric.launch()
    if fabric.device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // devices))
    return Processes(fabric.global_rank, fabric.world_size, fabric)
