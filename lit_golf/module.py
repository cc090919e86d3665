"""`GolfLightningModule`: the record's training step as a LightningModule.

Manual optimization, because one batch is one optimizer step made of several micro-batches and the
combined `GolfOptimizer` communicates gradients itself. Only the inner GPT is compiled; the module
stays a plain Python object that Lightning can hook into.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lit_golf import artifact
from lit_golf.config import GPTConfig
from lit_golf.data.shards import BOS_ID
from lit_golf.data.vocab import check_vocab
from lit_golf.eval.config import EvalConfig
from lit_golf.eval.metric import BitsPerByte
from lit_golf.eval.plain import document_masked_nll
from lit_golf.eval.runner import evaluate
from lit_golf.export.pipeline import checkpoint_weights
from lit_golf.model import GPT
from lit_golf.optim import OptimConfig, build_golf_optimizer, muon_momentum
from lit_golf.progress import TrainingProgress
from lit_golf.schedule import TrainingConfig, lr_multiplier, recipe_step_scale, scaled_steps

log = logging.getLogger("lit_golf")


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite (a ValueError: the CLI reports it in one line)."""


class CompileCache:
    """Inductor/Triton artifacts of the compiled shapes, kept in one file across launches.

    A cold compile of the record model takes minutes; loading the artifacts first turns the next
    launch's warm-up into cache hits (the "mega-cache" of `torch.compiler`).
    """

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None

    def load(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        start = time.perf_counter()
        torch.compiler.load_cache_artifacts(self.path.read_bytes())
        log.info("compile cache: loaded %s (%.1f MB) in %.1fs", self.path, self.path.stat().st_size / 1e6,
                 time.perf_counter() - start)

    def save(self) -> None:
        if self.path is None:
            return
        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(artifacts[0])
        log.info("compile cache: saved %s (%.1f MB)", self.path, len(artifacts[0]) / 1e6)


class GolfLightningModule(L.LightningModule):
    """Wraps `GPT` with the record's optimizer, schedules, compile warm-up and evaluation.

    Args:
        gpt: model architecture.
        optim: Muon/AdamW numbers, gradient clip.
        training: LR warmdown, loop switch, compile switches.
        evaluation: plain/sliding/TTT evaluation run by `lit-golf test`.
        artifact: path of an exported artifact whose (dequantized) weights `test` evaluates.
        use_ema_weights: `test`/`validate`/`export` with a checkpoint (`--ckpt`) evaluate the EMA
            average it holds, as the fit's own artifact does; false selects the raw weights.
    """

    def __init__(
        self,
        gpt: GPTConfig = GPTConfig(),  # noqa: B008 (copied below; a default, not None, so model.gpt.* always exists)
        optim: OptimConfig | None = None,
        training: TrainingConfig | None = None,
        evaluation: EvalConfig = EvalConfig(),  # noqa: B008 (copied below; model.evaluation.* always exists)
        artifact: str | None = None,
        use_ema_weights: bool = True,
    ) -> None:
        super().__init__()
        self.gpt_config = dataclasses.replace(gpt)  # own copies: the defaults are shared objects
        self.optim_config = optim or OptimConfig()
        self.training_config = training or TrainingConfig()
        self.eval_config = copy.deepcopy(evaluation)
        self.artifact = artifact
        self.use_ema_weights = use_ema_weights
        # What a checkpoint needs to rebuild and resume the model. Evaluation settings stay out: with
        # `--ckpt_path`, LightningCLI lets checkpoint hparams override the command line, and `test`
        # must honour the evaluation flags it is given.
        self.save_hyperparameters(
            {
                "gpt": asdict(self.gpt_config),
                "optim": asdict(self.optim_config),
                "training": asdict(self.training_config),
            }
        )
        self.automatic_optimization = False
        self.gpt = GPT(self.gpt_config)
        self._compiled = None
        self.progress = TrainingProgress()  # shared with the callbacks (lit_golf/progress.py)
        self.test_results: dict = {}
        self._loss_check_every = 1  # steps between finite-loss checks; set at train start
        self._momentum_warmup_steps = self.optim_config.muon_momentum_warmup_steps  # rescaled at fit start
        self._last_val_bpb: float | None = None
        self.val_bpb = BitsPerByte()  # a submodule: follows the model's device, reduces across ranks

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        check_vocab(self.gpt_config.vocab_size, getattr(self._trainer, "datamodule", None))
        if stage in ("test", "validate") and self.artifact:
            self._load_artifact()

    def configure_optimizers(self):
        return build_golf_optimizer(self.gpt, self.optim_config)

    @property
    def step_model(self):
        return self._compiled if self._compiled is not None else self.gpt

    def on_fit_start(self) -> None:
        if self._compiled is None and self.training_config.compile and self.device.type == "cuda":
            # Only the inner GPT: compiling the LightningModule would trace Lightning's hooks too.
            self._compiled = torch.compile(self.gpt, fullgraph=True, dynamic=False)

        dm = self.trainer.datamodule
        self.progress.tokens_per_step = dm.train_batch_tokens
        self._rescale_to_run_length()
        n_params = sum(p.numel() for p in self.gpt.parameters())
        log.info(
            "model: %s parameters, attention backend %s; batch %s tokens/step = %d micro-batches x %d tokens x %d ranks",
            f"{n_params:,}", self.gpt.attention_backend_name, f"{dm.train_batch_tokens:,}",
            dm.grad_accum_steps, dm.tokens_per_microbatch, self.trainer.world_size,
        )
        if dm.tokens_per_microbatch > self.gpt.rope_cos.size(1):
            log.info("rotary tables: %s positions built, a micro-batch row has %s: each step computes its own "
                     "(slower; model.gpt.rope_table_positions %d or more builds them once)",
                     f"{self.gpt.rope_cos.size(1):,}", f"{dm.tokens_per_microbatch:,}", dm.tokens_per_microbatch)

    def _rescale_to_run_length(self) -> None:
        """Fit the step-counted knobs to this run's length (the wall-clock budget publishes itself first)."""
        recipe = self.training_config.recipe_world_size
        scale = recipe_step_scale(self.trainer.world_size, recipe, self.progress.time_budget is not None)
        self.progress.step_scale = scale
        self._momentum_warmup_steps = scaled_steps(self.optim_config.muon_momentum_warmup_steps, scale)
        # Validation every N steps (an int `trainer.val_check_interval`) is step-counted too: 4,000 on 8 GPUs
        # never came in a one-GPU run's ~600 steps. The fit loop reads it after on_fit_start.
        validation = getattr(self.trainer, "val_check_interval", None)
        if isinstance(validation, int) and scale != 1.0:
            self.trainer.val_check_interval = scaled_steps(validation, scale)
        if scale != 1.0:
            cadence = (f", validation every {validation} -> {self.trainer.val_check_interval} steps"
                       if isinstance(validation, int) else "")
            log.info("run length: the recipe's step-counted knobs are tuned for %d GPUs, this wall-clock run has %d: "
                     "step scale %.4g, Muon momentum warm-up %d -> %d steps%s (EMA decay: see the ema line)",
                     recipe, self.trainer.world_size, scale, self.optim_config.muon_momentum_warmup_steps,
                     self._momentum_warmup_steps, cadence)

    def _log_run_settings(self) -> None:
        """Evaluation config and every callback's settings into the loggers' hparams (not the checkpoint's)."""
        settings = self._run_settings() if self.loggers else None
        for logger in self.loggers:
            logger.log_hyperparams(settings)

    def _run_settings(self) -> dict:
        settings = {type(cb).__name__: callback_settings(cb) for cb in self.trainer.callbacks}
        # Through JSON: plain lists and numbers, so hparams.yaml stays loadable with yaml.safe_load.
        run_length = {"step_scale": self.progress.step_scale, "muon_momentum_warmup_steps": self._momentum_warmup_steps,
                      "val_check_interval": getattr(self.trainer, "val_check_interval", None)}
        return json.loads(json.dumps({"evaluation": asdict(self.eval_config), "callbacks": settings,
                                      "run_length": run_length}, default=str))

    def on_train_start(self) -> None:
        # After the callbacks' own train start, so their settings are the ones in use (e.g. a rescaled EMA decay).
        self._log_run_settings()
        # The loss is read where a time budget syncs the device anyway: no extra host sync per step.
        budget = self.progress.time_budget
        self._loss_check_every = budget.sync_every_steps if budget else max(self.trainer.log_every_n_steps, 1)
        if self.training_config.compile_warmup and self._compiled is not None:
            cache = CompileCache(self.training_config.compile_cache)
            cache.load()
            self.compile_warmup()
            if self.trainer.is_global_zero:
                cache.save()

    def on_train_end(self) -> None:
        if self._last_val_bpb is not None:  # hp_metric of the hparams view: the run's final val bpb
            params = json.loads(json.dumps(dict(self.hparams), default=str)) | self._run_settings()
            for logger in self.loggers:
                if isinstance(logger, TensorBoardLogger):  # its hparams view pairs the settings with the metric
                    logger.log_hyperparams(params, metrics={"hp_metric": self._last_val_bpb})
                else:
                    logger.log_metrics({"hp_metric": self._last_val_bpb}, step=self.global_step)
        if self.device.type == "cuda":
            log.info("peak memory: allocated %d MiB, reserved %d MiB",
                     torch.cuda.max_memory_allocated(self.device) // 2**20,
                     torch.cuda.max_memory_reserved(self.device) // 2**20)

    # ---------------------------------------------------------------- training
    def _apply_schedules(self, optimizer, fraction: float) -> None:
        scale = lr_multiplier(fraction, self.training_config.warmdown_frac, self.training_config.min_lr)
        momentum = muon_momentum(self.global_step, self.optim_config, self._momentum_warmup_steps)
        self.progress.lr_multiplier, self.progress.muon_momentum = scale, momentum
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
            if group["kind"] == "muon":
                group["momentum"] = momentum

    def _maybe_enable_looping(self, fraction: float) -> None:
        cfg = self.gpt_config
        if cfg.num_loops and not self.gpt.looping_active and fraction >= self.training_config.enable_looping_at:
            self.gpt.looping_active = True
            encoder, decoder = cfg.layer_schedule(True)
            log.info("layer looping on at step %d (fraction %.3f): encoder %s decoder %s",
                     self.global_step, fraction, encoder, decoder)

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        fraction = self.progress.fraction(self.global_step, self.trainer.max_steps)
        self._maybe_enable_looping(fraction)
        self._apply_schedules(optimizer.optimizer, fraction)
        loss_sum = self._accumulate_gradients(batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.progress.last_loss = loss_sum / len(batch)
        self.progress.grad_norm = optimizer.optimizer.last_grad_norm
        return None

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.progress.clock.train_batch_started(self.device)

    def on_validation_start(self) -> None:
        self.progress.clock.validation_started(self.device)

    def on_validation_end(self) -> None:
        self.progress.clock.validation_ended(self.device)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.global_step % self._loss_check_every == 0:
            self.check_finite_loss()

    def check_finite_loss(self) -> None:
        """Stop at a NaN/inf training loss (on any rank) with one line, instead of training on to a broken export."""
        loss = float(self.progress.last_loss)
        if self.trainer.strategy.reduce_boolean_decision(not math.isfinite(loss), all=False):
            raise TrainingDiverged(
                f"training diverged: the train loss is {loss} at step {self.global_step} (checked every "
                f"{self._loss_check_every} steps): the learning rate is likely too high "
                "(model.optim.matrix_lr / embed_lr / scalar_lr), or the data is bad"
            )

    def _accumulate_gradients(self, micro_batches) -> torch.Tensor:
        model = self.step_model
        loss_sum = torch.zeros((), device=self.device)
        for input_ids, target_ids, cu_seqlens in micro_batches:
            loss = model(input_ids, target_ids, cu_seqlens=cu_seqlens, max_seqlen=self._max_seqlen())
            self.manual_backward(loss / len(micro_batches))
            loss_sum += loss.detach()
        return loss_sum

    def _max_seqlen(self) -> int:
        return self.trainer.datamodule.train_seq_len

    # ---------------------------------------------------------- compile warm-up
    @torch.no_grad()
    def _snapshot(self):
        optimizer = self.optimizers().optimizer
        return (
            {k: v.detach().clone() for k, v in self.gpt.state_dict().items()},
            copy.deepcopy(optimizer.state_dict()),
            torch.random.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        )

    @torch.no_grad()
    def _restore(self, snapshot) -> None:
        weights, optim_state, cpu_rng, cuda_rng = snapshot
        self.gpt.load_state_dict(weights)
        optimizer = self.optimizers().optimizer
        optimizer.load_state_dict(optim_state)
        optimizer.zero_grad(set_to_none=True)
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)

    def warmup_batches(self) -> list:
        """Synthetic micro-batches with every shape training will see, so compilation happens here."""
        dm = self.trainer.datamodule
        n = dm.tokens_per_microbatch
        ids = torch.randint(0, self.gpt_config.vocab_size, (1, n + 1), generator=torch.Generator().manual_seed(0))
        inputs, targets = ids[:, :-1].to(self.device), ids[:, 1:].to(self.device)
        starts = torch.arange(0, n, dm.train_seq_len, dtype=torch.int32)
        batches = []
        for cu_len in dm.compiled_cu_lengths():
            cu = torch.full((cu_len,), n, dtype=torch.int32)
            cu[: min(cu_len, len(starts))] = starts[:cu_len]
            batches.append([(inputs, targets, cu.to(self.device))])
        return batches

    def compile_warmup(self) -> None:
        """Run every compiled shape forward+backward+step, then restore weights, optimizer and RNG.

        The restore makes the warm-up invisible to the result (tested bit-for-bit), so the clock can
        start on a compiled model without training on synthetic data.
        """
        start = time.perf_counter()
        snapshot = self._snapshot()
        optimizer = self.optimizers().optimizer
        loop_states = [False, True] if self.gpt_config.num_loops else [False]
        with torch.enable_grad():
            for looping in loop_states:
                self.gpt.looping_active = looping
                for micro_batches in self.warmup_batches():
                    with self.trainer.precision_plugin.forward_context():
                        self._accumulate_gradients(micro_batches)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        self.gpt.looping_active = False
        self._restore(snapshot)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        log.info("compile warm-up: %.1fs for %d loop states", time.perf_counter() - start, len(loop_states))

    # ------------------------------------------------------------- validation
    def validation_step(self, batch, batch_idx):
        input_ids, target_ids, nbytes = batch  # bytes: the datamodule's val_byte_table (sidecar or tables)
        nll = document_masked_nll(self.gpt, input_ids, target_ids, BOS_ID)
        self.val_bpb.update(nll, nbytes)

    def on_validation_epoch_end(self) -> None:
        metric = self.val_bpb
        bpb = metric.compute()
        loss = metric.loss()
        self.log_dict({"val/bpb": bpb.float(), "val/loss": loss.float()}, rank_zero_only=True)
        self._last_val_bpb = float(bpb)
        if self.trainer.is_global_zero:
            log.info("step %d val_loss %.4f val_bpb %.4f", self.global_step, float(loss), float(bpb))
        metric.reset()

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["looping_active"] = self.gpt.looping_active
        checkpoint["training_seconds"] = self.progress.clock.read()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.gpt.looping_active = checkpoint.get("looping_active", self.gpt.looping_active)
        self.progress.clock.resume_at(float(checkpoint.get("training_seconds", 0.0)))
        stage = getattr(self._trainer.state.fn, "value", None) if self._trainer is not None else None
        if stage in ("test", "validate"):  # not when resuming a fit: that continues from the raw weights
            # Lightning loads `checkpoint["state_dict"]` after this hook: swap the EMA average in there.
            weights = checkpoint["state_dict"]
            source = self._trainer.ckpt_path
            raw = {k[len("gpt."):]: v for k, v in weights.items() if k.startswith("gpt.")}
            chosen, which = checkpoint_weights(checkpoint, raw, self.use_ema_weights, source)
            weights.update({f"gpt.{k}": v for k, v in chosen.items()})
            log.info("%s: checkpoint %s: %s", stage, source, which)

    # ------------------------------------------------------------------- test
    def _load_artifact(self) -> None:
        runtime = {k: getattr(self.gpt_config, k) for k in GPTConfig.RUNTIME_FIELDS}
        loaded, header = artifact.load_with_header(self.artifact, **runtime)
        want, got = self.gpt_config.architecture(), loaded.config.architecture()
        if want != got:
            diff = {k: (v, got[k]) for k, v in want.items() if got[k] != v}
            raise ValueError(
                f"artifact {self.artifact} was built for a different model (config vs artifact: {diff}); "
                "use the config the artifact was trained with"
            )
        dm = self._trainer.datamodule if self._trainer is not None else None
        if hasattr(dm, "check_artifact_tokenizer"):
            dm.check_artifact_tokenizer(header, self.artifact)
        self.gpt.load_state_dict(loaded.state_dict())
        self.gpt.looping_active = loaded.looping_active
        log.info("evaluating artifact %s", self.artifact)

    def test_step(self, batch, batch_idx):
        dm = self.trainer.datamodule
        self.test_results = evaluate(
            self.gpt, dm.val_tokens(), dm.byte_luts(), self.eval_config,
            progress=self.trainer.is_global_zero, token_bytes=dm.val_token_bytes(),
        )
        scalars = {f"test/{k}": float(v) for k, v in self.test_results.items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if self.trainer.is_global_zero:
            for logger in self.loggers:  # TensorBoard and metrics.csv
                logger.log_metrics(scalars, step=self.global_step)


def callback_settings(callback) -> dict:
    """A callback's public scalar settings (its constructor arguments, by this codebase's convention)."""
    settings = {}
    for name, value in vars(callback).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (bool, int, float, str)) or value is None:
            settings[name] = value
        elif hasattr(value, "__dataclass_fields__"):
            settings[name] = asdict(value)
    return settings
