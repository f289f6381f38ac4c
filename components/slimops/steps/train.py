"""train: fit a PyTorch classifier on recipe data, so an example's baseline is a real trained model."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from slimops import progress
from slimops.data import DataSpec, load_dataset
from slimops.errors import BadInput
from slimops.evaluate import check_inputs
from slimops.handlers.runtime import TorchModule, dump_architecture
from slimops.steps import Step, StepConfig, StepResult


class TrainConfig(StepConfig):
    data: DataSpec = Field(description="labelled training data")
    epochs: int = Field(20, ge=1, le=1000, description="passes over the data")
    batch_size: int = Field(64, ge=1, description="examples per optimiser step")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    seed: int = Field(0, description="seed for initialisation order and shuffling")


class Train(Step):
    name = "train"
    summary = "Train a PyTorch classifier (architecture.json + safetensors) on labelled recipe data"
    Config = TrainConfig
    accepts = ("torch",)

    def run(self, ctx, config: TrainConfig) -> StepResult:
        import torch
        from safetensors.torch import save_file

        info = ctx.model_info
        if info.format != "torch" or info.task != "tensor-classification":
            raise BadInput(f"train takes a PyTorch tensor classifier, got {info.format}/{info.task}")
        data = load_dataset(config.data)
        if data.labels is None or not isinstance(data.inputs, np.ndarray):
            raise BadInput("train needs labelled tensor data (format 'digits' or npz with x and y)")
        check_inputs(info, data, "train data")
        torch.manual_seed(config.seed)
        model = TorchModule(ctx.model_dir, info, ctx.threads).model.train()
        x, y = torch.from_numpy(data.inputs), torch.from_numpy(data.labels)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        loss_fn = torch.nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(config.seed)
        with progress.task(f"training {config.epochs} epochs on {len(y)} examples", config.epochs) as advance:
            for _ in range(config.epochs):
                total = 0.0
                for idx in torch.randperm(len(y), generator=generator).split(config.batch_size):
                    optimizer.zero_grad()
                    loss = loss_fn(model(x[idx]), y[idx])
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(idx)
                advance()
        model.eval()
        with torch.inference_mode():
            train_accuracy = float((model(x).argmax(1) == y).float().mean()) * 100
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ctx.out_dir / info.file))
        dump_architecture(ctx.out_dir / "architecture.json", info)
        return StepResult(model_info=info, metrics={"train_loss": total / len(y), "train_accuracy": train_accuracy})


STEP = Train
