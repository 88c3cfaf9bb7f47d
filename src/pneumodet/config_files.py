"""Configurations in files: YAML in, ``--set a.b=value`` overrides, YAML out; the packaged recipes by name."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from pneumodet.config import ConfigError, RunConfig, _unknown, all_keys, from_dict
from pneumodet.config_checks import validate
from pneumodet.files import write_text_atomic


def parse_override(text: str) -> tuple[list[str], object]:
    """Return (key path, value) from ``a.b=value``; the value is a Python/YAML literal or a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.epochs=4")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = yaml.safe_load(raw) if raw.strip() else ""
    if key not in all_keys():
        raise _unknown(key)
    return key.split("."), value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Return a copy of nested ``values`` with each ``key=value`` override applied."""
    import copy

    values = copy.deepcopy(values or {})
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part} is not a section")
        node[path[-1]] = value
    return values


#: the recipes shipped inside the package, by name: ``--config demo`` from any folder
PACKAGED = Path(__file__).parent / "configs"


def packaged_names() -> list[str]:
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def config_path(name: str | Path) -> Path:
    """Return the YAML file ``name`` names: a packaged recipe by its name (``demo``, ``rsna``, ``seed``), else a
    path; a one-line ConfigError if neither exists."""
    path = Path(name)
    if path.is_file():
        return path
    if str(name) in packaged_names():
        return PACKAGED / f"{name}.yaml"
    raise ConfigError(f"{path}: configuration file not found (a path, or one of the packaged recipes: "
                      f"{', '.join(packaged_names())})")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Return the RunConfig in YAML file ``path`` (a path or a packaged recipe's name; None: defaults) with
    ``overrides`` applied."""
    values = {}
    if path is not None:
        path = config_path(path)
        values = _read_yaml(path)
    try:
        return validate(from_dict(apply_overrides(values, list(overrides))))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path and "--set" not in str(exc) else str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path or 'configuration'}: {exc}") from None


def _read_yaml(path: Path) -> dict:
    """Return the mapping in a YAML file; a one-line ConfigError if it is not text, not YAML or not a mapping."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected YAML)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, ...)")
    return values


def _leaves(values: dict, prefix: str = "") -> set[str]:
    """Return the dotted keys of the settings (not the sections) in nested ``values``."""
    keys = set()
    for key, value in values.items():
        keys |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def load_run_config(path: str | Path, like: dict | None = None) -> RunConfig:
    """Return the configuration a run recorded in its config.yaml, which :func:`dump_config` writes whole: a
    ConfigError, never defaults, if the file does not parse or lacks a setting it should hold (``like``: the
    configuration the run's checkpoint holds, as a dict; without one, every setting there is)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: the run's configuration is missing")
    missing = sorted(_leaves(RunConfig().to_dict() if like is None else like) - _leaves(_read_yaml(path)))
    if missing:
        raise ConfigError(f"{path}: {len(missing)} setting(s) missing ({', '.join(missing[:3])}"
                          f"{', ...' if len(missing) > 3 else ''}): the file was cut short or edited; restore it "
                          "(the run's checkpoint holds the settings it trained with) or train a new run")
    return load_config(path)


def dump_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML, atomically."""
    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
