"""registry.yaml: one file that describes an experiment, validated with pydantic.

Validation has two passes. The first checks the file's own structure (types, required
keys, unknown keys). The second resolves every name against the loaded plugins: the
dataset kind, each model's recipe, and every component a recipe references through a
:class:`neuroenc.records.Slot`, validating each component's parameters against that
component's own params model. All problems of both passes are reported together, each
with its YAML path, the bad value and the valid choices::

    registry.yaml: models.ridge.backbone.name: unknown image backbone 'timmm'; known: timm (did you mean 'timm'?)
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from neuroenc.records import Slot

if typing.TYPE_CHECKING:
    from neuroenc.core.plugins import PluginManager

__all__ = [
    "ComponentRef",
    "DatasetConfig",
    "EvaluationConfig",
    "SelectionConfig",
    "ComputeConfig",
    "OutputConfig",
    "ModelConfig",
    "Registry",
    "RegistryError",
    "load_registry",
    "resolve_registry",
    "recipe_slots",
    "default_cache_dir",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentRef(BaseModel):
    """A reference to a component by name, with its parameters as sibling keys.

    ``backbone: timm`` and ``backbone: {name: timm, model_name: resnet18}`` are both
    accepted; the keys other than ``name`` are validated against the component's own
    params model when the registry is resolved.
    """

    model_config = ConfigDict(extra="allow")
    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict[str, Any]:
        """Return the component's parameters (every key but ``name``)."""
        return dict(self.model_extra or {})


class DatasetConfig(BaseModel):
    """Which data to run on. Keys other than ``kind`` and ``subjects`` go to the reader."""

    model_config = ConfigDict(extra="allow")
    kind: str = Field("demo", description="dataset reader: 'demo' or 'algonauts2023'")
    subjects: list[int | str] | Literal["all"] = Field(
        "all", description="subject numbers (1..8) or ids ('subj01'), or 'all'")

    @field_validator("subjects")
    @classmethod
    def _no_repeats(cls, subjects):
        from neuroenc.core.names import normalise_subject

        if subjects != "all":
            seen: dict[Any, Any] = {}
            for value in subjects:
                key = normalise_subject(value)
                if key in seen:
                    raise ValueError(f"subject {value!r} is listed twice (as {seen[key]!r} and "
                                     f"{value!r}); each subject runs once")
                seen[key] = value
        return subjects

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EvaluationConfig(_Strict):
    """How predictions are scored."""

    split: Literal["auto", "test", "holdout"] = Field(
        "auto", description="'test' scores the test split (needs test fMRI); 'holdout' scores a "
        "held-out part of the training split; 'auto' uses test when its fMRI is present")
    holdout_fraction: float = Field(0.1, gt=0, lt=1)
    metrics: list[str] = Field(default_factory=lambda: ["pearson", "r2", "noise_normalized"])


class SelectionConfig(_Strict):
    """How a swept model's point is chosen: on a validation part of the training images.

    Every point of a sweep is fitted on the training images less a validation part (the
    same images for every point and seed), scored on it, and the point with the best
    validation score (averaged over seeds) becomes the model's headline result. The
    scored split takes no part in the choice; its curve over all points is shown, labelled
    as a test-split view.
    """

    on: Literal["validation"] = Field(
        "validation", description="where points are compared: a validation part of the "
        "training split (never the scored split)")
    fraction: float = Field(0.1, gt=0, lt=1, description="share of the training images held "
                            "out for validation (at least 2)")
    metric: Literal["median_r2", "mean_r2", "median_pearson", "mean_pearson",
                    "mean_pearson_squared"] = Field(
        "median_r2", description="validation score: a statistic over vertices of a per-vertex "
        "metric; 'mean_pearson_squared' is the challenge score without the noise ceiling")
    refit: bool | Literal["auto"] = Field(
        "auto", description="refit each headline model on all training images for the "
        "challenge submission; 'auto': when the scored split is a holdout of the training "
        "images (no test fMRI) and the dataset has test images")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, value: Any) -> Any:
        # YAML 1.1 (PyYAML) reads an unquoted key `on` as the boolean true
        if isinstance(value, dict) and True in value and "on" not in value:
            value = {("on" if k is True else k): v for k, v in value.items()}
        return value


class SlurmConfig(_Strict):
    """The sbatch options of every task of a run on SLURM (``compute.executor: slurm``)."""

    partition: str | None = Field(None, description="partition (sbatch --partition); default: "
                                  "the cluster's default partition")
    time_min: int = Field(60, ge=1, description="time limit of one task in minutes (--time)")
    mem_gb: float | None = Field(None, gt=0, description="memory of one task (--mem); default: "
                                 "the partition's default")
    cpus_per_task: int = Field(1, ge=1, description="CPU cores of one task (--cpus-per-task)")
    gpus_per_task: int = Field(0, ge=0, description="GPUs of one task (--gpus-per-node); needs "
                               "compute.device cuda or auto")
    account: str | None = Field(None, description="account to charge (--account)")
    extra: dict[str, str | int] = Field(default_factory=dict, description="further sbatch "
                                        "options without the dashes, e.g. {qos: high, "
                                        "constraint: a100}")


class ComputeConfig(_Strict):
    """Where and how fast things run."""

    executor: Literal["serial", "local", "slurm"] = Field(
        "serial", description="how the run's tasks (model x subject x sweep point) run: "
        "'serial' one after the other in this process, 'local' in compute.jobs processes, "
        "'slurm' as a SLURM job array (docs/cluster.md)")
    jobs: int | None = Field(None, ge=1, description="local: processes at once (default 2, or "
                             "one per GPU); slurm: array tasks at once (default: no limit)")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    distributed: Literal["auto", "ddp", "none"] = Field(
        "auto", description="'auto': DistributedDataParallel training when launched by torchrun; "
        "'ddp': require torchrun; 'none': refuse a torchrun launch")

    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    cache_dir: Path | None = Field(
        None, description="feature and dataset cache; default $NEUROENC_CACHE_DIR or ~/.cache/neuroenc")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        head = value.split(":", 1)[0]
        if head not in {"auto", "cpu", "cuda", "mps"}:
            raise ValueError(f"unknown device {value!r}; expected auto, cpu, cuda, cuda:N or mps")
        return value


class OutputConfig(_Strict):
    dir: Path = Field(Path("results"), description="results folder, relative to the registry file")
    save_encoders: bool = Field(True, description="save every fitted encoder in the run folder "
                                "(docs/encoders.md)")
    encoder_dtype: Literal["float32", "float16"] = Field(
        "float32", description="precision of saved encoder weights; float16 halves their size")


class ModelConfig(BaseModel):
    """One encoding model: a recipe and its parameters (validated by the recipe).

    ``sweep`` maps dotted parameter paths to lists of values, e.g.
    ``{"alignment.weight": [0, 0.01, 0.1]}``; the model then runs once per point of the
    grid (the Cartesian product of all lists), as models named ``<name>@<path>=<value>``.
    """

    model_config = ConfigDict(extra="allow")
    recipe: str
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    replicates: int = Field(1, ge=1, description="train each point this many times with seeds "
                            "seed, seed+1, ...: a 'seed' dimension (same as sweep: {seed: [...]})")

    @field_validator("sweep")
    @classmethod
    def _non_empty(cls, sweep: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in sweep.items():
            if not values:
                raise ValueError(f"sweep over {key!r} has no values")
        return sweep

    @field_validator("sweep")
    @classmethod
    def _seeds(cls, sweep: dict[str, list[Any]]) -> dict[str, list[Any]]:
        seeds = sweep.get(SEED_KEY)
        if seeds is not None:
            if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
                raise ValueError(f"sweep over 'seed' takes integers, found {seeds!r}")
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"sweep over 'seed' repeats a seed: {seeds!r}")
        return sweep

    @model_validator(mode="after")
    def _one_way_to_replicate(self):
        if self.replicates > 1 and SEED_KEY in self.sweep:
            raise ValueError("give either replicates or sweep: {seed: [...]}, not both")
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


#: the sweep key that sets a point's seed instead of a recipe parameter
SEED_KEY = "seed"


@dataclasses.dataclass(frozen=True)
class ModelVariant:
    """One model to run: a registry model, or one point of its sweep."""

    name: str                      # 'llm-vem@alignment.weight=0.1' (or the model's own name)
    base: str                      # the registry's model name
    recipe: str
    params: dict[str, Any]         # the recipe's params with the sweep point applied
    point: dict[str, Any]          # {dotted path: value}; empty without a sweep
    seed: int | None = None        # the point's own seed (replicates); None: the registry's

    @property
    def choice(self) -> dict[str, Any]:
        """The point without its seed: what selection chooses between."""
        return {k: v for k, v in self.point.items() if k != SEED_KEY}


def set_dotted(params: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Return a deep copy of ``params`` with ``path`` ('alignment.weight', 'stages.0.lr') set.

    A component given by name only (``alignment: contrastive``) becomes a mapping first.

    Raises
    ------
    KeyError
        When the path runs through something that is neither a mapping nor a list.
    """
    out = copy.deepcopy(params)
    node: Any = out
    parts = path.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KeyError(f"{'.'.join(parts[:i + 1])}: no list item {part!r} "
                               f"(the list has {len(node)})")
            if last:
                node[int(part)] = value
            else:
                if isinstance(node[int(part)], str):
                    node[int(part)] = {"name": node[int(part)]}
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if child is None or isinstance(child, str):
                    child = {"name": child} if isinstance(child, str) else {}
                    node[part] = child
                node = child
        else:
            raise KeyError(f"{'.'.join(parts[:i])}: is {node!r}, not a mapping or list")
    return out


def _format_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def expand_model(name: str, model: ModelConfig, seed: int = 0) -> list[ModelVariant]:
    """Return the variants of one registry model: itself, or one per point of its sweep.

    ``replicates: n`` adds a last sweep dimension ``seed: [seed, ..., seed + n - 1]``
    (``seed`` is the registry's); a ``seed`` key sets the point's seed, not a parameter.
    """
    sweep = dict(model.sweep)
    if model.replicates > 1:
        sweep[SEED_KEY] = [seed + i for i in range(model.replicates)]
    if not sweep:
        return [ModelVariant(name, name, model.recipe, model.params, {})]
    keys = list(sweep)
    variants = []
    for values in itertools.product(*(sweep[k] for k in keys)):
        params = model.params
        for key, value in zip(keys, values):
            if key != SEED_KEY:
                params = set_dotted(params, key, value)
        point = dict(zip(keys, values))
        variants.append(ModelVariant(variant_name(name, point), name, model.recipe, params, point,
                                     point.get(SEED_KEY)))
    return variants


def variant_name(name: str, point: dict[str, Any]) -> str:
    """Return the name (and results folder) of one sweep point: ``llm-vem@alignment.weight=0.1``."""
    if not point:
        return name
    return f"{name}@" + ",".join(f"{k}={_format_value(v)}" for k, v in point.items())


class Registry(_Strict):
    """The whole experiment described by a registry.yaml."""

    name: str = Field(..., min_length=1, description="experiment name; names the results folder")
    description: str = ""
    seed: int = 0
    plugins: list[str] = Field(default_factory=list,
                               description="extra plugins: importable modules or .py files")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    models: dict[str, ModelConfig] = Field(..., min_length=1)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    #: the file this registry was read from (not a YAML key)
    source: Path | None = Field(None, exclude=True)

    def variants(self) -> list[ModelVariant]:
        """Return every model to run, sweeps expanded, in registry order."""
        return [v for name, model in self.models.items()
                for v in expand_model(name, model, self.seed)]

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the registry are resolved against."""
        return self.source.parent if self.source is not None else Path.cwd()

    def resolve_path(self, path: str | Path) -> Path:
        path = Path(os.path.expandvars(str(path))).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)


class RegistryError(ValueError):
    """registry.yaml is invalid; ``problems`` lists ``(yaml_path, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source, self.problems = source, problems
        lines = [f"{source}: {path}: {msg}" if path else f"{source}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


def default_cache_dir() -> Path:
    """Return ``$NEUROENC_CACHE_DIR`` or ``~/.cache/neuroenc``."""
    env = os.environ.get("NEUROENC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "neuroenc"


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _pydantic_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        # pydantic adds the union member / validator name to locations; drop those
        loc = [p for p in err["loc"] if p not in ("function-after[_device(), str]",)]
        path = ".".join(filter(None, [prefix, _loc(tuple(loc))]))
        msg = err["msg"].removeprefix("Value error, ")  # our validators' own messages
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in err and err["type"] not in ("missing",):
            msg = f"{msg} (found {err['input']!r})"
        problems.append((path, msg))
    return problems


def _unknown_key_hint(problems: list[tuple[str, str]], model: type[BaseModel]) -> list[tuple[str, str]]:
    from neuroenc.core.plugins import suggest

    out = []
    for path, msg in problems:
        if msg == "unknown key":
            key = path.rsplit(".", 1)[-1]
            known = list(model.model_fields)
            msg = f"unknown key {key!r}; known: {', '.join(known)}{suggest(key, known)}"
        out.append((path, msg))
    return out


def load_registry(path: str | Path) -> Registry:
    """Return the structurally validated registry read from a YAML file.

    Raises
    ------
    RegistryError
        The file is missing, is not valid YAML, or does not match the schema; the
        message names the file and the YAML path of every problem.
    """
    path = Path(path)
    if not path.is_file():
        raise RegistryError(str(path), [("", "file not found")])
    try:
        data = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RegistryError(str(path), [("", f"{where}invalid YAML: {problem}")]) from None
    if not isinstance(data, dict):
        raise RegistryError(str(path), [("", f"expected a mapping at the top level, found "
                                             f"{type(data).__name__}")])
    try:
        registry = Registry.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(str(path), _unknown_key_hint(_pydantic_problems(exc), Registry)) from None
    from neuroenc.core.names import registry_name_problems

    if problems := registry_name_problems(registry):
        raise RegistryError(str(path), problems)
    registry.source = path.resolve()
    return registry


class UniqueKeyLoader(yaml.SafeLoader):
    """A ``yaml.SafeLoader`` that refuses a key repeated in one mapping.

    PyYAML keeps the last of two equal keys: a model written twice under one name
    would silently disappear.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # resolve '<<' merge keys first, as the base does
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"key {key!r} appears twice (first at line {first.line + 1}); "
                        "the second would silently replace the first", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def recipe_slots(params_model: type[BaseModel]) -> dict[str, str]:
    """Return ``{field name: component kind}`` for the Slot-annotated fields of a params model."""
    slots = {}
    for field_name, info in params_model.model_fields.items():
        for meta in info.metadata:
            if isinstance(meta, Slot):
                slots[field_name] = meta.kind
    return slots


def _check_component(manager: PluginManager, kind: str, ref: Any, path: str,
                     problems: list[tuple[str, str]], context: dict | None = None) -> None:
    from neuroenc.core.plugins import UnknownComponentError

    if ref is None:
        return
    if not isinstance(ref, ComponentRef):
        ref = ComponentRef.model_validate(ref)
    try:
        component = manager.get(kind, ref.name)
    except UnknownComponentError as exc:
        problems.append((f"{path}.name", str(exc)))
        return
    try:
        component.params.model_validate(ref.params, context=context)
    except ValidationError as exc:
        problems.extend(_unknown_key_hint(_pydantic_problems(exc, path), component.params))


def _check_members(registry: Registry, manager: PluginManager, name: str, members,
                   problems: list[tuple[str, str]]) -> None:
    """A recipe combining models (``members``) names other, non-combining models."""
    from neuroenc.core.plugins import UnknownComponentError, suggest

    if members is None:
        return
    known = [m for m in registry.models if m != name]
    for i, member in enumerate(members):
        path = f"models.{name}.members.{i}"
        if member == name:
            problems.append((path, f"{name!r} cannot be its own member"))
        elif member not in registry.models:
            problems.append((path, f"unknown model {member!r}; models of this registry: "
                                   f"{', '.join(known)}{suggest(member, known)}"))
        else:
            try:
                recipe = manager.get("recipe", registry.models[member].recipe)
            except UnknownComponentError:
                continue  # reported at that model
            if "members" in recipe.params.model_fields:
                problems.append((path, f"member {member!r} combines models itself; an ensemble's "
                                       "members are single models"))
    if len(set(members)) != len(members):
        problems.append((f"models.{name}.members", f"a member is listed twice: {members}"))


def resolve_registry(registry: Registry, manager: PluginManager, *, load_plugins: bool = True,
                     unchecked: list[tuple[str, str]] | None = None) -> Registry:
    """Check every plugin-provided name and parameter in ``registry``; return it.

    Loads the registry's own ``plugins:`` into ``manager`` first, unless
    ``load_plugins=False`` (``neuroenc validate`` without ``--load-plugins``: a registry
    someone else wrote must not run code on a check). Then names no loaded plugin
    provides cannot be told from typos: they are appended to ``unchecked`` as
    ``(yaml_path, message)`` instead of being errors, when the registry has plugins.

    Raises
    ------
    RegistryError
        Listing every unknown name (with the known ones and the closest match) and
        every invalid component parameter, by YAML path.
    """
    from neuroenc.core.plugins import PluginError, UnknownComponentError

    source = str(registry.source or "registry")
    problems: list[tuple[str, str]] = []
    for i, spec in enumerate(registry.plugins if load_plugins else ()):
        try:
            manager.load_plugin(spec, base_dir=registry.base_dir)
        except PluginError as exc:
            problems.append((f"plugins.{i}", str(exc)))
    validation_context = {"base_dir": registry.base_dir}

    try:
        dataset = manager.get("dataset", registry.dataset.kind)
        try:
            dataset.params.model_validate(registry.dataset.params, context=validation_context)
        except ValidationError as exc:
            problems.extend(_unknown_key_hint(_pydantic_problems(exc, "dataset"), dataset.params))
    except UnknownComponentError as exc:
        problems.append(("dataset.kind", str(exc)))

    for i, metric in enumerate(registry.evaluation.metrics):
        try:
            manager.get("metric", metric)
        except UnknownComponentError as exc:
            problems.append((f"evaluation.metrics.{i}", str(exc)))

    for model_name, model in registry.models.items():
        base = f"models.{model_name}"
        try:
            recipe = manager.get("recipe", model.recipe)
        except UnknownComponentError as exc:
            problems.append((f"{base}.recipe", str(exc)))
            continue
        try:
            variants = expand_model(model_name, model, registry.seed)
        except KeyError as exc:
            problems.append((f"{base}.sweep", f"cannot apply the sweep: {exc.args[0]}"))
            continue
        for variant in variants:
            before = len(problems)
            try:
                params = recipe.params.model_validate(variant.params, context=validation_context)
            except ValidationError as exc:
                problems.extend(_unknown_key_hint(_pydantic_problems(exc, base), recipe.params))
            else:
                for field_name, kind in recipe_slots(recipe.params).items():
                    _check_component(manager, kind, getattr(params, field_name),
                                     f"{base}.{field_name}", problems, validation_context)
                _check_members(registry, manager, model_name, getattr(params, "members", None),
                               problems)
            if len(problems) > before:
                if variant.point:
                    problems[before:] = [(path, f"{msg} (sweep point {variant.point})")
                                         for path, msg in problems[before:]]
                break  # one failing point says enough; the others fail the same way
    if not load_plugins and registry.plugins:
        # Unknown names may come from the plugins that were not imported: not checked.
        skipped = [(path, msg) for path, msg in problems
                   if msg.startswith("unknown ") and not msg.startswith("unknown key")]
        problems = [p for p in problems if p not in skipped]
        if unchecked is not None:
            unchecked.extend(skipped)
    if problems:
        raise RegistryError(source, problems)
    return registry


# Used by recipes' params models: ``backbone: BackboneRef``.
BackboneRef = Annotated[ComponentRef, Slot("image_backbone")]
MapperRef = Annotated[ComponentRef, Slot("voxel_mapper")]
CaptionerRef = Annotated[ComponentRef, Slot("captioner")]
TextEncoderRef = Annotated[ComponentRef, Slot("text_encoder")]
AlignmentLossRef = Annotated[ComponentRef, Slot("alignment_loss")]
