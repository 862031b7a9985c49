"""The ``llm-vem`` recipe: a two-stage trainer for image backbone + voxel head + alignment.

Per subject:

1. captions of the training images (captioner, cached) -> text embeddings (text encoder,
   cached); skipped when there is no alignment loss or its weight is 0;
2. a head (``voxel_mapper`` with ``build_module``, e.g. ``pca-head``) is built on the
   backbone's layer shapes, its PCA layer fitted on the training responses;
3. stages run in order (registry: ``stages:``), each training the parameters its
   ``train`` patterns select, with AdamW, linear warm-up then cosine decay, optional
   RandomResizedCrop, mixed precision on CUDA, validation on a held-out part of the
   training images after every epoch, early stopping, and a checkpoint after every
   epoch; the best epoch's weights are kept at the end of a stage;
4. loss = MSE(predicted, measured responses) + lambda * alignment(projection(shared
   representation), text embedding).

A stage that trains no backbone parameter and has no augmentation runs on cached backbone
features (neuroenc.stimuli.features), which makes the head stage cheap; later stages run full
forward passes. Training resumes from the last checkpoint after an interruption, and a
finished training is reused, under a key that covers the recipe's params, the subject's
data, the training images and the seed.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import hashlib
import math
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from neuroenc import Component
from neuroenc.core.cache import atomic_path, entry_lock, stable_hash
from neuroenc.core.config import (AlignmentLossRef, BackboneRef, CaptionerRef, ComponentRef, MapperRef,
                             TextEncoderRef)
from neuroenc.core.context import seed_everything
from neuroenc.stimuli.features import ImageFolderDataset, extract_features, hash_images
from neuroenc.records import Slot

from . import distributed as ddp

HEAD_PATTERNS = ("head.*", "projection.*", "alignment.*")


class StageConfig(BaseModel):
    """One training stage: what trains, for how long, how fast."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="label shown in progress bars and the history")
    train: list[str] = Field(..., min_length=1, description="'head' (head, projection, "
                             "temperature), 'backbone' (all of it), or glob patterns over "
                             "parameter names, e.g. 'backbone.blocks.*.attn.*'")
    epochs: int = Field(..., ge=1)
    lr: float = Field(..., gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up, then cosine decay to 0")
    batch_size: int | None = Field(None, ge=2, description="default: compute.batch_size")
    min_crop_scale: float = Field(1.0, gt=0, le=1, description="RandomResizedCrop scale lower "
                                  "bound (square crops, no flips: flips swap hemifields); 1 = off")


def _default_stages() -> list[StageConfig]:
    # BlobGPT's schedule (REFERENCE.md section 1); the paper says only "two stages".
    return [
        StageConfig(name="head", train=["head"], epochs=40, lr=6e-4, weight_decay=0.8,
                    warmup_epochs=2, min_crop_scale=0.8),
        StageConfig(name="finetune", train=["head", "backbone.blocks.*.attn.*"], epochs=6,
                    lr=1e-5, weight_decay=0.05, warmup_epochs=1, min_crop_scale=0.8),
    ]


class LLMVEMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backbone: BackboneRef = Field(default_factory=lambda: ComponentRef(name="eva02"))
    mapper: MapperRef = Field(default_factory=lambda: ComponentRef(name="pca-head"),
                              description="a trainable head (has build_module), e.g. pca-head")
    captioner: Annotated[ComponentRef | None, Slot("captioner")] = Field(
        default_factory=lambda: ComponentRef(name="minigpt4"))
    text_encoder: Annotated[ComponentRef | None, Slot("text_encoder")] = Field(
        default_factory=lambda: ComponentRef(name="clip"))
    alignment: Annotated[ComponentRef | None, Slot("alignment_loss")] = Field(
        default_factory=lambda: ComponentRef(name="contrastive"),
        description="null: no alignment (the ablation); weight 0 is the same model")
    stages: list[StageConfig] = Field(default_factory=_default_stages, min_length=1)
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="training images held out "
                                       "for early stopping and best-epoch selection")
    validation_metric: Literal["median_r2", "median_pearson"] = "median_r2"
    early_stopping_patience: int | None = Field(5, ge=1, description="epochs without improvement "
                                                "before a stage stops; null: never")
    grad_clip: float | None = Field(1.0, gt=0)
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    resume: bool = Field(True, description="resume from / reuse checkpoints of the same training")

    @model_validator(mode="after")
    def _alignment_needs_text(self):
        if self.alignment is not None and (self.captioner is None or self.text_encoder is None):
            raise ValueError("alignment needs a captioner and a text_encoder (or set alignment: null)")
        return self


class _Net(nn.Module):
    """Every trainable part under one module, so stage patterns address them by name."""

    def __init__(self, backbone: nn.Module, head: nn.Module, projection: nn.Module | None,
                 alignment: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.projection = projection
        self.alignment = alignment


class _TrainStep(nn.Module):
    """A training step's forward (features when not cached, head, projection, alignment loss).

    One module, so that DistributedDataParallel can wrap the whole step (its gradient
    hooks need the forward to run through the wrapper). ``features(inputs)`` returns the
    layers' features of a batch's inputs (images, or image indices for a cut backbone);
    None: the inputs are the features. Returns ``(mse, alignment)`` of this rank's
    samples; the alignment is 0 without a projection.
    """

    def __init__(self, net: _Net, features, *, grad_features: bool, amp: bool, amp_dtype):
        super().__init__()
        self.net = net
        self._features = features  # uses net.backbone's parameters
        self.grad_features = grad_features
        self.amp, self.amp_dtype = amp, amp_dtype

    def forward(self, inputs, y: torch.Tensor, t: torch.Tensor | None):
        device_type = y.device.type
        if self._features is not None:
            with torch.set_grad_enabled(self.grad_features), \
                    torch.autocast(device_type, dtype=self.amp_dtype, enabled=self.amp):
                inputs = self._features(inputs)
        net = self.net
        with torch.autocast(device_type, dtype=self.amp_dtype, enabled=self.amp):
            pred, shared = net.head(inputs)
            mse = nn.functional.mse_loss(pred.float(), y)
            align = torch.zeros((), device=y.device)
            if net.projection is not None:
                align = net.alignment(net.projection(shared.float()), t)
        return mse, align


def _validation_score(measured: np.ndarray, predicted: np.ndarray, metric: str) -> float:
    from neuroenc.evaluation.metrics import pearson_r, r2_score

    values = r2_score(measured, predicted) if metric == "median_r2" else pearson_r(measured, predicted)
    return float(np.median(values))


class LLMVEMModel:
    """Fits and predicts one subject with the LLM-VEM two-stage training."""

    def __init__(self, params: LLMVEMParams, context):
        self.params = params
        self.context = context
        self.device = torch.device(context.device)
        self.history: list[dict] = []
        self.net: _Net | None = None
        self.backbone = None
        self._cached_features: dict[str, list[np.ndarray]] = {}
        self._cached_prefix: dict[tuple[str, int], np.ndarray] = {}
        self._splits: dict[int, object] = {}
        # building a loss draws no random numbers, so it can happen before seeding
        self.alignment_loss = (context.build("alignment_loss", params.alignment)
                               if params.alignment is not None else None)
        self.alignment_weight = float(getattr(self.alignment_loss, "weight", 1.0)) \
            if self.alignment_loss is not None else 0.0

    # -- data ---------------------------------------------------------------------------
    def _text_embeddings(self, images: list[Path]) -> np.ndarray:
        from neuroenc.stimuli.captions import caption_images
        from neuroenc.stimuli.text_features import encode_texts

        captioner = self.context.build("captioner", self.params.captioner)
        captions = caption_images(captioner, images, self.context, description="captions")
        del captioner  # a VLM can be large; free it before training
        encoder = self.context.build("text_encoder", self.params.text_encoder)
        return np.asarray(encode_texts(encoder, captions, self.context), np.float32)

    def _layer_features(self, data, split: str, index: np.ndarray) -> list[torch.Tensor]:
        """Frozen backbone features of ``index`` from the on-disk cache, per layer."""
        if split not in self._cached_features:
            images = data.train_images if split == "train" else data.test_images
            layers = extract_features(self.backbone, images, self.context,
                                      description=f"{data.subject} {split} features")
            self._cached_features[split] = list(layers.values())
        return [torch.from_numpy(np.asarray(f[index])).view(len(index), *shape)
                for f, shape in zip(self._cached_features[split], self.layer_shapes)]

    def _prefix_split(self, stages: list[StageConfig]):
        """Return the backbone cut before the first block any of ``stages`` trains, or None.

        Only where every trained backbone parameter lies in ``backbone.blocks.<k>`` and the
        backbone can be cut there (``split_before``): training then runs the blocks from
        the cut on their cached input, and everything before the cut stays as built.
        """
        trained = [name for name, _ in self.net.backbone.named_parameters(prefix="backbone")
                   if any(self._selected(name, stage) for stage in stages)]
        blocks = set()
        for name in trained:
            parts = name.split(".")
            if len(parts) < 3 or parts[1] != "blocks" or not parts[2].isdigit():
                return None
            blocks.add(int(parts[2]))
        if not blocks or not hasattr(self.backbone, "split_before"):
            return None
        key = min(blocks)
        if key not in self._splits:
            self._splits[key] = self.backbone.split_before(key)
        return self._splits[key]

    def _split_features(self, data, split: str, index: np.ndarray, cut) -> list[torch.Tensor]:
        """Features of ``index`` through a cut backbone: cached prefix -> trained blocks;
        the layers before the cut from the frozen feature cache."""
        if (split, cut.block) not in self._cached_prefix:
            images = data.train_images if split == "train" else data.test_images
            self._cached_prefix[split, cut.block] = extract_features(
                cut, images, self.context, description=f"{data.subject} {split} "
                f"input of blocks.{cut.block}")["prefix"]
        prefix = torch.from_numpy(np.asarray(self._cached_prefix[split, cut.block][index]))
        after = cut.suffix(prefix.to(self.device))
        frozen = self._layer_features(data, split, index)
        return [after[name] if name in after else f.to(self.device)
                for name, f in zip(self.backbone.layer_names, frozen)]

    def _loader(self, images: list[Path], batches: list[torch.Tensor]):
        """Return a DataLoader yielding exactly ``batches`` (index tensors into ``images``)."""
        dataset = ImageFolderDataset(images, self.backbone.preprocess)
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=[b.tolist() for b in batches],
            num_workers=self.context.num_workers, pin_memory=self.device.type == "cuda")

    # -- training -----------------------------------------------------------------------
    def _checkpoint_path(self, data, fit_index: np.ndarray, val_index: np.ndarray,
                         text: torch.Tensor | None = None) -> Path:
        key = stable_hash({
            "recipe": "llm-vem", "params": self.params.model_dump(mode="json"),
            "subject": data.subject, "fmri": data.responses_identity("train"),
            "images": hash_images(data.train_images, self.context.cache_dir / "file-hashes"), 
            "fit_index": stable_hash(np.asarray(fit_index).tolist()),
            "validation_index": stable_hash(np.asarray(val_index).tolist()),
            "seed": self.context.seed, "torch": torch.__version__,
            # the caption embeddings actually used: an edited caption file retrains
            "text": None if text is None else hashlib.sha256(text.numpy().tobytes()).hexdigest(),
        }, length=24)
        return self.context.cache_dir / "training" / f"{data.subject}-{key}.pt"

    def fit(self, data, train_index: np.ndarray, validation_index: np.ndarray | None = None) -> None:
        """Train on ``train_index``; early stopping and best-epoch choice on a validation part.

        ``validation_index`` (training images outside ``train_index``): the part to stop
        on. The runner passes the images a sweep is compared on; without it the recipe
        holds out ``validation_fraction`` of ``train_index`` itself.
        """
        p = self.params
        ctx = self.context
        if validation_index is not None and len(validation_index) >= 2:
            val_index = np.sort(np.asarray(validation_index))
            fit_index = np.sort(np.asarray(train_index))
            if np.intersect1d(val_index, fit_index).size:
                raise ValueError("llm-vem: validation_index overlaps train_index")
            train_index = np.union1d(fit_index, val_index)
        else:
            rng = np.random.default_rng(ctx.seed)
            n_val = max(2, int(round(p.validation_fraction * len(train_index))))
            perm = rng.permutation(len(train_index))
            val_index = np.sort(train_index[perm[:n_val]])
            fit_index = np.sort(train_index[perm[n_val:]])
        responses = data.responses("train")

        text = None
        if self.alignment_weight > 0:
            # captions of the images trained on (fit_index is sorted, as are the targets)
            text = torch.from_numpy(np.array(self._text_embeddings(
                [data.train_images[i] for i in fit_index]), dtype=np.float32))

        # Everything below draws from the seeded RNG in the same order with or without
        # alignment, so lambda = 0 trains exactly the model without alignment.
        seed_everything(ctx.seed)
        self.backbone = ctx.build("image_backbone", p.backbone)
        from neuroenc.core.encoders import backbone_record

        self._backbone_record = backbone_record(p.backbone, self.backbone)  # before any training
        mapper = ctx.build("voxel_mapper", p.mapper)
        if not hasattr(mapper, "build_module"):
            raise ValueError(f"llm-vem: voxel mapper {p.mapper.name!r} cannot be trained end to "
                             "end (it has no build_module); use pca-head")
        probe = self.backbone.preprocess(_blank_image())[None]
        with torch.inference_mode():
            shapes = [tuple(v.shape[1:]) for v in self.backbone.forward_features(probe).values()]
        self.layer_shapes = shapes
        head_kwargs = {}
        if getattr(mapper, "init_from_features", False):  # e.g. gaussian-head's fwRF init
            self._layer_features(data, "train", fit_index[:1])  # fills the feature cache
            head_kwargs = {"features": self._cached_features["train"], "rows": fit_index,
                           "visual_field_deg": data.metadata.get("visual_field_deg")}
        head = mapper.build_module(shapes, responses[fit_index], list(data.unit_blocks().values()),
                                   **head_kwargs)
        projection = alignment = None
        if text is not None:
            with torch.random.fork_rng(devices=[]):  # leave the global RNG stream untouched
                projection = nn.Linear(head.shared_dim, text.shape[1])
            alignment = self.alignment_loss
        self.net = _Net(self.backbone.module, head, projection, alignment).to(self.device)

        ckpt_path = self._checkpoint_path(data, fit_index, val_index, text)
        # Two runs (or tasks of one run on a cluster) training the same model: the second
        # waits here for the first, then reuses its finished checkpoint.
        lock = entry_lock(ctx.cache_dir, "training", ckpt_path.stem)
        with ddp.main_rank_lock(lock):
            self._train(data, fit_index, val_index, responses, text, ckpt_path)

    def _train(self, data, fit_index, val_index, responses, text, ckpt_path: Path) -> None:
        """Train every stage (resuming from, or reusing, the checkpoint at ``ckpt_path``)."""
        p = self.params
        if ddp.world_size() > 1:
            ddp.sync_batchnorm(self.net)  # the head normalises with global batch statistics
        state = load_checkpoint(ckpt_path) if p.resume and ckpt_path.is_file() else None
        if state is not None and state.get("complete"):
            self.net.load_state_dict(state["net"])
            self.history = state["history"]
            self.net.eval()
            return

        measured_val = np.asarray(responses[val_index], np.float32)
        targets = torch.from_numpy(np.asarray(responses[fit_index], np.float32))
        backbone_trained = False
        for stage_no, stage in enumerate(p.stages):
            if state is not None and stage_no < state["stage"]:
                backbone_trained |= self._trains_backbone(stage)
                continue
            resume = state if state is not None and stage_no == state["stage"] else None
            self._run_stage(stage_no, stage, data, fit_index, val_index, targets, measured_val,
                            text, backbone_trained, ckpt_path, resume)
            backbone_trained |= self._trains_backbone(stage)
            state = None
        self.net.eval()
        self._save(ckpt_path, {"complete": True, "net": self.net.state_dict(),
                               "history": self.history})

    def _trains_backbone(self, stage: StageConfig) -> bool:
        return any(self._selected(name, stage) for name, _ in self.net.backbone.named_parameters(prefix="backbone"))

    @staticmethod
    def _selected(name: str, stage: StageConfig) -> bool:
        for pattern in stage.train:
            patterns = {"head": HEAD_PATTERNS, "backbone": ("backbone.*",)}.get(pattern, (pattern,))
            if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
                return True
        return False

    def _run_stage(self, stage_no, stage, data, fit_index, val_index, targets, measured_val, text,
                   backbone_trained, ckpt_path, resume):
        ctx, p, net = self.context, self.params, self.net
        frozen = {f"head.{n}" for n in _head_names(net.head, "frozen_parameter_names")}
        no_decay = {f"head.{n}" for n in _head_names(net.head, "no_weight_decay")}
        trainable, decayed, undecayed = [], [], []
        for name, param in net.named_parameters():
            on = self._selected(name, stage) and name not in frozen
            param.requires_grad_(on)
            if on:
                trainable.append(param)
                (undecayed if name in no_decay else decayed).append(param)
        if not trainable:
            raise ValueError(f"llm-vem stage {stage.name!r}: train patterns {stage.train} select no "
                             "parameter; parameter names start with backbone., head., projection.")
        train_backbone = self._trains_backbone(stage)
        # cached frozen features are valid only for the backbone as built, never after fine-tuning
        frozen_features_valid = not train_backbone and not backbone_trained
        use_cache = frozen_features_valid and stage.min_crop_scale == 1.0
        # fine-tuned last blocks run on their cached input: in training when nothing is
        # augmented, in validation always (the blocks before the cut never train)
        predict_cut = self._prefix_split(p.stages[:stage_no + 1])
        cut = predict_cut if not frozen_features_valid and stage.min_crop_scale == 1.0 else None
        batch_size = stage.batch_size or ctx.batch_size  # global: split across DDP ranks
        ddp.check_batch_size(batch_size, stage.name)
        n_fit = len(fit_index)
        steps_per_epoch = max(1, n_fit // batch_size) if n_fit > batch_size else 1
        # positions and sizes of a spatial head must not be decayed towards 0 (the centre)
        groups = [{"params": decayed}] + ([{"params": undecayed, "weight_decay": 0.0}]
                                          if undecayed else [])
        optimizer = torch.optim.AdamW(groups, lr=stage.lr, weight_decay=stage.weight_decay)
        # linear warm-up from 0, then cosine decay to 0 (transformers' schedule)
        from transformers import get_cosine_schedule_with_warmup

        scheduler = get_cosine_schedule_with_warmup(
            optimizer, num_warmup_steps=int(stage.warmup_epochs * steps_per_epoch),
            num_training_steps=stage.epochs * steps_per_epoch)
        amp = p.amp and self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
        augment = None
        if stage.min_crop_scale < 1.0:
            from torchvision.transforms import v2
            size = self.backbone.preprocess(_blank_image()).shape[-1]
            augment = v2.RandomResizedCrop(size, scale=(stage.min_crop_scale, 1.0), ratio=(1.0, 1.0),
                                           antialias=True)

        start_epoch, best_score, best_state, bad_epochs = 0, -np.inf, None, 0
        if resume is not None:
            net.load_state_dict(resume["net"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            start_epoch, best_score = resume["epoch"] + 1, resume["best_score"]
            best_state, bad_epochs = resume["best_state"], resume["bad_epochs"]
            self.history = resume["history"]
            torch.set_rng_state(resume["torch_rng"])

        fit_images = [data.train_images[i] for i in fit_index]
        if use_cache:  # the inputs are the cached features
            features, grad_features = None, False
        elif cut is not None:  # the inputs are image indices; the last blocks run on their cached input
            features, grad_features = (lambda index: self._split_features(data, "train", index, cut)), True
        else:  # the inputs are images
            features = lambda images: list(self.backbone.forward_features(images).values())  # noqa: E731
            grad_features = train_backbone
        train_step = ddp.wrap_ddp(_TrainStep(self.net, features, grad_features=grad_features,
                                             amp=amp, amp_dtype=amp_dtype), self.device)
        for epoch in range(start_epoch, stage.epochs):
            t_epoch = time.perf_counter()
            net.train()
            net.backbone.eval()  # no drop-path / dropout noise inside the backbone
            epoch_seed = ctx.seed * 100_003 + stage_no * 1009 + epoch
            order = torch.randperm(n_fit, generator=torch.Generator().manual_seed(epoch_seed))
            batches = order.split(batch_size)
            if len(batches) > 1 and len(batches[-1]) < max(2, ddp.world_size()):
                batches = batches[:-1]  # BatchNorm needs two samples; DDP one per rank
            # each DDP rank takes its share of every global batch (all of it without DDP)
            shards = [ddp.shard(b) for b in batches]
            loader = None if use_cache or cut is not None else iter(self._loader(fit_images, shards))
            totals = {"loss": 0.0, "mse": 0.0, "align": 0.0}
            with ctx.progress(f"{data.subject} {stage.name} epoch {epoch + 1}/{stage.epochs}",
                              n_fit) as advance:
                for step, (batch_idx, local) in enumerate(zip(batches, shards)):
                    if use_cache:
                        inputs = self._layer_features(data, "train", fit_index[local.numpy()])
                        inputs = [f.to(self.device) for f in inputs]
                    elif cut is not None:
                        inputs = fit_index[local.numpy()]  # the step runs the cut's last blocks
                    else:
                        inputs = next(loader)
                        if augment is not None:
                            # one crop per global batch, drawn from (seed, stage, epoch, step):
                            # the same on every DDP rank and at any world size
                            with torch.random.fork_rng(devices=[]):
                                torch.manual_seed(epoch_seed * 7919 + step)
                                inputs = augment(inputs)
                        inputs = inputs.to(self.device)
                    y = targets[local].to(self.device)
                    t = text[local].to(self.device) if text is not None else None
                    mse, align = train_step(inputs, y, t)
                    # the gradient of the global batch's loss (ddp.rank_loss says why)
                    loss = ddp.rank_loss(mse, len(local), len(batch_idx),
                                         self.alignment_weight * align if net.projection is not None else 0.0)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if p.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(trainable, p.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    # this rank's share of the global batch's MSE; the alignment loss is global
                    totals["mse"] += float(mse.detach()) * len(local) / len(batch_idx)
                    totals["align"] += float(align.detach()) / ddp.world_size()
                    totals["loss"] = totals["mse"] + self.alignment_weight * totals["align"]
                    advance(len(batch_idx), f"{data.subject} {stage.name} {epoch + 1}/{stage.epochs} "
                                            f"loss {totals['loss'] / (step + 1):.4f}")
            n_steps = max(1, len(batches))
            totals["mse"], totals["align"] = ddp.all_reduce_sum([totals["mse"], totals["align"]])
            totals["loss"] = totals["mse"] + self.alignment_weight * totals["align"]
            score = 0.0
            if ddp.is_main():  # the weights are equal on every rank: rank 0 validates for all
                predicted_val = self._predict_index(data, "train", val_index, frozen_features_valid,
                                                    predict_cut)
                score = _validation_score(measured_val, predicted_val, p.validation_metric)
            score = ddp.broadcast_float(score)  # so that every rank stops at the same epoch
            self.history.append({"stage": stage.name, "epoch": epoch + 1,
                                 "loss": totals["loss"] / n_steps, "mse": totals["mse"] / n_steps,
                                 "alignment": totals["align"] / n_steps,
                                 "lr": scheduler.get_last_lr()[0], p.validation_metric: score,
                                 "seconds": round(time.perf_counter() - t_epoch, 3),
                                 "device": str(self.device)})
            if score > best_score:
                best_score, bad_epochs = score, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in net.state_dict().items()})
            else:
                bad_epochs += 1
            stop = p.early_stopping_patience is not None and bad_epochs >= p.early_stopping_patience
            self._save(ckpt_path, {
                "stage": stage_no, "epoch": epoch if not stop else stage.epochs - 1,
                "net": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "best_score": best_score,
                "best_state": best_state, "bad_epochs": bad_epochs, "history": self.history,
                "torch_rng": torch.get_rng_state()})
            if stop:
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        for param in net.parameters():
            param.requires_grad_(False)

    def _save(self, path: Path, state: dict) -> None:
        if not ddp.is_main():  # under DDP rank 0 writes; every rank holds the same state
            return
        # Only tensors and plain containers, so that load_checkpoint can use weights_only.
        state = _plain(state)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    # -- prediction ---------------------------------------------------------------------
    def _predict_index(self, data, split: str, index: np.ndarray, use_cache: bool,
                       cut=None) -> np.ndarray:
        """Predict ``index`` of ``split``: from cached frozen features (``use_cache``),
        through a cut backbone (``cut``: trained last blocks on their cached input), or
        by whole forward passes of the images."""
        net = self.net
        net.eval()
        out = []
        batch_size = self.context.batch_size
        with torch.inference_mode():
            if cut is not None and not use_cache:
                for chunk in np.array_split(index, max(1, math.ceil(len(index) / batch_size))):
                    out.append(net.head(self._split_features(data, split, chunk, cut))[0].float().cpu())
            elif use_cache:
                for chunk in np.array_split(index, max(1, math.ceil(len(index) / batch_size))):
                    feats = [f.to(self.device) for f in self._layer_features(data, split, chunk)]
                    out.append(net.head(feats)[0].float().cpu())
            else:
                images = data.train_images if split == "train" else data.test_images
                chunks = torch.arange(len(index)).split(batch_size)
                for batch in self._loader([images[i] for i in index], list(chunks)):
                    feats = list(self.backbone.forward_features(batch.to(self.device)).values())
                    out.append(net.head(feats)[0].float().cpu())
        return torch.cat(out).numpy()

    def predict(self, data, split: str, index: np.ndarray | None = None) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("llm-vem: predict() before fit()")
        n = len(data.train_images if split == "train" else data.test_images)
        index = np.arange(n) if index is None else np.asarray(index)
        backbone_trained = any(self._trains_backbone(s) for s in self.params.stages)
        # the blocks before the cut were never trained (augmented or not): their cached output holds
        cut = self._prefix_split(self.params.stages) if backbone_trained else None
        return self._predict_index(data, split, index, use_cache=not backbone_trained, cut=cut)

    # -- what the head learnt per vertex (gaussian-head: receptive fields) ----------------
    def vertex_maps(self) -> dict[str, np.ndarray]:
        maps = getattr(self.net.head, "vertex_maps", None) if self.net is not None else None
        return dict(maps()) if maps is not None else {}

    @property
    def vertex_map_units(self) -> dict[str, str]:
        units = getattr(self.net.head, "vertex_map_units", None) if self.net is not None else None
        return dict(units or {})

    # -- a saved encoder (neuroenc.core.encoders) ---------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Return the trained head and trained backbone parameters, and the backbone's record."""
        return _state(self)

    @classmethod
    def from_state(cls, params: LLMVEMParams, context, arrays: dict, meta: dict):
        """Return an image predictor rebuilt from :meth:`state`."""
        return _from_state(params, context, arrays, meta)


class _SavedNet:
    """A saved llm-vem encoder rebuilt: backbone (with its trained parameters) -> head."""

    def __init__(self, backbone, head: nn.Module, base_weights_sha256: str):
        self.backbone = backbone
        self.head = head
        self.base_weights_sha256 = base_weights_sha256  # of the backbone as built, untrained

    def predict_features(self, features):
        return self.head(list(features.values()))[0]


def _state(model: LLMVEMModel) -> tuple[dict[str, np.ndarray], dict]:
    """The trained head, and the backbone parameters the stages trained (the rest is rebuilt)."""
    from neuroenc.core.encoders import EncoderNotSavable

    if model.net is None:
        raise EncoderNotSavable("llm-vem: the model was not fitted")
    rebuild = getattr(model.net.head, "rebuild_meta", None)
    if rebuild is None:
        raise EncoderNotSavable(f"llm-vem: head {model.params.mapper.name!r} has no rebuild_meta() "
                                "(what its mapper's empty_module needs to rebuild it)")
    arrays = {f"head.{k}": v.detach().cpu().numpy() for k, v in model.net.head.state_dict().items()}
    for name, param in model.net.backbone.named_parameters(prefix="backbone"):
        if any(model._selected(name, stage) for stage in model.params.stages):
            arrays[name] = param.detach().cpu().numpy()
    return arrays, {"readout": f"llm-vem {model.params.mapper.name}",
                    "layer_shapes": [list(s) for s in model.layer_shapes],
                    "head": rebuild(), "backbone": model._backbone_record}


def _from_state(params: LLMVEMParams, context, arrays: dict, meta: dict) -> _SavedNet:
    from neuroenc.core.encoders import EncoderError, module_digest

    backbone = context.build("image_backbone", params.backbone)
    base = module_digest(backbone.module)
    mapper = context.build("voxel_mapper", params.mapper)
    if "head" in meta:
        head_meta = meta["head"]
    else:  # encoders saved before heads described themselves: pca-head only
        k, n_vertices = meta["pca_shape"]
        head_meta = {"n_components": k, "n_vertices": n_vertices}
    head = mapper.empty_module([tuple(s) for s in meta["layer_shapes"]], **head_meta)
    head.load_state_dict({n[5:]: torch.from_numpy(v) for n, v in arrays.items() if n.startswith("head.")})
    trained = {n[len("backbone."):]: torch.from_numpy(v) for n, v in arrays.items()
               if n.startswith("backbone.")}
    if trained:
        unexpected = backbone.module.load_state_dict(trained, strict=False).unexpected_keys
        if unexpected:
            raise EncoderError(f"llm-vem encoder: trained backbone parameters {unexpected[:3]} "
                               "are not in the backbone built here")
    backbone.module.eval()
    return _SavedNet(backbone, head.eval().to(context.device), base)


def _head_names(head: nn.Module, method: str) -> set[str]:
    """Return the head's parameter names (relative to it) that ``method`` lists; a head
    without the method lists none (a pca-head of an older plugin: its frozen PCA layer)."""
    fn = getattr(head, method, None)
    if fn is not None:
        return set(fn())
    if method == "frozen_parameter_names" and getattr(head, "freeze_pca", False):
        return {n for n, _ in head.named_parameters() if n.startswith("pca.")}
    return set()


def _blank_image():
    from PIL import Image

    return Image.new("RGB", (64, 64))


COMPONENTS = [
    Component("llm-vem", LLMVEMModel, LLMVEMParams,
              "two-stage training of backbone + voxel head with LLM-caption alignment (Ma et al. 2024)"),
]


def load_checkpoint(path: Path) -> dict:
    """Return a training checkpoint, read with ``weights_only=True``.

    ``<cache>/training/`` is shared between users on clusters, and a full unpickle of a
    file placed there would run whatever code it names. Checkpoints hold tensors and
    plain containers only, which torch's restricted loader reads.

    Raises
    ------
    RuntimeError
        The file names anything else (the message names the file and what it holds).
    """
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(
            f"{path}: refused to load this training checkpoint: it holds more than tensors and "
            f"plain containers ({first}); neuroenc never writes such a file, so it was placed "
            "there by someone else: delete it (training then starts afresh)") from None


def _plain(value):
    """Return ``value`` with numpy scalars turned into Python numbers (recursively)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value
