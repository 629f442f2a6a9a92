"""Frozen, versioned configs: the config type picks the technique.

Every config converts to and from a plain dict through an allowlist (its own fields), so configs
travel in recipes, manifests and reports without pickling. Field docs double as the recipe schema docs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from torchslim.errors import UserError
from torchslim.registry import Registry

CONFIGS: Registry[type[BaseConfig]] = Registry("config type")
C = TypeVar("C", bound="BaseConfig")


def _check(ok: bool, config: str, name: str, message: str) -> None:
    if not ok:
        raise UserError(f"{config}.{name}: {message}")


def _fraction(config: str, name: str, value: float | None, *, closed: bool = False) -> None:
    if value is not None:
        inside = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
        _check(inside, config, name, f"must be in [0, 1{']' if closed else ')'}, got {value}")


def _one_of(config: str, values: dict[str, Any]) -> None:
    given = [k for k, v in values.items() if v is not None]
    _check(len(given) == 1, config, "|".join(values), f"give exactly one of these, got {given or 'none'}")


@dataclass(frozen=True)
class BaseConfig:
    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        body = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"type": type(self).__name__, "version": self.version, **body}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        data = dict(data)
        kind = data.pop("type", cls.__name__)
        target = CONFIGS.get(kind)
        if not issubclass(target, cls):
            raise UserError(f"expected a {cls.__name__}, got {kind}")
        version = data.pop("version", target.version)
        if version > target.version:
            raise UserError(f"{kind} version {version} is newer than this torchslim reads ({target.version})")
        allowed = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise UserError(f"{kind}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return target(**{**data, **tuples})

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def register_config(cls: type[C]) -> type[C]:
    CONFIGS.register(cls.__name__, cls)
    return cls


@register_config
@dataclass(frozen=True)
class SparsityConfig(BaseConfig):
    """Unstructured pruning: individual weights are masked to zero."""

    sparsity: float | None = None
    """Fraction of selected weights set to zero, in [0, 1)."""
    threshold: float | None = None
    """Alternative to `sparsity`: prune every weight whose importance is below this value."""
    retain: float | None = None
    """Alternative to `sparsity`: the fraction of selected weights kept, in (0, 1] (0.9 keeps 90%)."""
    importance: str = "auto"
    """Criterion by registered name: `auto` (default: magnitude_bn where the model has BatchNorms and
    `data` is given, else magnitude), magnitude, magnitude_bn (BatchNorm folded in), taylor, entropy,
    random, or a user's own; for transformers, `wanda` (|w| x input norm, per output row) and `sparsegpt`
    (second order, the kept weights reconstructed), which run one layer at a time through
    `torchslim.llm.engine` on the Linear layers of the model's repeated blocks and need `data`."""
    pattern: str | None = None
    """N:M semi-structured sparsity, e.g. "2:4" or "4:8": in every group of M consecutive weights along a
    row (a Linear's input dimension), N are kept, whatever the criterion; `sparsity` is then 1 - N/M
    (may be omitted) and `scope` does not apply. None: unstructured."""
    scope: Literal["layer", "global"] = "global"
    """`global` (default): one ranking across all selected layers, so thin layers keep more of their
    weights (after fine-tuning it beats `layer` at every sparsity in the benchmark); `layer`: each layer
    reaches the sparsity."""
    allocation: Literal["uniform", "auto"] = "uniform"
    """`auto`: per-layer sparsity from measured sensitivity to meet the global target."""
    include: tuple[str, ...] = ()
    """Globs of module names to prune (empty: all weighted layers)."""
    exclude: tuple[str, ...] = ()
    """Globs of module names to leave dense; checked before `include`."""
    soft: bool = False
    """Soft masks: pruned weights may regrow during training; masks are fixed at the end."""
    normalize: str = "auto"
    """How a global ranking compares layers: `auto` (default: `lamp` when every score is >= 0, as for
    every built-in criterion, else `none`), `lamp` (each score over the sum of the layer's scores at or
    above it, Lee et al. 2021; the best global setting after fine-tuning for every criterion in the
    benchmark), `none` (raw scores, as `torch.nn.utils.prune.global_unstructured`), `mean` (over the
    layer's mean score). Used by `scope="global"` and by the global candidate of `allocation="auto"`."""
    rounds: int | None = None
    """Score-and-prune rounds on the way to the target, no training between: sparsity rises along the
    cubic schedule and the weights still alive are re-scored each round. None (default): the
    criterion's own choice (10 for taylor, whose gradients change as other weights go; 1 for criteria
    whose scores do not change, such as magnitude)."""

    def __post_init__(self) -> None:
        _check(self.rounds is None or self.rounds >= 1, "SparsityConfig", "rounds", "must be >= 1")
        if self.pattern is not None:
            self._pattern_sparsity()
        _one_of(
            "SparsityConfig", {"sparsity": self.sparsity, "threshold": self.threshold, "retain": self.retain}
        )
        _fraction("SparsityConfig", "sparsity", self.sparsity)
        _check(self.retain is None or 0 < self.retain <= 1, "SparsityConfig", "retain", "must be in (0, 1]")
        _check(self.threshold is None or self.threshold >= 0, "SparsityConfig", "threshold", "must be >= 0")
        _check(self.scope in ("layer", "global"), "SparsityConfig", "scope", "must be 'layer' or 'global'")
        _check(self.allocation in ("uniform", "auto"), "SparsityConfig", "allocation", "must be uniform|auto")

    def _pattern_sparsity(self) -> None:
        """With a pattern, `sparsity` is 1 - N/M: filled in when omitted, refused when it differs."""
        from torchslim.prune.pattern import sparsity_of  # prune imports config: no cycle at import time

        assert self.pattern is not None
        implied = sparsity_of(self.pattern)
        given = self.sparsity if self.retain is None else 1.0 - self.retain
        _check(self.threshold is None, "SparsityConfig", "threshold", "a pattern fixes the sparsity: omit it")
        _check(self.allocation == "uniform", "SparsityConfig", "allocation", "a pattern needs uniform")
        _check(
            given is None or abs(given - implied) < 1e-9,
            "SparsityConfig",
            "sparsity",
            f"pattern {self.pattern} keeps {1 - implied:g} of the weights (sparsity {implied:g}); "
            f"got {given}: omit sparsity or set it to {implied:g}",
        )
        object.__setattr__(self, "sparsity", implied)
        object.__setattr__(self, "retain", None)


@register_config
@dataclass(frozen=True)
class ChannelConfig(BaseConfig):
    """Structural pruning: whole channels, filters and heads are removed, layers shrink."""

    ratio: float | None = None
    """Fraction of channels removed from each prunable group, in [0, 1)."""
    macs_target: float | None = None
    """Alternative to `ratio`: prune until MACs are at most this fraction of the dense model's."""
    latency_target: float | None = None
    """Alternative to `ratio`: prune until measured latency is at most this fraction of the dense model's."""
    importance: str = "l2"
    """Group criterion by registered name: l1, l2, magnitude, taylor, entropy, bn_scale, random."""
    scope: Literal["layer", "global"] = "layer"
    """`layer`: every group loses the same fraction; `global`: one ranking across groups."""
    round_to: int | None = None
    """Remaining channel counts are rounded to a multiple of this (8 or 16 suit fast kernels); None: 4 for
    the outputs of convolutions with at least 32 channels, which onnxruntime's blocked (NCHWc) kernels need
    (a DS-CNN of 37 channels ran 2.6x slower than one of 40), none elsewhere."""
    include: tuple[str, ...] = ()
    """Globs of module names whose channels may be pruned (empty: all)."""
    exclude: tuple[str, ...] = ()
    """Globs of module names whose outputs keep every channel (as Torch-Pruning's `ignored_layers`):
    excluding the classifier keeps the class count while the channels feeding it may go (its input
    columns are cut). A matched module without a layer rule (a container) is left whole."""
    exclude_mode: Literal["outputs", "coupled"] = "outputs"
    """What `exclude` (and a layer `include` leaves out) protects: `outputs` (default), the layer's
    output channels only; `coupled`, also every channel coupled to its inputs (the layer is left
    whole, so e.g. the last stage feeding an excluded classifier keeps all its channels)."""
    soft: bool = False
    """Soft filter pruning: zero channels, let them regrow in training, remove them at the end."""

    def __post_init__(self) -> None:
        values = {"ratio": self.ratio, "macs_target": self.macs_target, "latency_target": self.latency_target}
        _one_of("ChannelConfig", values)
        _fraction("ChannelConfig", "ratio", self.ratio)
        for name in ("macs_target", "latency_target"):
            value = values[name]
            _check(value is None or 0 < value <= 1, "ChannelConfig", name, f"must be in (0, 1], got {value}")
        _check(self.round_to is None or self.round_to >= 1, "ChannelConfig", "round_to", "must be >= 1")
        mode = self.exclude_mode
        _check(
            mode in ("outputs", "coupled"),
            "ChannelConfig",
            "exclude_mode",
            f"must be outputs|coupled, got {mode!r}",
        )


METHODS = ("auto", "rtn", "gptq", "awq", "awq+gptq", "gptq+tune")
"""`QuantConfig.method` values (weight rounding)."""


@register_config
@dataclass(frozen=True)
class QuantConfig(BaseConfig):
    """Quantization of weights (and optionally activations) to low-bit integers or a codebook."""

    bits: int = 8
    """Bit width of weights, 2 to 8."""
    weights: Literal["per_tensor", "per_channel", "per_group"] = "per_channel"
    """Granularity of weight scales."""
    group_size: int | None = None
    """Weights per scale along the input dimension when `weights` is per_group. None: 64 for layers of 4
    bits or fewer, 128 above (MiniLM 4-bit GPTQ asymmetric: cosine 0.9815 at 128, 0.9859 at 64)."""
    symmetric: bool | None = None
    """Symmetric ranges (zero point 0) or asymmetric (min/max with a zero point). None: asymmetric at 3
    bits or fewer and for Linear/Embedding layers at 4 (MiniLM 4-bit g128 GPTQ cosine 0.9728 symmetric,
    0.9815 asymmetric); symmetric otherwise (see `torchslim.quant.auto.symmetric_for`)."""
    activations: Literal["dynamic", "static"] | None = None
    """None: weight-only; dynamic: ranges per batch at run time; static: ranges from calibration."""
    calibration: str = "minmax"
    """Activation range estimator for static mode: minmax, moving_average, percentile, mse, entropy."""
    kind: Literal["int", "codebook"] = "int"
    """`int`: uniform integer grid; `codebook`: k-means weight sharing (2**bits centroids per layer)."""
    include: tuple[str, ...] = ()
    """Globs of module names to quantize (empty: all Linear/Conv layers)."""
    exclude: tuple[str, ...] = ()
    """Globs of module names kept in float."""
    size_target: float | None = None
    """Mixed precision: per-layer bit widths from `bit_choices`, picked by measured sensitivity (loss
    increase on calibration data when only that layer is quantized) so that the selected layers'
    weights take at most this fraction of their fp32 size (0.125 = 4 bits on average); `bits` is then
    unused. None: every layer gets `bits`."""
    bit_choices: tuple[int, ...] = (8, 6, 4, 3, 2)
    """Widths mixed precision may pick from; 32 lets it keep a sensitive layer in float."""
    reduce_range: bool | None = None
    """8-bit weights on half the grid ([-63, 63]), as onnxruntime's `reduce_range`: x86 integer kernels
    without VNNI sum pairs of u8*s8 products in int16 and saturate on the full grid. None: on whenever
    activations are quantized (the model runs on integer kernels), off for weight-only."""
    method: Literal["auto", "rtn", "gptq", "awq", "awq+gptq", "gptq+tune"] = "auto"
    """Weight rounding (kind int). `rtn`: round to nearest. `gptq`: each column's rounding error spread over
    the columns not yet rounded, weighted by the inputs' Hessian (Linear layers; needs calibration data).
    `awq`: activation-aware per-input-channel scales `act^a / w^(1-a)`, `a` searched per layer (per group
    of layers reading one input) for the least output error, then rtn on the scaled weights; `awq+gptq`:
    the same scales, then gptq. `gptq+tune`: gptq, then each transformer block's rounding offsets and
    group scales tuned for the block's output error (`torchslim.quant.tune`; block Linears only, through
    the layer-by-layer engine). `auto`: gptq for layers of 4 bits or fewer when calibration data is given
    (MiniLM 4-bit per_group g128: cosine 0.965 against 0.930 for rtn), else rtn (gptq+tune is not picked:
    it measured below gptq on MiniLM, see `torchslim.quant.auto`)."""
    smoothing: float | Literal["auto"] = "auto"
    """SmoothQuant alpha for Linear layers (0: off): activation outliers divided out per input channel and
    folded into the weights; needs calibration data. `auto`: with dynamic activations and calibration data,
    the alpha of `torchslim.quant.auto.SMOOTHING_CHOICES` whose model output on a calibration batch is
    closest to float; otherwise 0."""

    def __post_init__(self) -> None:
        _check(2 <= self.bits <= 8, "QuantConfig", "bits", f"must be in 2..8, got {self.bits}")
        _check(
            self.size_target is None or 0 < self.size_target <= 1,
            "QuantConfig",
            "size_target",
            f"must be in (0, 1], got {self.size_target}",
        )
        _check(
            bool(self.bit_choices) and all(b == 32 or 2 <= b <= 8 for b in self.bit_choices),
            "QuantConfig",
            "bit_choices",
            f"must be widths in 2..8 (or 32 for float), got {list(self.bit_choices)}",
        )
        _check(
            self.weights in ("per_tensor", "per_channel", "per_group"),
            "QuantConfig",
            "weights",
            f"must be per_tensor|per_channel|per_group, got {self.weights!r}",
        )
        _check(
            self.activations in (None, "dynamic", "static"),
            "QuantConfig",
            "activations",
            f"must be null|dynamic|static, got {self.activations!r}",
        )
        _check(
            self.kind in ("int", "codebook"),
            "QuantConfig",
            "kind",
            f"must be int|codebook, got {self.kind!r}",
        )
        _check(self.group_size is None or self.group_size >= 1, "QuantConfig", "group_size", "must be >= 1")
        _check(
            self.method in METHODS,
            "QuantConfig",
            "method",
            f"must be {'|'.join(METHODS)}, got {self.method!r}",
        )
        _check(
            self.smoothing == "auto"
            or (isinstance(self.smoothing, (int, float)) and 0.0 <= self.smoothing <= 1.0),
            "QuantConfig",
            "smoothing",
            f"must be auto or an alpha in [0, 1], got {self.smoothing!r}",
        )
        _check(
            not (self.method.startswith("awq") and self.smoothing not in ("auto", 0, 0.0)),
            "QuantConfig",
            "smoothing",
            f"AWQ chooses its own input scales; leave smoothing at auto or 0 with method {self.method}",
        )


INITS = ("auto", "teacher", "student")


@register_config
@dataclass(frozen=True)
class DistillConfig(BaseConfig):
    """Knowledge distillation: the student learns the teacher's softened outputs."""

    temperature: float = 2.0
    """Softmax temperature for both teacher and student logits; > 0. 2 (default) against 4, 15 epochs
    (6 for lenet5-digits), mean of 5 seeds: mnist1d-cnn half-width student 0.971 against 0.967 (3, 8
    and 1 lower still), quarter-width 0.965 against 0.965, lenet5-digits half-width 0.992 against 0.991."""
    alpha: float = 1.0
    """Weight of the distillation term; 1 - alpha weights the hard-label loss (0 is plain training).
    1 (the teacher's outputs alone, as in function matching) measured best on mnist1d-cnn."""
    epochs: int = 5
    """Passes over the training data."""
    lr: float | None = None
    """Peak learning rate (AdamW). None: chosen from the student (`torchslim.distill.init.default_lr`):
    1e-2 for a CNN-like student, fresh or started from the teacher's channels (1e-2 with warm-up beat
    3e-3 by 1.5 points on fresh mnist1d-cnn students; 3e-3 and 1e-3 from the teacher's channels lost
    0.03 and 0.26); 2e-4 for a pretrained transformers model (MiniLM distils at 2e-4; the usual
    1e-5..5e-4 range of fine-tuning pretrained transformers, where 1e-2 diverges)."""
    warmup: float = 0.05
    """Fraction of the steps over which the lr rises linearly to its peak before the cosine decay."""
    seed: int = 0
    """Seed for data order and initialisation."""
    init: Literal["auto", "teacher", "student"] = "auto"
    """Where the student starts. `teacher`: when the student is a narrower copy of the teacher (same
    module names and types, no tensor larger), from the teacher channel-pruned to the student's widths
    (each coupled group keeps its highest-L2 channels; prune-then-distill as in Minitron); `student`:
    its weights as given; `auto` (default): the teacher's channels when their soft loss to the teacher
    on the first batch is lower than the student's own (so a fresh student starts from the teacher and
    a pruned, trained or pretrained one keeps its weights), else as given. Measured on the mnist1d-cnn
    half-width student, 15 epochs, 3 seeds: 0.971 from the teacher's channels against 0.969 from
    random weights and 0.962 trained from scratch (see BENCHMARKS.md, distill-defaults)."""
    features: tuple[str, ...] = ()
    """Pairs `student_layer:teacher_layer` whose activations are matched (FitNets)."""
    attention: tuple[str, ...] = ()
    """Pairs `student_layer:teacher_layer` of attention modules whose attention distributions are
    matched (MiniLM): KL(teacher || student), per head, averaged over heads and real queries; head
    counts may differ (groups of heads are averaged), sequence lengths may not."""
    attention_weight: float = 1.0
    """Weight of the attention term, >= 0; the term is the mean over the `attention` pairs."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (the lr schedule is fitted to end there); None: `epochs`."""
    tokens: int | None = None
    """Training-token budget: stop after ceil(tokens / tokens per batch) steps, a batch's tokens being
    its `input_ids` elements; for recovery bounded by a fraction of a language model's pretraining
    tokens. With `max_steps` too, the smaller bound wins."""

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "DistillConfig", "temperature", f"must be > 0, got {self.temperature}")
        for name in ("max_steps", "tokens"):
            value = getattr(self, name)
            _check(value is None or value >= 1, "DistillConfig", name, f"must be >= 1, got {value}")
        _fraction("DistillConfig", "alpha", self.alpha, closed=True)
        _check(self.epochs >= 0, "DistillConfig", "epochs", "must be >= 0")
        _check(self.lr is None or self.lr > 0, "DistillConfig", "lr", "must be > 0 (or None: automatic)")
        init = self.init
        _check(init in INITS, "DistillConfig", "init", f"must be auto|teacher|student, got {init!r}")
        _check(0 <= self.warmup < 1, "DistillConfig", "warmup", f"must be in [0, 1), got {self.warmup}")
        weight = self.attention_weight
        _check(weight >= 0, "DistillConfig", "attention_weight", f"must be >= 0, got {weight}")


__all__ = ["CONFIGS", "BaseConfig", "ChannelConfig", "DistillConfig", "QuantConfig", "SparsityConfig"]
