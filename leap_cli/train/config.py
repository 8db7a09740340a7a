"""Training config: frozen dataclasses, one per section, loaded from YAML with ``--set key=value`` overrides.

A config file has the sections ``model``, ``data``, ``optim``, ``loss`` and ``train`` (see
``leap_cli/resources/configs/tiny-synthetic.yaml``, or by name: ``--config tiny-synthetic``). Unknown keys are errors naming the key and the file or the ``--set`` that gave it. The resolved
config (file + overrides + defaults) is written to ``runs/NAME/config.yaml`` and stored in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, get_type_hints

import yaml

from leap_cli.errors import LeapError
from leap_cli.io import read_utf8
from leap_cli.resources import bundled_config, bundled_configs

BACKBONES = ("uniformerv2_tiny", "uniformerv2_b16", "uniformerv2_l14")
WEIGHT_FAMILIES = ("clip", "k400", "k710", "ssv2")  # leap_cli.model.uniformerv2.FAMILIES (kept import-light here)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "uniformerv2_tiny"
    num_frames: int = 8
    img_size: int = 224
    pretrained: str | None = None          # local UniFormerV2 or CLIP checkpoint (see leap_cli.model)
    program_heads: bool = True             # build the program decoder and condition head
    anticipation_context: int = 0          # C previous clips aggregated for anticipation (0: recognition)
    anticipation_aggregate: bool = True    # ablation switch for the aggregation of program embeddings
    grad_checkpointing: bool = False
    # released weight family (clip | k400 | k710 | ssv2): its architecture options and input normalisation
    # (leap_cli.model.uniformerv2.FAMILIES); null: the builder's defaults with CLIP's normalisation
    weights: str | None = None
    allow_partial_load: bool = False       # load a pretrained file that does not fit (--allow-partial-load)
    options: dict = field(default_factory=dict)  # extra backbone options passed to build_model as-is
    compile: bool = False                  # torch.compile the model in `leap train` and `leap evaluate`


@dataclass(frozen=True)
class DataConfig:
    train: str | tuple | None = None       # shard folder or a list of them; default {workdir}/shards/train
    val: str | None = None                 # default {workdir}/shards/val; "" disables validation
    batch_size: int = 8                    # per process, per micro-batch
    eval_batch_size: int = 16
    num_workers: int = 0
    shuffle_buffer: int = 256
    crop_scale: tuple = (0.25, 1.0)        # random-resized-crop area range (training)
    color_jitter: float = 0.0              # brightness/contrast/saturation jitter strength (training)
    task: str = "recognition"              # "recognition" | "anticipation"


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3                       # peak learning rate (heads and top backbone layer)
    min_lr_ratio: float = 0.01             # cosine floor as a fraction of the peak
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0                  # optimizer steps; if 0, warmup_ratio of the total is used
    warmup_ratio: float = 0.05
    layer_decay: float = 1.0               # lr scale per backbone layer below the top (1.0: off)
    backbone_lr_scale: float = 1.0         # extra factor on every backbone parameter
    grad_clip: float = 0.0                 # max global grad norm (0: off)
    accum_steps: int = 1                   # micro-batches per optimizer step


@dataclass(frozen=True)
class LossConfig:
    lambda_t: float = 1.0
    lambda_pc: float = 1.0
    label_smoothing: float = 0.0
    program_loss: bool = True              # False: the L_CE-only baseline (--no-program-loss)
    condition_pos_weight: float = 10.0     # weight of the positive entries in L_PC's multi-hot BCE (1: unweighted)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    max_steps: int = 0                     # optimizer steps; 0: epochs x steps per epoch
    seed: int = 0
    precision: str = "auto"                # "auto" (bf16 on CUDA, fp32 on CPU) | "fp32" | "bf16" | "fp16"
    sync_bn: bool = True                   # SyncBatchNorm under DDP (batch statistics over all processes)
    log_every: int = 10                    # optimizer steps between metrics.jsonl lines
    checkpoint_every: int = 0              # optimizer steps between last.pt writes (0: only per epoch / end)
    eval_every_epochs: int = 1
    device: str = "auto"                   # "auto" | "cpu" | "cuda"
    threads: int = 0                       # torch.set_num_threads on CPU (0: leave)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Plain dict of primitives (tuples become lists): YAML- and ``weights_only``-safe."""
        return _plain(dataclasses.asdict(self))


SECTIONS = {f.name: f.type for f in fields(Config)}
# Renamed keys: the old name is still read (config files and checkpoints written before), the new one is written.
ALIASES = {"train.compile": "model.compile"}
_SECTION_CLASSES = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "loss": LossConfig,
                    "train": TrainConfig}


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check/convert a YAML value to the field's type; a mismatch is a LeapError naming the key."""
    text = hint.__name__ if isinstance(hint, type) else str(hint)  # "int", not "<class 'int'>"
    optional = "None" in text
    if text.startswith("str | tuple"):
        text = "a folder, or a list of folders"
    if value is None:
        if optional:
            return None
        raise LeapError(f"config key {key!r} may not be null", path=source, fix=f"give {key} a value")
    try:
        if hint is bool or text.startswith("bool"):
            if isinstance(value, bool):
                return value
            raise TypeError
        if hint is int or text.startswith("int"):
            if isinstance(value, bool) or not float(value).is_integer():
                raise TypeError
            return int(value)
        if hint is float or text.startswith("float"):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if text.startswith("a folder"):  # a path or a list of paths (data.train)
            if isinstance(value, (list, tuple)):
                if not value or not all(isinstance(v, str) and v for v in value):
                    raise TypeError
                return value[0] if len(value) == 1 else tuple(value)
            if isinstance(value, dict):
                raise TypeError
            return str(value)
        if hint is str or text.startswith("str"):
            if isinstance(value, (dict, list)):
                raise TypeError
            return str(value)
        if hint is tuple or text.startswith("tuple"):
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return tuple(float(v) for v in value)
        if hint is dict or text.startswith("dict"):
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError):
        raise LeapError(f"config key {key!r} has the wrong type: {value!r} (expected {text})", path=source,
                        fix="fix the value in the config file or the --set override") from None
    return value


def resolve_aliases(raw: dict, source: str = "<config>") -> dict:
    """``raw`` with every old key name of ``ALIASES`` moved to its new name (a copy; both names with different
    values is an error naming the file)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for old, new in ALIASES.items():
        (osec, okey), (nsec, nkey) = old.split("."), new.split(".")
        if not isinstance(raw.get(osec), dict) or okey not in raw[osec]:
            continue
        value = raw[osec].pop(okey)
        target = raw.setdefault(nsec, {})
        if not isinstance(target, dict):
            continue  # _build reports the section that is not a mapping
        if nkey in target and target[nkey] != value:
            raise LeapError(f"config keys {old!r} ({value!r}) and {new!r} ({target[nkey]!r}) disagree", path=source,
                            fix=f"give only {new} ({old} is its old name)")
        target.setdefault(nkey, value)
    return raw


def _build(raw: dict, source: str, origins: dict[str, str] | None = None) -> Config:
    """``origins`` names where a key's value came from when not from ``source`` (``{"optim.lr": "--set optim.lr=1"}``)."""
    origins = origins or {}
    if not isinstance(raw, dict):
        raise LeapError("a config file must be a YAML mapping of sections", path=source,
                        fix=f"use the sections {', '.join(SECTIONS)}")
    raw = resolve_aliases(raw, source)
    sections = {}
    for name, section in raw.items():
        if name not in _SECTION_CLASSES:
            raise LeapError(f"unknown config section {name!r}", path=source,
                            fix=f"valid sections: {', '.join(_SECTION_CLASSES)}")
        cls = _SECTION_CLASSES[name]
        section = section or {}
        if not isinstance(section, dict):
            raise LeapError(f"config section {name!r} must be a mapping", path=source)
        hints = get_type_hints(cls)
        valid = {f.name for f in fields(cls)}
        values = {}
        for key, value in section.items():
            where = origins.get(f"{name}.{key}", source)
            if key not in valid:
                raise LeapError(f"unknown config key '{name}.{key}'", path=where,
                                fix=f"valid keys in {name}: {', '.join(sorted(valid))}")
            values[key] = _coerce(value, hints[key], f"{name}.{key}", where)
        sections[name] = cls(**values)
    cfg = Config(**sections)
    _validate(cfg, source, origins)
    return cfg


def _validate(cfg: Config, source: str, origins: dict[str, str] | None = None) -> None:
    def bad(key: str, msg: str) -> LeapError:
        return LeapError(f"config key {key!r}: {msg}", path=(origins or {}).get(key.split("[")[0], source))
    if cfg.model.backbone not in BACKBONES:
        raise bad("model.backbone", f"unknown backbone {cfg.model.backbone!r} (one of {', '.join(BACKBONES)})")
    if cfg.model.weights is not None and cfg.model.weights not in WEIGHT_FAMILIES:
        raise bad("model.weights", f"unknown weights family {cfg.model.weights!r} (one of {', '.join(WEIGHT_FAMILIES)})")
    if cfg.data.task not in ("recognition", "anticipation"):
        raise bad("data.task", "must be 'recognition' or 'anticipation'")
    if cfg.train.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise bad("train.precision", "must be auto, fp32, bf16 or fp16")
    if cfg.train.device not in ("auto", "cpu", "cuda"):
        raise bad("train.device", "must be auto, cpu or cuda")
    for key, value in (("data.batch_size", cfg.data.batch_size), ("optim.accum_steps", cfg.optim.accum_steps),
                       ("model.num_frames", cfg.model.num_frames), ("model.img_size", cfg.model.img_size)):
        if value < 1:
            raise bad(key, "must be at least 1")
    if cfg.train.epochs < 1 and cfg.train.max_steps < 1:
        raise bad("train.epochs", "set epochs or max_steps to at least 1")
    if len(cfg.optim.betas) != 2:
        raise bad("optim.betas", f"{list(cfg.optim.betas)!r} must be two values [beta1, beta2]")
    if len(cfg.data.crop_scale) != 2 or not 0 < cfg.data.crop_scale[0] <= cfg.data.crop_scale[1] <= 1:
        raise bad("data.crop_scale", "must be [low, high] with 0 < low <= high <= 1")
    if not 0 < cfg.optim.layer_decay <= 1:
        raise bad("optim.layer_decay", "must be in (0, 1]")
    # Ranges: (key, value, low, high, low_open); a value outside is refused before anything runs.
    o, lo, t, d = cfg.optim, cfg.loss, cfg.train, cfg.data
    ranges = [("optim.lr", o.lr, 0, None, False), ("optim.min_lr_ratio", o.min_lr_ratio, 0, 1, False),
              ("optim.weight_decay", o.weight_decay, 0, None, False), ("optim.eps", o.eps, 0, None, True),
              ("optim.warmup_steps", o.warmup_steps, 0, None, False), ("optim.warmup_ratio", o.warmup_ratio, 0, 1, False),
              ("optim.backbone_lr_scale", o.backbone_lr_scale, 0, None, False),
              ("optim.grad_clip", o.grad_clip, 0, None, False),
              ("loss.lambda_t", lo.lambda_t, 0, None, False), ("loss.lambda_pc", lo.lambda_pc, 0, None, False),
              ("loss.condition_pos_weight", lo.condition_pos_weight, 0, None, True),
              ("loss.label_smoothing", lo.label_smoothing, 0, 0.999, False),
              ("train.epochs", t.epochs, 0, None, False), ("train.max_steps", t.max_steps, 0, None, False),
              ("train.log_every", t.log_every, 1, None, False), ("train.checkpoint_every", t.checkpoint_every, 0, None, False),
              ("train.eval_every_epochs", t.eval_every_epochs, 1, None, False), ("train.threads", t.threads, 0, None, False),
              ("data.eval_batch_size", d.eval_batch_size, 1, None, False), ("data.num_workers", d.num_workers, 0, None, False),
              ("data.shuffle_buffer", d.shuffle_buffer, 0, None, False), ("data.color_jitter", d.color_jitter, 0, None, False)]
    ranges += [(f"optim.betas[{i}]", b, 0, 0.999999, False) for i, b in enumerate(o.betas)]
    ranges += [("model.anticipation_context", cfg.model.anticipation_context, 0, None, False)]
    _check_options(cfg.model, bad)
    for key, value, low, high, low_open in ranges:
        if (value != value or (value <= low if low_open else value < low) or (high is not None and value > high)
                or value == math.inf):
            span = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
            raise bad(key, f"{value!r} is out of range {span}")


# model.options keys that model_args takes from elsewhere (model_args_for): an option of another value would
# override them unseen (the same value is harmless, and a run begun with it must resume). The model section's are
# checked here, the data's (``DATA_SET``) by train.loop.model_args_for, which knows them.
_SET_ELSEWHERE = {"backbone": "model.backbone", "num_frames": "model.num_frames", "img_size": "model.img_size"}
DATA_SET = {"num_verbs": "the shards' class files", "num_nouns": "the shards' class files",
            "program": "model.program_heads and the shards' programs",
            "anticipation": "data.task, model.anticipation_context and model.anticipation_aggregate"}
# model.options of the heads and the backbone with a range: (low, high or None, high open, integer)
_OPTION_RANGES = {"decoder_dim": (1, None, False, True), "decoder_layers": (1, None, False, True),
                  "decoder_heads": (1, None, False, True), "decoder_dropout": (0, 1, True, False),
                  "decoder_label_forcing": (0, 1, False, False), "drop_path_rate": (0, 1, True, False),
                  "backbone_drop_path_rate": (0, 1, True, False), "cls_dropout": (0, 1, True, False),
                  **{k: (1, None, False, True) for k in ("patch_size", "width", "layers", "heads", "kernel_t", "n_dim",
                                                         "n_head")}}
# model.options that must be over 0 (a divisor: dw_reduction=0 was a ZeroDivisionError building the model)
_OPTION_POSITIVE = ("dw_reduction", "mlp_factor")
# model.options of other types, as UniFormerV2Config and model.leap.DECODER_DEFAULTS declare them (a test checks
# these against them; config.py stays import-light): a string "false" was truthy, a number for a list a TypeError
_OPTION_BOOLS = ("temporal_downsample", "no_lmhra", "double_lmhra", "grad_checkpointing", "frozen", "use_sdpa",
                 "decoder_recognition")
_OPTION_LISTS = {"return_list": "integers (block indices)", "mlp_dropout": "numbers (one per return_list block)",
                 "mean": "numbers (R, G, B)", "std": "numbers (R, G, B)"}


def _check_options(model: "ModelConfig", bad) -> None:
    """Refuse a ``model.options`` value of the wrong type or out of its range, or one that differs from the key
    that sets it (each crashed building the model or at its first step, or overrode that key unseen)."""
    for key, value in model.options.items():
        name = f"model.options.{key}"
        if key in _SET_ELSEWHERE and (value != getattr(model, key) or type(value) is not type(getattr(model, key))):
            raise bad(name, f"{value!r} where {_SET_ELSEWHERE[key]} is {getattr(model, key)!r}: it is set there, "
                            "not by model.options (remove it)")
        if key in _OPTION_BOOLS and not isinstance(value, bool):
            raise bad(name, f"{value!r} is not true or false")
        if key in _OPTION_LISTS and (not isinstance(value, (list, tuple)) or not all(
                isinstance(v, int if key == "return_list" else (int, float)) and not isinstance(v, bool) for v in value)):
            raise bad(name, f"{value!r} is not a list of {_OPTION_LISTS[key]}")
        if key in _OPTION_POSITIVE and (isinstance(value, bool) or not isinstance(value, (int, float))
                                        or not 0 < value < math.inf):
            raise bad(name, f"{value!r} is not a number over 0")
        if key not in _OPTION_RANGES or (key == "decoder_dim" and value is None):
            continue
        low, high, high_open, integer = _OPTION_RANGES[key]
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise bad(name, f"{value!r} is not {'an integer' if integer else 'a number'}")
        if not low <= value < (high if high is not None else math.inf) and not (value == high and not high_open):
            raise bad(name, f"{value!r} is out of range [{low}, {high if high is not None else 'inf'}"
                            f"{')' if high_open or high is None else ']'}")


def backbone_options(model: ModelConfig) -> dict:
    """The backbone's ``build_model`` options: the weight family's architecture and normalisation (plain lists),
    then ``model.options`` on top. They go into ``model_args``, so every checkpoint carries its normalisation."""
    from leap_cli.model.uniformerv2 import backbone_family_options

    out = backbone_family_options(model.backbone, model.weights)
    out.update(model.options)
    return out


def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, Any]]:
    """``["optim.lr=3e-4", "loss.program_loss=false"]`` -> ``[("optim.lr", 0.0003), ...]`` (values parsed as YAML)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise LeapError(f"--set {item!r} is not key=value", fix="write e.g. --set optim.lr=3e-4")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            if text.strip()[:1] in ("[", "{"):  # (an unclosed list was taken for a folder named "[a, b")
                raise LeapError(f"--set {item!r}: the value is not a YAML {'list' if text.strip()[0] == '[' else 'mapping'}"
                                " (a bracket not closed?)", fix=f"write e.g. --set '{key}=[a, b]'") from None
            value = text
        out.append((key, value))
    return out


def apply_overrides(raw: dict, overrides: Iterable[tuple[str, Any]], source: str,
                    origins: dict[str, str] | None = None) -> dict:
    raw = {k: dict(v or {}) for k, v in raw.items()}
    for key, value in overrides:
        parts = key.split(".")
        where = (origins or {}).get(ALIASES.get(key, key), source)
        if len(parts) not in (2, 3):
            raise LeapError(f"override key {key!r} must be section.key (or section.key.subkey for a mapping such as "
                            "model.options)", path=where,
                            fix=f"sections: {', '.join(_SECTION_CLASSES)}; e.g. --set optim.lr=3e-4 or --set "
                                "model.options.drop_path_rate=0.2")
        section, name = ALIASES.get(".".join(parts[:2]), ".".join(parts[:2])).split(".")  # an old name: its new one
        if section not in _SECTION_CLASSES:
            raise LeapError(f"unknown config section in override {key!r}", path=where,
                            fix=f"valid sections: {', '.join(_SECTION_CLASSES)}")
        values = raw.setdefault(section, {})
        if len(parts) == 3:  # one key of a mapping (model.options.decoder_dim=32): the others stay
            if not isinstance(values.get(name, {}), dict):
                raise LeapError(f"{section}.{name} is not a mapping, so {key!r} names nothing", path=where,
                                fix=f"--set {section}.{name}=VALUE")
            values[name] = {**(values.get(name) or {}), parts[2]: value}
        elif isinstance(value, dict) and isinstance(values.get(name), dict):
            values[name] = {**values[name], **value}  # merged key by key, as base: merges (it replaced the mapping)
        else:
            values[name] = value
    return raw


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``section.key=value`` overrides."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        raw, source = _read_raw(path)
    overrides = list(overrides)
    pairs = parse_overrides(overrides)
    # a value given by --set is reported as coming from it, not from the config file
    origins = {ALIASES.get(key, key): f"--set {item}" for (key, _), item in zip(pairs, overrides)}
    return _build(apply_overrides(raw, pairs, source, origins), source, origins)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (the first was dropped without a word: a
    second ``train:`` section lost the first's keys)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # (<<: *defaults: merged keys may be overridden)
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (the first would be dropped)",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_raw(path: str | Path, chain: tuple[str, ...] = ()) -> tuple[dict, str]:
    """A config file's sections, with ``base: NAME`` (a bundled config or a file next to this one) merged
    underneath key by key (``model.options`` too)."""
    path = Path(path)
    if not path.is_file() and (bundled := bundled_config(str(path))) is not None:
        path = bundled  # a config shipped with leap, by name: --config tiny-synthetic
    source = str(path)
    if not path.is_file():
        names = ", ".join(p.stem for p in bundled_configs())
        raise LeapError("config file not found", path=path,
                        fix=f"give a YAML file, or the name of a bundled config: {names}")
    try:
        raw = yaml.load(read_utf8(path, "the config file"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise LeapError(f"config is not valid YAML: {problem}", path=path,
                        record=None if mark is None else f"line {mark.line + 1}",
                        fix="merge the two into one" if "appears twice" in problem else
                        "fix the YAML at that line (indentation, a missing ':' or bracket)") from None
    if not raw:  # (none or {}: it trained with every default, the tiny model at 224 pixels, without a word)
        raise LeapError("the config file is empty", path=path,
                        fix="write its sections, or start from a bundled config: base: tiny-synthetic")
    if not isinstance(raw, dict):
        raise LeapError("a config file must be a YAML mapping of sections", path=path)
    for name, values in raw.items():
        if name != "base" and values is not None and not isinstance(values, dict):
            raise LeapError(f"config section {name!r} must be a mapping of keys (found {values!r:.40})", path=path,
                            record=name, fix=f"write its keys below it, indented (e.g. {name}: {{key: value}})")
    raw = resolve_aliases(raw, source)  # per file: a child file's new name overrides its base's old one
    base = raw.pop("base", None)
    if base is None:
        return raw, source
    if source in chain or len(chain) > 8:
        raise LeapError(f"config base chain loops: {' -> '.join(chain + (source,))}", path=path)
    near = path.parent / (str(base) if str(base).endswith(".yaml") else f"{base}.yaml")
    if not near.is_file() and not Path(str(base)).is_file() and bundled_config(str(base)) is None:
        names = ", ".join(p.stem for p in bundled_configs())
        raise LeapError(f"base config {base!r} not found (looked for {near} and the bundled configs)", path=path,
                        record="base", fix=f"name a YAML file next to this one or a bundled config: {names}")
    parent, _ = _read_raw(near if near.is_file() else base, chain + (source,))
    merged = {k: dict(v or {}) for k, v in parent.items()}
    for section, values in raw.items():
        if values is None:  # (a section whose keys are all commented out: the base's stays, not the defaults)
            merged.setdefault(section, {})
            continue
        if not isinstance(values, dict):
            merged[section] = values
            continue
        target = merged.setdefault(section, {})
        for key, value in values.items():
            if key == "options" and isinstance(value, dict) and isinstance(target.get(key), dict):
                target[key] = {**target[key], **value}
            else:
                target[key] = value
    return merged, source


def config_from_dict(raw: dict, source: str = "<checkpoint>") -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. the one stored in a checkpoint)."""
    return _build(raw, source)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
