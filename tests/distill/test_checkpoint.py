from pathlib import Path

import pytest
import torch

from torchslim.distill.trainer import fit


def _train(tiny_task, checkpoint: Path | None, epochs: int = 3, crash_at: int | None = None):
    torch.manual_seed(0)
    model = tiny_task.build()

    def loader(epoch: int):
        if crash_at is not None and epoch == crash_at:
            raise KeyboardInterrupt
        return tiny_task.train_loader(seed=epoch)

    history = fit(
        model,
        loader,
        lambda m, x, y: tiny_task.loss(m(x), y),
        epochs=epochs,
        lr=1e-2,
        evaluate=tiny_task.evaluate,
        checkpoint=checkpoint,
    )
    return model, history


def test_resumed_training_equals_uninterrupted_training(tiny_task, tmp_path: Path) -> None:
    reference, ref_history = _train(tiny_task, None)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_task, tmp_path / "ckpt", crash_at=2)
    assert (tmp_path / "ckpt" / "trainer.json").is_file()
    resumed, history = _train(tiny_task, tmp_path / "ckpt")
    assert history == ref_history
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_checkpoint_holds_no_pickle(tiny_task, tmp_path: Path) -> None:
    _train(tiny_task, tmp_path / "ckpt", epochs=1)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["state.safetensors", "trainer.json"]


class Tied(torch.nn.Module):
    """An embedding and an output head sharing one weight (as a tied language model's)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(7, 4)
        self.head = torch.nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def test_tied_weights_are_stored_once_and_restored_tied(tmp_path: Path) -> None:
    from safetensors import safe_open

    from torchslim.distill.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = Tied()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(tmp_path / "c", model, optimizer, scheduler, epoch=0, step=1, history=[])
    with safe_open(str(tmp_path / "c" / "state.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.embed.weight" in names and "model.head.weight" not in names
    restored = Tied()
    load_checkpoint(tmp_path / "c", restored, torch.optim.SGD(restored.parameters(), lr=0.1), scheduler)
    assert torch.equal(restored.head.weight, model.embed.weight)
    assert restored.head.weight is restored.embed.weight
