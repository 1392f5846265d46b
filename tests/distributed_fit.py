"""Train tiny_mobilenet_v3 on digits with ``compress.train.fit``, alone or as one rank under torchrun, and save
what tests/test_distributed.py compares: the weights, the test accuracy, the losses and this rank's data shard.

    python tests/distributed_fit.py OUT [SEED]                                   # one process
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_fit.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

RECIPE = dict(epochs=7, batch_size=64, lr=0.4, adapt=False, head_epochs=0, clip_grad_norm=2.0)


def train(out: Path, seed: int = 0) -> Path:
    import torch

    from compress import distributed
    from compress.data import load_dataset
    from compress.models import create_model
    from compress.recipe import Recipe
    from compress.train import evaluate, fit

    distributed.init("cpu")
    torch.set_num_threads(1)
    data = load_dataset("digits", input_size=32, seed=0)
    torch.manual_seed(seed)
    net, _ = create_model("tiny_mobilenet_v3", num_classes=len(data.classes), weights="none")
    losses: list[float] = []
    trained = fit(net, data, Recipe(**RECIPE), seed=seed, on_epoch=lambda info: losses.append(info["loss"]))
    n = int(data.train_x.shape[0])
    record = {"state_dict": trained.state_dict(), "top1": evaluate(trained, data), "losses": losses,
              "shard": distributed.shard(torch.arange(n)), "train_images": n, "world": distributed.world_size()}
    path = Path(out) / f"rank{distributed.rank()}_of_{distributed.world_size()}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, path)
    distributed.finish()
    return path


if __name__ == "__main__":
    train(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:3]))
