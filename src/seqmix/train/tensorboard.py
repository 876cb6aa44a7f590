"""TensorBoard scalars beside log.jsonl: the same records, as event files in ``<out>/tensorboard``."""
from __future__ import annotations

from pathlib import Path

TRAIN_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s")  # train/<name>; loss in nats per token


class TensorBoardLog:
    """Writes train/loss, train/lr, train/grad_norm, train/tokens_per_s and eval/val_bpb (periodic and final)
    against the step."""

    def __init__(self, directory: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("--tensorboard needs the tensorboard package: pip install 'seqmix[tensorboard]'") from None
        self.writer = SummaryWriter(str(directory))

    def write(self, record: dict) -> None:
        step = record["step"]
        if record["kind"] == "train":
            for name in TRAIN_SCALARS:
                if record.get(name) is not None:
                    self.writer.add_scalar(f"train/{name}", record[name], step)
        elif record.get("val_bpb") is not None:
            self.writer.add_scalar("eval/val_bpb", record["val_bpb"], step)
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
